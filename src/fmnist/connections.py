"""HTTP connection limits for `fmnist serve`: slow and idle clients cannot starve the server.

uvicorn closes a keep-alive connection that stays idle after a response
(``timeout_keep_alive``), but not one that never finishes its first request: a client
that opens connections and sends nothing, or sends its headers a byte at a time
(slowloris), holds them for ever. :class:`GuardedHttpToolsProtocol` is uvicorn's own
httptools protocol with three limits added, read from :class:`ConnectionLimits`:

- **headers deadline**: a request's headers must be complete within ``header_seconds`` of
  the moment the connection is ready for it (opened, or done with the previous response);
- **body deadline**: its body must be complete within ``body_seconds`` of its headers;
- **connection cap**: at most ``max_connections`` open connections per server process.
  A new connection over the cap evicts the longest-idle connection that has no request
  in progress; if every connection is busy, the new one is closed at once.

A connection past a deadline is closed. The app sees a client that went away.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The environment variable `fmnist serve` hands its settings to worker processes in.
SERVE_ENV = "FMNIST_SERVE"


@dataclass(frozen=True)
class ConnectionLimits:
    header_seconds: float = 10.0
    body_seconds: float = 60.0
    max_connections: int = 1000
    keep_alive_seconds: float = 5.0

    def to_json(self) -> dict:
        return asdict(self)


def limits_of(config) -> ConnectionLimits:
    """The limits a uvicorn ``config`` carries (set by :func:`fmnist.serve.serve`), else
    those in ``$FMNIST_SERVE`` (worker processes), else the defaults."""
    limits = getattr(config, "fmnist_connection_limits", None)
    if limits is None:
        settings = json.loads(os.environ.get(SERVE_ENV, "{}")).get("connections", {})
        limits = ConnectionLimits(**settings)
        config.fmnist_connection_limits = limits  # parsed once per process, not per connection
    return limits


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body deadlines and a connection cap."""

    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits_of(config)
        self.deadline = None  # the TimerHandle of the current deadline
        self.idle_since = time.monotonic()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def busy(self) -> bool:
        """A request is being received or answered on this connection."""
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            idle = [other for other in self.connections
                    if other is not self and not other.busy() and not other.transport.is_closing()]
            if not idle:  # everyone is being served: this one waits its turn elsewhere
                transport.close()
                return
            min(idle, key=lambda other: getattr(other, "idle_since", 0.0)).transport.close()
        self._arm(self.limits.header_seconds)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_seconds)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.idle_since = time.monotonic()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self.limits.header_seconds)

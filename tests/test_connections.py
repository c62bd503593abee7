"""Slow and idle clients against a real uvicorn server on loopback (fmnist.connections)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from fmnist.connections import ConnectionLimits, GuardedHttpToolsProtocol



def test_the_uvicorn_internals_the_guard_relies_on_are_there():
    """A canary: GuardedHttpToolsProtocol subclasses uvicorn's private httptools protocol.
    When an upgrade moves what it relies on, this names the piece that moved, before the
    slow-client tests fail less clearly. Widen the uvicorn range in pyproject.toml only
    where this passes."""
    import inspect

    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters) == [
        "self", "config", "server_state", "app_state", "_loop"]
    for hook in ("connection_made", "connection_lost", "on_headers_complete",
                 "on_message_complete", "on_response_complete"):
        assert callable(getattr(HttpToolsProtocol, hook, None)), f"uvicorn lost {hook}"
    import asyncio

    config = uvicorn.Config(app=lambda scope, receive, send: None, http=GuardedHttpToolsProtocol)
    config.load()
    loop = asyncio.new_event_loop()  # its own: a test before may have closed the current one
    try:
        protocol = GuardedHttpToolsProtocol(config, ServerState(), {}, _loop=loop)
        for attribute in ("connections", "pipeline", "cycle", "loop", "transport"):
            assert hasattr(protocol, attribute), f"uvicorn's protocol has no {attribute!r} any more"
        assert protocol.limits == ConnectionLimits() and not protocol.busy()
    finally:
        loop.close()
    # fmnist.serve.drain_on_sigterm puts its handler before the server's SIGTERM handler,
    # which uvicorn installs with signal.signal as the bound Server.handle_exit, and stops
    # the server through its should_exit flag.
    from uvicorn.server import Server

    assert "signal.signal(sig, self.handle_exit)" in inspect.getsource(Server.capture_signals)
    assert Server(config).should_exit is False


@contextlib.contextmanager
def running_server(app, limits: ConnectionLimits):
    """uvicorn serving ``app`` with fmnist's protocol in a thread; yields the port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=GuardedHttpToolsProtocol,
                            log_level="warning", timeout_keep_alive=limits.keep_alive_seconds)
    config.fmnist_connection_limits = limits
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def app(trained_run):
    from fmnist.predict import Predictor
    from fmnist.serve import create_app

    return create_app(Predictor.load(trained_run, "keras"))


def get_health(port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    return answer


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """True if the server closes ``connection`` within ``within`` seconds."""
    connection.settimeout(within)
    try:
        return connection.recv(4096) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_500_idle_connections_do_not_lock_out_a_new_client(app):
    limits = ConnectionLimits(max_connections=100, header_seconds=30)
    with running_server(app, limits) as (port, server):
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(500)]
        try:
            started = time.perf_counter()
            answer = get_health(port)
            assert answer.startswith(b"HTTP/1.1 200") and b'"ok"' in answer
            assert time.perf_counter() - started < 5
            time.sleep(0.2)
            assert len(server.server_state.connections) <= limits.max_connections
        finally:
            for connection in idle:
                connection.close()


def test_slow_headers_and_bodies_are_cut_off(app):
    limits = ConnectionLimits(header_seconds=0.5, body_seconds=0.5)
    with running_server(app, limits) as (port, _):
        silent = socket.create_connection(("127.0.0.1", port))
        slowloris = socket.create_connection(("127.0.0.1", port))
        slowloris.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(b"POST /v1/predict/pixels HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: 5000\r\n\r\n{\"pix")
        try:
            for connection in (silent, slowloris, slow_body):
                assert closed_by_server(connection, within=5)
            # A client that keeps to the deadlines is served as usual.
            assert get_health(port).startswith(b"HTTP/1.1 200")
        finally:
            for connection in (silent, slowloris, slow_body):
                connection.close()

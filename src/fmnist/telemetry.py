"""Operating `fmnist serve`: Prometheus metrics, request ids and access-log lines.

:class:`Telemetry` holds the server's metrics, made with the official Prometheus client:

    fmnist_requests_total{route,method,status}    requests answered
    fmnist_request_duration_seconds{route}        latency histogram
    fmnist_images_decoded_total                   images turned into model input
    fmnist_pixels_decoded_total                   their pixels, as the files declared them
    fmnist_decode_queue_depth                     requests admitted to the decode pool
    fmnist_busy_rejections_total                  503s of a full decode pool
    fmnist_model_info{model,engine,sha256,version}  the model served (value 1)
    fmnist_workers_ready                          worker processes whose model is warm

With ``--workers N`` every worker process writes its values to files in the folder
``$PROMETHEUS_MULTIPROC_DIR`` names (the client's multiprocess mode), and ``/metrics``,
whichever worker answers it, adds them up across workers; so does ``/readyz``, which
answers 200 only once every worker's model is loaded and warm. A route label is the matched
route's template (``/v1/predict``), never the raw path, so a client spraying paths
cannot grow the label set.

:class:`RequestTelemetry` is the ASGI middleware that counts and times every request,
gives it an id (the client's ``X-Request-ID`` when it is a plain token, else a new one),
returns that id in the ``X-Request-ID`` header, and writes the access-log line with it,
as plain text or, with ``--log-format json``, as one JSON object a line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_ID_HEADER = b"x-request-id"
_TOKEN = re.compile(rb"[A-Za-z0-9._\-]{1,128}")
# Seconds: a 28x28 pixel request takes about a millisecond; a request of large photos
# decoded in the pool, tens to hundreds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOG_FORMATS = ("plain", "json")


class Telemetry:
    """The server's metrics. In one process they live in a registry of their own (so that
    several apps, in tests, never collide); under ``$PROMETHEUS_MULTIPROC_DIR`` each
    process writes its values to files there, and :meth:`exposition` sums them."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        self.requests = Counter("fmnist_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("fmnist_request_duration_seconds",
                                 "Time from a request's arrival to its response's end",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.images = Counter("fmnist_images_decoded", "Images turned into model input",
                              registry=registry)
        self.pixels = Counter("fmnist_pixels_decoded",
                              "Pixels of the images decoded, as their headers declared them",
                              registry=registry)
        self.queue = Gauge("fmnist_decode_queue_depth",
                           "Requests admitted to the decode pool, at work or waiting",
                           registry=registry, multiprocess_mode="livesum")
        self.busy = Counter("fmnist_busy_rejections",
                            "Requests answered 503 because the decode pool was full",
                            registry=registry)
        self.model = Gauge("fmnist_model_info", "The model this server answers with (value 1)",
                           ["model", "engine", "sha256", "version"], registry=registry,
                           multiprocess_mode="max")
        self.workers_ready = Gauge("fmnist_workers_ready",
                                   "Worker processes whose model is loaded and warm",
                                   registry=registry, multiprocess_mode="livesum")

    def serving(self, name: str, engine: str, sha256: str, version: str) -> None:
        """Say which model is served, once it is loaded and warm."""
        self.model.labels(name, engine, sha256, version).set(1)
        self.workers_ready.set(1)

    def ready_workers(self) -> int:
        """How many worker processes have said :meth:`serving`: this one alone, or, in
        multiprocess mode, all of them (read from the shared folder)."""
        return int(self._collected().get_sample_value("fmnist_workers_ready") or 0)

    def decoded(self, images: int, pixels: int) -> None:
        self.images.inc(images)
        self.pixels.inc(pixels)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type; across every
        worker process in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._collected()), CONTENT_TYPE_LATEST

    def _collected(self):
        """The registry to read: this process's, or every worker's files summed."""
        if not self.multiprocess:
            return self.registry
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is a plain token (letters, digits, ``._-``, at
    most 128), so that a log line can never be forged through it; else a new id."""
    given = dict(headers).get(REQUEST_ID_HEADER)
    if given is not None and _TOKEN.fullmatch(given):
        return given.decode()
    return uuid.uuid4().hex


class RequestTelemetry:
    """ASGI middleware: a request id for every HTTP request (returned in X-Request-ID),
    its count and latency by route and status, and an access-log line when ``access_log``
    (a :class:`logging.Logger`) is given."""

    def __init__(self, app, telemetry: Telemetry, access_log: logging.Logger | None = None):
        self.app, self.telemetry, self.access_log = app, telemetry, access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_of(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        started, status, recorded = time.perf_counter(), 500, False  # 500: a request that raised

        def record() -> None:
            nonlocal recorded
            recorded = True
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "(no route)"
            self.telemetry.requests.labels(route, scope["method"], str(status)).inc()
            self.telemetry.latency.labels(route).observe(seconds)
            if self.access_log is not None:
                client = scope.get("client") or ("-", 0)
                self.access_log.info(
                    '%s "%s %s" %d %.1f ms id=%s', client[0], scope["method"], scope["path"],
                    status, 1000 * seconds, request_id,
                    extra={"request_id": request_id, "method": scope["method"],
                           "path": scope["path"], "status": status,
                           "duration_ms": round(1000 * seconds, 3), "client": client[0]})

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REQUEST_ID_HEADER, request_id.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte leaves: a client that has its answer and
                # then reads /metrics finds its request there.
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not recorded:  # no response went out (the app raised): count it as a 500
                record()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and the
    request fields an access-log record carries."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms", "client")

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                         + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        entry.update({field: getattr(record, field) for field in self.FIELDS
                      if hasattr(record, field)})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_config(log_format: str) -> dict:
    """uvicorn's ``log_config`` for ``log_format`` ("plain" or "json"), with fmnist's own
    access logger ("fmnist.access", which carries the request id) beside uvicorn's."""
    formatter = ({"()": "fmnist.telemetry.JsonFormatter"} if log_format == "json" else
                 {"format": "%(levelname)s:     %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "stream": "ext://sys.stderr"}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"default": formatter},
            "handlers": {"default": handler},
            "loggers": {"uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
                        "uvicorn.error": {"level": "INFO"},
                        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
                        "fmnist": {"handlers": ["default"], "level": "INFO", "propagate": False}}}

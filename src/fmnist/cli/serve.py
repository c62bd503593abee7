"""`fmnist serve`: the REST API and web page."""

from __future__ import annotations

import sys

from fmnist.cli.args import add_model_source, int_at_least, non_negative_float, positive_float
from fmnist.telemetry import LOG_FORMATS


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve a model over HTTP: REST API and a web page",
        description="Serve MODEL with FastAPI/uvicorn: the web page at /, the API under /v1 "
                    "(POST /v1/predict, POST /v1/predict/pixels, GET /v1/model), the probes "
                    "/livez and /readyz (and /health), Prometheus metrics at /metrics, "
                    "OpenAPI docs at /docs. The port opens first; the model loads after.")
    add_model_source(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int_at_least(0), default=8000, help="(default: 8000)")
    serve.add_argument("--threads", type=int_at_least(1), default=1,
                       help="onnxruntime threads per prediction (default: 1; requests run "
                            "concurrently, so more rarely pays)")
    serve.add_argument("--workers", type=int_at_least(1), default=1,
                       help="server processes, each with its own copy of the model (default: 1)")
    serve.add_argument("--access-log", action="store_true",
                       help="log a line per request, with its request id (off by default: "
                            "it costs ~0.3 ms each)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default="plain",
                       help="plain text, or one JSON object a line (default: plain)")
    serve.add_argument("--shutdown-grace", type=non_negative_float, default=5.0, metavar="SECONDS",
                       help="on SIGTERM, keep answering this long with /readyz at 503 before "
                            "refusing connections, so a load balancer can notice (default: 5)")
    serve.add_argument("--drain-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                       help="then, how long requests in flight get to finish (default: 10)")
    serve.add_argument("--max-upload-mb", type=positive_float, default=5.0,
                       help="largest request body in MB (default: 5)")
    serve.add_argument("--max-images", type=int_at_least(1), default=64,
                       help="most images per request (default: 64)")
    serve.add_argument("--max-request-mp", type=positive_float, default=40.0,
                       help="most pixels per request, in millions, all images together, "
                            "read from their headers before decoding (default: 40)")
    serve.add_argument("--decode-threads", type=int_at_least(1), default=None,
                       help="threads decoding large images; when they and a short queue "
                            "are busy, requests get 503 + Retry-After (default: cores - 1, "
                            "1..4)")
    serve.add_argument("--max-connections", type=int_at_least(1), default=1000,
                       help="open connections per server process; over it the longest-idle "
                            "one is closed (default: 1000). Headers must arrive within 10 s, "
                            "a body within 60 s, idle keep-alive ends after 5 s")


def run(args) -> int:
    from fmnist.predict import default_model_line, locate

    files = locate(args.model, args.engine)  # a bad path fails here, before TensorFlow loads
    if files.default:
        print(f"fmnist serve: {default_model_line(files)}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fmnist serve: warning: binding {args.host} exposes the server beyond this "
              "machine; there is no authentication", file=sys.stderr)

    from fmnist.connections import ConnectionLimits
    from fmnist.serve import serve

    serve(args.model, args.engine, threads=args.threads, host=args.host, port=args.port,
          workers=args.workers, access_log=args.access_log, log_format=args.log_format,
          shutdown_grace=args.shutdown_grace, drain_timeout=args.drain_timeout,
          connections=ConnectionLimits(max_connections=args.max_connections),
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_images=args.max_images,
          max_request_pixels=int(args.max_request_mp * 1_000_000),
          decode_threads=args.decode_threads)
    return 0

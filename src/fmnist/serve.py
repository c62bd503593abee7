"""`fmnist serve`: a FastAPI application around a :class:`~fmnist.predict.Predictor`.

:func:`create_app` receives an already loaded predictor, so importing this module loads
no model and tests can build apps around any predictor. Endpoints:

    GET  /                   the web page (pick, drop or draw an image)
    GET  /livez              200 while the process runs, from before the model is loaded
    GET  /readyz             200 once the model is loaded and warmed; 503 before
    GET  /metrics            Prometheus text format (fmnist.telemetry)
    GET  /health             {"status": "ok"}, for clients of earlier versions
    GET  /v1/model           name, engine, SHA-256 of the model file, classes, input spec,
                             the run's test metrics, the limits below (never a server path)
    POST /v1/predict         multipart field ``files`` (one or more images)
    POST /v1/predict/pixels  JSON {"pixels": 28x28 array of 0..255, or a list of them}
    GET  /docs               OpenAPI documentation (Swagger UI served by the app: works offline)

Bad input is answered with a 4xx and a JSON body ``{"detail": "what is wrong"}``: 413 for
a request body over ``max_upload_bytes`` (counted while it streams in, so a huge upload
is never held in memory), an image over ``max_pixels`` or a request whose images hold
more than ``max_request_pixels`` in all (both read from the headers, before decoding);
415 for something that is not a supported image; 422 for a corrupt image (whatever
Pillow raised), non-finite pixels, malformed JSON, wrong shapes, out-of-range values or
too many images. Any other failure is a bug of the server: logged, and a 500.

On SIGTERM `fmnist serve` stops gracefully: /readyz turns 503 at once while the server
goes on answering for ``shutdown_grace`` seconds (a load balancer notices and stops
sending), then it stops accepting connections, lets requests in flight finish within
``drain_timeout`` seconds, and exits 0. A second SIGTERM, or SIGINT, stops at once.

The server binds its port first and loads its model after, in the background: /livez
answers at once, /readyz and the /v1 endpoints answer 503 with ``Retry-After`` until the
model is loaded and has answered one warm-up prediction. Every request gets an id,
returned in ``X-Request-ID`` and written in its access-log line (fmnist.telemetry).

Budgets: images bigger than a thumbnail are decoded in a bounded pool of threads
(:class:`DecodePool`), reduced while decoding; when the pool and its short queue are full
the answer is 503 with ``Retry-After``. Slow and idle connections are cut by
:mod:`fmnist.connections`.
"""


import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np

from fmnist.connections import SERVE_ENV, ConnectionLimits
from fmnist.images import MAX_PIXELS, ImageInputError, open_image, pixel_count, quiet_pillow_warnings
from fmnist.predict import Prediction, Predictor, as_pixel_batch
from fmnist.telemetry import RequestTelemetry, Telemetry

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_IMAGES = 64
MAX_TOP_K = 10
# The pixels of all images in one request, counted from their headers before decoding.
MAX_REQUEST_PIXELS = 40_000_000
# Requests whose images hold fewer pixels than this in all are decoded on the event loop
# (a 28x28 PNG takes ~0.1 ms: two thread hand-offs would cost more); bigger ones go to
# the decode pool, so the loop keeps answering /health and small requests meanwhile.
INLINE_PIXELS = 256 * 256
# Requests admitted to the decode pool beyond its busy threads; more get a 503.
QUEUE_PER_THREAD = 2
RETRY_AFTER_SECONDS = 1


def default_decode_threads() -> int:
    """One decode thread per core but one (which the event loop and the model need), 1..4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class ServerBusy(Exception):
    """The decode pool is full: answered 503 with Retry-After."""


class NotReady(Exception):
    """The model is still loading: answered 503 with Retry-After."""


class DecodePool:
    """A bounded thread pool for decoding images: ``threads`` at work, at most
    ``threads * QUEUE_PER_THREAD`` more requests waiting; beyond that :class:`ServerBusy`.

    The admission count is only touched on the event loop, so it needs no lock. A
    queue that never refuses would hold every waiting request's bytes in memory and answer
    them long after their clients gave up.
    """

    def __init__(self, threads: int, telemetry: Telemetry | None = None):
        self.threads = threads
        self.limit = threads * (1 + QUEUE_PER_THREAD)
        self.admitted = 0
        self.telemetry = telemetry
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="fmnist-decode")

    async def run(self, function, *args):
        if self.admitted >= self.limit:
            if self.telemetry:
                self.telemetry.busy.inc()
            raise ServerBusy()
        self._admit(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)
        finally:
            self._admit(-1)

    def _admit(self, change: int) -> None:
        self.admitted += change
        if self.telemetry:
            self.telemetry.queue.inc(change)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class BodySizeLimit:
    """ASGI middleware: answer 413 to request bodies over ``limit`` bytes.

    A declared Content-Length over the limit is refused before anything is read. A body
    that streams past the limit (chunked, or lying about its length) is cut off: reading
    stops, and whatever response the app was about to send is replaced by the 413.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(send)
        received, exceeded, replaced = 0, False, False

        async def limited_receive():
            nonlocal received, exceeded
            if exceeded:  # the app keeps reading after the cut: tell it the client left
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal replaced
            if exceeded:
                if not replaced:
                    replaced = True
                    await self._too_large(send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            if not replaced:  # the app gave up on the disconnected body without answering
                await self._too_large(send)

    async def _too_large(self, send):
        from starlette.responses import JSONResponse

        response = JSONResponse(
            {"detail": f"request body over the {self.limit:,}-byte limit; send smaller or "
                       "fewer images"}, status_code=413)
        await response({"type": "http"}, None, send)


def _page() -> str:
    return resources.files("fmnist").joinpath("static/index.html").read_text(encoding="utf-8")


def _add_offline_docs(app, title: str) -> None:
    """``/docs``: Swagger UI from the swagger-ui-bundle package, so it works offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def create_app(predictor: Predictor | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_images: int = MAX_IMAGES, max_pixels: int = MAX_PIXELS,
               max_request_pixels: int = MAX_REQUEST_PIXELS, decode_threads: int | None = None,
               loader=None, access_log: logging.Logger | None = None, on_failure=None,
               workers: int = 1, shutdown_grace: float | None = None):
    """The FastAPI app serving ``predictor``; limits as in the module docstring.

    ``max_pixels``: one image's pixels; ``max_request_pixels``: all images of a request;
    ``decode_threads``: the decode pool's size (default: :func:`default_decode_threads`).
    Instead of a ``predictor``, a ``loader`` (no argument, returns a Predictor) is called
    in a thread when the app starts, so the server answers /livez while it loads; the app
    is ready once the loaded model has answered a warm-up prediction; if loading fails,
    the app says so on /readyz and calls ``on_failure`` (`fmnist serve`: stop the server).
    ``access_log``: the logger of a line per request, with its id (None: no access log).
    ``workers``: the server's processes; /readyz waits for every one's model.
    ``shutdown_grace``: under uvicorn's server, how long SIGTERM keeps the server answering
    with /readyz at 503 before it stops (:func:`drain_on_sigterm`; None: uvicorn's own
    handling).
    """
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, Field

    from fmnist import __version__

    if (predictor is None) == (loader is None):
        raise ValueError("create_app takes a predictor or a loader, one of the two")
    telemetry = Telemetry()
    pool = DecodePool(decode_threads or default_decode_threads(), telemetry)
    ready = threading.Event()

    def loaded(model: Predictor) -> None:
        app.state.predictor = model
        telemetry.serving(model.name, model.engine.name, model.sha256, __version__)
        ready.set()

    def load() -> None:
        try:
            model = loader()
            model.predict(np.zeros((1, 28, 28), np.uint8))  # warm-up: the first call traces
        except Exception as error:  # whatever it was, this server has no model to serve
            app.state.failure = f"cannot load the model: {error}"
            logging.getLogger("fmnist").error(app.state.failure)
            if on_failure is not None:
                on_failure()
            return
        loaded(model)

    @asynccontextmanager
    async def lifespan(app):
        if loader is not None:
            threading.Thread(target=load, name="fmnist-load", daemon=True).start()
        if shutdown_grace is not None:
            drain_on_sigterm(app, shutdown_grace)
        yield
        pool.shutdown()

    app = FastAPI(title="fmnist", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Fashion-MNIST classification: upload garment images or send "
                              "28x28 pixel arrays; get the top-k classes.")
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes)
    app.add_middleware(RequestTelemetry, telemetry=telemetry, access_log=access_log)
    app.state.decode_pool = pool  # for tests and operators: pool.admitted is its load
    app.state.ready, app.state.draining, app.state.failure = ready, False, None
    app.state.predictor, app.state.telemetry = None, telemetry
    if predictor is not None:
        loaded(predictor)
    _add_offline_docs(app, "fmnist")
    page = _page()
    limits = {"max_upload_bytes": max_upload_bytes, "max_images": max_images,
              "max_pixels": max_pixels, "max_request_pixels": max_request_pixels}

    @app.exception_handler(ImageInputError)
    async def image_error(request: Request, error: ImageInputError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, error: NotReady):
        return JSONResponse({"detail": f"the model is still loading; retry in "
                                       f"{RETRY_AFTER_SECONDS} s"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def current() -> Predictor:
        """The model, once it is loaded and warmed."""
        if not ready.is_set():
            raise NotReady()
        return app.state.predictor

    @app.exception_handler(ServerBusy)
    async def busy(request: Request, error: ServerBusy):
        return JSONResponse({"detail": "the server is busy decoding other images; retry in "
                                       f"{RETRY_AFTER_SECONDS} s"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)[:500] or "invalid request"},
                            status_code=422)

    def check_count(count: int) -> None:
        if count == 0:
            raise ImageInputError("no images in the request; send at least one")
        if count > max_images:
            raise ImageInputError(f"{count} images in one request; the limit is {max_images}")

    # The cheap endpoints are coroutines: they run on the event loop, never queued behind
    # decodes in a thread pool.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/livez")
    async def livez():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        if app.state.failure:
            return JSONResponse({"status": "failed", "detail": app.state.failure}, status_code=503)
        if app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not ready.is_set() or telemetry.ready_workers() < workers:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        from fastapi.responses import Response

        body, content_type = telemetry.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/model")
    async def model_info():
        return {**current().describe(), "limits": limits}

    def answer(model: Predictor, predictions: list[Prediction], include_input: bool = False) -> dict:
        return {"model": model.name, "engine": model.engine.name,
                "predictions": [p.to_dict(include_input) for p in predictions]}

    def answer_files(model: Predictor, names: list[str], images: list, k: int,
                     include_input: bool, explain: bool = False) -> dict:
        predictions = model.predict(images, k, names=names)
        if explain:
            predictions = [model.explain(p) for p in predictions]
        return answer(model, predictions, include_input)

    @app.post("/v1/predict")
    async def predict_files(
        files: Annotated[list[UploadFile], File(description="one or more images (PNG, JPEG, ...)")],
        k: Annotated[int, Query(alias="top_k", ge=1, le=MAX_TOP_K)] = 3,
        include_input: Annotated[bool, Query(description="also return the processed 28x28 input")] = False,
        explain: Annotated[bool, Query(description="also return an occlusion saliency map "
                                                   "(28x28, 0..1) of the top class")] = False,
    ):
        model = current()
        check_count(len(files))
        names = [upload.filename or f"file {index}" for index, upload in enumerate(files)]
        # Headers only: the request's pixels are known before any of them is decoded.
        images = [open_image(await upload.read(), name, max_pixels)
                  for name, upload in zip(names, files)]
        pixels = sum(map(pixel_count, images))
        if pixels > max_request_pixels:
            raise ImageInputError(f"{pixels:,} pixels in one request; the limit is "
                                  f"{max_request_pixels:,}: send fewer or smaller images", status=413)
        if pixels <= INLINE_PIXELS and not explain:
            answered = answer_files(model, names, images, k, include_input)
        else:
            answered = await pool.run(answer_files, model, names, images, k, include_input, explain)
        telemetry.decoded(len(images), pixels)
        # A JSONResponse of plain dicts skips FastAPI's per-field re-encoding.
        return JSONResponse(answered)

    class PixelsRequest(BaseModel):
        pixels: list = Field(description="one 28x28 array of values 0..255 (light on black, "
                                         "as in Fashion-MNIST), or a list of such arrays")
        top_k: int = Field(3, ge=1, le=MAX_TOP_K)

    @app.post("/v1/predict/pixels")
    async def predict_pixels(request: PixelsRequest):
        model = current()
        batch = as_pixel_batch(request.pixels)
        check_count(len(batch))
        answered = answer(model, model.predict(batch, request.top_k))
        telemetry.decoded(len(batch), int(batch[0].size) * len(batch))
        return JSONResponse(answered)

    return app


def drain_on_sigterm(app, grace: float) -> None:
    """Make SIGTERM a graceful stop for the uvicorn server running ``app``.

    uvicorn's server has installed its ``handle_exit`` for SIGTERM when the app starts;
    this puts a handler before it. The first SIGTERM marks the app draining (/readyz:
    503) and, ``grace`` seconds later, asks the server to exit as uvicorn does on a
    signal: stop accepting, let requests in flight finish (its
    ``timeout_graceful_shutdown``), exit, with status 0 since no signal is left to
    re-raise. A second SIGTERM goes to uvicorn's handler at once. Nothing is changed
    outside uvicorn's server (in tests, say) or off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    server = getattr(uvicorn_handler, "__self__", None)
    if not hasattr(server, "should_exit"):
        return

    def stop() -> None:
        server.should_exit = True

    def handler(sig, frame) -> None:
        if app.state.draining:
            uvicorn_handler(sig, frame)
            return
        app.state.draining = True
        logging.getLogger("fmnist").info(
            "SIGTERM: /readyz answers 503; still serving for %.1f s, then draining", grace)
        timer = threading.Timer(grace, stop)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)


def app_from_environment():
    """App factory for `fmnist serve` and uvicorn's worker processes: the app for the
    settings in ``$FMNIST_SERVE`` (JSON: model, engine, threads, limits, access log), which
    loads its model in the background once the port is bound."""
    import json

    quiet_pillow_warnings()  # a crafted upload's odd metadata is the client's problem, not the log's
    settings = json.loads(os.environ[SERVE_ENV])

    def loader() -> Predictor:
        return Predictor.load(settings["model"], settings["engine"], threads=settings["threads"])

    def stop() -> None:  # uvicorn shuts down on SIGTERM; serve() then reports the failure
        os.kill(os.getpid(), signal.SIGTERM)

    access_log = logging.getLogger("fmnist.access") if settings.get("access_log") else None
    return create_app(loader=loader, access_log=access_log, on_failure=stop,
                      workers=settings.get("workers", 1),
                      shutdown_grace=settings.get("shutdown_grace"), **settings["limits"])


def serve(model: str | None = None, engine: str | None = None, threads: int | None = 1,
          host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          access_log: bool = False, connections: ConnectionLimits = ConnectionLimits(),
          log_format: str = "plain", shutdown_grace: float = 5.0, drain_timeout: float = 10.0,
          **limits) -> None:
    """Run the app with uvicorn until interrupted.

    ``workers`` > 1: that many processes, each with its own copy of the model, sharing
    the port (uvicorn's process manager); a Python process serves one request's parsing
    at a time, so a server with several cores needs several to use them. Their metrics
    are summed through a folder of the Prometheus client's multiprocess mode, made here
    and removed on exit. ``access_log``: a line per request, with its id; off by default
    because it costs about a fifth of a small request's CPU time (measured with `fmnist
    bench serve`). ``log_format``: "plain" or "json" (one object a line).
    ``shutdown_grace``, ``drain_timeout``: SIGTERM's stop, as in the module docstring.
    ``connections``: deadlines for slow clients and the connection cap
    (:mod:`fmnist.connections`); ``limits``: :func:`create_app`'s request limits.
    Raises FmnistError when the model cannot be loaded (the process then exits 1).
    """
    import json
    import shutil
    import tempfile

    import uvicorn

    from fmnist.connections import GuardedHttpToolsProtocol
    from fmnist.errors import FmnistError
    from fmnist.telemetry import MULTIPROCESS_ENV, log_config

    os.environ[SERVE_ENV] = json.dumps({"model": None if model is None else str(model), "engine": engine, "threads": threads,
                                        "limits": limits, "access_log": access_log,
                                        "workers": workers, "shutdown_grace": shutdown_grace,
                                        "connections": connections.to_json()})
    options = {"host": host, "port": port, "log_config": log_config(log_format),
               "access_log": False,  # fmnist.telemetry writes the line, with the request id
               "http": GuardedHttpToolsProtocol,
               "timeout_keep_alive": connections.keep_alive_seconds,
               "timeout_graceful_shutdown": drain_timeout}
    if workers == 1:
        app = app_from_environment()
        uvicorn.run(app, **options)
        if app.state.failure:
            raise FmnistError(app.state.failure)
        return
    made = None
    if not os.environ.get(MULTIPROCESS_ENV):
        made = os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="fmnist-metrics-")
    try:
        uvicorn.run("fmnist.serve:app_from_environment", factory=True, workers=workers, **options)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
            del os.environ[MULTIPROCESS_ENV]

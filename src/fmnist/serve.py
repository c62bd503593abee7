"""`fmnist serve`: a FastAPI application around a :class:`~fmnist.predict.Predictor`.

:func:`create_app` receives an already loaded predictor, so importing this module loads
no model and tests can build apps around any predictor. Endpoints:

    GET  /                   the web page (pick, drop or draw an image)
    GET  /health             {"status": "ok"}
    GET  /v1/model           name, engine, classes, input spec, the run's test metrics
    POST /v1/predict         multipart field ``files`` (one or more images)
    POST /v1/predict/pixels  JSON {"pixels": 28x28 array of 0..255, or a list of them}
    GET  /docs               OpenAPI documentation

Bad input is answered with a 4xx and a JSON body ``{"detail": "what is wrong"}``: 413 for
a request body over ``max_upload_bytes`` (counted while it streams in, so a huge upload
is never held in memory) or an image over the pixel cap, 415 for something that is not a
supported image, 422 for malformed JSON, wrong shapes, out-of-range values or too many
images.
"""


import threading
from importlib import resources

import numpy as np

from fmnist.images import MAX_PIXELS, ImageInputError, load_for_model
from fmnist.predict import Prediction, Predictor, as_pixel_batch, top_k

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_IMAGES = 64
MAX_TOP_K = 10
# Uploads up to this size are decoded on the event loop; bigger ones in a worker thread.
INLINE_BYTES = 64 * 1024


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


def create_app(predictor: Predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_images: int = MAX_IMAGES, max_pixels: int = MAX_PIXELS):
    """The FastAPI app serving ``predictor``; limits as in the module docstring."""
    from typing import Annotated

    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from pydantic import BaseModel, Field

    from fmnist import __version__

    app = FastAPI(title="fmnist", version=__version__,
                  description="Fashion-MNIST classification: upload garment images or send "
                              "28x28 pixel arrays; get the top-k classes.")
    app.add_middleware(BodySizeLimit, limit=max_upload_bytes)
    # Keras models are not guaranteed safe under concurrent calls; onnxruntime sessions are.
    engine_lock = threading.Lock() if predictor.engine.name == "keras" else None
    page = _page()

    @app.exception_handler(ImageInputError)
    async def image_error(request: Request, error: ImageInputError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems)[:500] or "invalid request"},
                            status_code=422)

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        if engine_lock is None:
            return predictor.probabilities(pixels)
        with engine_lock:
            return predictor.probabilities(pixels)

    def check_count(count: int) -> None:
        if count == 0:
            raise ImageInputError("no images in the request; send at least one")
        if count > max_images:
            raise ImageInputError(f"{count} images in one request; the limit is {max_images}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return page

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_info():
        return {**predictor.describe(), "limits": {"max_upload_bytes": max_upload_bytes,
                                                   "max_images": max_images,
                                                   "max_pixels": max_pixels}}

    def answer_files(names: list[str], payloads: list[bytes], k: int, include_input: bool) -> dict:
        processed = [load_for_model(payload, name, max_pixels)
                     for name, payload in zip(names, payloads)]
        rows = probabilities(np.stack([p.pixels for p in processed]))
        return {"model": predictor.name, "engine": predictor.engine.name, "predictions": [
            Prediction(top_k(row, k), p.pixels, name, p.inverted).to_dict(include_input)
            for name, p, row in zip(names, processed, rows)]}

    @app.post("/v1/predict")
    async def predict_files(
        files: Annotated[list[UploadFile], File(description="one or more images (PNG, JPEG, ...)")],
        k: Annotated[int, Query(alias="top_k", ge=1, le=MAX_TOP_K)] = 3,
        include_input: Annotated[bool, Query(description="also return the processed 28x28 input")] = False,
    ):
        check_count(len(files))
        names = [upload.filename or f"file {index}" for index, upload in enumerate(files)]
        payloads = [await upload.read() for upload in files]
        if sum(map(len, payloads)) <= INLINE_BYTES:
            # A small image costs well under a millisecond: doing it on the event loop saves
            # two thread hand-offs per request.
            answer = answer_files(names, payloads, k, include_input)
        else:  # a big photo may take a second to decode: keep the loop free for others
            answer = await run_in_threadpool(answer_files, names, payloads, k, include_input)
        # A JSONResponse of plain dicts skips FastAPI's per-field re-encoding.
        return JSONResponse(answer)

    class PixelsRequest(BaseModel):
        pixels: list = Field(description="one 28x28 array of values 0..255 (light on black, "
                                         "as in Fashion-MNIST), or a list of such arrays")
        top_k: int = Field(3, ge=1, le=MAX_TOP_K)

    @app.post("/v1/predict/pixels")
    async def predict_pixels(request: PixelsRequest):
        batch = as_pixel_batch(request.pixels)
        check_count(len(batch))
        rows = probabilities(batch)
        return JSONResponse({"model": predictor.name, "engine": predictor.engine.name, "predictions": [
            {"top_k": [vars(score) for score in top_k(row, request.top_k)]} for row in rows]})

    return app


SERVE_ENV = "FMNIST_SERVE"  # JSON settings handed to worker processes (see serve())


def app_from_environment():
    """App factory for uvicorn's worker processes: each loads the model named in
    ``$FMNIST_SERVE`` (JSON: model, engine, threads, limits) once, at start-up."""
    import json
    import os

    settings = json.loads(os.environ[SERVE_ENV])
    predictor = Predictor.load(settings["model"], settings["engine"], threads=settings["threads"])
    return create_app(predictor, **settings["limits"])


def serve(model: str, engine: str | None = None, threads: int | None = 1,
          host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          access_log: bool = False, **limits) -> None:
    """Run the app with uvicorn until interrupted.

    ``workers`` > 1: that many processes, each with its own copy of the model, sharing
    the port (uvicorn's process manager); a Python process serves one request's parsing
    at a time, so a server with several cores needs several to use them.
    ``access_log``: a line per request; off by default because it costs about a fifth of
    a small request's CPU time (measured with `fmnist bench --serve`).
    """
    import json
    import os

    import uvicorn

    os.environ[SERVE_ENV] = json.dumps({"model": str(model), "engine": engine, "threads": threads,
                                        "limits": limits})
    if workers == 1:  # load in this process: a bad model fails before the port opens
        uvicorn.run(app_from_environment(), host=host, port=port, log_level="info",
                    access_log=access_log)
    else:
        uvicorn.run("fmnist.serve:app_from_environment", factory=True, workers=workers,
                    host=host, port=port, log_level="info", access_log=access_log)

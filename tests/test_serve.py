"""The REST API and web page (fmnist.serve), through FastAPI's TestClient."""

from __future__ import annotations

import copy
import io
import json
import re
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module", params=["keras", "onnx"])
def predictor(request, exported_run):
    """Every serve test runs on both engines: the same run, as Keras and as ONNX."""
    from fmnist.predict import Predictor

    return Predictor.load(exported_run[0], request.param)


@pytest.fixture(scope="module")
def client(predictor):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    with TestClient(create_app(predictor, max_upload_bytes=200_000, max_images=8,
                               max_pixels=4_000_000)) as test_client:
        yield test_client


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def assert_error(response, status: int, words: str):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail


def test_docs_work_offline(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(url.startswith("/docs-assets/") for url in assets), assets
    for url in assets:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_model_is_identified_by_hash_not_by_a_server_path(client, predictor, trained_run):
    import hashlib

    info = client.get("/v1/model").json()
    served = trained_run / ("model.keras" if predictor.engine.name == "keras" else "model.onnx")
    assert info["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert info["engine"] == predictor.engine.name
    assert str(trained_run) not in json.dumps(info) and "path" not in info


def test_health_model_page_and_docs(client, trained_run):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert info["name"] == "mlp" and info["classes"][0] == "T-shirt/top"
    assert info["input"]["shape"] == [28, 28] and info["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert info["limits"]["max_images"] == 8
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="predict-drawing"' in page.text and "http://" not in page.text.replace("http://www.w3.org", "")
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/v1/model", "/v1/predict", "/v1/predict/pixels"} <= set(paths)


def test_predict_files_in_request_order(client, predictor, test_images):
    x, _ = test_images
    files = [("files", (f"g{i}.png", png(x[i]), "image/png")) for i in range(3)]
    body = client.post("/v1/predict", files=files, params={"top_k": 2}).json()
    assert [p["name"] for p in body["predictions"]] == ["g0.png", "g1.png", "g2.png"]
    expected = predictor.predict(x[:3], k=2)
    for got, want in zip(body["predictions"], expected):
        assert len(got["top_k"]) == 2 and "input" not in got
        assert got["top_k"][0]["class_index"] == want.top_k[0].class_index
        assert set(got["top_k"][0]) == {"class_index", "label", "probability"}


def test_every_prediction_says_whether_it_looks_like_a_garment(client, predictor, trained_run,
                                                                 test_images):
    x, _ = test_images
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    files = [("files", ("garment.png", png(x[0]), "image/png")),
             ("files", ("noise.png", png(noise), "image/png"))]
    body = client.post("/v1/predict", files=files).json()
    threshold = json.loads((trained_run / "trust.json").read_text())["ood"]["threshold"]
    for got in body["predictions"]:
        assert isinstance(got["ood_score"], float)
        assert got["in_distribution"] is (got["ood_score"] >= threshold)
    assert body["predictions"][1]["in_distribution"] is False  # noise is nothing it trained on
    pixels = client.post("/v1/predict/pixels", json={"pixels": x[:3].tolist()}).json()
    assert all(isinstance(p["in_distribution"], bool) for p in pixels["predictions"])
    info = client.get("/v1/model").json()
    assert info["ood"]["threshold"] == pytest.approx(threshold) and info["temperature"] > 0


def test_an_explanation_comes_on_request(client, test_images):
    x, _ = test_images
    upload = {"files": ("g.png", png(x[0]), "image/png")}
    plain = client.post("/v1/predict", files=upload).json()["predictions"][0]
    assert "saliency" not in plain
    explained = client.post("/v1/predict", files=upload, params={"explain": "true"}).json()
    saliency = np.array(explained["predictions"][0]["saliency"])
    assert saliency.shape == (28, 28) and saliency.min() >= 0 and saliency.max() == 1.0


def test_predict_returns_the_processed_input_on_request(client, test_images):
    photo = 255 - np.kron(test_images[0][0], np.ones((6, 6), np.uint8))  # dark on white, 168x168
    body = client.post("/v1/predict", files={"files": ("shoe.jpg", png(photo, "JPEG"), "image/jpeg")},
                       params={"include_input": "true"}).json()
    prediction = body["predictions"][0]
    pixels = np.array(prediction["input"])
    assert pixels.shape == (28, 28) and prediction["inverted"] and 0 <= pixels.min() <= pixels.max() <= 255


def test_predict_pixels_one_or_many(client, predictor, test_images):
    x, _ = test_images
    one = client.post("/v1/predict/pixels", json={"pixels": x[0].tolist()}).json()
    many = client.post("/v1/predict/pixels", json={"pixels": x[:4].tolist(), "top_k": 5}).json()
    assert len(one["predictions"]) == 1 and len(one["predictions"][0]["top_k"]) == 3
    assert len(many["predictions"]) == 4 and len(many["predictions"][0]["top_k"]) == 5
    expected = predictor.probabilities(x[:4]).argmax(1)
    assert [p["top_k"][0]["class_index"] for p in many["predictions"]] == expected.tolist()
    assert many["predictions"][0]["top_k"][0] == pytest.approx(one["predictions"][0]["top_k"][0])


def test_oversized_bodies_get_413(client):
    big = b"\x89PNG" + b"\x00" * 300_000
    assert_error(client.post("/v1/predict", files={"files": ("big.png", big, "image/png")}),
                 413, "200,000-byte limit")

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * 10_000

    response = client.post("/v1/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert_error(response, 413, "limit")
    assert client.get("/health").status_code == 200


def test_too_many_pixels_get_413(client):
    wide = png(np.zeros((10, 500_000), np.uint8))  # 5 MP of black compresses to a few KB
    assert_error(client.post("/v1/predict", files={"files": ("wide.png", wide, "image/png")}),
                 413, "500000x10 pixels")


@pytest.mark.parametrize("payload, name", [(b"hello, world", "notes.txt"),
                                           (b"%PDF-1.4\n1 0 obj", "paper.pdf")])
def test_non_images_get_415(client, payload, name):
    assert_error(client.post("/v1/predict", files={"files": (name, payload, "image/png")}), 415, name)


@pytest.mark.parametrize("request_kwargs, words", [
    ({"content": b'{"pixels": [[1, 2]', "headers": {"content-type": "application/json"}}, "JSON"),
    ({"json": {"pixels": [[0] * 28] * 27}}, "(27, 28)"),
    ({"json": {"pixels": [[300] * 28] * 28}}, "0 to 255"),
    ({"json": {"pixels": [[-1] * 28] * 28}}, "0 to 255"),
    ({"json": {"pixels": [[["a"] * 28] * 28]}}, "non-numeric"),
    ({"json": {"pixels": [[0] * 28] * 28, "top_k": 11}}, "top_k"),
    ({"json": {"pixels": [[[0] * 28] * 28] * 9}}, "limit is 8"),
    ({"json": {"values": []}}, "pixels"),
    ({"json": {"pixels": []}}, "shape"),
    # Integers beyond float range, NaN and infinity (Python's JSON reader accepts both).
    ({"content": '{"pixels": [' + ",".join(["[" + ",".join(["0"] * 28) + "]"] * 27 + [
        "[1" + "0" * 400 + "," + ",".join(["0"] * 27) + "]"]) + "]}",
      "headers": {"content-type": "application/json"}}, "numbers"),
    ({"content": '{"pixels": [' + ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28) + "]}",
      "headers": {"content-type": "application/json"}}, "0 to 255"),
    ({"content": '{"pixels": [' + ",".join(["[" + ",".join(["Infinity"] * 28) + "]"] * 28) + "]}",
      "headers": {"content-type": "application/json"}}, "0 to 255"),
])
def test_bad_pixel_payloads_get_422(client, request_kwargs, words):
    assert_error(client.post("/v1/predict/pixels", **request_kwargs), 422, words)


def test_bad_uploads_get_422(client, test_images):
    good = png(test_images[0][0])
    assert_error(client.post("/v1/predict", files={"files": ("half.png", good[:60], "image/png")}),
                 422, "half.png")
    too_many = [("files", (f"{i}.png", good, "image/png")) for i in range(9)]
    assert_error(client.post("/v1/predict", files=too_many), 422, "limit is 8")
    assert_error(client.post("/v1/predict", data={"other": "x"}), 422, "files")
    assert_error(client.post("/v1/predict", files={"files": ("a.png", good, "image/png")},
                             params={"top_k": 0}), 422, "top_k")


# Per engine: the two engines together see as many examples as one did before.
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(payload=st.binary(max_size=4096), name=st.text(max_size=40))
def test_fuzzed_uploads_never_get_a_5xx(client, payload, name):
    response = client.post("/v1/predict", files={"files": (name or "x", payload, "application/octet-stream")})
    assert response.status_code in (200, 413, 415, 422), response.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=60)


@settings(max_examples=40, deadline=None,  # per engine, as above
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(json_values, st.fixed_dictionaries({"pixels": json_values}),
                      st.fixed_dictionaries({"pixels": st.lists(st.lists(
                          st.floats(-10, 300), min_size=28, max_size=28), min_size=28, max_size=28)})))
def test_fuzzed_pixel_payloads_never_get_a_5xx(client, body):
    response = client.post("/v1/predict/pixels", content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert response.status_code in (200, 422), response.text


def test_concurrent_requests_get_their_own_answers(client, predictor, test_images):
    x, _ = test_images
    expected = predictor.probabilities(x[:16]).argmax(1)
    answers, failures = {}, []

    def ask(index):
        try:
            body = client.post("/v1/predict/pixels", json={"pixels": x[index].tolist()}).json()
            answers[index] = body["predictions"][0]["top_k"][0]["class_index"]
        except Exception as error:  # collected: assertions in threads would be lost
            failures.append(error)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and [answers[i] for i in range(16)] == expected.tolist()


def test_importing_the_server_loads_no_model():
    import subprocess
    import sys

    script = "import sys, fmnist.serve; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_crafted_files_get_a_4xx_naming_the_file_never_a_5xx(predictor):
    from corpus import crafted_files, regression_files
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    client = TestClient(create_app(predictor))  # the default limits: the 2 MB ICC file fits

    cases = {name: (payload, want) for name, (payload, want) in crafted_files().items()}
    cases.update({name: (payload, None) for name, payload in regression_files().items()})
    wrong = {}
    for name, (payload, want) in cases.items():
        response = client.post("/v1/predict", files={"files": (name, payload, "image/png")})
        if response.status_code >= 500 or (want is not None and response.status_code != want):
            wrong[name] = (response.status_code, response.text[:200])
        elif response.status_code != 200 and name not in response.json()["detail"]:
            wrong[name] = (response.status_code, "detail does not name the file")
    assert not wrong, wrong


def test_the_request_pixel_budget_is_counted_from_headers(predictor):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    app = create_app(predictor, max_request_pixels=1_000_000)
    square = png(np.full((800, 800), 255, np.uint8))  # 0.64 MP each
    with TestClient(app) as client:
        assert client.post("/v1/predict", files={"files": ("a.png", square, "image/png")}).status_code == 200
        response = client.post("/v1/predict", files=[("files", (f"{i}.png", square, "image/png"))
                                                     for i in range(2)])
        assert_error(response, 413, "1,280,000 pixels in one request")
        assert client.get("/v1/model").json()["limits"]["max_request_pixels"] == 1_000_000


def test_a_bug_in_the_server_is_a_500_not_a_4xx(predictor):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    class BrokenEngine:
        name = "onnx"

        def __call__(self, pixels):
            raise RuntimeError("a bug")

    broken = copy.copy(predictor)
    broken.engine = BrokenEngine()
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        good = png(np.full((28, 28), 200, np.uint8))
        assert client.post("/v1/predict", files={"files": ("a.png", good, "image/png")}).status_code == 500


def test_a_full_decode_pool_answers_503_and_health_stays_quick(predictor):
    """One decode thread, busy with a request the test holds; its queue holds two more:
    the fourth big request gets 503 + Retry-After, /health answers at once meanwhile."""
    import time

    from fastapi.testclient import TestClient

    from fmnist.serve import INLINE_PIXELS, QUEUE_PER_THREAD, create_app

    release, entered = threading.Event(), threading.Semaphore(0)

    class HeldEngine:
        name = "onnx"

        def __call__(self, pixels):
            entered.release()
            release.wait(30)
            return np.full((len(pixels), 10), 0.1, np.float32)

    held = copy.copy(predictor)
    held.engine = HeldEngine()
    big = png(np.full((400, 400), 255, np.uint8))
    assert 400 * 400 > INLINE_PIXELS
    statuses = []
    app = create_app(held, decode_threads=1)
    with TestClient(app) as client:
        def upload():
            statuses.append(client.post("/v1/predict", files={"files": ("big.png", big, "image/png")}))

        threads = [threading.Thread(target=upload) for _ in range(1 + QUEUE_PER_THREAD)]
        for thread in threads:
            thread.start()
        assert entered.acquire(timeout=30), "the first request never reached the engine"
        deadline = time.monotonic() + 10  # the other two are admitted: one thread, two queued
        while app.state.decode_pool.admitted < 1 + QUEUE_PER_THREAD and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.post("/v1/predict", files={"files": ("big.png", big, "image/png")})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        # /health is answered while every decode thread is still held: it never waits
        # behind a decode (were it queued there, it could only answer after release).
        health = []
        probe = threading.Thread(target=lambda: health.append(client.get("/health").status_code))
        probe.start()
        probe.join(30)
        assert health == [200] and not release.is_set()
        metrics = client.get("/metrics").text  # the operator sees the same: full, one refused
        assert f"fmnist_decode_queue_depth {float(1 + QUEUE_PER_THREAD)}" in metrics
        assert "fmnist_busy_rejections_total 1.0" in metrics
        release.set()
        for thread in threads:
            thread.join(30)
    assert [response.status_code for response in statuses] == [200] * (1 + QUEUE_PER_THREAD)

"""Operating the server (fmnist.telemetry, fmnist.serve): metrics, probes, request ids,
logs; a fake engine for the app, a real uvicorn for the worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmnist.bench.loadtest import free_port


def _predictor(tmp_path):
    from fmnist.predict import ModelFiles, Predictor

    class Engine:
        name, thread_safe = "fake", True

        def __call__(self, pixels):
            return np.full((len(pixels), 10), 0.1, np.float32)

    (tmp_path / "weights").write_bytes(b"any model file")
    return Predictor(Engine(), ModelFiles(tmp_path / "weights", "fake"))


def _samples(text: str) -> dict:
    """{(name, sorted labels): value} of a Prometheus exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _pixels(count: int = 1) -> dict:
    return {"pixels": np.zeros((count, 28, 28), int).tolist()}


def test_metrics_count_requests_by_route_and_status(tmp_path):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    with TestClient(create_app(_predictor(tmp_path))) as client:
        for _ in range(2):
            assert client.post("/v1/predict/pixels", json=_pixels(3)).status_code == 200
        assert client.post("/v1/predict/pixels", json={"pixels": [[1, 2]]}).status_code == 422
        assert client.get("/no/such/page").status_code == 404
        assert client.get("/health").status_code == 200
        scraped = client.get("/metrics")
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = _samples(scraped.text)
    route = ("route", "/v1/predict/pixels")
    assert samples[("fmnist_requests_total", (("method", "POST"), route, ("status", "200")))] == 2
    assert samples[("fmnist_requests_total", (("method", "POST"), route, ("status", "422")))] == 1
    # A path no route matched is one label, whatever was asked: no label per stray path.
    assert samples[("fmnist_requests_total",
                    (("method", "GET"), ("route", "(no route)"), ("status", "404")))] == 1
    assert samples[("fmnist_request_duration_seconds_count", (route,))] == 3
    assert samples[("fmnist_images_decoded_total", ())] == 6
    assert samples[("fmnist_pixels_decoded_total", ())] == 6 * 28 * 28
    assert samples[("fmnist_decode_queue_depth", ())] == 0
    (info,) = [labels for (name, labels) in samples if name == "fmnist_model_info"]
    assert dict(info)["model"] == "weights" and dict(info)["engine"] == "fake"  # file stem


def test_every_request_gets_an_id_in_its_response(tmp_path):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    with TestClient(create_app(_predictor(tmp_path))) as client:
        fresh = client.get("/health").headers["x-request-id"]
        assert len(fresh) == 32 and fresh != client.get("/health").headers["x-request-id"]
        given = client.get("/health", headers={"X-Request-ID": "lb-1234.abc_9"})
        assert given.headers["x-request-id"] == "lb-1234.abc_9"  # the caller's id, kept
        forged = client.get("/health", headers={"X-Request-ID": "x y\" status=500"})
        assert len(forged.headers["x-request-id"]) == 32  # not a token: replaced
        assert client.get("/no/such/page").headers["x-request-id"]  # errors carry it too


def test_the_app_is_alive_at_once_and_ready_once_its_model_is_loaded(tmp_path):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    release = threading.Event()

    def slow_loader():
        assert release.wait(30), "the test never released the loader"
        return _predictor(tmp_path)

    app = create_app(loader=slow_loader)
    with TestClient(app) as client:
        assert client.get("/livez").json() == {"status": "alive"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = client.post("/v1/predict/pixels", json=_pixels())
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert "fmnist_model_info{" not in client.get("/metrics").text  # no model yet
        release.set()
        assert app.state.ready.wait(30)  # the loader and its warm-up prediction are done
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.post("/v1/predict/pixels", json=_pixels()).status_code == 200
        assert 'engine="fake"' in client.get("/metrics").text


def test_a_model_that_cannot_load_is_said_and_stops_the_server(tmp_path):
    from fastapi.testclient import TestClient

    from fmnist.serve import create_app

    stopped = threading.Event()

    def broken():
        raise OSError("model.onnx is not an ONNX file")

    app = create_app(loader=broken, on_failure=stopped.set)
    with TestClient(app) as client:
        assert stopped.wait(30)
        failed = client.get("/readyz")
        assert failed.status_code == 503 and failed.json() == {
            "status": "failed", "detail": "cannot load the model: model.onnx is not an ONNX file"}
        assert client.post("/v1/predict/pixels", json=_pixels()).status_code == 503
        assert client.get("/livez").status_code == 200


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the server never became ready"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if json.loads(answer.read())["status"] == "ready":
                    return
        except OSError:  # not bound yet, or a 503 while it loads
            time.sleep(0.1)


@pytest.mark.slow
def test_workers_sum_their_metrics_and_log_json_lines_with_request_ids(exported_run, tmp_path):
    """`fmnist serve --workers 2`: whichever worker answers /metrics counts every
    worker's requests; each access-log line is JSON and carries the request's id."""
    run, _ = exported_run
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "serve", str(run / "model.onnx"), "--port", str(port),
         "--workers", "2", "--access-log", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(url, server)
        body = json.dumps(_pixels()).encode()
        for index in range(20):
            request = urllib.request.Request(
                url + "/v1/predict/pixels", data=body, method="POST",
                headers={"Content-Type": "application/json", "X-Request-ID": f"req-{index}"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.headers["X-Request-ID"] == f"req-{index}"
                # The whole answer: the headers leave with the response's start, before
                # the body, and a request is counted when its last byte is sent.
                assert json.loads(answer.read())["predictions"]
        # Each worker answered some of them (the kernel spreads connections); every
        # scrape, from either worker, counts all 20.
        for _ in range(3):
            with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
                samples = _samples(answer.read().decode())
            assert samples[("fmnist_requests_total", (("method", "POST"),
                            ("route", "/v1/predict/pixels"), ("status", "200")))] == 20
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=60)
    lines = [json.loads(line) for line in errors.decode().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "req-7"]
    assert len(access) == 1 and access[0]["path"] == "/v1/predict/pixels"
    assert access[0]["status"] == 200 and access[0]["logger"] == "fmnist.access"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)

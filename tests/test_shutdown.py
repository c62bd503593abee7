"""SIGTERM under load (fmnist.serve.drain_on_sigterm): /readyz turns 503 while the server
goes on answering, then it stops accepting, lets requests in flight finish, exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fmnist.bench.loadtest import free_port

pytestmark = pytest.mark.slow

BODY = json.dumps({"pixels": np.zeros((28, 28), int).tolist()}).encode()


def _status(port: int, method: str, path: str, body: bytes | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_under_load_loses_no_accepted_request(exported_run):
    run, _ = exported_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "serve", str(run / "model.onnx"), "--port", str(port),
         "--shutdown-grace", "2", "--drain-timeout", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:  # until the model is loaded and warm
            assert server.poll() is None and time.monotonic() < deadline, "never ready"
            try:
                if _status(port, "GET", "/readyz") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)

        # Clients behave like a load balancer's backends: each sends requests, on a new
        # connection each, until a prober has seen /readyz turn 503.
        draining, outcomes, done = threading.Event(), [], threading.Semaphore(0)

        def client() -> None:
            while not draining.is_set():
                try:
                    outcomes.append(_status(port, "POST", "/v1/predict/pixels", BODY))
                except OSError as error:  # a reset or a refusal of an accepted request
                    outcomes.append(repr(error))
                done.release()

        def prober() -> None:
            while server.poll() is None:
                try:
                    if _status(port, "GET", "/readyz") == 503:
                        draining.set()
                        return
                except OSError:
                    pass
                time.sleep(0.02)

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for _ in range(100):  # SIGTERM in the middle of the load, after 100 answers
            assert done.acquire(timeout=60)
        # A request in flight across the stop: its headers and half its body now, the
        # rest once the server has stopped accepting connections.
        slow = socket.create_connection(("127.0.0.1", port), timeout=60)
        slow.sendall(b"POST /v1/predict/pixels HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(BODY)).encode()
                     + b"\r\n\r\n" + BODY[:len(BODY) // 2])
        server.send_signal(signal.SIGTERM)
        probe = threading.Thread(target=prober)
        probe.start()
        probe.join(30)
        assert draining.is_set(), "/readyz never answered 503 after SIGTERM"
        # During the grace period the server still answers.
        assert _status(port, "POST", "/v1/predict/pixels", BODY) == 200
        for thread in clients:
            thread.join(30)
        deadline = time.monotonic() + 30
        while not _refused(port):  # the grace is over: no new connection is accepted
            assert time.monotonic() < deadline, "the server kept accepting connections"
            time.sleep(0.05)
        slow.sendall(BODY[len(BODY) // 2:])
        answer = slow.recv(65536)
        slow.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        errors = server.communicate(timeout=30)[1].decode()
    assert len(outcomes) >= 100 and set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]
    assert "SIGTERM: /readyz answers 503" in errors

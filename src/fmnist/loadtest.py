"""Load test of `fmnist serve`: requests/s, latency percentiles, errors, server memory.

:func:`run_load_test` starts the server as a separate process (`fmnist serve`, so the
numbers include everything a real deployment runs), waits for ``/health``, then for each
concurrency level drives ``POST /v1/predict`` with one PNG image per request from that many
concurrent keep-alive clients over loopback, for a fixed number of requests. The server's
resident memory (VmRSS from /proc) is read after start-up, after the warm-up, and after
every level.

The clients are asyncio coroutines on httpx in this process, which shares the machine's
cores with the server: on a 2-core machine the figures are what one box serving itself
gets, a pessimistic bound for a server with its clients elsewhere.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def start_server(model: str, engine: str | None, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "fmnist.cli", "serve", model, "--port", str(port)]
    if engine:
        command += ["--engine", engine]
    with open(log, "w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before answering")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {url}/health within {timeout:.0f} s")


async def _drive(url: str, images: list[bytes], requests: int, clients: int) -> dict:
    """``requests`` uploads spread over ``clients`` concurrent keep-alive connections."""
    import httpx

    latencies, errors = [], 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(session: httpx.AsyncClient):
        nonlocal errors
        for index in counter:
            files = {"files": (f"{index}.png", images[index % len(images)], "image/png")}
            started = time.perf_counter()
            try:
                response = await session.post(url + "/v1/predict", files=files)
                ok = response.status_code == 200 and response.json()["predictions"]
            except (httpx.HTTPError, ValueError, KeyError):
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    async with httpx.AsyncClient(limits=limits, timeout=30) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    return {"clients": clients, "requests": requests, "seconds": elapsed,
            "requests_per_second": requests / elapsed, "errors": errors,
            "p50_ms": float(np.percentile(milliseconds, 50)),
            "p90_ms": float(np.percentile(milliseconds, 90)),
            "p99_ms": float(np.percentile(milliseconds, 99)),
            "max_ms": float(milliseconds.max()), "mean_ms": float(milliseconds.mean())}


def run_load_test(model: str, images: np.ndarray, engine: str | None = None,
                  requests: int = 10_000, concurrency=(8, 16), warmup: int = 500,
                  log_dir: Path = Path("runs/loadtest"), log=print) -> dict:
    """Serve ``model`` in a child process and load it; returns the measurements.

    ``images``: uint8 (N, 28, 28) sent as PNG files, one per request, in turn.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, engine, port, log_dir / "server.log")
    try:
        wait_until_healthy(url, server)
        import httpx

        served = httpx.get(url + "/v1/model", timeout=10).json()
        memory = {"after_start_mb": rss_mb(server.pid)}
        uploads = [png_bytes(image) for image in images]
        asyncio.run(_drive(url, uploads, warmup, max(concurrency)))
        memory["after_warmup_mb"] = rss_mb(server.pid)
        levels = []
        for clients in concurrency:
            log(f"loadtest: {requests:,} requests from {clients} concurrent clients ...", flush=True)
            cpu_before = cpu_seconds(server.pid)
            level = asyncio.run(_drive(url, uploads, requests, clients))
            level["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(server.pid) - cpu_before) / requests
            level["server_rss_after_mb"] = rss_mb(server.pid)
            levels.append(level)
            log(f"loadtest:   {level['requests_per_second']:.0f} req/s, p50 {level['p50_ms']:.1f} ms, "
                f"p99 {level['p99_ms']:.1f} ms, {level['errors']} errors", flush=True)
        memory["after_all_mb"] = rss_mb(server.pid)
        memory["growth_percent"] = 100 * (memory["after_all_mb"] / memory["after_warmup_mb"] - 1)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"model": served["name"], "path": model, "engine": served["engine"],
            "endpoint": "POST /v1/predict",
            "image": "one 28x28 PNG per request", "warmup_requests": warmup,
            "levels": levels, "memory": memory, "cpu_count": os.cpu_count(),
            "median_p50_ms": statistics.median(level["p50_ms"] for level in levels)}

"""Load test of `fmnist serve`: requests/s, latency percentiles, errors, server memory.

:func:`run_load_test` starts the server as a separate process (`fmnist serve`, so the
numbers include everything a real deployment runs), waits for ``/readyz``, then for each
concurrency level drives ``POST /v1/predict`` with one PNG image per request from that many
concurrent keep-alive clients over loopback, for a fixed number of requests. The server's
resident memory (psutil) is read after start-up, after the warm-up, and after
every level.

The clients are asyncio coroutines in this process speaking plain HTTP/1.1 keep-alive
(see :func:`_drive`); they share the machine's cores with the server, so on a 2-core
machine the figures are what one box serving itself gets, a pessimistic bound for a
server with its clients elsewhere. Client CPU per request is reported beside the server's.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

# A 503 of a full decode pool says Retry-After: 1; the soak's clients wait that long.
RETRY_AFTER_SECONDS = 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tree(pid: int) -> list:
    """The process ``pid`` and its descendants (uvicorn's worker processes), as psutil
    processes; those that ended meanwhile are left out by the callers."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and its descendants in MiB."""
    import psutil

    total = 0.0
    for process in _tree(pid):
        try:
            total += process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its descendants so far."""
    import psutil

    total = 0.0
    for process in _tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def start_server(model: str, engine: str | None, port: int, log: Path,
                 workers: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-m", "fmnist.cli", "serve", model, "--port", str(port),
               "--workers", str(workers)]
    if engine:
        command += ["--engine", engine]
    with open(log, "w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)


def get_json(url: str, timeout: float = 10) -> dict:
    """GET ``url`` and decode its JSON body (standard library: the bench needs no client
    package installed)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def stop_server(server: subprocess.Popen, timeout: float = 30) -> None:
    """Stop the served child as Ctrl+C would (SIGINT: uvicorn stops at once, no grace);
    kill it if it has not exited within ``timeout`` seconds."""
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()


def wait_until_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before answering")
        try:
            if get_json(url + "/readyz", timeout=1).get("status") == "ready":
                return
        except (OSError, ValueError):  # not listening, or still loading (a 503 is an OSError)
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready at {url}/readyz within {timeout:.0f} s")


def multipart_request(port: int, name: str, png: bytes) -> bytes:
    """The bytes of one ``POST /v1/predict`` with a single file, keep-alive."""
    return multipart_files_request(port, [(name, png)])


def multipart_files_request(port: int, files: list[tuple[str, bytes]]) -> bytes:
    """The bytes of one ``POST /v1/predict`` with one or more files, keep-alive."""
    boundary = "fmnistloadtestboundary"
    body = b"".join((f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                     f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + payload +
                    b"\r\n" for name, payload in files) + f"--{boundary}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _send(reader, writer, request: bytes) -> tuple[int, bytes]:
    """Send one prepared request on a keep-alive connection; its HTTP status and body."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _exchange(reader, writer, request: bytes) -> bool:
    """Send one prepared request; True for a 200 with predictions."""
    status, body = await _send(reader, writer, request)
    return status == 200 and b'"predictions"' in body


async def _drive(url: str, images: list[bytes], requests: int, clients: int) -> dict:
    """``requests`` uploads spread over ``clients`` concurrent keep-alive connections.

    The client speaks HTTP/1.1 over asyncio streams with each request's bytes prepared
    beforehand: a general-purpose client (httpx) spent as much CPU per request as the
    server here, and on a shared 2-core machine that would be measuring the client.
    """
    port = int(url.rsplit(":", 1)[1])
    prepared = [multipart_request(port, f"{i}.png", png) for i, png in enumerate(images)]
    latencies, errors = [], 0
    counter = iter(range(requests))

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for index in counter:
                started = time.perf_counter()
                try:
                    ok = await _exchange(reader, writer, prepared[index % len(prepared)])
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - started)
                errors += not ok
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
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
                  log_dir: Path = Path("runs/loadtest"), log=print, workers: int = 1) -> dict:
    """Serve ``model`` in a child process and load it; returns the measurements.

    ``images``: uint8 (N, 28, 28) sent as PNG files, one per request, in turn.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, engine, port, log_dir / "server.log", workers)
    try:
        wait_until_ready(url, server)
        served = get_json(url + "/v1/model")
        memory = {"after_start_mb": rss_mb(server.pid)}
        uploads = [png_bytes(image) for image in images]
        asyncio.run(_drive(url, uploads, warmup, max(concurrency)))
        memory["after_warmup_mb"] = rss_mb(server.pid)
        levels = []
        for clients in concurrency:
            log(f"loadtest: {requests:,} requests from {clients} concurrent clients ...", flush=True)
            cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
            level = asyncio.run(_drive(url, uploads, requests, clients))
            level["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(server.pid) - cpu_before) / requests
            level["client_cpu_ms_per_request"] = 1000 * (time.process_time() - client_before) / requests
            level["server_rss_after_mb"] = rss_mb(server.pid)
            levels.append(level)
            log(f"loadtest:   {level['requests_per_second']:.0f} req/s, p50 {level['p50_ms']:.1f} ms, "
                f"p99 {level['p99_ms']:.1f} ms, {level['errors']} errors", flush=True)
        memory["after_all_mb"] = rss_mb(server.pid)
        memory["growth_percent"] = 100 * (memory["after_all_mb"] / memory["after_warmup_mb"] - 1)
    finally:
        stop_server(server)
    return {"model": served["name"], "path": model, "engine": served["engine"], "workers": workers,
            "endpoint": "POST /v1/predict",
            "image": "one 28x28 PNG per request", "warmup_requests": warmup,
            "levels": levels, "memory": memory, "cpu_count": os.cpu_count(),
            "median_p50_ms": statistics.median(level["p50_ms"] for level in levels)}


# ------------------------------------------------------------------ the burst scenario


def largest_request_images(total_pixels: int = 40_000_000, count: int = 4) -> list[bytes]:
    """``count`` RGB PNGs of a dark garment on white whose pixels add up to ``total_pixels``:
    the largest request the server's defaults accept (they compress to a few hundred KB,
    far under the 5 MB body limit)."""
    from PIL import Image, ImageDraw

    side = int((total_pixels / count) ** 0.5)
    images = []
    for index in range(count):
        image = Image.new("RGB", (side, side), "white")
        draw = ImageDraw.Draw(image)
        inset = side // 5 + index * side // 50
        draw.rectangle((inset, inset, side - inset, side - inset // 2), fill=(40, 40, 60))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=9)
        images.append(buffer.getvalue())
    return images


async def _burst(port: int, pid: int, request: bytes, clients: int, seconds: float) -> dict:
    """``clients`` connections sending ``request`` back to back for ``seconds`` (ignoring
    Retry-After, as an abusive client would), while one more asks ``/health`` every 20 ms
    and the server's RSS is sampled every 50 ms."""
    deadline = time.monotonic() + seconds
    statuses: dict[str, int] = {}
    health_ms: list[float] = []
    peak = [rss_mb(pid)]

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                try:
                    status = str((await _send(reader, writer, request))[0])
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = "connection error"
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    async def prober():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        probe = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                if (await _send(reader, writer, probe))[0] != 200:
                    raise RuntimeError("/health did not answer 200 during the burst")
                health_ms.append(1000 * (time.perf_counter() - started))
                await asyncio.sleep(0.02)
        finally:
            writer.close()

    async def sampler():
        while time.monotonic() < deadline:
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.05)

    await asyncio.gather(prober(), sampler(), *(client() for _ in range(clients)))
    latencies = np.array(health_ms)
    return {"statuses": dict(sorted(statuses.items())), "health_probes": len(health_ms),
            "health_p50_ms": float(np.percentile(latencies, 50)),
            "health_p99_ms": float(np.percentile(latencies, 99)),
            "health_max_ms": float(latencies.max()), "peak_rss_mb": max(peak)}


def run_burst(model: str, engine: str | None = None, clients: int = 8, seconds: float = 30.0,
              log_dir: Path = Path("runs/loadtest"), log=print) -> dict:
    """Serve ``model`` in a child process and hit it with the largest requests allowed.

    Returns /health latency during the burst, the server's peak RSS and the count of
    each status the burst clients got (200 served, 503 refused with Retry-After).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    files = largest_request_images()
    request = multipart_files_request(port, [(f"big-{i}.png", png) for i, png in enumerate(files)])
    server = start_server(model, engine, port, log_dir / "server-burst.log")
    try:
        wait_until_ready(url, server)
        served = get_json(url + "/v1/model")
        start_mb = rss_mb(server.pid)
        log(f"burst: {clients} clients sending {len(files)} images of "
            f"{served['limits']['max_request_pixels']:,} pixels in all, for {seconds:.0f} s ...",
            flush=True)
        result = asyncio.run(_burst(port, server.pid, request, clients, seconds))
        log(f"burst:   /health p99 {result['health_p99_ms']:.1f} ms, peak RSS "
            f"{result['peak_rss_mb']:.0f} MB, statuses {result['statuses']}", flush=True)
    finally:
        stop_server(server)
    return {"model": served["name"], "engine": served["engine"], "clients": clients,
            "seconds": seconds, "images_per_request": len(files),
            "request_pixels": served["limits"]["max_request_pixels"],
            "request_bytes": len(request), "rss_after_start_mb": start_mb, **result}


# ------------------------------------------------------------------ the soak


def soak_requests(port: int, images: np.ndarray, large_every: int = 50) -> list[bytes]:
    """The soak's request mix: one 28x28 PNG a request, and after every ``large_every``
    of them a photo-sized one (a 1,200x1,200 RGB PNG, decoded in the server's pool)."""
    (large,) = largest_request_images(total_pixels=1_440_000, count=1)
    small = [multipart_request(port, f"{index}.png", png_bytes(image))
             for index, image in enumerate(images)]
    mixed = []
    for index, request in enumerate(small):
        mixed.append(request)
        if index % large_every == large_every - 1:
            mixed.append(multipart_request(port, "photo.png", large))
    return mixed


async def _soak(port: int, pid: int, requests: list[bytes], clients: int, seconds: float,
                sample_seconds: float) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
    """``clients`` keep-alive connections sending ``requests`` in turn for ``seconds``, as
    well-behaved clients: a 503 is waited out for its Retry-After, then the request is
    sent again. Each answer as (seconds since the start, latency ms, its status or the
    error), and the server's RSS every ``sample_seconds`` as (seconds since the start, MB)."""
    started = time.monotonic()
    deadline = started + seconds
    answers: list[tuple[float, float, bool]] = []
    memory: list[tuple[float, float]] = []
    turn = iter(range(10**12))

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                request = requests[next(turn) % len(requests)]
                sent = time.perf_counter()
                try:
                    code, body = await _send(reader, writer, request)
                    status = str(code) if code != 200 or b'"predictions"' in body else "200 empty"
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                    status = type(error).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                answers.append((time.monotonic() - started, 1000 * (time.perf_counter() - sent), status))
                if status == "503":
                    await asyncio.sleep(RETRY_AFTER_SECONDS)
        finally:
            writer.close()

    async def sampler():
        while time.monotonic() < deadline:
            memory.append((time.monotonic() - started, rss_mb(pid)))
            await asyncio.sleep(sample_seconds)
        memory.append((time.monotonic() - started, rss_mb(pid)))

    await asyncio.gather(sampler(), *(client() for _ in range(clients)))
    return answers, memory


def soak_figures(answers: list[tuple[float, float, str]], memory: list[tuple[float, float]],
                 seconds: float) -> dict:
    """What a soak measured: RSS after its first minute (or third, if shorter) against
    RSS at its end; p99 latency of its answered requests in its first five minutes (or
    third) against its last; the statuses, errors being all but 200 and 503 (a full
    decode pool's documented answer, which the clients wait out); requests per second."""
    window_rss = min(60.0, seconds / 3)
    window_p99 = min(300.0, seconds / 3)
    baseline = next((mb for at, mb in memory if at >= window_rss), memory[-1][1])
    first = [ms for at, ms, status in answers if at < window_p99 and status == "200"]
    last = [ms for at, ms, status in answers if at >= seconds - window_p99 and status == "200"]
    statuses: dict[str, int] = {}
    for _, _, status in answers:
        statuses[status] = statuses.get(status, 0) + 1
    p99_first = float(np.percentile(first, 99)) if first else 0.0
    p99_last = float(np.percentile(last, 99)) if last else 0.0
    return {"requests": len(answers), "statuses": dict(sorted(statuses.items())),
            "errors": sum(count for status, count in statuses.items() if status not in ("200", "503")),
            "requests_per_second": len(answers) / seconds,
            "rss_window_seconds": window_rss, "rss_baseline_mb": baseline,
            "rss_end_mb": memory[-1][1], "rss_peak_mb": max(mb for _, mb in memory),
            "rss_growth_percent": 100 * (memory[-1][1] / baseline - 1),
            "p99_window_seconds": window_p99, "p99_first_ms": p99_first, "p99_last_ms": p99_last,
            "p99_ratio": p99_last / p99_first if p99_first else None,
            "rss_samples_mb": [round(mb, 1) for _, mb in memory]}


def run_soak(model: str, images: np.ndarray, engine: str | None = None, minutes: float = 30.0,
             clients: int = 8, workers: int = 1, log_dir: Path = Path("runs/loadtest"),
             log=print) -> dict:
    """Serve ``model`` in a child process under steady traffic for ``minutes``: ``clients``
    keep-alive connections sending the mix of :func:`soak_requests` back to back, the
    server's RSS sampled throughout (every thirtieth of the run, at most a minute)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, engine, port, log_dir / "server-soak.log", workers)
    seconds = 60 * minutes
    try:
        wait_until_ready(url, server)
        served = get_json(url + "/v1/model")
        requests = soak_requests(port, images)
        log(f"soak: {clients} clients for {minutes:g} min ...", flush=True)
        answers, memory = asyncio.run(_soak(port, server.pid, requests, clients, seconds,
                                            min(60.0, seconds / 30)))
    finally:
        stop_server(server)
    result = {"model": served["name"], "engine": served["engine"], "workers": workers,
              "clients": clients, "minutes": minutes,
              "mix": "28x28 PNGs, every 51st request a 1,200x1,200 photo-sized PNG",
              **soak_figures(answers, memory, seconds)}
    log(f"soak:   {result['requests']:,} requests {result['statuses']}, {result['errors']} errors, RSS "
        f"{result['rss_baseline_mb']:.0f} -> {result['rss_end_mb']:.0f} MB, p99 "
        f"{result['p99_first_ms']:.1f} -> {result['p99_last_ms']:.1f} ms", flush=True)
    return result

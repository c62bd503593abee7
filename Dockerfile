# fmnist's core install (no TensorFlow) serving an exported ONNX model.
#
#   fmnist export runs/fast                      # where the train extra is installed
#   cp runs/fast/model.onnx runs/fast/model.onnx.json .
#   docker build -t fmnist-serve .
#   docker run -p 8000:8000 fmnist-serve
#
# Probes for an orchestrator: liveness GET /livez, readiness GET /readyz (503 while the
# model loads and while draining). `docker stop` sends SIGTERM: /readyz turns 503, the
# server answers for --shutdown-grace seconds, then drains requests in flight for up to
# --drain-timeout seconds and exits 0; keep the runtime's stop timeout above their sum.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 fmnist

COPY model.onnx model.onnx.json /models/
USER fmnist
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["fmnist", "serve", "/models/model.onnx", "--host", "0.0.0.0", "--port", "8000", \
     "--workers", "2", "--access-log", "--log-format", "json", \
     "--shutdown-grace", "5", "--drain-timeout", "10"]

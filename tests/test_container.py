"""The container recipe (Dockerfile): parsed with Docker's own parser and checked for
what the serving docs promise; built and served where a container engine runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _instructions() -> dict[str, list]:
    import dockerfile  # Docker's Go parser, as a Python extension

    found: dict[str, list] = {}
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        found.setdefault(command.cmd.upper(), []).append(command)
    return found


def test_the_dockerfile_serves_the_core_install_as_the_docs_say():
    steps = _instructions()
    assert steps["FROM"][0].value[0].startswith("python:3.1")
    install = " ".join(steps["RUN"][0].value)
    assert "pip install --no-cache-dir ." in install  # the core: no extra, no TensorFlow
    assert steps["USER"][-1].value == ("fmnist",)  # not root
    assert steps["STOPSIGNAL"][0].value == ("SIGTERM",)
    assert "/readyz" in " ".join(steps["HEALTHCHECK"][0].value)
    command = list(steps["CMD"][-1].value)
    assert command[:3] == ["fmnist", "serve", "/models/model.onnx"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    # Every flag the command gives is one `fmnist serve` accepts.
    from fmnist.cli import build_parser

    build_parser().parse_args(command[1:])
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!src/" in ignored  # the build context is the core's sources


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "info"], capture_output=True).returncode != 0,
    reason="no container engine runs here (docker info failed): the Dockerfile is only parsed")
def test_the_image_builds(exported_run, tmp_path):
    run, _ = exported_run
    context = tmp_path / "context"
    shutil.copytree(REPO, context, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "site"))
    for name in ("model.onnx", "model.onnx.json"):
        shutil.copy(run / name, context / name)
    built = subprocess.run(["docker", "build", "-q", "-t", "fmnist-serve-test", str(context)],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]

"""The dependency layers: a core that serves ONNX without TensorFlow, extras for the rest,
and imports that change nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist.bench.loadtest import free_port

REPO = Path(__file__).resolve().parents[1]
# Modules a core install (`pip install fmnist`, no extra) runs: predict and serve an ONNX model.
CORE_MODULES = ("fmnist", "fmnist.cli", "fmnist.data", "fmnist.split", "fmnist.config",
                "fmnist.images", "fmnist.predict", "fmnist.serve", "fmnist.connections",
                "fmnist.rundir", "fmnist.models", "fmnist.errors")


def test_importing_the_core_modules_changes_nothing():
    """No environment variable set, no TensorFlow, Keras, scikit-learn or matplotlib loaded."""
    script = (
        "import json, os, sys; before = dict(os.environ)\n"
        f"for name in {CORE_MODULES!r}: __import__(name)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'matplotlib', 'pooch') "
        "if m in sys.modules)\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "print(json.dumps([heavy, changed]))")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TF_", "KERAS_"))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[], []]


def test_a_command_whose_extra_is_missing_names_the_install(real_data_dir, tmp_path):
    """As on a core-only install, Keras cannot be imported: `fmnist train` says which extra
    to install, on one line, and leaves no run directory."""
    script = "import sys; sys.modules['keras'] = None\nfrom fmnist.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", script, "train", "--epochs", "1", "--data-dir",
                             str(real_data_dir)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "fmnist train: error: this needs fmnist's 'train' extra (keras is not installed); "
        "install it with: pip install 'fmnist[train]'")
    assert not list(tmp_path.iterdir())


def test_each_missing_module_names_its_extra():
    from fmnist.errors import missing_extra_message

    def missing(name):
        return missing_extra_message(ModuleNotFoundError(f"No module named {name!r}", name=name))

    assert "pip install 'fmnist[tune]'" in missing("keras_tuner")
    assert "pip install 'fmnist[train]'" in missing("tensorflow.python")
    assert "pip install 'fmnist[train]'" in missing("sklearn")
    assert missing("yaml") is None  # not ours to install: a bug, reported as unexpected


@pytest.mark.slow
def test_the_release_builds_and_its_core_wheel_serves_without_tensorflow(exported_run, tmp_path):
    """The release builds and checks, and its wheel installed with no extra into a fresh
    venv brings no TensorFlow or Keras, answers `fmnist --help`, and predicts and serves
    the ONNX file `fmnist export` wrote. Building (setuptools) and installing (the core's
    dependencies) need a package index: offline, it skips and says so."""
    index = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "setuptools"],
                           capture_output=True, text=True, timeout=60)
    if index.returncode != 0:
        pytest.skip("offline: no package index answers, so the release cannot be built and "
                    f"installed here ({index.stderr.strip().splitlines()[-1:]})")
    source = tmp_path / "source"  # a copy: building a wheel writes build files beside it
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", "runs", ".git", ".ci", "*.egg-info", "build", "dist", "site", "__pycache__",
        ".pytest_cache", ".hypothesis", "notebooks", "tests"))
    # The release artifacts: an sdist and a wheel whose long description (the README)
    # renders, as `python -m build` and `twine check` make and judge them.
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir",
                            str(dist), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("fmnist-*.whl")
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and checked.stdout.count("PASSED") == 2, checked.stdout + checked.stderr

    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, fmnist = venv / "bin" / "python", venv / "bin" / "fmnist"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    helped = subprocess.run([str(fmnist), "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "predict" in helped.stdout, helped.stderr
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, check=True).stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    assert "fmnist" in names and not names & {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx",
                                               "keras-tuner", "tensorboard", "scikit-learn"}, names

    run, _ = exported_run
    model = tmp_path / "model.onnx"
    shutil.copy(run / "model.onnx", model)
    shoe = tmp_path / "shoe.png"
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((7, 7), np.uint8))).save(shoe)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    predicted = subprocess.run([str(fmnist), "predict", str(model), str(shoe), "--json"],
                               capture_output=True, text=True, env=env, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["top_k"]) == 3
    needs_train = subprocess.run([str(fmnist), "predict", str(run), str(shoe)],  # keras engine
                                 capture_output=True, text=True, env=env, timeout=120)
    assert needs_train.returncode == 1 and "pip install 'fmnist[train]'" in needs_train.stderr

    port = free_port()
    server = subprocess.Popen([str(fmnist), "serve", str(model), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        answer = None
        deadline = time.monotonic() + 60
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/predict/pixels", method="POST",
                data=json.dumps({"pixels": np.zeros((28, 28), int).tolist()}).encode(),
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.2)
        assert answer is not None, server.stderr.read().decode() if server.poll() is not None else "no answer"
        assert answer["engine"] == "onnx" and len(answer["predictions"][0]["top_k"]) == 3
        # The operator's side works in the core install too: probes and metrics.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ready"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b'fmnist_requests_total{method="POST",route="/v1/predict/pixels",status="200"}' \
                in response.read()
    finally:
        server.terminate()
        server.wait(10)

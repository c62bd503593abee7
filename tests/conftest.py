"""Shared fixtures: tiny fake IDX datasets, and the real data when it is available."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmnist import data
from fmnist.runtime import prepare_tensorflow

# Tests import Keras directly too: give this process the defaults the CLI gives users.
prepare_tensorflow()


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as IDX: magic, one big-endian int32 per dimension, data."""
    if magic is None:
        magic = 0x0800 + array.ndim
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def gz(raw: bytes, level: int = 9, mtime: int = 0) -> bytes:
    return gzip.compress(raw, compresslevel=level, mtime=mtime)


def fake_arrays(split: str, count: int, seed: int = 0):
    """Random garments-ish images and balanced labels for a fake split."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


def spec_for(name: str, split: str, kind: str, array: np.ndarray, archive: bytes) -> data.DataFile:
    """A DataFile whose official hashes are those of ``archive`` and ``array``."""
    return data.DataFile(
        name=name, split=split, kind=kind, count=array.shape[0],
        sha256=hashlib.sha256(archive).hexdigest(),
        sha256_payload=hashlib.sha256(array.tobytes()).hexdigest(),
    )


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """Write a tiny, self-consistent Fashion-MNIST look-alike and make it *the* dataset.

    Replaces ``data.FILES`` by specs of 50 train / 20 test items whose hashes are the
    fake files' own. Returns ``(directory, {name: (array, archive bytes)})``.
    """
    directory = tmp_path / "fake-data"
    directory.mkdir()
    specs, contents = [], {}
    for split, count in (("train", 50), ("test", 20)):
        images, labels = fake_arrays(split, count)
        prefix = "train" if split == "train" else "t10k"
        for kind, array, suffix in (("images", images, "images-idx3-ubyte.gz"),
                                    ("labels", labels, "labels-idx1-ubyte.gz")):
            name = f"{prefix}-{suffix}"
            archive = gz(idx_bytes(array))
            (directory / name).write_bytes(archive)
            specs.append(spec_for(name, split, kind, array, archive))
            contents[name] = (array, archive)
    monkeypatch.setattr(data, "FILES", tuple(specs))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(tmp_path / "cache"))
    return directory, contents


def _real_data_dir() -> Path | None:
    configured = os.environ.get("FMNIST_DATA_DIR")
    if configured and Path(configured).is_dir():
        return Path(configured).resolve()  # absolute: subprocesses may run elsewhere
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real Fashion-MNIST folder (FMNIST_DATA_DIR). Without it the tests needing it
    skip, except where FMNIST_REQUIRE_DATA=1 (CI): there they fail, so that a green run
    cannot hide them."""
    found = _real_data_dir()
    if found is None:
        message = (f"real Fashion-MNIST not found at FMNIST_DATA_DIR="
                   f"{os.environ.get('FMNIST_DATA_DIR', '(unset)')}: point it at the folder "
                   "holding the four .gz files")
        if os.environ.get("FMNIST_REQUIRE_DATA") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


# Fixtures that read the real data, directly or through another: a test using one of
# them gets the `realdata` marker here, so no test file can forget it
# (`pytest -m "not realdata"` runs exactly the tests that need no data).
DATA_FIXTURES = {"real_data_dir", "train_only_data_dir", "trained_run", "exported_run",
                 "test_images"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


# The only skips a run with FMNIST_REQUIRE_DATA=1 accepts, by a word of their reason, and
# why each may happen on a machine that is otherwise complete. Any other skip fails it.
ALLOWED_SKIPS = {
    "atheris": "atheris builds only for x86-64 Linux; the schemathesis fuzzer still runs",
    "offline": "the machine reaches no package index, so no wheel's dependencies install",
    "no container engine": "Docker's client without an engine cannot build; the Dockerfile "
                           "is still parsed and checked",
}
_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(word in reason for word in ALLOWED_SKIPS):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("FMNIST_REQUIRE_DATA") == "1" and _unexpected_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _unexpected_skips:
        terminalreporter.section("skips outside ALLOWED_SKIPS (tests/conftest.py)")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)
        if os.environ.get("FMNIST_REQUIRE_DATA") == "1":
            terminalreporter.write_line("FMNIST_REQUIRE_DATA=1: these fail the run")


@pytest.fixture(scope="session")
def train_only_data_dir(real_data_dir, tmp_path_factory) -> Path:
    """A data folder holding the two training files and no test file: what export and the
    inference bench must get by with, since only ``evaluate`` reads the test set."""
    folder = tmp_path_factory.mktemp("train-only")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(real_data_dir / name)
    return folder


def run_cli(*args: str, env_extra: dict | None = None, cwd: Path | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `fmnist ARGS...` in a fresh interpreter, as a user would."""
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "fmnist.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def run_main(*args: str) -> subprocess.CompletedProcess:
    """Run `fmnist ARGS...` in this process, through the same ``main`` (exit code, stdout,
    stderr). For tests of what a command does, where a fresh interpreter is not the
    point: each one saves the ~7 s TensorFlow import a subprocess pays."""
    import contextlib
    import io

    from fmnist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return subprocess.CompletedProcess(["fmnist", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def trained_run(real_data_dir, tmp_path_factory) -> Path:
    """A small evaluated mlp run (6,000 training images, 3 epochs: ~0.83 test accuracy).

    Shared by the prediction, export and serving tests, which need a real trained model
    but not a good one.
    """
    from fmnist.evaluate import evaluate_run
    from fmnist.train import TrainConfig, train

    # float32 pinned: the Keras engine predicts in the precision a run trained in, and
    # `auto` picks bfloat16 on AMX / AVX-512 BF16 CPUs, where the engines' 1e-4 parity
    # checks against the float32 ONNX graph would measure bfloat16's rounding instead.
    run = train(TrainConfig(epochs=3, train_size=6000, val_size=1000, test_size=1000,
                            precision="float32"),
                tmp_path_factory.mktemp("trained") / "mlp", data_dir=real_data_dir, verbose=0)
    evaluate_run(run, data_dir=real_data_dir)
    return run


@pytest.fixture(scope="session")
def exported_run(trained_run, real_data_dir) -> tuple[Path, dict]:
    """``trained_run`` with its model.onnx, exported as `fmnist export` does (checked on the
    run's 1,000 validation images), and the parity report."""
    from fmnist.export import export_images, export_onnx

    validation, _ = export_images(trained_run, data.load_split("train", real_data_dir))
    return trained_run, export_onnx(trained_run, validation)


@pytest.fixture(scope="session")
def test_images(real_data_dir):
    """The first 1,000 test images and labels (uint8 (1000, 28, 28), uint8 (1000,))."""
    x, y = data.load_split("test", real_data_dir)
    return x[:1000], y[:1000]


def load_script(name: str):
    """A repository tool in scripts/ (outside the package), imported as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The hostile-input corpus (tests/fuzz/corpus.py) is imported by tests as `corpus`.
sys.path.insert(0, str(Path(__file__).parent / "fuzz"))

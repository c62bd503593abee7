"""The command line: fast help, one-line errors with the right exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import gz, idx_bytes, run_cli, run_main

HELP_PROBE = """
import sys, time
started = time.perf_counter()
from fmnist.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib', 'pooch', 'sklearn',
                                                              'onnxruntime', 'fastapi', 'keras_tuner', 'PIL'))
print('HEAVY', heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["train", "--help"],
                                  ["evaluate", "--help"], ["compare", "--help"], ["bench", "--help"],
                                  ["predict", "--help"], ["export", "--help"], ["serve", "--help"],
                                  ["tune", "--help"], ["models"]])
def test_help_does_not_import_tensorflow(argv):
    result = subprocess.run([sys.executable, "-c", HELP_PROBE.format(argv=argv)],
                            capture_output=True, text=True, timeout=60)
    assert "usage: fmnist" in result.stdout or "cnn-fast" in result.stdout
    assert "HEAVY []" in result.stderr


def _one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model_is_a_usage_error():
    _one_line_error(run_main("train", "--model", "resnet9000"), 2,
                    "unknown model 'resnet9000'", "choose one of: mlp")


@pytest.mark.parametrize("flags, needle", [
    (["--epochs", "0"], "must be at least 1"),
    (["--epochs", "ten"], "expected a whole number"),
    (["--batch-size", "-3"], "must be at least 1"),
    (["--learning-rate", "nan"], "must be a positive number"),
    (["--seed", "1.5"], "expected a whole number"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--precision", "float16"], "invalid choice: 'float16'"),
    (["--mixed-precision"], "unrecognized arguments"),  # replaced by --precision
])
def test_bad_flag_values_are_usage_errors(flags, needle):
    _one_line_error(run_main("train", *flags), 2, needle)


def test_resume_with_run_flags_is_a_usage_error(tmp_path):
    _one_line_error(run_main("train", "--resume", str(tmp_path), "--epochs", "3"), 2,
                    "drop --epochs")


def test_resume_of_a_missing_run_dir_is_a_runtime_error(tmp_path):
    _one_line_error(run_main("train", "--resume", str(tmp_path / "nope")), 1,
                    "does not exist")


def test_evaluate_of_a_folder_without_a_model(tmp_path):
    _one_line_error(run_main("evaluate", str(tmp_path)), 1, "has no model.keras")


def test_missing_data_dir_is_a_runtime_error(tmp_path):
    _one_line_error(run_main("data", "--data-dir", str(tmp_path / "nowhere")), 1,
                    "does not exist")


def test_corrupt_file_fails_train_with_one_line_and_keeps_the_file(tmp_path, real_data_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for path in real_data_dir.glob("*.gz"):
        (data_dir / path.name).symlink_to(path.resolve())
    bad = data_dir / "train-labels-idx1-ubyte.gz"
    bad.unlink()
    bad.write_bytes(gz(idx_bytes(np.full(60000, 11, np.uint8))))
    result = run_cli("train", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))
    _one_line_error(result, 1, "train-labels-idx1-ubyte.gz has label 11", "check FMNIST_DATA_DIR")
    assert bad.exists()


def test_data_command_reports_bad_files_and_fails(tmp_path, real_data_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for path in real_data_dir.glob("*.gz"):
        (data_dir / path.name).symlink_to(path.resolve())
    (data_dir / "t10k-images-idx3-ubyte.gz").unlink()
    result = run_cli("data", "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert "BAD" in result.stdout and "t10k-images-idx3-ubyte.gz is missing" in result.stdout
    assert "ok    train-images-idx3-ubyte.gz" in result.stdout


def test_data_command_verifies_and_counts_the_real_data(real_data_dir):
    result = run_cli("data", "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(verified: payload SHA-256)") == 4
    assert "9 Ankle boot      6000    1000" in result.stdout
    assert "total            60000   10000" in result.stdout


def test_existing_out_dir_is_refused_before_anything_heavy(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line_error(run_cli("train", "--out", str(out)), 1, "already exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_unknown_model_option_is_a_usage_error():
    _one_line_error(run_main("train", "--model", "cnn-fast", "--model-option", "depth=3"), 2,
                    "has no option 'depth'", "stem_width")


def test_a_flag_the_optimizer_does_not_use_is_named(tmp_path):
    """cnn-fast trains with Adam: --weight-decay and --momentum would change nothing, and
    say so; under sgd they are used, and its betas are the flags left unused."""
    missing = str(tmp_path / "no-data")  # stops the run after its config is checked
    result = run_main("train", "--weight-decay", "0.001", "--momentum", "0.8",
                      "--data-dir", missing, "--out", str(tmp_path / "run"))
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "fmnist: warning: adam does not use --weight-decay (adamw and sgd use it); pass "
        "--optimizer to choose one that does, or drop it",
        "fmnist: warning: adam does not use --momentum (sgd uses it); pass --optimizer to "
        "choose one that does, or drop it"]
    result = run_main("train", "--optimizer", "sgd", "--weight-decay", "0.001", "--beta-1",
                      "0.8", "--data-dir", missing, "--out", str(tmp_path / "run"))
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "sgd does not use --beta-1" in warnings[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # imports TensorFlow and builds the model
def test_model_option_of_the_wrong_kind_is_one_clear_line(tmp_path, real_data_dir):
    result = run_main("train", "--model", "cnn-fast", "--model-option", "stem=sideways",
                      "--out", str(tmp_path / "run"), "--data-dir", str(real_data_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot build cnn-fast" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()  # a failed start leaves no run directory
    assert "stem must be 'patch', 'conv-s2', 'conv', 'whiten' or 'whiten-fixed'" in result.stderr


def test_bench_render_needs_a_bench_file(tmp_path):
    _one_line_error(run_main("bench", "render", "--json", str(tmp_path / "none.json")), 1,
                    "does not exist; run `fmnist bench train` first")


def test_bench_subcommands_take_only_their_own_flags(tmp_path):
    # A serve-only flag on the training bench, and the old ranked flags, are usage errors.
    _one_line_error(run_main("bench", "train", "--clients", "8"), 2, "unrecognized arguments")
    _one_line_error(run_main("bench", "--render"), 2, "")
    _one_line_error(run_main("bench"), 2, "")


def test_models_lists_every_registered_model_with_its_recipe():
    result = run_cli("models")
    assert result.returncode == 0
    for name in ("mlp", "mlp-plus", "cnn-tfdocs", "cnn-fast", "cnn-best"):
        assert f"\n{name} " in "\n" + result.stdout
    assert "optimizer=sgd" in result.stdout and "--model-option" in result.stdout
    fast = result.stdout.split("\ncnn-fast ", 1)[1].split("\ncnn-best ", 1)[0]
    assert "stem='whiten', stem_width=16" in fast  # the options with the preset's values


# What TensorFlow's C++ side printed to every training before: notices and a false error.
TENSORFLOW_NOISE = ("E0000", "node_def_util", "absl::InitializeLog", "oneDNN custom operations",
                    "use_unbounded_threadpool")


@pytest.mark.slow
def test_train_says_its_precision_and_prints_no_tensorflow_noise(tmp_path, real_data_dir):
    result = run_cli("train", "--model", "mlp", "--epochs", "2", "--train-size", "1000",
                     "--val-size", "500", "--test-size", "500", "--tta", "--quiet",
                     "--out", str(tmp_path / "run"), "--data-dir", str(real_data_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("precision: ") and "(auto: " in lines[0]
    assert any("--tta does not apply: mlp was trained without flips" in line for line in lines)
    assert "flip TTA" not in result.stdout  # no TTA figure for a model that never saw mirrors
    noise = [line for line in result.stderr.splitlines()
             if any(marker in line for marker in TENSORFLOW_NOISE)]
    assert noise == [], noise
    # An explicit bfloat16 where it is emulated: one warning line of fmnist's, nothing else.
    from fmnist.hardware import choose_precision

    emulated = choose_precision("bfloat16").warning is not None
    # With augmentation (tf.data maps, which AutoGraph converts): no AutoGraph warning
    # either; one once printed the whole environment of the process.
    forced = run_cli("train", "--model", "mlp", "--precision", "bfloat16", "--epochs", "1",
                     "--flip", "--translate", "1", "--erase", "0.5",
                     "--train-size", "500", "--val-size", "200", "--test-size", "200", "--quiet",
                     "--out", str(tmp_path / "bf16"), "--data-dir", str(real_data_dir))
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith("precision: bfloat16 (bfloat16 as requested")
    warnings = [line for line in forced.stderr.splitlines() if line.strip()]
    assert warnings == (["fmnist: warning: bfloat16 was requested, but this hardware only "
                         "emulates it, so training will be many times slower than in float32; "
                         "use --precision auto or float32"] if emulated else []), warnings


def test_no_committed_file_holds_this_machines_absolute_path():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in listed.stdout.splitlines():
        path = root / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if str(root) in text:
            offenders.append(name)
    assert offenders == []


def test_an_unexpected_exception_is_one_line_unless_debugging(monkeypatch, capsys):
    from fmnist import cli

    def broken(args):
        raise KeyError("a bug\nover two lines")

    monkeypatch.setattr(cli.models, "run", broken)
    monkeypatch.delenv("FMNIST_DEBUG", raising=False)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and "FMNIST_DEBUG=1" in err
    monkeypatch.setenv("FMNIST_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["models"])


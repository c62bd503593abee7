"""Training on slices of the real data: learning, run directory, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from fmnist import rundir
from fmnist.errors import FmnistError, RunDirError
from fmnist.evaluate import evaluate_run
from fmnist.models import build_model
from fmnist.config import TrainConfig
from fmnist.pipeline import epoch_order, steps_per_epoch
from fmnist.recipe import compile_for_training
from fmnist.train import resume, train

pytestmark = pytest.mark.slow

QUICK = dict(train_size=3000, val_size=1000, test_size=1000, epochs=2, batch_size=64)


def _numbers(metrics: dict) -> dict:
    """Metrics that must be reproducible (wall-clock seconds are not)."""
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def _history_numbers(run_dir) -> list[dict]:
    return [_numbers(row) for row in json.loads((run_dir / rundir.HISTORY).read_text())]


def test_seed_mlp_learns_in_one_epoch_on_a_slice(real_data_dir, tmp_path):
    config = TrainConfig(model="mlp", epochs=1, batch_size=32, train_size=12000,
                         val_size=1000, test_size=2000)
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    metrics = evaluate_run(run, data_dir=real_data_dir)
    assert metrics["test_accuracy"] > 0.80
    assert metrics["val_accuracy"] > 0.75  # 1,000 images: noisier than the test slice


def test_run_directory_holds_everything_to_rebuild_and_audit(real_data_dir, tmp_path):
    config = TrainConfig(**QUICK)
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    metrics = evaluate_run(run, data_dir=real_data_dir)

    saved = json.loads((run / rundir.CONFIG).read_text())
    assert TrainConfig.from_json(saved) == config
    assert {"python", "keras", "tensorflow", "numpy", "fmnist"} <= set(saved["versions"])
    # Every key is a setting or a documented record of the run, and the record is valid.
    from fmnist.config import RunRecord

    settings = set(TrainConfig.model_fields)
    assert set(saved) <= settings | set(RunRecord.model_fields), set(saved) - settings
    RunRecord.model_validate({key: value for key, value in saved.items() if key not in settings})

    history = json.loads((run / rundir.HISTORY).read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(row)

    assert (run / rundir.CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir()) == [
        "epoch-001.keras", "epoch-002.keras"]  # the last two, so a damaged one has a fallback
    for key in ("test_accuracy", "test_loss", "val_accuracy", "train_seconds", "epochs", "seed"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["n_train"] == 3000 and metrics["n_test"] == 1000
    # The final model's validation score; without EMA it is the last epoch's.
    assert abs(metrics["val_accuracy"] - history[-1]["val_accuracy"]) <= 1 / 1000

    model = keras.saving.load_model(run / rundir.MODEL)
    images = np.zeros((3, 28, 28), np.uint8)
    assert model.predict(images, verbose=0).shape == (3, 10)


def test_same_seed_gives_the_same_metrics(real_data_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = train(TrainConfig(seed=5, **QUICK), tmp_path / name, data_dir=real_data_dir, verbose=0)
        runs.append((_numbers(evaluate_run(run, data_dir=real_data_dir)), _history_numbers(run)))
    assert runs[0] == runs[1]


def test_epoch_order_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_order(1, 3, 100), epoch_order(1, 3, 100))
    assert not np.array_equal(epoch_order(1, 3, 100), epoch_order(1, 4, 100))
    assert sorted(epoch_order(1, 3, 100)) == list(range(100))


def test_refuses_to_overwrite_a_run(real_data_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        train(TrainConfig(**QUICK), tmp_path / "run", data_dir=real_data_dir, verbose=0)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


KILL_SIZES = dict(train_size=6000, val_size=1000, test_size=1000, epochs=3, batch_size=64, seed=2)


@pytest.fixture(scope="module")
def uninterrupted(real_data_dir, tmp_path_factory):
    """KILL_SIZES' run trained straight through: its metrics and history numbers."""
    run = train(TrainConfig(**KILL_SIZES), tmp_path_factory.mktemp("straight") / "run",
                data_dir=real_data_dir, verbose=0)
    return _numbers(evaluate_run(run, data_dir=real_data_dir)), _history_numbers(run)


@pytest.mark.parametrize("point, damage, resumes_after", [
    ("before-checkpoint", None, 1),  # epoch 2 trained, its checkpoint not begun
    ("during-checkpoint", None, 1),  # epoch 2's checkpoint written under its partial name
    # Epoch 2's checkpoint and state.json written, then the checkpoint cut in half: the
    # resume falls back to epoch 1's (resuming from the newest is every other test's path).
    ("after-checkpoint", "truncate", 1),
])
def test_a_kill_at_any_point_of_a_checkpoint_resumes_to_the_same_metrics(
        real_data_dir, tmp_path, uninterrupted, point, damage, resumes_after, capsys):
    """Killed with SIGKILL where fmnist.faults holds training (not after a guessed sleep),
    resumed, the run ends with the numbers of an uninterrupted one; a checkpoint damaged
    after the kill sends it back to the previous one, which it says."""
    killed = tmp_path / "killed"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in KILL_SIZES.items()]
    env = {**os.environ, "FMNIST_DATA_DIR": str(real_data_dir)}
    signal_file = tmp_path / "reached"
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "train", "--model", "mlp", *flags,
         "--out", str(killed), "--quiet"],
        env={**env, "FMNIST_FAULT": f"{point}:2", "FMNIST_FAULT_SIGNAL": str(signal_file)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not signal_file.exists() and process.poll() is None:
        assert time.monotonic() < deadline, f"training never reached {point} of epoch 2"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads((killed / rundir.STATE).read_text())
    assert state["epochs_done"] == (2 if point == "after-checkpoint" else 1)
    assert not (killed / rundir.METRICS).exists()
    if damage == "truncate":
        checkpoint = killed / state["checkpoint"]
        checkpoint.write_bytes(checkpoint.read_bytes()[:checkpoint.stat().st_size // 2])

    capsys.readouterr()
    resume(killed, data_dir=real_data_dir, verbose=0)  # in this process: no second TF import
    notices = capsys.readouterr().err
    if damage:
        assert "epoch-002.keras is truncated" in notices
        assert f"resuming from checkpoints/epoch-00{resumes_after}.keras" in notices
    expected_metrics, expected_history = uninterrupted
    assert _numbers(evaluate_run(killed, data_dir=real_data_dir)) == expected_metrics
    assert _history_numbers(killed) == expected_history


def test_resuming_a_finished_run_changes_nothing(real_data_dir, tmp_path):
    run = train(TrainConfig(**QUICK), tmp_path / "run", data_dir=real_data_dir, verbose=0)
    before = _numbers(evaluate_run(run, data_dir=real_data_dir))
    resume(run, data_dir=real_data_dir, verbose=0)
    assert _numbers(evaluate_run(run, data_dir=real_data_dir)) == before


def test_presets_sit_between_defaults_and_flags():
    config = TrainConfig.for_model("cnn-fast", epochs=3, learning_rate=None)
    assert config.epochs == 3  # a flag wins
    assert config.optimizer == "adam" and config.beta_1 == 0.7 and config.flip  # the preset
    assert config.precision == "auto"  # every preset leaves precision to the hardware
    assert config.val_size == 6000  # a default
    assert TrainConfig.for_model("mlp") == TrainConfig()  # the seed keeps the notebook's recipe


def test_sgd_takes_nesterov_from_its_setting():
    for nesterov in (True, False):
        model = compile_for_training(build_model("mlp"), TrainConfig(optimizer="sgd",
                                                                     nesterov=nesterov), 10)
        assert model.optimizer.nesterov is nesterov


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_every_optimizer_and_schedule_trains(optimizer, schedule):
    model = build_model("mlp")
    config = TrainConfig(optimizer=optimizer, schedule=schedule, weight_decay=1e-4,
                         label_smoothing=0.1, ema=0.9)
    compile_for_training(model, config, total_steps=10)
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss[0] if isinstance(loss, (list, tuple)) else loss)


def test_mixed_precision_run_leaves_the_global_policy_alone(real_data_dir, tmp_path):
    run = train(TrainConfig(precision="bfloat16", **QUICK), tmp_path / "run",
                data_dir=real_data_dir, verbose=0)
    assert keras.config.dtype_policy().name == "float32"
    model = keras.saving.load_model(run / rundir.MODEL)
    probabilities = model.predict(np.zeros((2, 28, 28), np.uint8), verbose=0)
    assert probabilities.dtype == np.float32  # the head stays float32


def test_time_budget_picks_epochs_and_records_them(real_data_dir, tmp_path):
    config = TrainConfig(epochs=500, time_budget=6.0, train_size=2000, val_size=500,
                         test_size=500, batch_size=128)
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    saved = json.loads((run / rundir.CONFIG).read_text())
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert saved["epochs_requested"] == 500 and 1 <= saved["epochs"] < 500
    assert metrics["epochs"] <= saved["epochs"]
    assert metrics["probe_seconds"] > 0
    assert metrics["probe_epoch_seconds"] == saved["probe_epoch_seconds"] > 0
    assert metrics["train_seconds"] >= metrics["probe_seconds"]
    # The schedule was laid over the chosen epochs: resuming finds nothing left to do.
    assert TrainConfig.from_json(saved).epochs == saved["epochs"]


def test_shortening_the_one_cycle_schedule_keeps_it_annealing_to_zero():
    from fmnist.recipe import new_model, replan_onecycle

    config = TrainConfig(model="mlp", schedule="onecycle", learning_rate=0.1,
                         warmup_fraction=0.2)
    model = new_model(config, 100)
    schedule = model.optimizer._learning_rate
    rate = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert rate(100) == pytest.approx(0.0, abs=1e-7) and rate(60) > 0.01
    assert not replan_onecycle(model, config, 100, 5)  # the same plan: unchanged
    # In the warm-up: both phases shrink; the warm-up still peaks at the full rate.
    assert replan_onecycle(model, config, 60, 5)
    assert schedule.warmup_steps == 12 and schedule.decay_steps == 48
    assert rate(12) == pytest.approx(0.1) and rate(60) == pytest.approx(0.0, abs=1e-7)
    # Past the warm-up: only the decay shrinks; the new plan survives saving.
    assert replan_onecycle(model, config, 40, 30)
    assert schedule.warmup_steps == 12 and schedule.decay_steps == 28
    saved = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    assert saved._learning_rate.decay_steps == 28
    # Lengthened past the warm-up: the decay stretches and still ends at zero.
    assert replan_onecycle(model, config, 70, 35)
    assert schedule.warmup_steps == 12 and schedule.decay_steps == 58
    assert rate(70) == pytest.approx(0.0, abs=1e-7) and rate(35) > 0.03
    # A constant rate has nothing to shorten.
    constant = TrainConfig(model="mlp")
    assert not replan_onecycle(new_model(constant, 100), constant, 50, 5)


def test_a_shortened_schedule_reaches_the_traced_training_step():
    from fmnist.recipe import new_model, replan_onecycle

    config = TrainConfig(model="mlp", schedule="onecycle", learning_rate=0.01)
    model = new_model(config, 100)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32)
    for _ in range(5):
        model.train_on_batch(x, y)
    # Cut to 8 steps at step 5: steps 5-7 anneal, step 8 runs at a rate of 0, so Adam
    # leaves the weights as they were. With the old plan it would be warming up.
    assert replan_onecycle(model, config, 8, 5)
    for _ in range(3):
        model.train_on_batch(x, y)
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


class _TickingClock:
    """A stand-in for the time module: each reading is half a second after the last."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.5
        return self.now


@pytest.mark.parametrize("probe_epoch_seconds, probe_epochs", [(1e-3, 400), (2.0, 5)],
                         ids=["probe-too-short", "probe-too-long"])
def test_a_budgeted_run_whose_probe_was_off_still_anneals(real_data_dir, tmp_path, monkeypatch,
                                                          probe_epoch_seconds, probe_epochs):
    import fmnist.budget
    import fmnist.train

    # A probe that says any number of epochs fits, or only 5; the run's epochs must
    # correct it. On the ticking clock the probe reads 8.5 s (17 readings) and every epoch
    # 0.5 s: 20 would fit in 18.5 s, and the re-plan after epoch 3 plans 19 (3% to spare),
    # shrinking the plan of 400 or growing that of 5 (up to the 400 asked for).
    monkeypatch.setattr(fmnist.budget, "estimate_epoch_seconds", lambda *args: probe_epoch_seconds)
    monkeypatch.setattr(fmnist.train, "time", _TickingClock())
    config = TrainConfig(model="mlp", epochs=400, time_budget=18.5, train_size=2000,
                         val_size=500, test_size=500, batch_size=128, schedule="onecycle",
                         learning_rate=0.01)
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    saved = json.loads((run / rundir.CONFIG).read_text())
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert saved["probe_epochs"] == probe_epochs and saved["probe_seconds"] == 8.5
    assert saved["epochs"] == metrics["epochs"] == 19
    # The last checkpoint's schedule ends with the re-planned epochs, at a rate of zero:
    # not cut off in the warm-up, where the probe's plan of 400 epochs had it, nor ended
    # after 5 epochs with 13 s of the budget left.
    model = keras.saving.load_model(run / rundir.CHECKPOINTS / "epoch-019.keras")
    schedule = model.optimizer._learning_rate
    steps = steps_per_epoch(2000, 128)
    assert schedule.warmup_steps + schedule.decay_steps == 19 * steps
    assert float(keras.ops.convert_to_numpy(schedule(19 * steps))) == pytest.approx(0, abs=1e-7)
    assert int(model.optimizer.iterations) == 19 * steps


def test_a_resume_lays_the_schedule_over_the_recorded_epochs(real_data_dir, tmp_path):
    config = TrainConfig(model="mlp", schedule="onecycle", **{**QUICK, "epochs": 6})
    run = train(config, tmp_path / "run", data_dir=real_data_dir, verbose=0, stop_after=2)
    # As a kill leaves it after a re-plan recorded 4 epochs, before its checkpoint.
    saved = json.loads((run / rundir.CONFIG).read_text())
    (run / rundir.CONFIG).write_text(json.dumps({**saved, "epochs": 4}))
    resume(run, data_dir=real_data_dir, verbose=0)
    assert json.loads((run / rundir.METRICS).read_text())["epochs"] == 4
    schedule = keras.saving.load_model(run / rundir.CHECKPOINTS / "epoch-004.keras").optimizer._learning_rate
    steps = steps_per_epoch(QUICK["train_size"], QUICK["batch_size"])
    assert schedule.warmup_steps + schedule.decay_steps == 4 * steps


def test_ema_weights_survive_a_kill_after_the_last_checkpoint(real_data_dir, tmp_path):
    run = train(TrainConfig(ema=0.9, **QUICK), tmp_path / "run", data_dir=real_data_dir, verbose=0)
    finished = keras.saving.load_model(run / rundir.MODEL).get_weights()
    # A kill between the last checkpoint and the final save: resume must still average.
    (run / rundir.MODEL).unlink()
    (run / rundir.METRICS).unlink()
    resume(run, data_dir=real_data_dir, verbose=0)
    again = keras.saving.load_model(run / rundir.MODEL).get_weights()
    for a, b in zip(finished, again):
        np.testing.assert_array_equal(a, b)


# mlp-plus in bfloat16 (emulated on CPUs without it, but dense layers stay quick), cnn-fast
# in whatever auto picks here; dropout, augmentation and both precisions resume exactly.
@pytest.mark.parametrize("model, precision", [("mlp-plus", "bfloat16"), ("cnn-fast", "auto")])
def test_resume_is_exact_with_dropout_augmentation_and_bfloat16(real_data_dir, tmp_path, model,
                                                                precision):
    sizes = dict(train_size=1500, val_size=500, test_size=500, batch_size=128, seed=4,
                 precision=precision)
    straight = train(TrainConfig.for_model(model, epochs=2, erase=0.3, **sizes),
                     tmp_path / "straight", data_dir=real_data_dir, verbose=0)
    partial = train(TrainConfig.for_model(model, epochs=2, erase=0.3, **sizes),
                    tmp_path / "partial", data_dir=real_data_dir, verbose=0, stop_after=1)
    assert json.loads((partial / rundir.STATE).read_text())["epochs_done"] == 1
    assert not (partial / rundir.MODEL).exists()
    resume(partial, data_dir=real_data_dir, verbose=0)
    assert _history_numbers(partial) == _history_numbers(straight)


def _pretend_cpu(monkeypatch, flags: set) -> None:
    """Make this machine answer as a CPU with ``flags`` and no GPU."""
    from fmnist import hardware

    monkeypatch.setattr(hardware, "read_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "gpu_compute_capability", lambda: None)
    monkeypatch.setattr(hardware, "is_x86", lambda: True)


def _compute_dtypes(run_dir) -> set:
    model = keras.saving.load_model(run_dir / rundir.MODEL)
    return {layer.dtype_policy.compute_dtype for layer in model.layers
            if layer.name not in ("pixels", "probabilities")}


TINY = dict(train_size=600, val_size=200, test_size=200, batch_size=100)


def test_auto_precision_is_chosen_by_the_cpu_printed_and_recorded(real_data_dir, tmp_path,
                                                                  monkeypatch):
    lines = []
    _pretend_cpu(monkeypatch, {"avx2", "fma", "avx512f", "avx512_bf16"})
    run = train(TrainConfig(epochs=1, **TINY), tmp_path / "bf16", data_dir=real_data_dir,
                verbose=0, log=lines.append)
    saved = json.loads((run / rundir.CONFIG).read_text())
    assert saved["precision"] == "auto" and saved["precision_used"] == "bfloat16"
    assert "avx512_bf16" in saved["precision_reason"]
    assert lines[0] == f"precision: bfloat16 ({saved['precision_reason']})"
    assert [line.split(":")[0] for line in lines[1:]] == ["calibrated"]  # then trust.json's fit
    assert _compute_dtypes(run) == {"bfloat16"}

    lines.clear()
    _pretend_cpu(monkeypatch, {"avx2", "fma"})
    run = train(TrainConfig(epochs=1, **TINY), tmp_path / "f32", data_dir=real_data_dir,
                verbose=0, log=lines.append)
    saved = json.loads((run / rundir.CONFIG).read_text())
    assert saved["precision_used"] == "float32" and "no native bfloat16" in saved["precision_reason"]
    assert lines[0].startswith("precision: float32 (auto: this CPU has no native bfloat16")
    assert _compute_dtypes(run) == {"float32"}


def test_a_resumed_run_keeps_the_precision_in_its_config(real_data_dir, tmp_path, monkeypatch,
                                                         capsys):
    _pretend_cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16"})
    run = train(TrainConfig(epochs=2, **TINY), tmp_path / "run", data_dir=real_data_dir,
                verbose=0, stop_after=1)
    # The run moves to an AVX2 machine, where auto would pick float32.
    _pretend_cpu(monkeypatch, {"avx2", "fma"})
    capsys.readouterr()
    resume(run, data_dir=real_data_dir, verbose=0)
    out = capsys.readouterr()
    assert "precision: bfloat16 (kept from" in out.out
    assert json.loads((run / rundir.CONFIG).read_text())["precision_used"] == "bfloat16"
    assert _compute_dtypes(run) == {"bfloat16"}
    # bfloat16 as recorded is no explicit request: no warning about emulation either.
    assert "warning" not in out.err


def test_explicit_bfloat16_on_an_emulating_cpu_warns_once(real_data_dir, tmp_path, monkeypatch,
                                                          capsys):
    _pretend_cpu(monkeypatch, {"avx2", "fma"})
    train(TrainConfig(epochs=1, precision="bfloat16", **TINY), tmp_path / "run",
          data_dir=real_data_dir, verbose=0)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "many times slower" in err[0]


def test_a_run_resumes_in_the_precision_it_recorded():
    from fmnist.recipe import recorded_precision

    assert recorded_precision({"precision": "auto", "precision_used": "float32"}) == "float32"
    assert recorded_precision({"precision": "auto", "precision_used": "bfloat16"}) == "bfloat16"
    assert recorded_precision({"precision": "auto"}) is None


def _snapshot(folder) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _hold_lock(run_dir):
    """Another process holding ``run_dir``'s lock, as a training run would."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fmnist import rundir\n"
         "with rundir.exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
         str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_and_changes_nothing(real_data_dir, tmp_path):
    from conftest import run_cli

    new, existing = tmp_path / "new", tmp_path / "existing"
    existing.mkdir()
    (existing / rundir.CONFIG).write_text(json.dumps({"model": "mlp", **QUICK}))
    holders = [_hold_lock(new), _hold_lock(existing)]
    try:
        before = {folder: _snapshot(folder) for folder in (new, existing)}
        with pytest.raises(RunDirError, match="being written by another fmnist process"):
            train(TrainConfig(**QUICK), new, data_dir=real_data_dir, verbose=0)
        with pytest.raises(RunDirError, match="being written by another fmnist process"):
            resume(existing, data_dir=real_data_dir, verbose=0)
        for args in (["--resume", str(existing)], ["--out", str(new)]):
            cli = run_cli("train", *args, env_extra={"FMNIST_DATA_DIR": str(real_data_dir)})
            assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
            assert "another fmnist process" in cli.stderr
        assert {folder: _snapshot(folder) for folder in (new, existing)} == before
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    # Once the holder is gone (however it ended), the directory is free again.
    with rundir.exclusive(new):
        pass


def test_the_checkpoint_must_lie_inside_the_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / rundir.CHECKPOINTS).mkdir(parents=True)
    (tmp_path / "elsewhere.keras").write_bytes(b"x")
    (run / rundir.CHECKPOINTS / "epoch-001.keras").write_bytes(b"x")
    assert rundir.checkpoint_path(run, {"checkpoint": "checkpoints/epoch-001.keras"}).is_file()
    for named in ("../elsewhere.keras", str(tmp_path / "elsewhere.keras"), None, 3):
        with pytest.raises(RunDirError, match="damaged"):
            rundir.checkpoint_path(run, {"checkpoint": named})


def test_files_are_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    rundir.write_json(tmp_path / "state.json", {"epochs_done": 1})
    assert events[:2] == ["fsync", "replace"] and json.loads((tmp_path / "state.json").read_text())


def test_a_failed_start_leaves_no_run_directory(real_data_dir, tmp_path):
    broken = TrainConfig(model_options={"no_such_option": 1}, **QUICK)  # the factory refuses it
    with pytest.raises(FmnistError, match="cannot build mlp"):
        train(broken, tmp_path / "run", data_dir=real_data_dir, verbose=0)
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FmnistError, match="cannot build mlp"):
        train(broken, tmp_path / "empty", data_dir=real_data_dir, verbose=0)
    assert list((tmp_path / "empty").iterdir()) == []


def test_bias_rate_scales_only_the_batch_norm_shifts_step_and_survives_a_checkpoint(tmp_path):
    """``bias_rate``: one SGD step moves each batch norm's beta ``bias_rate`` times as far
    as the plain optimizer does, every other weight exactly as far; the optimizer saves
    and loads with its rate; and it is sgd's alone."""
    from fmnist.errors import ConfigError
    from fmnist.recipe import new_model

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64)
    moved = {}
    for rate in (1.0, 8.0):
        config = TrainConfig(model="cnn-fast", optimizer="sgd", learning_rate=0.05,
                             weight_decay=0.0, precision="float32", bias_rate=rate)
        model = new_model(config, 100)
        before = {w.path: np.asarray(w) for w in model.trainable_weights}
        model.train_on_batch(x, y)
        moved[rate] = {w.path: np.asarray(w) - before[w.path] for w in model.trainable_weights}
    betas = [path for path in moved[1.0] if path.endswith("/beta")]
    assert len(betas) == 4
    for path, step in moved[1.0].items():
        factor = 8.0 if path in betas else 1.0
        np.testing.assert_allclose(moved[8.0][path], factor * step, rtol=1e-4, atol=1e-7)
    model.save(tmp_path / "checkpoint.keras")
    loaded = keras.saving.load_model(tmp_path / "checkpoint.keras", safe_mode=True)
    assert type(loaded.optimizer).__name__ == "BiasRateSGD" and loaded.optimizer.bias_rate == 8.0
    with pytest.raises(ConfigError, match="bias_rate: 4.0 is sgd's"):
        TrainConfig(optimizer="adam", bias_rate=4.0)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_betas_reach_the_optimizer_and_change_its_steps(optimizer):
    from fmnist.recipe import new_model

    config = TrainConfig(model="mlp", optimizer=optimizer, beta_1=0.7, beta_2=0.9)
    model = new_model(config, 10)
    assert (model.optimizer.beta_1, model.optimizer.beta_2) == (0.7, 0.9)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32)
    steps = {}
    for betas in ((0.9, 0.999), (0.7, 0.9)):
        model = new_model(config.replace(beta_1=betas[0], beta_2=betas[1]), 10)
        before = [np.asarray(w) for w in model.trainable_weights]
        for _ in range(3):
            model.train_on_batch(x, y)
        steps[betas] = [np.asarray(w) - b for w, b in zip(model.trainable_weights, before)]
    assert not np.allclose(steps[(0.9, 0.999)][0], steps[(0.7, 0.9)][0])
    again = new_model(config, 10)
    before = [np.asarray(w) for w in again.trainable_weights]
    for _ in range(3):
        again.train_on_batch(x, y)
    for moved, w, b in zip(steps[(0.7, 0.9)], again.trainable_weights, before):
        np.testing.assert_array_equal(np.asarray(w) - b, moved)  # a seed fixes the result
    sgd = new_model(config.replace(optimizer="sgd"), 10)  # sgd has no betas: they stay unused
    assert type(sgd.optimizer).__name__ == "SGD"

"""`fmnist bench` end to end on a tiny budget, and its pure helpers."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from conftest import load_script, run_cli, run_main
from fmnist.bench import measure, render, store, summary
from fmnist.errors import FmnistError
from fmnist.models import build_model


def test_crossings_count_epoch_time_until_the_first_hit():
    history = [{"epoch": 1, "seconds": 2.0, "val_accuracy": 0.8},
               {"epoch": 2, "seconds": 3.0, "val_accuracy": 0.92},
               {"epoch": 3, "seconds": 3.0, "val_accuracy": 0.90}]
    assert summary.crossings(history) == {"0.91": {"epoch": 2, "seconds": 5.0},
                                        "0.92": {"epoch": 2, "seconds": 5.0}, "0.93": None}


def test_crossing_medians_say_not_reached_when_any_seed_missed():
    hit = {"0.91": {"epoch": 2, "seconds": 10.0}, "0.92": {"epoch": 4, "seconds": 20.0},
           "0.93": None}
    other = {"0.91": {"epoch": 3, "seconds": 14.0}, "0.92": {"epoch": 5, "seconds": 24.0},
             "0.93": {"epoch": 9, "seconds": 40.0}}
    medians = summary.median_crossings([{"val_crossings": hit}, {"val_crossings": other}])
    assert medians == {"0.91": {"epoch": 2.5, "seconds": 12.0},
                       "0.92": {"epoch": 4.5, "seconds": 22.0}, "0.93": None}
    row = {"model": "cnn-fast", "device": "CPU", "val_crossings_median": medians}
    assert "| epoch 2.5, 12.0 s | epoch 4.5, 22.0 s | not reached |" in render.crossing_table([row])


def test_recorded_commands_hold_no_absolute_path(tmp_path):
    command = store.repo_relative_command(
        ["bench", "train", "--seeds", "3", "--runs-dir", str(tmp_path / "runs"),
         f"--json={tmp_path}/b.json", "--models", "mlp"], cwd=str(tmp_path))
    assert command == "fmnist bench train --seeds 3 --runs-dir runs --json=b.json --models mlp"
    outside = store.repo_relative_command(["bench", "--data-dir", "/elsewhere/data"], cwd="/repo")
    assert outside == "fmnist bench --data-dir ../elsewhere/data"
    variant = store.repo_relative_command(
        ["bench", "train", "--variant", f"cnn-fast --teacher {tmp_path}/t --epochs 3",
         f"--variant=mlp --teacher={tmp_path}/u", "--variant", "mlp --epochs 2"], cwd=str(tmp_path))
    assert variant == ("fmnist bench train --variant 'cnn-fast --teacher t --epochs 3' "
                       "'--variant=mlp --teacher=u' --variant 'mlp --epochs 2'")


def _row(model, seconds, accuracy, steady=10.0, flops=7.0, bench_id="b1", flip=False,
         precision="float32", tta=None):
    row = {"model": model, "device": "CPU", "seeds": [0, 1, 2], "params": 1000, "epochs": 10,
           "precision": precision, "flip": flip, "train_seconds_median": seconds,
           "train_seconds": [seconds] * 3, "steady_epoch_seconds": steady,
           "forward_mflops": flops, "n_train": 54000, "n_test": 10000,
           "test_accuracy": [accuracy] * 3, "test_accuracy_mean_std": (accuracy, 0.0),
           "test_accuracy_tta": [tta] * 3 if tta else [],
           "test_accuracy_tta_mean_std": (tta, 0.0) if tta else None,
           "predict_images_per_second": 1000.0, "peak_rss_mb": 900.0, "bench_id": bench_id,
           "interleaved": True, "val_crossings_median": {}}
    summary._refloor(row, {"float32": 100.0, "bfloat16": 200.0})
    return row


def test_default_target_compares_with_the_reference_of_the_same_run():
    rows = [_row("cnn-tfdocs", 300.0, 0.915), _row("cnn-fast", 140.0, 0.931, steady=15.0)]
    result = summary.default_target(rows)
    assert result["same_run"] and result["accuracy_met"] and result["time_met"]
    assert result["time_ratio"] == pytest.approx(140 / 300)
    floor = 3 * 7e6 * 54000 / 100e9  # float32 peak of 100 GFLOP/s
    assert result["floor_ratio"] == pytest.approx(15.0 / floor) and result["floor_met"]  # 1.32x
    rows[1]["steady_epoch_seconds"] = 20.0  # 1.76x the floor
    assert not summary.default_target(rows)["floor_met"]
    rows[0]["bench_id"] = "another day"
    different_days = summary.default_target(rows)
    assert not different_days["same_run"] and different_days["time_ratio"] is None
    assert not different_days["time_met"]
    assert "not interleaved" in render.default_target_text(rows)
    rows[0]["bench_id"], rows[0]["interleaved"] = rows[1]["bench_id"], False  # one run, in turn
    assert summary.default_target(rows)["time_ratio"] is None
    assert summary.default_target([_row("mlp", 9.0, 0.88)]) is None


def _fake_training(monkeypatch) -> list[tuple]:
    """Replace each seed's training by a record of (model, seed, run folder, arguments)."""
    from fmnist.bench import runs

    trained = []

    def fake_seed(model, seed, out, data_dir, extra, resume, log):
        trained.append((model, seed, out.name, extra))
        return {"seed": seed, "test_accuracy": 0.9, "train_seconds": 1.0, "precision": "float32"}, False

    monkeypatch.setattr(runs, "bench_seed", fake_seed)
    monkeypatch.setattr(runs, "forward_flops", lambda model: 1)
    monkeypatch.setattr(runs, "predict_throughput", lambda path: 1.0)
    monkeypatch.setattr("keras.saving.load_model", lambda *args, **kwargs: None)
    return trained


def test_a_bench_interleaves_the_seeds_of_its_models(monkeypatch, tmp_path):
    from fmnist.bench import runs

    trained = _fake_training(monkeypatch)
    entries = runs.bench_entries(["A", "B"], [], None, None)
    measured = runs._bench_interleaved(entries, range(3), tmp_path, None, False,
                                       lambda *a, **k: None)
    assert [f"{model}{seed}" for model, seed, *_ in trained] == ["A0", "B0", "A1", "B1", "A2", "B2"]
    assert [m[0]["model"] for m in measured] == ["A", "B"]
    assert [r["seed"] for r in measured[1][1]] == [0, 1, 2]


def test_variants_alternate_with_the_presets_each_with_its_own_arguments(monkeypatch, tmp_path):
    from fmnist.bench import runs

    trained = _fake_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    entries = runs.bench_entries(["cnn-fast"], [], None, [
        "cnn-fast --epochs=14", "cnn-fast --teacher 'runs/t-seed{seed}' --epochs=14"])
    runs._bench_interleaved(entries, range(2), tmp_path / "runs", None, False, lambda *a, **k: None)
    # Seed by seed: the preset, then each variant; each run with its arguments only.
    assert [(model, seed, extra) for model, seed, _, extra in trained[:3]] == [
        ("cnn-fast", 0, []), ("cnn-fast", 0, ["--epochs=14"]),
        ("cnn-fast", 0, ["--epochs=14", "--teacher", "runs/t-seed0"])]
    assert trained[5][3] == ["--epochs=14", "--teacher", "runs/t-seed1"]  # its seed's teacher
    folders = {folder for _, _, folder, _ in trained}
    assert len(folders) == 6 and "cnn-fast-seed0" in folders  # no variant writes another's runs
    assert [entry["naming"]["recipe"] for entry in entries] == ["", "--epochs=14", "--epochs=14"]
    assert entries[2]["naming"]["teacher"] == {"run": "runs/t-seed{seed}"}
    # --teacher and --train-arg go to the plain models only, as before variants.
    (taught,) = runs.bench_entries(["mlp"], ["--epochs=1"], "runs/t", None)
    assert taught["extra"] == ["--epochs=1"] and taught["naming"]["teacher"] == {"run": "runs/t"}


@pytest.mark.parametrize("spec, says", [
    ("", "does not start with a model name"), ("--epochs 3", "does not start with a model name"),
    ("cnn-fast --seed 3", "sets --seed, which the bench sets"),
    ("cnn-fast --out=x", "sets --out, which the bench sets"),
    ("cnn-fast --teacher", "--teacher needs a run directory"),
    ("cnn-fast --label 'open", "close its quotes")])
def test_a_malformed_variant_is_refused_in_one_line(spec, says):
    from fmnist.bench.runs import parse_variant

    with pytest.raises(FmnistError, match=says) as raised:
        parse_variant(spec)
    assert "\n" not in str(raised.value)


def test_bench_refuses_a_bad_variant_before_any_run(tmp_path):
    common = ["--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "b.json"),
              "--markdown", str(tmp_path / "B.md"), "--data-dir", str(tmp_path / "no-data")]
    twice = run_main("bench", "train", "--models", "cnn-fast", "--variant", "cnn-fast", *common)
    assert twice.returncode == 2 and "trains 'cnn-fast' twice" in twice.stderr
    unknown = run_main("bench", "train", "--variant", "cnn-nope --epochs 3", *common)
    assert unknown.returncode == 2 and "cnn-nope" in unknown.stderr
    refused = run_main("bench", "train", "--variant", "cnn-fast --epochs zero", *common)
    assert refused.returncode == 2, refused.stderr
    assert "`fmnist train` refuses 'cnn-fast --epochs zero'" in refused.stderr
    assert "--epochs" in refused.stderr.split("refuses", 1)[1].split(":", 1)[1]
    for result in (twice, unknown, refused):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "b.json").exists()


def test_the_floor_uses_the_peak_of_the_precision_trained_in():
    f32, bf16 = _row("cnn-fast", 1, 0.9), _row("cnn-fast", 1, 0.9, precision="bfloat16")
    assert f32["epoch_floor_seconds"] == pytest.approx(2 * bf16["epoch_floor_seconds"])


def test_tta_is_shown_only_for_models_trained_with_flips():
    table = render.results_table([_row("mlp", 9.0, 0.878, tta=0.83),
                                 _row("cnn-fast", 99.0, 0.930, flip=True, tta=0.9325)])
    mlp_line, fast_line = table.splitlines()[2:]
    assert "0.83" not in mlp_line and "| — |" in mlp_line
    assert "0.9325 ± 0.0000" in fast_line


def _other_kind() -> dict:
    """A bench.json holding only another machine kind's figures (AVX-512 BF16)."""
    section = {"machine": {"cpu": "AMD EPYC", "cpu_kind": "avx512-bf16", "cores": 2,
                           "device": "CPU", "cpu_flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
                           "peak_gflops": {"float32": 203.0, "bfloat16": 393.0}},
               "rows": [_row("mlp", 9.7, 0.879)], "command": "fmnist bench train --seeds 3",
               "updated_utc": "2026-11-26T01:37:08+00:00"}
    return {"format": store.FORMAT, "machines": {"cpu-avx512-bf16-2cores": section}}


def test_a_bench_file_of_another_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"rows": [], "peak_gflops": {}}))  # the single-machine layout
    with pytest.raises(FmnistError, match="has format None, not 3") as raised:
        store.load_report(path)
    assert "\n" not in str(raised.value)
    path.write_text("{")
    with pytest.raises(FmnistError, match="is not valid JSON"):
        store.load_report(path)
    path.write_text(json.dumps(_other_kind()))
    assert list(store.load_report(path)["machines"]) == ["cpu-avx512-bf16-2cores"]


def test_each_machine_kind_gets_its_own_section_and_a_presets_row(tmp_path):
    avx2 = {"machine": {"cpu": "AMD EPYC", "cpu_kind": "avx2", "cores": 2, "device": "CPU",
                        "cpu_flags": ["avx2", "fma"], "peak_gflops": {"float32": 92.0,
                                                                      "bfloat16": 9.0}},
            "rows": [_row("cnn-tfdocs", 290.0, 0.915), _row("cnn-fast", 150.0, 0.931, flip=True)],
            "command": "fmnist bench", "updated_utc": "2026-11-27T10:00:00+00:00"}
    report = {"format": 3, "machines": {"cpu-avx2-2cores": avx2}}
    report["machines"].update(_other_kind()["machines"])
    markdown = render.render_markdown(report, current="cpu-avx2-2cores")
    first, second = markdown.index("(`cpu-avx2-2cores`)"), markdown.index("(`cpu-avx512-bf16-2cores`)")
    assert first < second  # the kind measured now comes first
    assert markdown.count("Not re-measured in the latest bench run") == 1
    assert markdown.index("Not re-measured in the latest bench run") > second
    # Rendered later without a bench run: the latest run's kind is still the one measured.
    assert render.render_markdown(report) == markdown
    assert "x86-64 AVX2, no AVX-512, no native bfloat16, 2 cores" in markdown
    table = render.presets_table(report)
    assert "| `cnn-fast` | AVX2 | float32 |" in table and "| `mlp` | AVX-512 BF16 |" in table


def test_forward_flops_of_the_seed_mlp():
    model = build_model("mlp")
    assert measure.forward_flops(model) == 2 * (784 * 128 + 128 * 10)


def test_forward_flops_count_convolutions():
    model = build_model("cnn-tfdocs")
    conv1 = 2 * 28 * 28 * 32 * 9 * 1
    conv2 = 2 * 14 * 14 * 64 * 9 * 32
    dense = 2 * (3136 * 128 + 128 * 10)
    assert measure.forward_flops(model) == conv1 + conv2 + dense




@pytest.mark.slow
def test_bench_runs_a_model_and_writes_its_reports(real_data_dir, train_only_data_dir, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)  # a README.md in the current folder is never the bench's to write
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    # Figures of another kind of machine are already in the file: they must survive.
    other = json.loads(json.dumps(_other_kind()))  # as bench.json holds it: lists, not tuples
    if "cpu-avx512-bf16-2cores" == store.machine_kind(measure.machine(measure=False)):
        other["machines"] = {"cpu-avx2-2cores": other["machines"]["cpu-avx512-bf16-2cores"]}
    (other_kind,) = other["machines"]
    (tmp_path / "bench.json").write_text(json.dumps(other))
    result = run_cli(
        "bench", "train", "--models", "mlp", "--seeds", "2", "--runs-dir", str(tmp_path / "runs"),
        "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "BENCH.md"),
        "--data-dir", str(real_data_dir),
        "--train-arg=--epochs=1", "--train-arg=--train-size=2000", "--train-arg=--val-size=500",
        "--train-arg=--test-size=500", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machines"][other_kind] == other["machines"][other_kind]  # untouched
    (kind,) = set(report["machines"]) - {other_kind}
    section = report["machines"][kind]
    (row,) = section["rows"]
    assert row["model"] == "mlp" and row["seeds"] == [0, 1] and row["n_train"] == 2000
    # Trained off the preset's recipe: a row of its own, that says so.
    assert row["recipe"] == ("--epochs=1 --train-size=2000 --val-size=500 --test-size=500")
    assert section["command"].startswith("fmnist bench train --models mlp")
    assert row["commands"] == [section["command"]]
    words = shlex.split(section["command"])
    assert not [word for word in words if os.path.isabs(word.rpartition("=")[2])], words
    assert len(row["test_accuracy"]) == 2 and not row["flip"]
    assert row["test_accuracy_tta"] == []  # --tta does not apply to a model without flips
    assert set(row["runs"][0]["val_crossings"]) == {"0.91", "0.92", "0.93"}
    assert row["precision"] in ("float32", "bfloat16")
    assert 0.5 < row["test_accuracy_mean_std"][0] <= 1.0
    assert row["peak_rss_mb"] > 100 and row["predict_images_per_second"] > 1000
    record = section["machine"]
    assert record["peak_gflops"]["float32"] > 1 and record["cores"] >= 1
    assert {"cpu", "cpu_flags", "cpu_kind", "onednn"} <= set(record)
    markdown = (tmp_path / "BENCH.md").read_text()
    cell = "| `mlp` with `--epochs=1 --train-size=2000 --val-size=500 --test-size=500` | CPU |"
    assert cell in markdown and record["cpu"] in markdown
    assert markdown.index(f"(`{kind}`)") < markdown.index(f"(`{other_kind}`)")
    assert "Not re-measured in the latest bench run" in markdown and "### Time to accuracy" in markdown
    assert readme.read_text() == "# x\n"
    # --resume: a finished seed is taken as it stood, one stopped between its training and
    # its evaluation is finished, a new seed is trained; none is trained again.
    seed0, seed1 = (tmp_path / "runs" / summary.run_name(row, seed) for seed in (0, 1))
    trained_at = (seed0 / "model.keras").stat().st_mtime_ns
    evaluated = json.loads((seed1 / "metrics.json").read_text())
    (seed1 / "metrics.json").write_text(json.dumps(
        {key: value for key, value in evaluated.items() if not key.startswith("test_")}))
    resumed = run_main(
        "bench", "train", "--resume", "--models", "mlp", "--seeds", "3",
        "--runs-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "bench.json"),
        "--markdown", str(tmp_path / "BENCH.md"),
        "--data-dir", str(real_data_dir), "--train-arg=--epochs=1", "--train-arg=--train-size=2000",
        "--train-arg=--val-size=500", "--train-arg=--test-size=500")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "taking the finished run" in resumed.stdout and "resuming" in resumed.stdout
    (row,) = json.loads((tmp_path / "bench.json").read_text())["machines"][kind]["rows"]
    assert row["seeds"] == [0, 1, 2] and (seed0 / "model.keras").stat().st_mtime_ns == trained_at
    assert row["test_accuracy"][1] == evaluated["test_accuracy"]  # the same model, scored again
    assert row["runs"][0]["peak_rss_mb"] is None and row["runs"][2]["peak_rss_mb"] > 100
    assert row["peak_rss_mb"] == max(run["peak_rss_mb"] for run in row["runs"][1:])
    assert len(row["commands"]) == 2 and not row["bench_id"]  # the taken seeds' bench and this
    # The same bench file gains the inference and the serving sections of this machine,
    # from a data folder without test files: only training (its evaluation) reads them.
    common = ["--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "BENCH.md"),
              "--data-dir", str(train_only_data_dir)]
    inference = run_main("bench", "inference", "--runs-dir", str(tmp_path / "runs"), *common)
    assert inference.returncode == 0, inference.stderr[-2000:]
    (engines,) = json.loads((tmp_path / "bench.json").read_text())["machines"][kind]["inference"]
    assert engines["model"] == "mlp" and engines["images"] == 500  # the runs' --val-size
    assert engines["checked_on"] == "validation"
    assert engines["max_abs_difference"] <= 1e-4 and engines["class_mismatches"] == 0
    assert engines["onnx_images_per_second"] > 1000 and engines["keras_one_image_ms"] > 0
    # A one-epoch model may miss the 99% agreement the int8 copy needs: then it has none.
    assert (engines["int8_class_agreement"] is None) == (engines["int8_images_per_second"] is None)
    first_run = tmp_path / "runs" / summary.run_name(row, 0)  # off the preset: a folder of its own
    assert first_run.name.startswith("mlp-") and first_run.name != "mlp-seed0"
    assert (first_run / "model.onnx").is_file()
    # The ensemble of the two seeds: evaluated on the test set, so with the full data.
    # The ensemble study (scripts/studies.py): evaluated on the test set, so the full data.
    studies = load_script("studies")
    assert studies.main(["ensemble", "--model", "mlp", "--runs-dir", str(tmp_path / "runs"),
                         *common[:-1], str(real_data_dir)]) == 0
    (ensemble,) = json.loads((tmp_path / "bench.json").read_text())["machines"][kind]["ensembles"]
    assert ensemble["seeds"] == [0, 1, 2] and ensemble["class_mismatches"] == 0
    assert len(ensemble["members_test_accuracy"]) == 3 and 0.5 < ensemble["test_accuracy"] <= 1
    assert "### Ensembles" in (tmp_path / "BENCH.md").read_text()
    served = run_cli("bench", "serve", str(first_run), "--engine", "onnx",
                     "--requests", "150", "--clients", "2", "4", "--burst-seconds", "2", *common)
    assert served.returncode == 0, served.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (load,) = report["machines"][kind]["serve"]
    assert load["engine"] == "onnx" and [lv["clients"] for lv in load["levels"]] == [2, 4]
    assert all(lv["errors"] == 0 and lv["requests"] == 150 and lv["p50_ms"] <= lv["p99_ms"]
               for lv in load["levels"])
    assert load["memory"]["after_all_mb"] > 50 and len(report["machines"][kind]["rows"]) == 1
    burst = load["burst"]  # 8 clients sending 40 MP requests: served or refused, never failed
    assert set(burst["statuses"]) <= {"200", "503"} and sum(burst["statuses"].values()) > 0
    assert burst["health_probes"] > 10 and burst["peak_rss_mb"] >= burst["rss_after_start_mb"]
    assert report["machines"][other_kind] == other["machines"][other_kind]
    markdown = (tmp_path / "BENCH.md").read_text()
    assert "### Inference engines" in markdown and "| 4 | 150 |" in markdown
    assert "**Burst**: 8 clients" in markdown
    # The soak, in its 20-second version: steady traffic, RSS sampled, answers counted.
    soaked = run_main("bench", "serve", str(first_run / "model.onnx"), "--soak", "0.34", *common)
    assert soaked.returncode == 0, soaked.stderr[-2000:]
    (soak,) = json.loads((tmp_path / "bench.json").read_text())["machines"][kind]["soak"]
    assert soak["errors"] == 0 and soak["statuses"].get("200", 0) == soak["requests"] > 100
    assert soak["engine"] == "onnx" and len(soak["rss_samples_mb"]) >= 10
    assert soak["rss_baseline_mb"] > 50 and soak["p99_first_ms"] > 0 and soak["p99_last_ms"] > 0
    assert "### Serving: soak" in (tmp_path / "BENCH.md").read_text()


def test_bench_resume_refuses_a_run_directory_of_another_seed(tmp_path):
    from fmnist.bench.runs import bench_seed

    out = tmp_path / "cnn-fast-seed1"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": "cnn-fast", "seed": 0}))
    with pytest.raises(FmnistError, match="holds cnn-fast seed 0, not cnn-fast seed 1"):
        bench_seed("cnn-fast", 1, out, None, [], resume=True, log=lambda *a, **k: None)
    assert (out / "config.json").is_file()  # left as it was


def test_a_row_of_runs_taken_as_they_stood_shows_no_peak_rss():
    runs = [{"seed": 0, "params": 1, "epochs": 1, "n_train": 10, "n_test": 10, "train_seconds": 1.0,
             "steady_epoch_seconds": 1.0, "test_accuracy": 0.9, "val_accuracy": 0.9,
             "val_crossings": {}, "peak_rss_mb": None}]
    row = summary.summarize("mlp", runs, 1000.0, 10**6, {"float32": 100.0}, "CPU")
    assert row["peak_rss_mb"] is None
    assert render.speed_table([row]).splitlines()[-1].endswith("| — |")


def test_a_row_whose_seeds_a_budget_gave_different_epochs_shows_their_range():
    run = {"params": 1, "n_train": 10, "n_test": 10, "train_seconds": 1.0,
           "steady_epoch_seconds": 1.0, "test_accuracy": 0.9, "val_accuracy": 0.9,
           "val_crossings": {}, "peak_rss_mb": 500.0}
    runs = [{**run, "seed": seed, "epochs": epochs} for seed, epochs in enumerate([150, 133, 122])]
    row = summary.summarize("cnn-best", runs, 1000.0, 10**6, {"float32": 100.0}, "CPU")
    assert "| 1 | 122-150 |" in render.results_table([row])
    same = summary.summarize("cnn-best", runs[:1] * 2, 1000.0, 10**6, {"float32": 100.0}, "CPU")
    assert "| 1 | 150 |" in render.results_table([same])


def test_render_rewrites_the_page_and_nothing_else(tmp_path):
    path, markdown = tmp_path / "bench.json", tmp_path / "BENCH.md"
    path.write_text(json.dumps(_other_kind()))
    before = path.read_bytes()
    result = run_cli("bench", "render", "--json", str(path), "--markdown", str(markdown))
    assert result.returncode == 0, result.stderr
    assert "(`cpu-avx512-bf16-2cores`)" in markdown.read_text()
    assert "| `mlp` | CPU | float32 |" in markdown.read_text()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "BENCH.md", "bench.json"]


def test_a_serve_only_bench_file_renders(tmp_path):
    """A first `fmnist bench serve` into a new bench.json has no training section."""
    serve_only = {"format": store.FORMAT, "machines": {"cpu-avx2-2cores": {
        "machine": {"cpu": "AMD EPYC", "cpu_kind": "avx2", "cores": 2, "device": "CPU"},
        "serve": [{"command": "fmnist bench serve m", "utc": "2026-11-27", "model": "mlp",
                   "engine": "onnx", "endpoint": "POST /v1/predict", "image": "one PNG",
                   "warmup_requests": 10, "memory": {"after_start_mb": 90.0, "after_warmup_mb": 95.0,
                                                     "after_all_mb": 96.0, "growth_percent": 1.0},
                   "levels": []}]}}}
    markdown = tmp_path / "B.md"
    render.render(serve_only, markdown)
    text = markdown.read_text()
    assert "fmnist bench serve m" in text and "Not measured yet: `fmnist bench inference`" in text
    assert render.presets_table(serve_only).count("\n") == 1  # the header alone


def test_rendering_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, fmnist.bench.render, fmnist.bench.store, fmnist.bench.summary; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_distilled_row_is_its_own_row_checked_against_the_distillation_target():
    plain = _row("cnn-fast", 300.0, 0.930, flip=True, tta=0.932)
    taught = dict(_row("cnn-fast", 310.0, 0.936, flip=True, tta=0.938),
                  teacher={"run": "runs/bench/cnn-best-seed0", "model": "cnn-best", "seconds": 9.0})
    slow = dict(_row("cnn-fast", 700.0, 0.940, flip=True),
                teacher={"run": "runs/other", "model": "cnn-best", "seconds": 9.0})
    rows = [_row("cnn-tfdocs", 600.0, 0.915), plain, taught, slow]
    table = render.targets_table(rows)
    assert "`cnn-fast` (teacher: one `cnn-best` run)" in table
    assert "runs/bench" not in table  # a teacher is named in words, not by its run's path
    lines = [line for line in table.splitlines() if "teacher:" in line]
    assert lines[0].endswith("| yes |") and lines[1].endswith("| **no** |")  # 700 s > 2 x 300 s
    assert "teacher's pass: 9.0 s more" in lines[0] and "(600.0 s)" in lines[0]
    # The time bound is set only by a plain row whose seeds alternated with the student's.
    taught["bench_id"] = "another bench"
    (verdict, _) = summary.distill_verdicts(rows)
    assert verdict["limit"] is None and not verdict["met"] and verdict["plain_row"]
    line = next(line for line in render.targets_table(rows).splitlines() if "runs/bench" not in line
                and "one `cnn-best` run" in line)
    assert "not set: the plain row's seeds did not alternate" in line and line.endswith("| **no** |")
    taught["bench_id"], plain["interleaved"] = plain["bench_id"], False
    assert summary.distill_verdicts(rows)[0]["limit"] is None
    (alone,) = summary.distill_verdicts([taught])
    assert alone["limit"] is None and not alone["plain_row"]
    assert "(no plain row)" in render.targets_table([taught])
    # The plain row stays the one the default model's target is measured by.
    assert summary.default_target(rows)["accuracy"] == 0.930
    assert render.results_table(rows).count("teacher:") == 2


def test_a_distilled_best_model_is_checked_against_its_target_with_its_teachers_time_said():
    plain = _row("cnn-best", 3300.0, 0.949, flip=True, tta=0.951)
    teacher = {"run": "runs/bench/cnn-best-seed{seed}", "model": "cnn-best", "seconds": 50.0,
               "train_seconds": 3200.0}
    taught = dict(_row("cnn-best", 3500.0, 0.952, flip=True, tta=0.953), teacher=teacher)
    late = dict(_row("cnn-best", 3700.0, 0.953, flip=True), teacher=teacher, recipe="--epochs=200")
    lines = render.targets_table([plain, taught, late]).splitlines()[2:]
    assert "teacher" not in lines[0] and lines[0].endswith("| with TTA only |")  # the plain row
    taught_line = next(line for line in lines if "teacher:" in line and "--epochs" not in line)
    assert "teacher: `cnn-best` of the student's own seed and split" in taught_line
    assert "within 3600 s of its own training" in taught_line
    assert taught_line.endswith("| yes, after its teacher's 3200 s of training |")
    assert next(line for line in lines if "--epochs=200" in line).endswith("| **no** |")  # > 1 h
    short = dict(taught, test_accuracy_mean_std=(0.949, 0.0))  # 0.953 with TTA
    assert render.targets_table([short]).endswith(
        "| with TTA only, after its teacher's 3200 s of training |")


def test_each_seed_of_a_teacher_with_a_seed_placeholder_has_its_own_teacher():
    from fmnist.bench.runs import row_teacher, teacher_for_seed

    template = "runs/bench/cnn-best-seed{seed}"
    assert teacher_for_seed(template, 2) == "runs/bench/cnn-best-seed2"
    assert teacher_for_seed("runs/bench/cnn-best-ensemble", 2) == "runs/bench/cnn-best-ensemble"
    runs = [{"teacher": {"run": f"runs/bench/cnn-best-seed{seed}", "model": "cnn-best",
                         "test_accuracy": accuracy, "test_accuracy_tta": None,
                         "train_seconds": seconds, "seconds": 40.0}}
            for seed, (accuracy, seconds) in enumerate([(0.948, 3000.0), (0.950, 3400.0)])]
    row = row_teacher(runs, template)
    # One name for the row (its folders keep it), and the teachers' figures averaged.
    assert row["run"] == template and row["model"] == "cnn-best"
    assert row["test_accuracy"] == pytest.approx(0.949) and row["train_seconds"] == 3200.0
    assert row["test_accuracy_tta"] is None
    single = row_teacher(runs[:1], "runs/bench/cnn-best-seed0")
    assert single["run"] == "runs/bench/cnn-best-seed0" and single["test_accuracy"] == 0.948
    assert row_teacher([{"teacher": None}], None) is None


def test_bench_refuses_a_seed_placeholder_teacher_missing_for_one_seed(tmp_path, real_data_dir):
    (tmp_path / "t-seed0").mkdir()
    (tmp_path / "t-seed0" / "model.keras").write_bytes(b"not used: the check is before training")
    result = run_main("bench", "train", "--models", "mlp", "--seeds", "2",
                      "--teacher", str(tmp_path / "t-seed{seed}"), "--runs-dir", str(tmp_path / "runs"),
                      "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "B.md"),
                      "--data-dir", str(real_data_dir))
    assert result.returncode == 1
    assert "t-seed1 does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "b.json").exists()


def test_a_row_off_the_preset_recipe_is_its_own_row_and_not_the_reference():
    from fmnist.bench.runs import variant_key

    preset = _row("cnn-fast", 140.0, 0.931)
    longer = dict(_row("cnn-fast", 280.0, 0.936), recipe="--epochs 20")
    assert variant_key(preset) == "" and variant_key(longer) == "--epochs 20"
    assert variant_key(dict(longer, teacher={"run": "runs/t"})) != variant_key(longer)
    rows = [_row("cnn-tfdocs", 300.0, 0.915), longer, preset]
    assert summary.default_target(rows)["accuracy"] == 0.931  # the preset, not the variant
    assert "| `cnn-fast` with `--epochs 20` | CPU |" in render.results_table(rows)


def test_gpu_rows_and_single_runs_are_checked_against_the_gpu_targets():
    from fmnist.bench.targets import GPU_TARGETS

    accuracy, seconds = GPU_TARGETS["cnn-best"]
    gpu = dict(_row("cnn-best", seconds - 1, accuracy + 0.001), device="GPU: H100")
    cpu = _row("cnn-best", seconds - 1, accuracy + 0.001)  # CPU: 0.950 in an hour is the bar
    table = render.targets_table([gpu, cpu])
    assert f">= {accuracy:.3f} within {seconds:.0f} s" in table and ">= 0.950 within 3600 s" in table
    run = {"model": "cnn-best", "recipe": "--epochs 100", "device": "GPU: H100", "seed": 0,
           "precision": "bfloat16", "precision_reason": "auto: the GPU computes it natively",
           "backend": "jax", "params": 7_502_250, "epochs": 100, "train_seconds": 155.3,
           "val_accuracy": 0.9533, "test_accuracy": 0.9516, "test_accuracy_tta": 0.9532,
           "command": "fmnist train --model cnn-best --epochs 100", "utc": "2026-11-28",
           "source": "the run's metrics.json"}
    text = render.single_runs_section({"single_runs": [run, dict(run, train_seconds=700.0,
                                                                 test_accuracy=0.961)]})
    lines = [line for line in text.splitlines() if line.startswith("| `cnn-best`")]
    assert "| 0.9516 | 0.9532 | >= 0.960 within 600 s | **no** |" in lines[0]
    assert lines[1].endswith("| **no** |")  # accurate enough, but over the 10 minutes
    assert "Precision bfloat16: auto: the GPU computes it natively." in text
    section = render.section_markdown("gpu-h100", {"machine": {"device": "GPU: H100", "cpu": "x",
                                                               "backend": "jax"},
                                                   "single_runs": [run]}, None)
    assert "### Single runs" in section and "flags: not recorded" in section


def test_the_tta_table_marks_the_set_chosen_on_validation():
    result = {"model": "cnn-fast", "seeds": [0, 1], "shift": 1, "chosen_on_validation": "flip",
              "command": "fmnist bench tta --model cnn-fast", "utc": "2026-11-28",
              "sets": {"plain": {"views": 1, "validation": [0.93, 0.94], "test": [0.92, 0.93]},
                       "flip": {"views": 2, "validation": [0.94, 0.95], "test": [0.93, 0.94]}}}
    table = render.tta_section({"tta": [result]})
    assert "| flip | 2 | 0.9450 ± 0.0071 | 0.9350 ± 0.0071 | **yes** |" in table
    assert "| plain | 1 | 0.9350 ± 0.0071 | 0.9250 ± 0.0071 |  |" in table
    assert "Not measured yet" in render.tta_section({})


def test_the_tta_table_names_the_recipe_its_runs_departed_from_the_preset_with():
    result = {"model": "cnn-best", "recipe": "--model-option=widths14=[32,32]", "seeds": [0, 1],
              "shift": 1, "chosen_on_validation": "plain",
              "command": "fmnist bench tta --model cnn-best", "utc": "2026-11-28",
              "sets": {"plain": {"views": 1, "validation": [0.94, 0.95], "test": [0.93, 0.94]}}}
    table = render.tta_section({"tta": [result]})
    assert "| `cnn-best` with `--model-option=widths14=[32,32]` seeds [0, 1] | plain |" in table


def test_a_study_needs_a_benchmarked_model(tmp_path, real_data_dir, capsys):
    studies = load_script("studies")
    (tmp_path / "bench.json").write_text(json.dumps({"format": 3, "machines": {}}))
    common = ["--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "B.md"),
              "--data-dir", str(real_data_dir)]
    assert studies.main(["tta", "--model", "cnn-fast", *common]) == 1
    err = capsys.readouterr().err
    assert "no row of cnn-fast with two or more seeds" in err
    assert "fmnist bench train --models cnn-fast" in err
    assert studies.main(["ensemble", "--model", "cnn-fast", "--train-arg=--epochs=20", *common]) == 1
    assert "trained with `--epochs=20`" in capsys.readouterr().err
    for study in ("tta", "ensemble"):  # a name that is no model: one line naming the choices
        assert studies.main([study, "--model", "nosuch", *common]) == 1
        err = capsys.readouterr().err
        assert "unknown model 'nosuch'" in err and "cnn-fast" in err


def test_each_kind_of_row_keeps_its_runs_in_folders_of_its_own():
    plain = {"model": "cnn-fast"}
    assert summary.run_name(plain, 2) == "cnn-fast-seed2"
    assert summary.ensemble_name(plain) == "cnn-fast-ensemble"
    taught = dict(plain, teacher={"run": "runs/bench/cnn-fast-ensemble"})
    assert summary.run_name(taught, 0).startswith("cnn-fast-distilled-")
    other_teacher = dict(plain, teacher={"run": "runs/bench/cnn-best-seed0"})
    longer, shorter = dict(plain, recipe="--epochs=20"), dict(plain, recipe="--epochs=5")
    rows = (plain, taught, other_teacher, longer, shorter, dict(taught, recipe="--epochs=20"))
    names = {summary.run_name(row, 0) for row in rows}
    assert len(names) == len(rows) and summary.run_name(longer, 0) == summary.run_name(dict(longer), 0)


def test_a_teacher_typed_absolute_or_relative_names_the_same_students(tmp_path, monkeypatch):
    from fmnist.bench.runs import teacher_spelling

    (tmp_path / "runs" / "t").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spellings = {teacher_spelling(path) for path in
                 ("runs/t", "./runs/t", "runs/t/", str(tmp_path / "runs" / "t"), "runs/../runs/t")}
    assert spellings == {os.path.join("runs", "t")}


def test_ensembles_and_view_studies_take_the_preset_row_or_the_only_other_one():
    _plain_row = load_script("studies")._plain_row

    def report(*rows):
        return {"machines": {"k": {"rows": [dict(_row("cnn-fast", 1.0, 0.9), **r) for r in rows]}}}

    preset, variant = {}, {"recipe": "--epochs=20"}
    assert "recipe" not in _plain_row(report(variant, preset), "k", "cnn-fast", Path("b.json"))
    assert _plain_row(report(variant), "k", "cnn-fast", Path("b.json"))["recipe"] == "--epochs=20"
    with pytest.raises(FmnistError, match="2 rows of cnn-fast off its preset"):
        _plain_row(report(variant, {"recipe": "--epochs=5"}), "k", "cnn-fast", Path("b.json"))
    with pytest.raises(FmnistError, match="no row of cnn-fast with two or more seeds"):
        _plain_row(report(dict(preset, seeds=[0])), "k", "cnn-fast", Path("b.json"))


def test_train_arg_names_the_row_an_ensemble_or_a_view_study_is_made_of():
    _plain_row = load_script("studies")._plain_row

    def report(*rows):
        return {"machines": {"k": {"rows": [dict(_row("cnn-fast", 1.0, 0.9), **r) for r in rows]}}}

    both = report({"recipe": "--epochs=20"}, {"recipe": "--epochs=5"}, {})
    assert _plain_row(both, "k", "cnn-fast", Path("b.json"), "--epochs=5")["recipe"] == "--epochs=5"
    assert "recipe" not in _plain_row(both, "k", "cnn-fast", Path("b.json"), "")
    with pytest.raises(FmnistError, match="no row of cnn-fast trained with `--epochs=9`"):
        _plain_row(both, "k", "cnn-fast", Path("b.json"), "--epochs=9")
    with pytest.raises(FmnistError, match="no row of cnn-fast of its preset"):
        _plain_row(report({"recipe": "--epochs=5"}), "k", "cnn-fast", Path("b.json"), "")


def test_a_result_replaces_only_the_earlier_one_of_its_model_and_recipe():
    _replacing = load_script("studies")._replacing

    preset, half = {"model": "cnn-best", "n": 1}, {"model": "cnn-best", "recipe": "--half", "n": 1}
    other = {"model": "cnn-fast", "n": 1}
    results = _replacing([preset, half, other], {"model": "cnn-best", "recipe": "--half", "n": 2})
    assert [r["n"] for r in results if r.get("recipe") == "--half"] == [2]
    assert preset in results and other in results and len(results) == 3
    assert _replacing(results, {"model": "cnn-best", "recipe": None, "n": 3})[-1]["n"] == 3
    assert preset not in _replacing(results, {"model": "cnn-best", "recipe": None, "n": 3})


def test_the_ensemble_table_names_the_recipe_of_its_members():
    result = {"model": "cnn-best", "recipe": "--epochs=5", "seeds": [0, 1, 2],
              "run": "runs/bench/cnn-best-0000-ensemble", "test_accuracy": 0.95,
              "test_accuracy_tta": None, "members_test_accuracy": [0.94, 0.94, 0.94],
              "train_seconds": 9.0, "keras_images_per_second": 10.0,
              "onnx_images_per_second": 20.0, "max_abs_difference": 1e-7, "images": 60,
              "class_mismatches": 0, "command": "fmnist bench ensemble", "utc": "2026-11-28"}
    table = render.ensembles_section({"ensembles": [result]})
    assert "| `cnn-best` with `--epochs=5` seeds [0, 1, 2] | 0.9500 | — | 0.9400 |" in table
    assert "runs/bench" not in table
    # Parity images are the first member's validation split, which the others trained on.
    assert "1.0e-07 on 60 images of seed 0's validation split |" in table


def test_a_soak_is_judged_on_its_length_memory_errors_and_latency_drift():
    from fmnist.bench.loadtest import soak_figures

    answers = [(t / 10, 20.0 if t < 9000 else 25.0, "200") for t in range(18_000)]  # 30 min
    answers[100] = (10.0, 1.0, "503")  # a full pool's answer, waited out: not an error
    answers[200] = (20.0, 1.0, "IncompleteReadError")
    memory = [(60.0 * minute, 100.0 + minute / 10) for minute in range(31)]
    figures = soak_figures(answers, memory, 1800.0)
    assert figures["errors"] == 1 and figures["statuses"]["503"] == 1
    assert figures["rss_baseline_mb"] == 100.1 and figures["rss_end_mb"] == 103.0
    assert figures["p99_first_ms"] == 20.0 and figures["p99_last_ms"] == 25.0
    result = {**figures, "engine": "onnx", "workers": 1, "clients": 8, "minutes": 30,
              "mix": "m", "command": "fmnist bench serve m --soak 30", "utc": "2026-12-07"}
    verdicts = {v["name"]: v["met"] for v in summary.soak_verdicts(result)}
    assert verdicts == {"length": True, "RSS growth": True, "errors": False, "p99 drift": True}
    text = render.soak_section({"soak": [result]})
    assert "| onnx | 1 | 8 | 30 | 18,000 |" in text and "errors 1 (target 0): **not met**" in text
    assert "p99 drift 1.25x <= 1.5x: met" in text
    assert render.soak_section({}).startswith("Not measured yet")


def test_an_ood_result_is_judged_and_rendered():
    result = {"model": "cnn-fast", "sha256": "a" * 64, "method": "m", "threshold": -8.0,
              "command": "fmnist bench ood", "utc": "2026-12-07T00:00:00+00:00",
              "in_distribution": {"test uploads": {"images": 100, "flagged": 0.05, "accuracy": 0.93}},
              "sets": {"digits": {"images": 50, "auroc": 0.995, "fpr_at_95_tpr": 0.0, "accepted": 0.0},
                       "photo crops": {"images": 50, "auroc": 0.98, "fpr_at_95_tpr": 0.08,
                                       "accepted": 0.1}}}
    verdicts = {v["name"]: v["met"] for v in summary.ood_verdicts(result)}
    assert verdicts == {"digits AUROC": True, "digits FPR@95": True, "photo crops AUROC": False,
                        "photo crops FPR@95": False, "test uploads flagged": True}
    text = render.ood_section({"ood": [result]})
    assert "| photo crops | 50 | 0.9800 | 0.080 | 10.0% |" in text and "**not met**" in text
    assert render.ood_section({}).startswith("Not measured yet")


def test_the_conv_floor_sits_beside_the_matmul_floor_where_its_peak_was_measured():
    """A row gets a second, achievable floor from the machine's 3x3 conv training peak;
    the default target reports the epoch against it (no target) and the speed table
    shows both. Rows of a machine without a conv peak show a dash."""
    rows = [_row("cnn-tfdocs", 300.0, 0.915), _row("cnn-fast", 140.0, 0.931, steady=15.0)]
    summary._refloor(rows[1], {"float32": 100.0}, {"float32": 50.0})
    conv_floor = 3 * 7e6 * 54000 / 50e9
    assert rows[1]["epoch_conv_floor_seconds"] == pytest.approx(conv_floor)
    result = summary.default_target(rows)
    assert result["conv_floor_ratio"] == pytest.approx(15.0 / conv_floor)
    assert result["floor_ratio"] == pytest.approx(2 * result["conv_floor_ratio"])
    assert "achievable floor of its 3x3 convs" in render.default_target_text(rows)
    table = render.speed_table(rows)
    assert f"{15.0 / conv_floor:.2f}x" in table and "epoch / conv floor" in table
    # Each row shows the peaks it was floored at: its own bench run's, not the latest's.
    fast_line, reference_line = table.splitlines()[3], table.splitlines()[2]
    assert "| 100 / 50 |" in fast_line and "| 100 / — |" in reference_line
    assert rows[0]["epoch_conv_floor_seconds"] is None
    assert "achievable" not in render.default_target_text(rows[:1] + [_row("cnn-fast", 140.0, 0.931)])


def test_the_conv_peak_is_a_rate_a_cpu_can_reach():
    from fmnist.bench.measure import conv_peak_gflops

    rate = conv_peak_gflops("float32", repeats=2)
    assert 1.0 < rate < 100_000.0

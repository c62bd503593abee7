"""`fmnist bench` end to end on a tiny budget, and its pure helpers."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from fmnist import bench
from fmnist.models import build_model


def test_seconds_to_reach_accuracy_counts_epoch_time_until_first_hit():
    history = [{"seconds": 2.0, "val_accuracy": 0.8}, {"seconds": 3.0, "val_accuracy": 0.92},
               {"seconds": 3.0, "val_accuracy": 0.90}]
    assert bench.seconds_to(history, 0.91) == 5.0
    assert bench.seconds_to(history, 0.95) is None


def test_forward_flops_of_the_seed_mlp():
    model = build_model("mlp", compile=False)
    assert bench.forward_flops(model) == 2 * (784 * 128 + 128 * 10)


def test_forward_flops_count_convolutions():
    model = build_model("cnn-tfdocs", compile=False)
    conv1 = 2 * 28 * 28 * 32 * 9 * 1
    conv2 = 2 * 14 * 14 * 64 * 9 * 32
    dense = 2 * (3136 * 128 + 128 * 10)
    assert bench.forward_flops(model) == conv1 + conv2 + dense


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_START}\nold\n{bench.README_END}\noutro\n")
    row = {"model": "mlp", "device": "CPU", "params": 10, "epochs": 1, "train_seconds_median": 1.0,
           "test_accuracy_mean_std": (0.5, 0.0), "test_accuracy_tta_mean_std": None, "seeds": [0],
           "predict_images_per_second": 100.0}
    assert bench.update_readme(readme, [row])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| `mlp` | CPU | 10 | 1 | 1.0 | 0.5000 ± 0.0000 | - | 1 | 100 |" in text


@pytest.mark.slow
def test_bench_runs_a_model_and_writes_its_reports(real_data_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{bench.README_START}\n{bench.README_END}\n")
    result = run_cli(
        "bench", "--models", "mlp", "--seeds", "2", "--runs-dir", str(tmp_path / "runs"),
        "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "BENCH.md"),
        "--readme", str(readme), "--data-dir", str(real_data_dir),
        "--train-arg=--epochs=1", "--train-arg=--train-size=2000", "--train-arg=--val-size=500",
        "--train-arg=--test-size=500", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["model"] == "mlp" and row["seeds"] == [0, 1] and row["n_train"] == 2000
    assert row["commands"] == [report["command"]] and report["command"].startswith("fmnist bench --models mlp")
    assert len(row["test_accuracy"]) == 2 and len(row["test_accuracy_tta"]) == 2
    assert 0.5 < row["test_accuracy_mean_std"][0] <= 1.0
    assert row["peak_rss_mb"] > 100 and row["predict_images_per_second"] > 1000
    assert report["peak_gflops"]["float32"] > 1
    markdown = (tmp_path / "BENCH.md").read_text()
    assert "| `mlp` | CPU |" in markdown and report["machine"]["cpu"] in markdown
    assert "| `mlp` | CPU |" in readme.read_text()
    # The same bench file gains the inference and the serving sections.
    common = ["--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "BENCH.md"),
              "--readme", "", "--data-dir", str(real_data_dir)]
    inference = run_cli("bench", "--inference", "--runs-dir", str(tmp_path / "runs"), *common)
    assert inference.returncode == 0, inference.stderr[-2000:]
    (engines,) = json.loads((tmp_path / "bench.json").read_text())["inference"]
    assert engines["model"] == "mlp" and engines["images"] == 10_000
    assert engines["max_abs_difference"] <= 1e-4 and engines["class_mismatches"] == 0
    assert engines["onnx_images_per_second"] > 1000 and engines["keras_one_image_ms"] > 0
    # A one-epoch model may miss the 99% agreement the int8 copy needs: then it has none.
    assert (engines["int8_class_agreement"] is None) == (engines["int8_images_per_second"] is None)
    assert (tmp_path / "runs" / "mlp-seed0" / "model.onnx").is_file()
    served = run_cli("bench", "--serve", str(tmp_path / "runs" / "mlp-seed0"), "--engine", "onnx",
                     "--requests", "150", "--clients", "2", "4", *common)
    assert served.returncode == 0, served.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    (load,) = report["serve"]
    assert load["engine"] == "onnx" and [lv["clients"] for lv in load["levels"]] == [2, 4]
    assert all(lv["errors"] == 0 and lv["requests"] == 150 and lv["p50_ms"] <= lv["p99_ms"]
               for lv in load["levels"])
    assert load["memory"]["after_all_mb"] > 50 and len(report["rows"]) == 1
    markdown = (tmp_path / "BENCH.md").read_text()
    assert "## Inference engines" in markdown and "| 4 | 150 |" in markdown

"""Statistics over runs and the verdicts on them: per-model rows from per-seed runs,
medians, time to accuracy, and whether each target is met, as data (booleans and the
figures they compare), which the renderer only formats. Pure functions of the stored
figures."""

from __future__ import annotations

import hashlib
import statistics

from fmnist.bench.targets import (BURST_TARGETS, DEFAULT_MODEL, DEFAULT_TARGET, DISTILL_TARGET,
                                  GPU_TARGETS, ONNX_TARGET, OOD_TARGETS, REFERENCE_MODEL,
                                  SERVE_TARGETS, SOAK_TARGETS, TARGETS, VAL_THRESHOLDS)


def crossings(history: list[dict], thresholds=VAL_THRESHOLDS) -> dict:
    """For each validation accuracy in ``thresholds``: the first epoch (1-based) whose
    validation accuracy reached it and the training seconds until then, or None."""
    found = {}
    for threshold in thresholds:
        elapsed, found[f"{threshold:.2f}"] = 0.0, None
        for row in history:
            elapsed += row["seconds"]
            if row.get("val_accuracy", 0.0) >= threshold:
                found[f"{threshold:.2f}"] = {"epoch": int(row["epoch"]), "seconds": elapsed}
                break
    return found


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


RUN_KEYS = ("seed", "params", "epochs", "n_train", "n_test", "train_seconds",
            "steady_epoch_seconds", "test_accuracy", "test_accuracy_tta", "val_accuracy",
            "val_crossings", "precision", "flip", "peak_rss_mb", "teacher")


def merge_runs(old_row: dict | None, new_runs: list[dict]) -> list[dict]:
    """The runs of a model: the new seeds' runs, plus stored runs of other seeds.

    Lets a long model be benchmarked a few seeds at a time (``--seed-start``) and still
    be summarized over all of them.
    """
    fresh = [{key: run.get(key) for key in RUN_KEYS} for run in new_runs]
    seeds = {run["seed"] for run in fresh}
    kept = [run for run in (old_row or {}).get("runs", []) if run["seed"] not in seeds]
    return sorted(kept + fresh, key=lambda run: run["seed"])


def summarize(model: str, runs: list[dict], throughput: float, flops: int,
              peaks: dict, device: str, conv_peaks: dict | None = None) -> dict:
    """One row of the table from the per-seed runs of one model; ``peaks`` are the
    machine's matmul peaks, ``conv_peaks`` its 3x3 conv training peaks (when measured),
    GFLOP/s by precision."""
    accuracies = [r["test_accuracy"] for r in runs]
    tta = [r["test_accuracy_tta"] for r in runs if r.get("test_accuracy_tta") is not None]
    row = {
        "model": model,
        "device": device,
        "seeds": [r["seed"] for r in runs],
        "params": runs[0]["params"],
        "epochs": runs[0]["epochs"],
        "precision": runs[-1].get("precision") or "float32",
        "flip": bool(runs[-1].get("flip")),
        "train_seconds_median": statistics.median(r["train_seconds"] for r in runs),
        "train_seconds": [r["train_seconds"] for r in runs],
        "steady_epoch_seconds": statistics.median(r["steady_epoch_seconds"] for r in runs),
        "forward_mflops": flops / 1e6,
        "test_accuracy": accuracies,
        "test_accuracy_mean_std": mean_std(accuracies),
        "test_accuracy_tta": tta,
        "test_accuracy_tta_mean_std": mean_std(tta) if tta else None,
        "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in runs),
        "val_crossings_median": median_crossings(runs),
        "predict_images_per_second": throughput,
        # None where no run's was measured (runs taken as they stood: bench --resume).
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb") is not None),
                           default=None),
        "n_train": runs[0]["n_train"],
        "n_test": runs[0]["n_test"],
        "runs": runs,
    }
    _refloor(row, peaks, conv_peaks)
    return row


def median_crossings(runs: list[dict]) -> dict:
    """Per threshold: median epoch and seconds over the seeds, None if a seed never got
    there (a median over the seeds that did would flatter the model)."""
    summary = {}
    for threshold in (f"{t:.2f}" for t in VAL_THRESHOLDS):
        if not runs or any(threshold not in (r.get("val_crossings") or {}) for r in runs):
            continue  # not recorded for every seed
        reached = [r["val_crossings"][threshold] for r in runs]
        if any(hit is None for hit in reached):
            summary[threshold] = None
            continue
        epochs = [hit["epoch"] for hit in reached]
        summary[threshold] = {
            "epoch": None if None in epochs else statistics.median(epochs),
            "seconds": statistics.median(hit["seconds"] for hit in reached)}
    return summary


def run_name(row: dict, seed: int) -> str:
    """The folder, under the bench's runs directory, of a row's run of ``seed``:
    ``MODEL-seedN``, with ``-distilled-`` and a short hash of the teacher's run path for
    a teacher's student, and a short hash of the training arguments for a recipe off the
    preset, so that variants never overwrite the preset's runs nor another teacher's
    students. ``row`` needs only ``model``, and ``teacher`` (``{"run": PATH}``) and
    ``recipe`` where set."""
    return f"{_run_stem(row)}-seed{seed}"


def ensemble_name(row: dict) -> str:
    """The folder of the ensemble of a row's seeds (``MODEL-ensemble``, and so on)."""
    return f"{_run_stem(row)}-ensemble"


def _run_stem(row: dict) -> str:
    name = row["model"]
    if row.get("teacher"):
        name += "-distilled-" + _short_hash(row["teacher"]["run"])
    if row.get("recipe"):
        name += "-" + _short_hash(row["recipe"])
    return name


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def is_plain(row: dict) -> bool:
    """Whether a row is its model's preset, trained as registered: no teacher, and no
    training argument departing from the recipe."""
    return not row.get("teacher") and not row.get("recipe")


def default_target(rows: list[dict]) -> dict | None:
    """The default model against the reference, as measured in the same bench run.

    Returns the figures and whether each part of ``DEFAULT_TARGET`` is met; None when
    either model is missing from ``rows``. The time ratio is computed only when both rows
    come from one bench run that interleaved their seeds (``same_run``); otherwise it is
    None and the time target is not met: a drift between two runs is not a cost.
    """
    by_model = ({row["model"]: row for row in rows
                 if row["device"] == rows[0]["device"] and is_plain(row)} if rows else {})
    fast, reference = by_model.get(DEFAULT_MODEL), by_model.get(REFERENCE_MODEL)
    if fast is None or reference is None:
        return None
    accuracy = fast["test_accuracy_mean_std"][0]
    same_run = interleaved_together(fast, reference)
    ratio = fast["train_seconds_median"] / reference["train_seconds_median"] if same_run else None
    floor = fast.get("epoch_floor_seconds")
    floor_ratio = fast["steady_epoch_seconds"] / floor if floor else None
    conv_floor = fast.get("epoch_conv_floor_seconds")
    return {"accuracy": accuracy, "seeds": len(fast["seeds"]), "time_ratio": ratio,
            "seconds": fast["train_seconds_median"],
            "reference_seconds": reference["train_seconds_median"],
            "floor_ratio": floor_ratio, "same_run": same_run,
            "conv_floor_ratio": fast["steady_epoch_seconds"] / conv_floor if conv_floor else None,
            "accuracy_met": accuracy >= DEFAULT_TARGET["accuracy"],
            "time_met": ratio is not None and ratio <= DEFAULT_TARGET["time_ratio"],
            "floor_met": floor_ratio is not None and floor_ratio <= DEFAULT_TARGET["floor_ratio"]}


def interleaved_together(row: dict, other: dict) -> bool:
    """Whether every seed of both rows comes from one bench run that alternated their
    seeds (``bench_id``, ``interleaved``): the only rows whose times may be divided."""
    return (row.get("bench_id") is not None and row.get("bench_id") == other.get("bench_id")
            and bool(row.get("interleaved")) and bool(other.get("interleaved")))


def epoch_training_flops(row: dict) -> float:
    """One epoch's training FLOPs as the floors count them: 3 x forward (forward and
    backward) x training images."""
    return 3 * row["forward_mflops"] * 1e6 * row["n_train"]


def _refloor(row: dict, peaks: dict, conv_peaks: dict | None = None) -> None:
    """Set a row's compute floors from the peaks of the precision its runs used: the
    matmul's (``epoch_floor_seconds``) and, where measured, the achievable one of a
    small 3x3 conv's training pass (``epoch_conv_floor_seconds``)."""
    precision = row.get("precision", "float32")
    peak = peaks.get(precision) or peaks.get("float32")
    epoch_flops = epoch_training_flops(row)
    row["epoch_floor_seconds"] = epoch_flops / (peak * 1e9) if peak else None
    conv_peak = (conv_peaks or {}).get(precision)
    row["epoch_conv_floor_seconds"] = epoch_flops / (conv_peak * 1e9) if conv_peak else None
    steady = row.get("steady_epoch_seconds")
    row["achieved_gflops"] = epoch_flops / steady / 1e9 if steady else None


def _targets_for(device: str) -> dict:
    return GPU_TARGETS if device.startswith("GPU") else TARGETS


def target_verdicts(rows: list[dict]) -> list[dict]:
    """Each row that has an absolute target (TARGETS, or GPU_TARGETS on a GPU) against it:
    ``met`` on the plain mean within the time, ``met_with_tta`` where only flip TTA
    reaches it. A distilled row of a model with a target of its own is judged on its own
    training time, its teacher's given beside it; the distilled default model has a
    target of its own (:func:`distill_verdicts`)."""
    verdicts = []
    for row in rows:
        targets, taught = _targets_for(row["device"]), row.get("teacher")
        if row["model"] not in targets or (taught and row["model"] == DISTILL_TARGET["model"]):
            continue
        accuracy, seconds = targets[row["model"]]
        plain = row["test_accuracy_mean_std"][0]
        tta = (row["test_accuracy_tta_mean_std"][0]
               if row.get("flip") and row.get("test_accuracy_tta_mean_std") else None)
        spent = row["train_seconds_median"]
        in_time = seconds is None or spent <= seconds
        met = in_time and plain >= accuracy
        verdicts.append({"row": row, "accuracy": accuracy, "seconds": seconds, "plain": plain,
                         "tta": tta, "spent": spent, "met": met,
                         "met_with_tta": not met and in_time and tta is not None and tta >= accuracy,
                         "teacher_seconds": (taught.get("train_seconds") or 0) if taught else None})
    return verdicts


def distill_verdicts(rows: list[dict]) -> list[dict]:
    """Each distilled row of DISTILL_TARGET's model against it: the accuracy, in at most
    the plain row's training time times the allowed ratio. The limit is set only where
    the plain row's seeds alternated with the distilled row's in one bench run
    (:func:`interleaved_together`); otherwise ``limit`` is None and the target is not met,
    ``plain_row`` saying whether there was a plain row at all."""
    model = DISTILL_TARGET["model"]
    plain = next((r for r in rows if r["model"] == model and is_plain(r)), None)
    verdicts = []
    for row in rows:
        if row["model"] != model or not row.get("teacher"):
            continue
        limit = (plain["train_seconds_median"] * DISTILL_TARGET["time_ratio"]
                 if plain and interleaved_together(plain, row) else None)
        accuracy, spent = row["test_accuracy_mean_std"][0], row["train_seconds_median"]
        tta = row.get("test_accuracy_tta_mean_std") if row.get("flip") else None
        verdicts.append({"row": row, "plain": accuracy, "spent": spent, "limit": limit,
                         "plain_row": plain is not None, "tta": tta[0] if tta else None,
                         "teacher_pass": row["teacher"].get("seconds") or 0,
                         "met": (accuracy >= DISTILL_TARGET["accuracy"] and limit is not None
                                 and spent <= limit)})
    return verdicts


def inference_verdict(rows: list[dict]) -> dict | None:
    """ONNX_TARGET's model on onnxruntime, float32 and int8, against its images/s target;
    None when that model was not measured."""
    model, target = ONNX_TARGET
    row = next((r for r in rows if r["model"] == model), None)
    if row is None:
        return None
    int8 = row.get("int8_images_per_second")
    return {"model": model, "target": target, "float32": row["onnx_images_per_second"],
            "float32_met": row["onnx_images_per_second"] >= target, "int8": int8,
            "int8_met": bool(int8) and int8 >= target,
            "int8_agreement": row.get("int8_class_agreement"),
            "checked_on": row.get("checked_on", "test")}


def serve_verdicts(result: dict) -> list[dict] | None:
    """The load test's targets at SERVE_TARGETS' concurrency: each ``name``, its measured
    ``value``, its ``limit`` and whether it is ``met``; None when that level did not run."""
    at = next((lv for lv in result["levels"] if lv["clients"] == SERVE_TARGETS["clients"]), None)
    if at is None:
        return None
    errors = sum(level["errors"] for level in result["levels"])
    growth = result["memory"]["growth_percent"]
    return [{"name": "p50", "value": at["p50_ms"], "limit": SERVE_TARGETS["p50_ms"],
             "met": at["p50_ms"] <= SERVE_TARGETS["p50_ms"]},
            {"name": "p99", "value": at["p99_ms"], "limit": SERVE_TARGETS["p99_ms"],
             "met": at["p99_ms"] <= SERVE_TARGETS["p99_ms"]},
            {"name": "errors", "value": errors, "limit": 0, "met": errors == 0},
            {"name": "memory", "value": growth, "limit": SERVE_TARGETS["growth_percent"],
             "met": growth < SERVE_TARGETS["growth_percent"]}]


def burst_verdicts(burst: dict) -> list[dict]:
    """The burst scenario's targets: /health's p99, the peak memory, and a saturated
    server answering 503 rather than making clients wait."""
    return [{"name": "/health p99", "value": burst["health_p99_ms"],
             "limit": BURST_TARGETS["health_p99_ms"],
             "met": burst["health_p99_ms"] <= BURST_TARGETS["health_p99_ms"]},
            {"name": "peak RSS", "value": burst["peak_rss_mb"], "limit": BURST_TARGETS["peak_rss_mb"],
             "met": burst["peak_rss_mb"] <= BURST_TARGETS["peak_rss_mb"]},
            {"name": "saturation answered", "value": None, "limit": None,
             "met": "503" in burst["statuses"]}]


def ood_verdicts(result: dict) -> list[dict]:
    """An out-of-distribution result against OOD_TARGETS: AUROC and FPR at 95% TPR on each
    named set, and the share of test uploads flagged."""
    verdicts = []
    for name in OOD_TARGETS["sets"]:
        row = result["sets"].get(name)
        if row is None:
            continue
        verdicts += [{"name": f"{name} AUROC", "value": row["auroc"], "limit": OOD_TARGETS["auroc"],
                      "met": row["auroc"] >= OOD_TARGETS["auroc"]},
                     {"name": f"{name} FPR@95", "value": row["fpr_at_95_tpr"],
                      "limit": OOD_TARGETS["fpr_at_95_tpr"],
                      "met": row["fpr_at_95_tpr"] <= OOD_TARGETS["fpr_at_95_tpr"]}]
    flagged = result["in_distribution"]["test uploads"]["flagged"]
    verdicts.append({"name": "test uploads flagged", "value": flagged, "limit": OOD_TARGETS["flagged"],
                     "met": flagged <= OOD_TARGETS["flagged"]})
    return verdicts


def soak_verdicts(result: dict) -> list[dict]:
    """A soak against SOAK_TARGETS: long enough, RSS growth, errors, p99 drift."""
    ratio = result.get("p99_ratio")
    return [{"name": "length", "value": result["minutes"], "limit": SOAK_TARGETS["minutes"],
             "met": result["minutes"] >= SOAK_TARGETS["minutes"]},
            {"name": "RSS growth", "value": result["rss_growth_percent"],
             "limit": SOAK_TARGETS["rss_growth_percent"],
             "met": abs(result["rss_growth_percent"]) <= SOAK_TARGETS["rss_growth_percent"]},
            {"name": "errors", "value": result["errors"], "limit": 0, "met": result["errors"] == 0},
            {"name": "p99 drift", "value": ratio, "limit": SOAK_TARGETS["p99_ratio"],
             "met": ratio is not None and ratio <= SOAK_TARGETS["p99_ratio"]}]


def single_run_verdict(run: dict) -> dict | None:
    """A single run against its model's target on its kind of device (None: no target)."""
    accuracy, seconds = _targets_for(run["device"]).get(run["model"], (None, None))
    if accuracy is None:
        return None
    return {"accuracy": accuracy, "seconds": seconds,
            "met": run["test_accuracy"] >= accuracy
            and (seconds is None or run["train_seconds"] <= seconds)}

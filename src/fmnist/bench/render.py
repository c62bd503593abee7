"""The benchmarks page and the presets table, from a bench report.

Pure formatting: strings from dicts, importing no TensorFlow, so pages are regenerated
anywhere. Whether a target is met is decided in :mod:`fmnist.bench.summary`, as data;
every table goes through one helper, :func:`fmnist.report.markdown_table`.
Nothing here writes outside the page it is given: the repository's README block is
filled by its own make target (`make readme`), from :func:`presets_table`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fmnist import hardware
from fmnist.bench.store import machine_label
from fmnist.bench.summary import (burst_verdicts, default_target, distill_verdicts,
                                  epoch_training_flops, inference_verdict, is_plain, mean_std,
                                  ood_verdicts, serve_verdicts, single_run_verdict,
                                  soak_verdicts, target_verdicts)
from fmnist.bench.targets import (DEFAULT_MODEL, DEFAULT_TARGET, DISTILL_TARGET, MODEL_ORDER,
                                  REFERENCE_MODEL, SERVE_TARGETS, VAL_THRESHOLDS)
from fmnist.report import markdown_table


def model_cell(row: dict) -> str:
    """The model of a row, its teacher in words when it was distilled, and the training
    arguments that departed from its preset."""
    teacher = row.get("teacher")
    cell = f"`{row['model']}`"
    if teacher:
        cell += f" ({teacher_label(teacher)})"
    if row.get("recipe"):
        cell += f" with `{row['recipe']}`"
    return cell


def teacher_label(teacher: dict) -> str:
    """A teacher as a reader knows it, from what the student recorded of it: its model
    (or an ensemble's size and members), its test accuracy and its training time; never
    the path of its run directory on the bench machine."""
    model = str(teacher.get("model") or "?")
    seconds = teacher.get("train_seconds")
    if "{seed}" in str(teacher.get("run", "")):
        return f"teacher: `{model}` of the student's own seed and split"
    if model.startswith("ensemble of "):
        members = model.removeprefix("ensemble of ").split(", ")
        if len(members) > 1 and len(set(members)) == 1:
            model = f"ensemble of {len(members)} {members[0]}"
        text = f"teacher: {model}"
        time = "" if seconds is None else f", {seconds:,.0f} s of training in all"
    else:
        text = f"teacher: one `{model}` run"
        time = "" if seconds is None else f", {seconds:,.0f} s of training"
    accuracy = teacher.get("test_accuracy")
    return text + ("" if accuracy is None else f" (test {accuracy:.4f}{time})")


def _seeds(row: dict) -> str:
    count = len(row["seeds"])
    return f"{count} seed{'' if count == 1 else 's'}"


def _fmt_acc(pair, seeds: int | None = None) -> str:
    """``mean ± std``; the mean alone for one seed, whose spread was not measured."""
    if not pair:
        return "—"
    mean, std = pair
    return f"{mean:.4f}" if seeds == 1 else f"{mean:.4f} ± {std:.4f}"


def _tta_cell(row: dict) -> str:
    """Flip TTA only means something for models trained with flips (evaluate.tta_applies)."""
    return (_fmt_acc(row.get("test_accuracy_tta_mean_std"), len(row["seeds"])) if row.get("flip")
            else "—")


def results_table(rows: list[dict]) -> str:
    """The Markdown table of rows of one machine kind."""
    return markdown_table(
        ["model", "device", "precision", "params", "epochs", "train s (median)",
         "test acc (mean ± std)", "with flip TTA", "seeds", "predict img/s (batch 1024)"],
        [[model_cell(row), row["device"], row.get("precision", "float32"), f"{row['params']:,}",
          _epochs_cell(row), f"{row['train_seconds_median']:.1f}",
          _fmt_acc(row["test_accuracy_mean_std"], len(row["seeds"])), _tta_cell(row),
          str(len(row["seeds"])), f"{row['predict_images_per_second']:,.0f}"] for row in rows],
        right=(3, 4, 5, 8, 9))


def speed_table(rows: list[dict]) -> str:
    """How close each row's steady epoch comes to its compute floor, and its memory. The
    peaks each row was floored at are those of the bench run that made it, shown beside
    it, since peaks read a few percent apart from one bench run to the next."""
    def cells(row: dict) -> list[str]:
        floor, achieved = row.get("epoch_floor_seconds"), row.get("achieved_gflops")
        conv_floor, flops = row.get("epoch_conv_floor_seconds"), epoch_training_flops(row)
        return [model_cell(row), row["device"], row.get("precision", "float32"),
                f"{row['forward_mflops']:.2f}", f"{row['steady_epoch_seconds']:.1f}",
                "—" if floor is None else f"{floor:.2f}",
                f"{row['steady_epoch_seconds'] / floor:.2f}x" if floor else "—",
                f"{row['steady_epoch_seconds'] / conv_floor:.2f}x" if conv_floor else "—",
                " / ".join("—" if not seconds else f"{flops / seconds / 1e9:.0f}"
                           for seconds in (floor, conv_floor)),
                "—" if achieved is None else f"{achieved:.0f}", _mb(row.get("peak_rss_mb"))]

    return markdown_table(["model", "device", "precision", "forward MFLOP/image", "steady epoch s",
                           "epoch floor s", "epoch / floor", "epoch / conv floor",
                           "peaks floored at, GFLOP/s (matmul / conv)", "achieved GFLOP/s",
                           "peak RSS MB"],
                          [cells(row) for row in rows], right=(3, 4, 5, 6, 7, 8, 9, 10))


def variants_part(rows: list[dict]) -> list[str]:
    """The rows off the presets, grouped by study: a model's other recipes, then the
    model distilled from teachers; each group a table of its own."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        title = (f"`{row['model']}` distilled from a teacher" if row.get("teacher")
                 else f"`{row['model']}`: other recipes")
        groups.setdefault(title, []).append(row)
    if not groups:
        return []
    lines = ["### Variants", "",
             "Recipes and teachers tried beside the presets; what each study concluded is "
             "in its experiment note.", ""]
    for title, members in groups.items():
        lines += [f"#### {title}", "", results_table(members), ""]
    return lines


def _epochs_cell(row: dict) -> str:
    """The epochs the row's runs trained: one count, or the range where a time budget
    gave its seeds different counts."""
    counts = [run["epochs"] for run in row.get("runs", []) if run.get("epochs") is not None]
    low, high = min(counts, default=row["epochs"]), max(counts, default=row["epochs"])
    return f"{low}" if low == high else f"{low}-{high}"


def _mb(megabytes: float | None) -> str:
    return "—" if megabytes is None else f"{megabytes:.0f}"


def crossing_table(rows: list[dict]) -> str:
    """Epoch and training seconds at which validation accuracy first crossed each
    threshold (medians over seeds)."""
    def cell(recorded: dict, threshold: str) -> str:
        hit = recorded.get(threshold)
        if threshold not in recorded:
            return "(not recorded)"
        if hit is None:
            return "not reached"
        if hit["epoch"] is None:
            return f"{hit['seconds']:.1f} s (epoch not recorded)"
        return f"epoch {hit['epoch']:g}, {hit['seconds']:.1f} s"

    thresholds = [f"{t:.2f}" for t in VAL_THRESHOLDS]
    return markdown_table(
        ["model", "device", *(f"val >= {t}" for t in thresholds)],
        [[model_cell(row), row["device"],
          *(cell(row.get("val_crossings_median") or {}, t) for t in thresholds)] for row in rows])


def targets_table(rows: list[dict]) -> str:
    """Each absolute target against the measured mean (plain; TTA said separately), then
    the distilled default model's (the verdicts: summary.target_verdicts, distill_verdicts)."""
    def met(verdict: dict) -> str:
        text = "yes" if verdict["met"] else "with TTA only" if verdict["met_with_tta"] else "**no**"
        if verdict["teacher_seconds"] is not None and (verdict["met"] or verdict["met_with_tta"]):
            # Its own training fits the time; its teacher's came first and is said apart.
            text += f", after its teacher's {verdict['teacher_seconds']:.0f} s of training"
        return text

    lines = []
    for verdict in target_verdicts(rows):
        row, seconds = verdict["row"], verdict["seconds"]
        target = f">= {verdict['accuracy']:.3f}" + (f" within {seconds:.0f} s" if seconds else "")
        if verdict["teacher_seconds"] is not None:
            target += " of its own training"
        lines.append([f"{model_cell(row)} ({row['device']}, {_seeds(row)})", target,
                      f"{verdict['plain']:.4f} in {verdict['spent']:.1f} s",
                      _fmt_number(verdict["tta"]), met(verdict)])
    model = DISTILL_TARGET["model"]
    for verdict in distill_verdicts(rows):
        row, limit = verdict["row"], verdict["limit"]
        bound = (f"{limit:.1f} s" if limit is not None else
                 f"not set: the plain row's seeds did not alternate with these; `fmnist bench "
                 f"train --models {model} --variant '{model} --teacher RUN_DIR ...'` runs both"
                 if verdict["plain_row"]
                 else "no plain row")
        lines.append([f"{model_cell(row)} ({row['device']}, {_seeds(row)})",
                      f">= {DISTILL_TARGET['accuracy']:.3f} within {DISTILL_TARGET['time_ratio']}x "
                      f"the plain `{model}`'s time ({bound})",
                      f"{verdict['plain']:.4f} in {verdict['spent']:.1f} s (teacher's pass: "
                      f"{verdict['teacher_pass']:.1f} s more)",
                      _fmt_number(verdict["tta"]), "yes" if verdict["met"] else "**no**"])
    return markdown_table(["model", "target", "measured (plain)", "with flip TTA", "met"], lines)


def _fmt_number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def tta_section(section: dict) -> str:
    """The test-time views the TTA study (scripts/studies.py tta) scored on this machine kind."""
    results = section.get("tta")
    if not results:
        return "Not measured yet: `python scripts/studies.py tta --model MODEL`."
    table = markdown_table(
        ["model", "test-time views", "forward passes per image", "validation acc (mean ± std)",
         "test acc (mean ± std)", "chosen on validation"],
        [[f"{model_cell(result)} seeds {result['seeds']}",
          name.replace("shifts", f"{result['shift']}-pixel shifts"), str(figures["views"]),
          _fmt_acc(mean_std(figures["validation"])), _fmt_acc(mean_std(figures["test"])),
          "**yes**" if name == result["chosen_on_validation"] else ""]
         for result in results for name, figures in result["sets"].items()], right=(2,))
    lines = [table]
    lines += ["", "- The mean of the probabilities over the views: the image, its mirror, and "
                  "both moved up, down, left and right. The choice is made on each run's "
                  "validation split (ties go to fewer views); the test column reports it.",
              commands_line(results)]
    return "\n".join(lines)


def ensembles_section(section: dict) -> str:
    """The ensembles the ensemble study (scripts/studies.py ensemble) measured on this kind."""
    results = section.get("ensembles")
    if not results:
        return "Not measured yet: `python scripts/studies.py ensemble --model MODEL`."
    def cells(result: dict) -> list[str]:
        members = [a for a in result["members_test_accuracy"] if a is not None]
        return [f"{model_cell(result)} seeds {result['seeds']}", f"{result['test_accuracy']:.4f}",
                _fmt_number(result.get("test_accuracy_tta")),
                f"{sum(members) / len(members):.4f}", f"{result['train_seconds']:.1f}",
                f"{result['keras_images_per_second']:,.0f}",
                f"{result['onnx_images_per_second']:,.0f}",
                f"{result['max_abs_difference']:.1e} on {result['images']:,} images of seed "
                f"{result['seeds'][0]}'s validation split", str(result["class_mismatches"])]

    lines = [markdown_table(["members", "test acc", "with flip TTA", "members' test acc (mean)",
                             "train s (members, summed)", "Keras img/s", "onnxruntime img/s",
                             "ONNX vs Keras max abs diff", "class differences"],
                            [cells(result) for result in results], right=(4, 5, 6, 8))]
    lines += ["", "- One Keras model averaging the members' probabilities (`fmnist ensemble`), "
                  "evaluated on the test set like a run and exported as one ONNX graph under "
                  "the same parity check, on the first member's validation images (members of other "
                  "seeds trained on most of them: parity does not care, accuracy would); img/s as in "
                  "the inference table.",
              commands_line(results)]
    return "\n".join(lines)


def commands_line(results: list[dict]) -> str:
    """One bullet naming the command (and time) that produced each result."""
    return "- " + "; ".join(f"`{r['command']}` ({r['utc']})" for r in results) + "."


def default_target_text(rows: list[dict]) -> str:
    result = default_target(rows)
    if result is None:
        return f"- (needs both `{DEFAULT_MODEL}` and `{REFERENCE_MODEL}` measured on this machine)"

    floor = ("—" if result["floor_ratio"] is None else f"{result['floor_ratio']:.2f}x")
    ratio = ("not computed: the two rows' seeds were not interleaved in one bench run "
             f"(`fmnist bench train --models {REFERENCE_MODEL} {DEFAULT_MODEL}` does)"
             if result["time_ratio"] is None else f"a ratio of **{result['time_ratio']:.2f}**")
    lines = [
        f"- test accuracy (mean of {result['seeds']} seeds, no TTA): **{result['accuracy']:.4f}** "
        f"(target >= {DEFAULT_TARGET['accuracy']:.3f}): {_met(result['accuracy_met'])}",
        f"- training time: {result['seconds']:.1f} s vs `{REFERENCE_MODEL}`'s "
        f"{result['reference_seconds']:.1f} s (medians), {ratio} "
        f"(target <= {DEFAULT_TARGET['time_ratio']}): {_met(result['time_met'])}",
        f"- steady epoch / compute floor: **{floor}** (target <= "
        f"{DEFAULT_TARGET['floor_ratio']}x): {_met(result['floor_met'])}",
    ]
    if result.get("conv_floor_ratio") is not None:
        lines.append(f"- steady epoch / achievable floor of its 3x3 convs: "
                     f"{result['conv_floor_ratio']:.2f}x (no target: see *conv floor* below)")
    return "\n".join(lines)


def inference_section(section: dict) -> str:
    rows = section.get("inference")
    if not rows:
        return "Not measured yet: `fmnist bench inference`."
    def dash(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def cells(row: dict) -> list[str]:
        agreement = (f"{100 * row['agreement_with_trained_model']:.2f}%"
                     if row["mixed_precision_trained"] else "(trained in float32)")
        int8_agreement = row.get("int8_class_agreement")
        return [model_cell(row), row["device"], f"{row['keras_images_per_second']:,.0f}",
                f"{row['onnx_images_per_second']:,.0f}",
                dash(row.get("int8_images_per_second"), ",.0f"),
                f"{row['keras_one_image_ms']:.2f} / {row['onnx_one_image_ms']:.2f} / "
                f"{dash(row.get('int8_one_image_ms'), '.2f')}",
                f"{row['max_abs_difference']:.1e} on {row['images']:,} "
                f"{row.get('checked_on', 'test')} images", str(row["class_mismatches"]),
                agreement, "-" if int8_agreement is None else f"{100 * int8_agreement:.2f}%"]

    lines = [f"Written by `{section['inference_command']}` on {section['inference_utc']}.", "",
             markdown_table(["model", "device", "Keras img/s", "onnxruntime img/s",
                             "onnxruntime int8 img/s", "1 image: Keras / onnxruntime / int8 ms",
                             "ONNX vs Keras max abs diff", "class differences",
                             "agrees with the bf16-trained model", "int8 agrees with float"],
                            [cells(row) for row in rows], right=(2, 3, 4, 7))]
    verdict = inference_verdict(rows)
    if verdict is not None:
        text = (f"Target: `{verdict['model']}` on onnxruntime >= {verdict['target']:,} images/s "
                f"at batch 1024: float32 {verdict['float32']:,.0f}, {_met(verdict['float32_met'])}")
        if verdict["int8"]:
            text += (f"; int8 {verdict['int8']:,.0f}, {_met(verdict['int8_met'])} (same class as "
                     f"float32 for {100 * verdict['int8_agreement']:.2f}% of the "
                     f"{verdict['checked_on']} images)")
        lines += ["", text + "."]
    lines += ["", "- *img/s*: images per second at batch 1024, median of 10 batches after "
                  "warm-up, same random batch for both engines; *1 image*: median latency of "
                  "200 single-image calls.",
              "- *int8*: `fmnist export --quantize int8`, onnxruntime static quantization "
              "(QDQ, per-channel int8 weights, uint8 activations) calibrated on 1,024 training "
              "images; kept only when it picks the float model's class for >= 99% of the checked images.",
              "- The ONNX file is float32 (`fmnist export`); models trained in mixed bfloat16 "
              "run in bfloat16 under Keras, so *agrees with the bf16-trained model* compares the two "
              "precisions' classes on the checked images.",
              "- *checked images*: the run's validation split, rebuilt from its seed (rows "
              "measured before the test set was left to `evaluate` alone say *test*)."]
    return "\n".join(lines)


def serve_section(section: dict) -> str:
    results = section.get("serve")
    if not results:
        return "Not measured yet: `fmnist bench serve RUN_DIR`."
    parts = []
    for result in results:
        memory = result["memory"]
        levels = markdown_table(
            ["concurrent clients", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
             "errors", "server CPU ms/request", "client CPU ms/request", "server RSS after, MB"],
            [[str(level["clients"]), f"{level['requests']:,}", f"{level['requests_per_second']:.0f}",
              f"{level['p50_ms']:.1f}", f"{level['p90_ms']:.1f}", f"{level['p99_ms']:.1f}",
              f"{level['max_ms']:.1f}", str(level["errors"]),
              f"{level['server_cpu_ms_per_request']:.2f}",
              f"{level['client_cpu_ms_per_request']:.2f}", f"{level['server_rss_after_mb']:.0f}"]
             for level in result["levels"]], right=tuple(range(11)))
        lines = [f"`{result['command']}` ({result['utc']}): model `{result['model']}`, engine "
                 f"{result['engine']}, {result.get('workers', 1)} server process(es), "
                 f"{result['endpoint']} with {result['image']}, "
                 f"{result['warmup_requests']} warm-up requests first.", "", levels,
                 "", f"Server memory: {memory['after_start_mb']:.0f} MB after start-up, "
                     f"{memory['after_warmup_mb']:.0f} MB after warm-up, "
                     f"{memory['after_all_mb']:.0f} MB after all requests "
                     f"({memory['growth_percent']:+.1f}% since warm-up)."]
        checks = serve_verdicts(result)
        if checks is not None:
            words = {"p50": lambda v: f"{v['value']:.1f} ms <= {v['limit']:.0f}",
                     "p99": lambda v: f"{v['value']:.1f} ms <= {v['limit']:.0f}",
                     "errors": lambda v: "0 errors",
                     "memory": lambda v: f"growth {v['value']:+.1f}% < {v['limit']:.0f}%"}
            lines += ["", f"Targets at {SERVE_TARGETS['clients']} clients: " + "; ".join(
                f"{v['name']} {words[v['name']](v)}: {_met(v['met'])}" for v in checks) + "."]
        if "burst" in result:
            lines += ["", burst_lines(result["burst"])]
        parts.append("\n".join(lines))
    parts.append("The load generator (asyncio streams speaking HTTP/1.1 keep-alive, in the bench "
                 "process) runs on the same "
                  "machine as the server and competes with it for the cores.")
    return "\n\n".join(parts)


def soak_section(section: dict) -> str:
    """The soaks `fmnist bench serve --soak` ran on this machine kind."""
    results = section.get("soak")
    if not results:
        return "Not measured yet: `fmnist bench serve RUN_DIR --soak 30`."
    words = {"length": lambda v: f"{v['value']:g} min >= {v['limit']}",
             "RSS growth": lambda v: f"{v['value']:+.1f}% within ±{v['limit']:.0f}%",
             "errors": lambda v: f"{v['value']} (target 0)",
             "p99 drift": lambda v: ("—" if v["value"] is None else f"{v['value']:.2f}x")
                                    + f" <= {v['limit']}x"}
    table = markdown_table(
        ["engine", "workers", "clients", "minutes", "requests", "req/s", "errors",
         "RSS after the first window, MB", "RSS at the end, MB", "peak RSS, MB",
         "p99 first window, ms", "p99 last window, ms"],
        [[result["engine"], str(result["workers"]), str(result["clients"]), f"{result['minutes']:g}",
          f"{result['requests']:,}", f"{result['requests_per_second']:.0f}", str(result["errors"]),
          f"{result['rss_baseline_mb']:.0f}", f"{result['rss_end_mb']:.0f}",
          f"{result['rss_peak_mb']:.0f}", f"{result['p99_first_ms']:.1f}",
          f"{result['p99_last_ms']:.1f}"] for result in results], right=tuple(range(1, 12)))
    lines = [table, ""]
    for result in results:
        lines.append(f"- `{result['command']}` ({result['utc']}): {result['mix']}; RSS after "
                     f"the first {result['rss_window_seconds']:.0f} s against the end, p99 of the "
                     f"first {result['p99_window_seconds']:.0f} s against the last. Targets: "
                     + "; ".join(f"{v['name']} {words[v['name']](v)}: {_met(v['met'])}"
                                 for v in soak_verdicts(result)) + ".")
    return "\n".join(lines)


def ood_section(section: dict) -> str:
    """The out-of-distribution flags `fmnist bench ood` measured on this machine kind."""
    results = section.get("ood")
    if not results:
        return "Not measured yet: `fmnist bench ood`."
    parts = []
    for result in results:
        inside = markdown_table(
            ["Fashion-MNIST test images", "images", "flagged", "accuracy"],
            [[name, f"{row['images']:,}", f"{100 * row['flagged']:.1f}%", f"{row['accuracy']:.4f}"]
             for name, row in result["in_distribution"].items()], right=(1, 2, 3))
        outside = markdown_table(
            ["out-of-distribution set", "images", "AUROC", "FPR at 95% TPR", "accepted"],
            [[name, f"{row['images']:,}", f"{row['auroc']:.4f}", f"{row['fpr_at_95_tpr']:.3f}",
              f"{100 * row['accepted']:.1f}%"] for name, row in result["sets"].items()],
            right=(1, 2, 3, 4))
        verdicts = "; ".join(
            f"{v['name']} {v['value']:.3f} ({'>=' if 'AUROC' in v['name'] else '<='} {v['limit']}): "
            f"{_met(v['met'])}" for v in ood_verdicts(result))
        parts.append(f"`{result['model']}` (SHA-256 {result['sha256'][:12]}), score: "
                     f"{result['method']}, threshold {result['threshold']:.2f}.\n\n{inside}\n\n"
                     f"{outside}\n\n- `{result['command']}` ({result['utc']}). Targets: {verdicts}.")
    parts.append("Every image goes through the upload path (encoded as a file, decoded and "
                 "converted like a user's) except the raw, contrast and shift rows, which are "
                 "arrays as the pixels endpoint takes them.")
    return "\n\n".join(parts)


def burst_lines(burst: dict) -> str:
    """The burst scenario of a serve result, as Markdown."""
    statuses = ", ".join(f"{count:,} x {status}" for status, count in burst["statuses"].items())
    words = {"/health p99": lambda v: f"{v['value']:.1f} ms <= {v['limit']:.0f}",
             "peak RSS": lambda v: f"{v['value']:.0f} MB <= {v['limit']:.0f}",
             "saturation answered": lambda v: "503 + Retry-After seen"}
    table = markdown_table(
        ["/health probes", "p50 ms", "p99 ms", "max ms", "server RSS at start, MB",
         "peak RSS, MB", "statuses"],
        [[f"{burst['health_probes']:,}", f"{burst['health_p50_ms']:.1f}",
          f"{burst['health_p99_ms']:.1f}", f"{burst['health_max_ms']:.1f}",
          f"{burst['rss_after_start_mb']:.0f}", f"{burst['peak_rss_mb']:.0f}", statuses]],
        right=(0, 1, 2, 3, 4, 5))
    return "\n".join([
        f"**Burst**: {burst['clients']} clients, each sending back to back, for "
        f"{burst['seconds']:.0f} s, the largest request the defaults accept "
        f"({burst['images_per_request']} PNGs, {burst['request_pixels']:,} pixels in all, "
        f"{burst['request_bytes']:,} bytes), ignoring Retry-After; one more client asks "
        "`/health` every 20 ms.", "", table, "",
        "Targets: " + "; ".join(f"{v['name']} {words[v['name']](v)}: {_met(v['met'])}"
                                for v in burst_verdicts(burst)) + "."])


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def ordered_sections(report: dict, current: str | None) -> list[tuple[str, dict]]:
    """(kind, section) pairs: the kind measured now first, then the most recent first."""
    sections = list(report["machines"].items())
    sections.sort(key=lambda item: (item[0] != current, _neg_time(item[1].get("updated_utc"))))
    return sections


def _neg_time(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return -datetime.fromisoformat(stamp).timestamp()


def latest_kind(report: dict) -> str | None:
    """The machine kind whose training rows the most recent bench run wrote."""
    trained = [(section.get("updated_utc"), kind) for kind, section in report["machines"].items()
               if section.get("rows") and section.get("updated_utc")]
    return max(trained)[1] if trained else None


def render(report: dict, markdown_path: Path, current: str | None = None) -> None:
    """Write the benchmarks page from a bench report; ``current``: the machine kind
    measured by this invocation (default: the latest bench run's)."""
    current = current or latest_kind(report)
    markdown_path.write_text(render_markdown(report, current))


# How a machine record's matmul peak was taken, by Keras backend (JAX runs a float32
# product on TF32 tensor cores by default, which is why its float32 peak is so high).
FRAMEWORKS = {"tensorflow": "TensorFlow", "jax": "JAX (keras.ops, float32 on TF32 cores)",
              "torch": "torch (keras.ops)"}


def single_runs_section(section: dict) -> str:
    """Runs recorded one by one (one seed each, not a bench row), and the targets of
    their models on this kind of device."""
    runs = section.get("single_runs") or []

    def cells(run: dict) -> list[str]:
        verdict = single_run_verdict(run)
        target = "—" if verdict is None else (
            f">= {verdict['accuracy']:.3f}"
            + (f" within {verdict['seconds']:.0f} s" if verdict["seconds"] else ""))
        return [f"`{run['model']}`", f"`{run['recipe'] or '(preset)'}`", run["precision"],
                run["backend"], f"{run['params']:,}", str(run["epochs"]),
                f"{run['train_seconds']:.1f}", f"{run['val_accuracy']:.4f}",
                f"{run['test_accuracy']:.4f}", _fmt_number(run.get("test_accuracy_tta")), target,
                "—" if verdict is None else "yes" if verdict["met"] else "**no**"]

    lines = [markdown_table(["model", "recipe", "precision", "backend", "params", "epochs",
                             "train s", "val acc", "test acc", "with flip TTA", "target", "met"],
                            [cells(run) for run in runs], right=(4, 5, 6))]
    notes = [f"- `{run['command']}` ({run['utc']}): {run['source']}. Precision {run['precision']}: "
             f"{run.get('precision_reason', '')}." for run in runs]
    return "\n".join([*lines, "", "- One seed each: a single run, not a mean over seeds.", *notes])


def machine_text(record: dict) -> str:
    peaks = record.get("peak_gflops") or {}
    flags = ("not recorded" if "cpu_flags" not in record else
             ", ".join(record["cpu_flags"]) or "none of " + ", ".join(hardware.RELEVANT_CPU_FLAGS))
    inferred = (" (inferred from its matmul peaks: that bench predates flag recording)"
                if record.get("cpu_flags_inferred") else "")
    text = (f"{record.get('cpu', '?')}, {record.get('cores', '?')} cores, {record.get('device', 'CPU')}; "
            f"flags: {flags}{inferred}; oneDNN: {record.get('onednn', '?')}")
    if peaks:
        framework = FRAMEWORKS.get(record.get("backend", "tensorflow"), record.get("backend"))
        size = record.get("peak_matmul_size", 2048)
        text += (f"; {framework} {size}x{size} matmul peak: {peaks.get('float32', 0):.0f} GFLOP/s "
                 f"float32, {peaks.get('bfloat16', 0):.0f} bfloat16")
    if conv := record.get("peak_conv_gflops"):
        text += (f"; 3x3 conv training pass: {conv.get('float32', 0):.0f} GFLOP/s float32, "
                 f"{conv.get('bfloat16', 0):.0f} bfloat16")
    versions = [f"{name} {record[key]}" for name, key in
                (("Python", "python"), ("Keras", "keras"), ("Keras backend", "backend"),
                 ("TensorFlow", "tensorflow"), ("NumPy", "numpy")) if record.get(key)]
    return text + (f". {', '.join(versions)}." if versions else ".")


def section_markdown(kind: str, section: dict, current: str | None) -> str:
    record = section.get("machine", {})
    rows = section.get("rows", [])
    status = ("Measured in the latest bench run." if kind == current else
              f"**Not re-measured in the latest bench run** (that one ran on `{current}`): "
              "these are the figures stored in bench.json for this kind of machine."
              if current else "")
    parts = [f"## {machine_label(record)} (`{kind}`)", "",
             f"Machine: {machine_text(record)}", ""]
    if section.get("command"):
        parts += [f"Training rows last written by `{section['command']}` on "
                  f"{section.get('updated_utc')}. {status}".rstrip(), ""]
    elif status:
        parts += [status, ""]
    if rows:
        peaks = record.get("peak_gflops") or {}
        size = record.get("peak_matmul_size", 2048)
        parts += [
            "### Presets", "", results_table(presets := preset_rows(rows)), "",
            *variants_part([row for row in rows if row not in presets]),
            "- *train s*: wall time of the training epochs (training plus the per-epoch "
            "validation pass), median over seeds; start-up, data loading and the test "
            "evaluation excluded.",
            "- *test acc*: mean ± sample standard deviation over the seeds (one training run "
            "each). *with flip TTA*: the mean of the probabilities of each test image and its "
            "mirror; only for models trained with flips (— for the others: their mirror "
            "images are out of distribution).",
            "- *precision*: what `--precision auto` chose on this machine (bfloat16 only where "
            "the hardware computes it natively).",
            *(["- A preset row whose recipe cell names flags is the model's former preset: "
               "its preset has changed since this kind was measured."]
              if any(row.get("former_preset") for row in presets) else []),
            "- *predict img/s*: the Keras engine of `fmnist predict` on 1,024 images at a "
            "time, median of 10 batches after warm-up: the same definition as *Keras img/s* "
            "under Inference engines (rows measured before both were one say "
            "`predict_on_batch` on uint8 images).", "",
            f"### The default model against the reference (`{DEFAULT_MODEL}` vs `{REFERENCE_MODEL}`)",
            "", default_target_text(rows), "",
            "### Targets", "", targets_table(rows), "",
            "### Time to accuracy (validation)", "", crossing_table(rows), "",
            "- The first epoch at which validation accuracy reached each threshold, and the "
            "training seconds until the end of that epoch; medians over seeds (\"not reached\": "
            "at least one seed never got there).", "",
            "### How close each epoch gets to its compute floor", "", speed_table(rows), "",
            "- *forward MFLOP/image*: 2 x multiply-adds of the Conv2D and Dense layers.",
            "- *epoch floor*: 3 x forward FLOPs x training images (forward + backward), divided "
            f"by the peak of a {size}x{size} matmul on this machine in the precision the model "
            "trained in, as measured by the bench run that made the row (*peaks floored at*; "
            f"the latest run's: {peaks.get('float32', 0):.0f} GFLOP/s float32, "
            f"{peaks.get('bfloat16', 0):.0f} bfloat16). *epoch / floor*: how many times slower "
            "than that floor the steady epoch (median of epochs 2 onwards) runs; it includes "
            "the input pipeline, batch norm and the validation pass.",
            *([f"- *conv floor*: the same FLOPs at the rate of one training pass (forward "
               f"and both gradients) through a 3x3 conv of cnn-fast's shape "
               f"({record.get('peak_conv', '')}); the latest run's: "
               f"{conv_peaks.get('float32', 0):.0f} GFLOP/s float32, "
               f"{conv_peaks.get('bfloat16', 0):.0f} bfloat16. The achievable floor "
               "of a network of small convs, where the matmul's is out of reach."]
              if (conv_peaks := record.get("peak_conv_gflops")) else []),
            "- *peak RSS*: the largest resident memory of the training process.", "",
            "### Per-seed numbers", "", per_seed_table(rows), "",
            "### How each row was produced", "", commands_list(rows), ""]
    if section.get("single_runs"):
        parts += ["### Single runs", "", single_runs_section(section), ""]
    parts += ["### Test-time augmentation", "", tta_section(section), "",
              "### Ensembles", "", ensembles_section(section), "",
              "### Inference engines: Keras vs onnxruntime", "", inference_section(section), "",
              "### Serving: load test of `fmnist serve`", "", serve_section(section), "",
              "### Serving: soak", "", soak_section(section), "",
              "### Out-of-distribution flag", "", ood_section(section), ""]
    return "\n".join(parts)


def render_markdown(report: dict, current: str | None = None) -> str:
    current = current or latest_kind(report)
    sections = ordered_sections(report, current)
    kinds = ", ".join(f"`{kind}`" for kind, _ in sections) or "none yet"
    body = "\n".join(section_markdown(kind, section, current) for kind, section in sections)
    return f"""# Benchmarks

Written by `fmnist bench` from bench.json; do not edit by hand: rerun the commands listed
under each machine. Figures are kept **per kind of machine** (CPU instruction set and
cores, or GPU), because the same model trains at very different speeds on them: a bench
replaces the rows of the kind it runs on and keeps the others. Machine kinds here:
{kinds}. Accuracies are on the 10,000 test images, read only by the final evaluation of
each run (training validates on its own 6,000-image split of the training set). Check
your own machine's kind with `grep -o -m1 'avx512_bf16\\|amx_bf16' /proc/cpuinfo`
(nothing printed: no native bfloat16).

{body}"""


def commands_list(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        commands = row.get("commands") or ["(not recorded)"]
        lines.append(f"- {model_cell(row)} ({row['device']}): " + "; then ".join(f"`{c}`" for c in commands))
    return "\n".join(lines)


def per_seed_table(rows: list[dict]) -> str:
    def listed(values, digits: int = 4) -> str:
        return ", ".join(f"{value:.{digits}f}" for value in values)

    return markdown_table(
        ["model", "device", "seeds", "test accuracy", "with TTA", "train seconds"],
        [[model_cell(row), row["device"], str(row["seeds"]), listed(row["test_accuracy"]),
          listed(row["test_accuracy_tta"]) if row.get("flip") and row["test_accuracy_tta"] else "—",
          listed(row["train_seconds"], 1)] for row in rows])


def preset_rows(rows: list[dict]) -> list[dict]:
    """One row per preset model of a machine kind, in table order: the preset as
    registered, or, for a model benchmarked only under a schedule of its own (cnn-best
    within an hour: ``--epochs``/``--time-budget`` and nothing else), that row, or, for a
    model whose preset changed since this kind was measured, the row of its former
    preset (``row["former_preset"]``; its recipe cell says what differs)."""
    chosen = []
    for model in MODEL_ORDER:
        plain = [row for row in rows if row["model"] == model and is_plain(row)]
        timed = [row for row in rows if row["model"] == model and not row.get("teacher")
                 and row.get("recipe") and all(word.split("=")[0] in SCHEDULE_FLAGS
                                               for word in row["recipe"].split())]
        former = [row for row in rows if row["model"] == model and row.get("former_preset")]
        candidates = plain or sorted(timed, key=lambda row: -len(row["seeds"])) or former
        chosen += candidates[:1]
    return chosen


# Flags that change how long a preset trains, not what it is.
SCHEDULE_FLAGS = ("--epochs", "--time-budget")


def presets_table(report: dict) -> str:
    """The presets on every machine kind, as one Markdown table (the README's)."""
    def label(kind: str, section: dict, row: dict) -> str:
        if row.get("device", "CPU") != "CPU":
            return row["device"].removeprefix("GPU: ")
        return _KIND_WORDS.get(section.get("machine", {}).get("cpu_kind"), kind)

    return markdown_table(
        ["model", "machine kind", "precision", "epochs", "train s (median)",
         "test acc (mean ± std)", "seeds", "predict img/s"],
        [[model_cell(row), label(kind, section, row), row.get("precision", "float32"),
          _epochs_cell(row), f"{row['train_seconds_median']:,.1f}",
          _fmt_acc(row["test_accuracy_mean_std"], len(row["seeds"])), str(len(row["seeds"])),
          f"{row['predict_images_per_second']:,.0f}"]
         for kind, section in ordered_sections(report, None)
         for row in preset_rows(section.get("rows", []))], right=(3, 4, 6, 7))


# Short names of the CPU kinds, for a table's cells (machine_label says them in full).
_KIND_WORDS = {"amx-bf16": "AMX (Intel Xeon)", "avx512-bf16": "AVX-512 BF16",
               "avx512": "AVX-512", "avx2": "AVX2", "other": "other CPU"}

"""Running the benches: training runs as child `fmnist train` processes, the inference
and serving benches, each storing its figures under this machine's kind through one
path (:func:`update_section`) that re-renders the page."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.bench.measure import (device_name, forward_flops, machine, measure_inference,
                                  predict_throughput)
from fmnist.bench.render import render
from fmnist.bench.store import load_report, machine_kind, machine_label
from fmnist.bench.summary import crossings, merge_runs, run_name, summarize
from fmnist.bench.targets import BURST_TARGETS, MODEL_ORDER
from fmnist.errors import FmnistError


def run_training(model: str, seed: int, out: Path, data_dir, extra: list[str],
                 resume: bool = False) -> dict:
    """Train one model/seed in a child `fmnist train` process; return its metrics + peak RSS.

    ``resume``: continue the interrupted run in ``out`` (`fmnist train --resume`) instead;
    its settings come from its config.json, and the peak RSS is that of the rest alone.
    """
    command = [sys.executable, "-m", "fmnist.cli", "train", "--tta", "--quiet",
               *(["--resume", str(out)] if resume else
                 ["--model", model, "--seed", str(seed), "--out", str(out), *extra])]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if resume else "w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise FmnistError(f"training {model} seed {seed} failed ({tail[0]}); see {log}")
    # Linux reports ru_maxrss in KiB.
    return run_figures(out, peak_rss_mb=usage.ru_maxrss / 1024)


def run_figures(out: Path, peak_rss_mb: float | None, config: dict | None = None) -> dict:
    """What a bench row keeps of the evaluated run in ``out``: its metrics.json, the epochs
    and seconds at which validation crossed each threshold, its precision and flips.
    ``config``: its config.json, where the caller has read it already."""
    metrics = rundir.read_json(out / rundir.METRICS)
    history = rundir.read_json(out / rundir.HISTORY)
    if config is None:
        config = rundir.read_json(out / rundir.CONFIG)
    metrics["peak_rss_mb"] = peak_rss_mb
    metrics["val_crossings"] = crossings(history)
    metrics["precision"] = config.get("precision_used", "float32")
    metrics["flip"] = bool(config.get("flip"))
    return metrics


def bench_seed(model: str, seed: int, out: Path, data_dir, extra: list[str], resume: bool,
               log=print) -> tuple[dict, bool]:
    """One seed of a bench: its figures, and whether they were taken as they stood.

    Without ``resume`` the run is trained afresh (anything in ``out`` is deleted first).
    With it, a finished and evaluated run in ``out`` is taken as it is (an hour-long seed
    whose bench was stopped after its training still counts, without another hour); an
    interrupted one continues from its last checkpoint; only an empty start is retrained.
    """
    if resume and (out / rundir.CONFIG).is_file():
        rundir.require_unlocked(out)  # another bench still training it: say so, touch nothing
        config = rundir.read_json(out / rundir.CONFIG)
        if (config.get("model"), config.get("seed")) != (model, seed):
            raise FmnistError(f"{out} holds {config.get('model')} seed {config.get('seed')}, not "
                              f"{model} seed {seed}; move it away or drop --resume")
        if "test_accuracy" in rundir.read_metrics(out):
            log(f"bench: {model} seed {seed}: taking the finished run in {out}", flush=True)
            return run_figures(out, peak_rss_mb=None, config=config), True  # RSS: not measured by this bench
        log(f"bench: {model} seed {seed}: resuming {out} ...", flush=True)
        return run_training(model, seed, out, data_dir, extra, resume=True), False
    if out.exists():
        shutil.rmtree(out)
    log(f"bench: training {model} seed {seed} ...", flush=True)
    return run_training(model, seed, out, data_dir, extra), False


def update_section(json_path: Path, markdown_path: Path, record: dict, change) -> dict:
    """The one path that changes bench.json: load it, let ``change`` edit this machine
    kind's section in place (created with ``record`` when new), write the file, and
    re-render the page. Loaded last, after the measuring, so that a long bench never
    writes back figures another bench stored meanwhile. Returns the whole report."""
    report = load_report(json_path)
    kind = machine_kind(record)
    change(report["machines"].setdefault(kind, {"machine": record, "rows": []}))
    rundir.write_json(json_path, report)
    render(report, markdown_path, current=kind)
    return report


def run_bench(models: list[str], seeds: int, out_dir: Path, json_path: Path, markdown_path: Path,
              data_dir=None, extra: list[str] | None = None,
              command: str = "fmnist bench", log=print, seed_start: int = 0,
              teacher: str | None = None, resume: bool = False,
              variants: list[str] | None = None) -> dict:
    """Benchmark ``models`` and ``variants`` over seeds ``seed_start .. seed_start+seeds-1``
    on this machine; store the rows and rewrite the page. Returns the report.

    Rows of this machine's kind are replaced row by row (stored runs of the same row with
    other seeds are kept and summarized with the new ones); other kinds' rows are left as
    they are. ``teacher`` (a run directory) and ``extra`` (`fmnist train` arguments:
    --train-arg) apply to every one of ``models``; each of ``variants`` (``"MODEL ARG..."``:
    :func:`parse_variant`) carries its own. A distilled model or a recipe off the preset
    makes rows of its own (``row["teacher"]``, ``row["recipe"]``), so seeds of two recipes
    are never summarized together, and run directories of their own (``run_name``). All
    of them are trained seed by seed in turn (:func:`bench_entries`), so that rows of one
    bench can be compared. ``resume``: seeds already in their run directories are taken or
    continued, not retrained (:func:`bench_seed`). A teacher with ``{seed}`` in it gives
    each seed the teacher of its own seed (:func:`teacher_for_seed`).
    """
    entries = bench_entries(models, extra, teacher, variants)
    record = machine()  # the matmul peaks first, while nothing else runs
    conv = record.get("peak_conv_gflops")
    log(f"bench: {machine_label(record)} ({machine_kind(record)}); float32 peak "
        f"{record['peak_gflops']['float32']:.0f} GFLOP/s, bfloat16 "
        f"{record['peak_gflops']['bfloat16']:.0f}"
        + (f"; 3x3 conv training pass {conv['float32']:.0f} and {conv['bfloat16']:.0f}"
           if conv else ""), flush=True)
    measured = _bench_interleaved(entries, range(seed_start, seed_start + seeds), out_dir,
                                  data_dir, resume, log)
    bench_id = utc_now()

    def store(section: dict) -> None:
        for entry, runs, taken, (flops, throughput) in measured:
            _store_row(section, record, entry["naming"], entry["model"], runs, taken, flops,
                       throughput, command, bench_id, interleaved=len(measured) > 1)
        order = {name: index for index, name in enumerate(MODEL_ORDER)}
        section["rows"].sort(key=lambda r: (r["device"], order.get(r["model"], 99), r["model"],
                                            variant_key(r)))
        section.update({"machine": record, "command": command, "updated_utc": utc_now()})

    return update_section(json_path, markdown_path, record, store)


# `fmnist train` flags that the bench sets for every run itself.
BENCH_OWNED_FLAGS = ("--model", "--seed", "--out", "--resume", "--data-dir", "--tta", "--quiet")


def parse_variant(spec: str) -> tuple[str, str | None, list[str]]:
    """A bench variant, ``"MODEL ARG..."`` as the shell would split it, as (model, teacher
    or None, the other `fmnist train` arguments); ``--teacher RUN_DIR`` among the
    arguments names the teacher. Raises FmnistError on a spec without a model, with an
    unclosed quote, or with a flag the bench sets itself (BENCH_OWNED_FLAGS)."""
    try:
        words = shlex.split(spec)
    except ValueError as error:  # an unclosed quote
        raise FmnistError(f"variant {spec!r} cannot be split into words ({error}); "
                          "close its quotes") from None
    if not words or words[0].startswith("-"):
        raise FmnistError(f"variant {spec!r} does not start with a model name; "
                          "write it as 'MODEL --flag value ...'")
    model, rest, teacher, args = words[0], iter(words[1:]), None, []
    for word in rest:
        flag = word.partition("=")[0]
        if flag in BENCH_OWNED_FLAGS:
            raise FmnistError(f"variant {spec!r} sets {flag}, which the bench sets for every "
                              "run; leave it out")
        if flag == "--teacher":
            teacher = word.partition("=")[2] if "=" in word else next(rest, None)
            if not teacher:
                raise FmnistError(f"variant {spec!r}: --teacher needs a run directory")
        else:
            args.append(word)
    return model, teacher, args


def bench_entries(models: list[str], extra: list[str] | None, teacher: str | None,
                  variants: list[str] | None) -> list[dict]:
    """What one bench trains, in the order each seed trains them: each of ``models``
    with ``extra`` and ``teacher``, then each of ``variants`` (:func:`parse_variant`).

    Each entry is ``{"model", "extra": its `fmnist train` arguments but the teacher,
    "naming": {"teacher", "recipe"}}``, ``naming`` being what ``run_name`` and the row
    need. Raises FmnistError where two entries would make the same row."""
    pairs = [(model, teacher, list(extra or [])) for model in models]
    pairs += [parse_variant(spec) for spec in variants or []]
    entries, seen = [], set()
    for model, taught_by, args in pairs:
        taught_by = None if taught_by is None else teacher_spelling(taught_by)
        naming = {"teacher": None if taught_by is None else {"run": taught_by},
                  "recipe": recipe_key(args)}
        key = (model, variant_key(naming))
        if key in seen:
            words = " ".join([model, *args] + ([] if taught_by is None else ["--teacher", taught_by]))
            raise FmnistError(f"the bench trains {words!r} twice; give each model and variant once")
        seen.add(key)
        entries.append({"model": model, "naming": naming, "extra": args})
    return entries


def _bench_interleaved(entries: list[dict], seeds, out_dir: Path, data_dir, resume: bool,
                       log) -> list[tuple]:
    """Train (or take) each seed of each entry (:func:`bench_entries`), seeds interleaved:
    A0 B0 A1 B1 A2 B2, so that a drift of the machine's speed over the bench falls on
    every row alike.

    Returns per entry: (the entry, the runs' figures, the seeds taken as they stood,
    (forward FLOPs, predict images/s) of the first seed's model)."""
    runs = [[] for _ in entries]
    taken = [set() for _ in entries]
    for seed in seeds:
        for index, entry in enumerate(entries):
            model = entry["model"]
            out = out_dir / run_name({"model": model, **entry["naming"]}, seed)
            teacher = entry_teacher(entry)
            taught_by = [] if teacher is None else ["--teacher", teacher_for_seed(teacher, seed)]
            figures, as_they_stood = bench_seed(model, seed, out, data_dir,
                                                [*entry["extra"], *taught_by], resume, log)
            runs[index].append(figures)
            if as_they_stood:
                taken[index].add(seed)
            tta = figures.get("test_accuracy_tta")
            log(f"bench:   {entry_label(entry)} seed {seed}: test {figures['test_accuracy']:.4f}"
                + (f" (TTA {tta:.4f})" if tta is not None else "")
                + f", {figures['train_seconds']:.1f} s ({figures['precision']})", flush=True)
    import keras

    measured = []
    for index, entry in enumerate(entries):
        first = out_dir / run_name({"model": entry["model"], **entry["naming"]}, seeds[0]) / rundir.MODEL
        flops = forward_flops(keras.saving.load_model(first, compile=False))
        measured.append((entry, runs[index], taken[index], (flops, predict_throughput(first))))
    return measured


def entry_teacher(entry: dict) -> str | None:
    """An entry's teacher run as typed (``{seed}`` kept), or None."""
    return (entry["naming"]["teacher"] or {}).get("run")


def entry_label(entry: dict) -> str:
    """An entry in the bench's log: its model, then its arguments where it has any."""
    teacher = entry_teacher(entry)
    return " ".join([entry["model"], *entry["extra"],
                     *([] if teacher is None else ["--teacher", teacher])])


def _store_row(section: dict, record: dict, naming: dict, model: str, runs: list[dict],
               taken: set, flops: int, throughput: float, command: str, bench_id: str,
               interleaved: bool = False) -> None:
    """Put ``model``'s row, its stored runs merged with ``runs``, in place of the old one.

    ``interleaved``: the row's seeds alternated with another model's in this invocation
    (recorded only when every seed of the row comes from it)."""
    device = record["device"]
    old = next((r for r in section["rows"] if (r["model"], r["device"], variant_key(r))
                == (model, device, variant_key(naming))), None)
    row = summarize(model, merge_runs(old, runs), throughput, flops, record["peak_gflops"], device,
                    record.get("peak_conv_gflops"))
    teacher = (naming["teacher"] or {}).get("run")
    if teacher is not None:  # over every seed of the row, stored ones included
        row["teacher"] = row_teacher(row["runs"], teacher)
    if naming["recipe"]:
        row["recipe"] = naming["recipe"]
    # Which invocations produced the row's runs (a slow model is run a few seeds at a time).
    kept = ({run["seed"] for run in row["runs"]} - {run["seed"] for run in runs}) | taken
    row["commands"] = [*old.get("commands", []), command] if old and kept else [command]
    row["bench_id"] = None if kept else bench_id  # all seeds from this invocation
    row["interleaved"] = bool(interleaved and not kept)
    section["rows"] = [r for r in section["rows"] if r is not old] + [row]


def run_inference_bench(json_path: Path, markdown_path: Path,
                        runs_dir: Path, train_data, command: str, log=print) -> dict:
    """Add Keras/onnxruntime throughput and ONNX parity for this machine's stored rows."""
    if not json_path.is_file():
        raise FmnistError(f"{json_path} does not exist; run `fmnist bench train` first")
    record = machine(measure=False)
    kind = machine_kind(record)
    section = load_report(json_path)["machines"].get(kind)
    if not section or not section.get("rows"):
        raise FmnistError(f"{json_path} has no training rows for this machine ({kind}); "
                          "run `fmnist bench train` here first")
    device = device_name()
    inference = measure_inference([row for row in section["rows"] if row["device"] == device],
                                  runs_dir, train_data, log)
    return update_section(json_path, markdown_path, record, lambda section: section.update(
        inference=inference, inference_command=command, inference_utc=utc_now()))


def run_serve_bench(model: str, engine: str | None, json_path: Path, markdown_path: Path,
                    images: np.ndarray, requests: int, clients: list[int],
                    command: str, log=print, workers: int = 1, burst_seconds: float = 30.0) -> dict:
    """Load-test `fmnist serve MODEL`, then run the burst scenario against it; store both
    under this machine's kind."""
    from fmnist.bench.loadtest import run_burst, run_load_test

    record = machine(measure=False)  # serving runs on the CPU; no TensorFlow needed here
    result = run_load_test(model, images, engine=engine, requests=requests, concurrency=clients,
                           log=log, workers=workers)
    result["burst"] = run_burst(model, engine, clients=BURST_TARGETS["clients"],
                                seconds=burst_seconds, log=log)
    result.update({"command": command, "utc": utc_now()})

    def store(section: dict) -> None:
        section["serve"] = [old for old in section.get("serve", [])
                            if (old["engine"], old.get("workers", 1)) != (result["engine"], workers)]
        section["serve"].append(result)

    update_section(json_path, markdown_path, record, store)
    return result


def run_soak_bench(model: str, engine: str | None, json_path: Path, markdown_path: Path,
                   images: np.ndarray, minutes: float, command: str, log=print,
                   workers: int = 1) -> dict:
    """Soak `fmnist serve MODEL` (:func:`fmnist.bench.loadtest.run_soak`); store the result
    under this machine's kind, in place of an earlier one of the same engine and workers."""
    from fmnist.bench.loadtest import run_soak

    record = machine(measure=False)
    result = run_soak(model, images, engine=engine, minutes=minutes, workers=workers, log=log)
    result.update({"command": command, "utc": utc_now()})

    def store(section: dict) -> None:
        section["soak"] = [old for old in section.get("soak", [])
                           if (old["engine"], old["workers"]) != (result["engine"], workers)]
        section["soak"].append(result)

    update_section(json_path, markdown_path, record, store)
    return result


def run_ood_bench(model: str | None, json_path: Path, markdown_path: Path, test_data,
                  count: int, command: str, log=print) -> dict:
    """Measure a model's out-of-distribution flag (:func:`fmnist.oodeval.evaluate_ood`;
    ``model`` None: the bundled one) and store it under this machine's kind, in place of
    an earlier result for the same model file."""
    from fmnist.oodeval import evaluate_ood, print_report
    from fmnist.predict import Predictor

    record = machine(measure=False)
    predictor = Predictor.load(model)
    result = evaluate_ood(predictor, test_data, count=count)
    print_report(result, log)
    result.update({"model": predictor.name, "sha256": predictor.sha256, "command": command,
                   "utc": utc_now()})

    def store(section: dict) -> None:
        section["ood"] = [old for old in section.get("ood", []) if old["sha256"] != result["sha256"]]
        section["ood"].append(result)

    update_section(json_path, markdown_path, record, store)
    return result


def teacher_spelling(teacher: str | os.PathLike) -> str:
    """One spelling of a teacher's run directory, relative to the working directory:
    typed absolute, relative or with ``./``, it names the same students' folders (see
    ``summary.run_name``), and the students' records in bench.json hold no path of this
    machine."""
    return os.path.relpath(Path(teacher).resolve())


def teacher_for_seed(teacher: str, seed: int) -> str:
    """The teacher of one seed's student: ``teacher`` with ``{seed}`` replaced by the seed.

    ``runs/bench/cnn-best-seed{seed}`` teaches seed N with cnn-best's seed N: a teacher
    trained on the student's own split (the split follows ``--seed``), so the student's
    validation images are held out from its teacher too, and choosing on them stays fair.
    A teacher without ``{seed}`` teaches every seed."""
    return teacher.replace("{seed}", str(seed))


def row_teacher(runs: list[dict], teacher: str | None) -> dict | None:
    """What a bench row says of its seeds' teacher (None: not distilled): the teacher's run
    path as given (``{seed}`` kept, so the row and its run directories keep one name),
    its model, and its figures averaged over the seeds' teachers (one teacher: its own)."""
    if teacher is None:
        return None
    taught = [teacher_of(run) for run in runs]
    row = {"run": teacher, "model": taught[-1]["model"]}
    for key in ("test_accuracy", "test_accuracy_tta", "train_seconds", "seconds"):
        values = [t[key] for t in taught if t.get(key) is not None]
        row[key] = float(np.mean(values)) if len(values) == len(taught) else None
    return row


def teacher_of(metrics: dict) -> dict | None:
    """What a bench row says of a distilled run's teacher (None: not distilled)."""
    teacher = metrics.get("teacher")
    if not teacher:
        return None
    return {key: teacher.get(key) for key in ("run", "model", "test_accuracy", "test_accuracy_tta",
                                              "train_seconds", "seconds")}


def recipe_key(train_args: list[str] | None) -> str:
    """A recipe off the preset as rows store it (``row["recipe"]``): its `fmnist train`
    arguments joined by spaces; "" for the preset."""
    return " ".join(train_args or [])


def variant_key(row: dict) -> str:
    """Rows of one model are told apart by their teacher's run and by the training
    arguments that departed from the preset ("" for a plain preset row)."""
    teacher = (row.get("teacher") or {}).get("run") or ""
    return f"{teacher}\n{row.get('recipe') or ''}".strip()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

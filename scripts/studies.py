"""Studies of benchmarked models: their ensemble, and their test-time views.

    python scripts/studies.py ensemble --model cnn-best [--train-arg=--epochs=150 ...]
    python scripts/studies.py tta --model cnn-fast [--shift 1] [--train-arg=...]

Lab tooling beside the package, as timm keeps its benchmark script and torchvision its
references outside theirs: `fmnist bench` measures a user's machine (the presets,
inference, serving); these study what the project's benched runs can still give. Each
takes the seeds `fmnist bench train` trained of MODEL on this machine (the preset's row,
or the row of the same --train-arg), stores its result in bench.json under this
machine's kind, and re-renders the page.

- ``ensemble``: the seeds' ensemble (`fmnist ensemble`), evaluated on the test set,
  timed under Keras and onnxruntime, exported to one ONNX graph checked for parity on
  the first member's validation images.
- ``tta``: plain, flip, and flip + shift views of each seed, chosen on each run's
  validation split and reported on the test set.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

from fmnist import rundir
from fmnist.bench.measure import device_name, machine, predict_throughput
from fmnist.bench.runs import recipe_key, update_section, utc_now, variant_key
from fmnist.bench.store import load_report, machine_kind, repo_relative_command
from fmnist.bench.summary import ensemble_name, is_plain, run_name
from fmnist.errors import FmnistError


def run_ensemble_bench(model: str, json_path: Path, markdown_path: Path,
                       runs_dir: Path, train_data, test_data, command: str,
                       train_args: list[str] | None = None, log=print) -> dict:
    """The ensemble of ``model``'s benchmarked seeds on this machine: built from their
    runs in ``runs_dir``, evaluated on ``test_data`` (through evaluate, the only scorer
    of the test set), timed, exported to one ONNX graph checked on validation images.
    ``train_args``: the --train-arg of the row's recipe (see :func:`_plain_row`)."""
    from fmnist.bench.measure import engine_speed
    from fmnist.ensemble import create_ensemble
    from fmnist.evaluate import evaluate_run
    from fmnist.export import export_images, export_onnx
    from fmnist.predict import OnnxEngine

    record = machine(measure=False)
    kind = machine_kind(record)
    row = _plain_row(load_report(json_path), kind, model, json_path,
                     None if train_args is None else recipe_key(train_args))
    members = [runs_dir / run_name(row, seed) for seed in row["seeds"]]
    out = runs_dir / ensemble_name(row)
    if out.exists():
        shutil.rmtree(out)
    log(f"bench: the ensemble of {model} seeds {row['seeds']} ...", flush=True)
    create_ensemble(members, out)
    metrics = evaluate_run(out, test_data=test_data, tta=bool(row.get("flip")))
    validation, _ = export_images(out, train_data)
    parity = export_onnx(out, validation)
    result = {"model": model, "recipe": row.get("recipe"), "seeds": row["seeds"], "run": str(out),
              "device": row["device"],
              "test_accuracy": metrics["test_accuracy"],
              "test_accuracy_tta": metrics.get("test_accuracy_tta"),
              "members_test_accuracy": metrics["members_test_accuracy"],
              "train_seconds": metrics.get("train_seconds"),
              "keras_images_per_second": predict_throughput(out / rundir.MODEL),
              "onnx_images_per_second": engine_speed(OnnxEngine(out / "model.onnx"),
                                                     singles=0)["images_per_second"],
              **{key: parity[key] for key in ("images", "max_abs_difference", "class_mismatches")},
              "command": command, "utc": utc_now()}
    update_section(json_path, markdown_path, record, lambda section: section.update(
        ensembles=_replacing(section.get("ensembles", []), result)))
    return result


def run_tta_bench(model: str, json_path: Path, markdown_path: Path,
                  runs_dir: Path, train_data, test_data, command: str, shift: int = 1,
                  train_args: list[str] | None = None, log=print) -> dict:
    """Each test-time augmentation (plain, flip, flip + ``shift``-pixel shifts) of
    ``model``'s benchmarked seeds on this machine: accuracy on each run's validation
    split, which the choice is made on, and on the test set, which reports it.
    ``train_args``: the --train-arg of the row's recipe (see :func:`_plain_row`)."""
    from fmnist.evaluate import view_study
    from fmnist.metrics import VIEW_SETS

    record = machine(measure=False)
    kind = machine_kind(record)
    row = _plain_row(load_report(json_path), kind, model, json_path,
                     None if train_args is None else recipe_key(train_args))
    studies = []
    for seed in row["seeds"]:
        log(f"bench: test-time views of {model} seed {seed} ...", flush=True)
        studies.append(view_study(runs_dir / run_name(row, seed), train_data, test_data, shift))
    figures = {name: {"views": len(views),
                      "validation": [study["validation"][name] for study in studies],
                      "test": [study["test"][name] for study in studies]}
               for name, views in VIEW_SETS.items()}
    chosen = max(figures, key=lambda name: (np.mean(figures[name]["validation"]),
                                            -figures[name]["views"]))
    result = {"model": model, "recipe": row.get("recipe"), "seeds": row["seeds"], "shift": shift,
              "device": row["device"],
              "trained_with_flips": bool(row.get("flip")), "sets": figures,
              "chosen_on_validation": chosen, "command": command, "utc": utc_now()}
    update_section(json_path, markdown_path, record, lambda section: section.update(
        tta=_replacing(section.get("tta", []), result)))
    return result


def _replacing(results: list[dict], result: dict) -> list[dict]:
    """``results`` with ``result`` in place of an earlier one of the same model and recipe
    (the results of the model's other recipes stay)."""
    def key(r):
        return r["model"], variant_key(r)

    return [r for r in results if key(r) != key(result)] + [result]


def _plain_row(report: dict, kind: str, model: str, json_path: Path,
               recipe: str | None = None) -> dict:
    """The row of ``model``'s runs on this machine that an ensemble or a view study is
    made of: not distilled, two or more seeds; with ``recipe`` (a :func:`recipe_key`:
    "" for the preset) the row of that recipe, else the preset's row where there is one, else the only row
    trained off the preset."""
    section = report["machines"].get(kind) or {}
    rows = [r for r in section.get("rows", []) if r["model"] == model and not r.get("teacher")
            and r["device"] == device_name() and len(r["seeds"]) >= 2]
    if recipe is not None:
        rows = [r for r in rows if variant_key(r) == recipe]  # rows without a teacher
        if not rows:
            trained = f"trained with `{recipe}`" if recipe else "of its preset"
            raise FmnistError(f"{json_path} has no row of {model} {trained} with two or more seeds "
                              f"for this machine ({kind}); run `fmnist bench train --models "
                              f"{model}` with the same --train-arg here first")
        return rows[0]
    plain = [r for r in rows if is_plain(r)]
    if plain or len(rows) == 1:
        return (plain or rows)[0]
    if not rows:
        raise FmnistError(f"{json_path} has no row of {model} with two or more seeds for this "
                          f"machine ({kind}); run `fmnist bench train --models {model}` here first")
    raise FmnistError(f"{json_path} has {len(rows)} rows of {model} off its preset and none of the "
                      f"preset; name one with --train-arg, as given to `fmnist bench train`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("ensemble", "tta"))
    parser.add_argument("--model", required=True, metavar="MODEL")
    parser.add_argument("--shift", type=int, default=1, help="tta: pixels the views move (default: 1)")
    parser.add_argument("--runs-dir", default="runs/bench", type=Path,
                        help="where `fmnist bench train` put the runs (default: runs/bench)")
    parser.add_argument("--train-arg", action="append", metavar="ARG",
                        help="the runs made with these --train-arg, all in the same order "
                             "(default: the preset's runs, or the only other recipe's)")
    parser.add_argument("--json", default="bench.json", type=Path)
    parser.add_argument("--markdown", default="docs/benchmarks.md", type=Path)
    parser.add_argument("--data-dir", metavar="DIR")
    args = parser.parse_args(argv)
    from fmnist.data import load_data
    from fmnist.models import get_factory

    try:
        get_factory(args.model)
        train_data, test_data = load_data(args.data_dir)  # both verified, each read once
        command = shlex.join(["python", "scripts/studies.py",
                              *shlex.split(repo_relative_command(sys.argv[1:] if argv is None
                                                                 else argv))[1:]])
        if args.study == "ensemble":
            result = run_ensemble_bench(args.model, args.json, args.markdown, args.runs_dir,
                                        train_data, test_data, command, args.train_arg)
            tta = result["test_accuracy_tta"]
            print(f"ensemble of {args.model} seeds {result['seeds']}: test accuracy "
                  f"{result['test_accuracy']:.4f}" + ("" if tta is None else f" (flip TTA {tta:.4f})"))
        else:
            result = run_tta_bench(args.model, args.json, args.markdown, args.runs_dir,
                                   train_data, test_data, command, args.shift, args.train_arg)
            for name, figures in result["sets"].items():
                print(f"{name:>14}: validation {np.mean(figures['validation']):.4f}, "
                      f"test {np.mean(figures['test']):.4f} ({figures['views']} views)")
            print(f"chosen on validation: {result['chosen_on_validation']}")
    except FmnistError as error:
        print(f"studies: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.markdown} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

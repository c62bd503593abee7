"""bench.json: its layout, the machine records figures are filed under, migrations.

Pure (no TensorFlow): `fmnist bench render` and the tests use it on any install."""

from __future__ import annotations

import copy
import json
import os
import shlex
from pathlib import Path

from fmnist.bench.summary import _refloor, median_crossings


# bench.json layout: {"format": 3, "machines": {kind: section}}. Format 2 had the same
# layout with commands of the flag-ranked `fmnist bench`; format 1 was one machine's figures.
FORMAT = 3
BENCH_SUBCOMMANDS = ("train", "inference", "serve", "ensemble", "render")


def machine_kind(record: dict) -> str:
    """The key figures are filed under: GPU name, or CPU kind and core count."""
    if record.get("device", "CPU") != "CPU":
        name = record["device"].removeprefix("GPU: ")
        return "gpu-" + "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return f"cpu-{record['cpu_kind']}-{record['cores']}cores"


def machine_label(record: dict) -> str:
    """The kind in words, for headings."""
    if record.get("device", "CPU") != "CPU":
        return f"{record['device']} (host CPU: {record['cpu']})"
    kind = record["cpu_kind"]
    words = {"amx-bf16": "x86-64 with AMX (native bfloat16)",
             "avx512-bf16": "x86-64 AVX-512 with native bfloat16 (avx512_bf16)",
             "avx512": "x86-64 AVX-512, no native bfloat16",
             "avx2": "x86-64 AVX2, no AVX-512, no native bfloat16",
             "other": "CPU without AVX2 (or not x86)"}[kind]
    return f"{words}, {record['cores']} cores"


def repo_relative_command(argv: list[str], cwd: str | None = None) -> str:
    """``fmnist ARGS`` as one line, with every absolute path made relative to ``cwd``:
    committed bench files hold no machine's paths, and the command reruns from the repo."""
    cwd = cwd or os.getcwd()
    return shlex.join(["fmnist", *_map_paths(argv, lambda path: os.path.relpath(path, cwd))])


def _map_paths(words: list[str], change) -> list[str]:
    """``words`` with ``change`` applied to each absolute path, alone or after ``--flag=``."""
    out = []
    for word in words:
        flag, sep, value = word.partition("=") if word.startswith("-") else ("", "", word)
        if not sep:
            flag, value = "", word
        if os.path.isabs(value):
            value = change(value)
        out.append(f"{flag}{sep}{value}" if sep else value)
    return out


def load_report(path: Path) -> dict:
    """bench.json as ``{"format": 3, "machines": {kind: section}}``; a file of an older
    format is migrated (see :func:`upgrade`); no file: empty."""
    if not path.is_file():
        return {"format": FORMAT, "machines": {}}
    return upgrade(json.loads(path.read_text()))


def upgrade(report: dict) -> dict:
    """``report`` itself if it is in the current layout, else its migration (a new dict)."""
    if report.get("format") == FORMAT:
        return report
    if report.get("format") != 2:
        report = migrate_v1(report)
    return migrate_v2(report)


def migrate_v2(old: dict) -> dict:
    """Format 2 as format 3: every recorded command in today's spelling (``fmnist bench
    --serve RUN`` is ``fmnist bench serve RUN``), so the listed commands still run."""
    report = copy.deepcopy(old)
    for section in report["machines"].values():
        if section.get("command"):
            section["command"] = subcommand_spelling(section["command"])
        if section.get("inference_command"):
            section["inference_command"] = subcommand_spelling(section["inference_command"])
        for row in section.get("rows", []):
            row["commands"] = [subcommand_spelling(c) for c in row.get("commands", [])]
        for result in section.get("serve", []):
            if result.get("command"):
                result["command"] = subcommand_spelling(result["command"])
    report["format"] = FORMAT
    return report


def subcommand_spelling(command: str) -> str:
    """A ``fmnist bench`` command of the flag-ranked CLI in the subcommand form:
    ``--serve MODEL`` -> ``serve MODEL``, ``--inference`` -> ``inference``, ``--render``
    -> ``render``, anything else -> ``train``. Other commands are returned as they are."""
    words = shlex.split(command)
    if words[:2] != ["fmnist", "bench"] or words[2:3] and words[2] in BENCH_SUBCOMMANDS:
        return command
    rest = words[2:]
    if "--serve" in rest:
        at = rest.index("--serve")
        model = rest[at + 1:at + 2]
        rest = ["serve", *model, *rest[:at], *rest[at + 2:]]
    elif any(word.startswith("--serve=") for word in rest):
        word = next(word for word in rest if word.startswith("--serve="))
        rest = ["serve", word.partition("=")[2], *[w for w in rest if w is not word]]
    else:
        flag = next((f for f in ("--inference", "--render") if f in rest), None)
        rest = [flag[2:], *[w for w in rest if w != flag]] if flag else ["train", *rest]
    return shlex.join(["fmnist", "bench", *rest])


def migrate_v1(old: dict) -> dict:
    """A single-machine bench.json (format 1) as format 2.

    Format 1 recorded the CPU only as "AMD EPYC, 2 cores", without its flags. Its kind
    is inferred from its matmul peaks: a bfloat16 peak well above float32's means
    native bfloat16 (emulated bfloat16 is many times slower than float32), which on
    these machines means AVX-512 with avx512_bf16. Recorded commands lose absolute
    paths; the flip-TTA figures of models trained without flips are dropped (they
    measured an out-of-distribution mirror, see evaluate.tta_applies); each row notes
    the precision its runs used (the presets of the time: bfloat16 for cnn-fast and
    cnn-best).
    """
    peaks = old.get("peak_gflops") or {}
    native = peaks.get("bfloat16", 0) > 1.5 * peaks.get("float32", float("inf"))
    record = {**old.get("machine", {}), "peak_gflops": peaks,
              "cpu_kind": "avx512-bf16" if native else "avx2",
              "cpu_flags": ["avx2", "fma", "avx512f", "avx512_bf16"] if native else ["avx2", "fma"],
              "cpu_flags_inferred": True, "onednn": "(TensorFlow's default: on)" if native else
              "(TensorFlow's default)"}
    bench_id = old.get("updated_utc")
    rows = []
    for row in old.get("rows", []):
        row = dict(row)
        flip = row["model"] in ("cnn-fast", "cnn-best")  # the presets of format 1's time
        row.update(flip=flip, precision="bfloat16" if flip and native else "float32",
                   commands=[_relative_words(c) for c in row.get("commands", [])])
        # cnn-best's seeds came from other invocations than the rest.
        row["bench_id"] = bench_id if len(row["commands"]) == 1 else None
        if not flip:
            row["test_accuracy_tta"], row["test_accuracy_tta_mean_std"] = [], None
            for run in row.get("runs", []):
                run["test_accuracy_tta"] = None
        for run in row.get("runs", []):  # format 1 timed the crossing of 0.91 only
            seconds = run.pop("seconds_to_val_target", None)
            run["val_crossings"] = {"0.91": None if seconds is None else
                                    {"epoch": None, "seconds": seconds}}
        row["val_crossings_median"] = median_crossings(row.get("runs", []))
        for key in ("seconds_to_val_target", "seconds_to_val_target_median"):
            row.pop(key, None)
        _refloor(row, peaks)
        rows.append(row)
    section = {"machine": record, "rows": rows,
               "command": _relative_words(old.get("command", "")),
               "updated_utc": old.get("updated_utc")}
    for key in ("inference", "inference_command", "inference_utc", "serve"):
        if key in old:
            section[key] = old[key]
    for result in section.get("serve", []):
        result["command"] = _relative_words(result.get("command", ""))
    return {"format": 2, "machines": {machine_kind(record): section}}


def _relative_words(command: str) -> str:
    """A format-1 command without the absolute paths of the machine it ran on: a path
    through the repository's runs/ folder keeps its part from runs/ on (where the bench
    wrote), any other keeps its last component."""

    def strip(value: str) -> str:
        parts = Path(value).parts
        return str(Path(*parts[parts.index("runs"):])) if "runs" in parts else Path(value).name

    return shlex.join(_map_paths(shlex.split(command), strip))


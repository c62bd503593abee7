"""bench.json: its layout, and the machine records figures are filed under.

Pure (no TensorFlow): `fmnist bench render` and the tests use it on any install."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from fmnist.errors import FmnistError


# bench.json layout: {"format": 3, "machines": {kind: section}}; each section holds the
# machine record, its training rows, and its inference, serving and study results.
FORMAT = 3


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
    """``words`` with ``change`` applied to each absolute path: alone, after ``--flag=``,
    or among the words of one argument that holds several (a bench ``--variant``)."""
    return [_map_word(word, change) for word in words]


def _map_word(word: str, change) -> str:
    flag, sep, value = word.partition("=") if word.startswith("-") else ("", "", word)
    if not sep:
        flag, value = "", word
    if os.path.isabs(value):
        value = change(value)
    elif any(char.isspace() for char in value):
        try:
            inner = shlex.split(value)
        except ValueError:  # not shell words: left as typed
            inner = []
        mapped = _map_paths(inner, change)
        if mapped != inner:
            value = shlex.join(mapped)
    return f"{flag}{sep}{value}" if sep else value


def load_report(path: Path) -> dict:
    """bench.json as ``{"format": 3, "machines": {kind: section}}``; no file: empty. A file
    of another format is refused in one line: this version does not read it."""
    if not path.is_file():
        return {"format": FORMAT, "machines": {}}
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FmnistError(f"{path} is not valid JSON ({error}); restore it from git or "
                          "delete it to start a new one") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        found = report.get("format") if isinstance(report, dict) else None
        raise FmnistError(f"{path} has format {found!r}, not {FORMAT}: this version of fmnist "
                          "does not read it; move it away and rerun the benches")
    return report

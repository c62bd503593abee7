"""Fill the README's results block with the presets table generated from bench.json.

    python scripts/readme_results.py           # rewrite the block (`make readme`)
    python scripts/readme_results.py --check   # exit 1 when the README disagrees with bench.json

The installed `fmnist bench` never writes the README: this repository tool does, from the
same `fmnist.bench.render.presets_table` that the benchmarks page's figures come from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmnist.bench.render import presets_table

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- presets:start -->", "<!-- presets:end -->"


def with_block(readme: str, report: dict) -> str:
    """``readme`` with the text between the markers replaced by the presets table."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md has no {START} ... {END} block; put the two markers back")
    return f"{readme[:start]}{START}\n{presets_table(report)}\n{readme[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench.json")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = with_block(current, json.loads(args.json.read_text()))
    if args.check:
        if wanted != current:
            print(f"{args.readme} disagrees with {args.json}: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        args.readme.write_text(wanted)
        print(f"updated the presets table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write each experiment note's results tables from the frozen results files beside it.

    python scripts/notes_tables.py           # rewrite the tables (`make notes`)
    python scripts/notes_tables.py --check   # exit 1 when a note disagrees with its file

A note under docs/experiments/ marks a table as

    <!-- results: 2026-11-25-cnn-fast-search.csv -->
    | ... the table ... |
    <!-- /results -->

and the CSV beside it is the one source of its figures: it was written when the study
ran and no later bench rewrites it (bench.json holds the current state; a note must not
drift with it). The CSV's first line names the columns; a cell is copied as written.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from fmnist.report import markdown_table

NOTES = Path(__file__).resolve().parent.parent / "docs" / "experiments"
BLOCK = re.compile(r"<!-- results: (?P<file>[^ ]+) -->\n(?P<table>.*?)<!-- /results -->", re.S)


def table(path: Path) -> str:
    """A CSV file as a Markdown table: its header row, then one row per line; a column
    whose every cell is a number is right-aligned."""
    with path.open(newline="") as stream:
        header, *rows = list(csv.reader(stream))
    numeric = tuple(i for i in range(len(header)) if all(_numeric(row[i]) for row in rows))
    return markdown_table(header, rows, right=numeric) + "\n"


def _numeric(cell: str) -> bool:
    return re.fullmatch(r"[-+]?[\d,.]+(-[\d,.]+)?( s| ms)?", cell.strip()) is not None


def rendered(note: Path) -> str:
    """The note with each marked table written from its results file."""
    def fill(match: re.Match) -> str:
        source = note.parent / match["file"]
        if not source.is_file():
            raise SystemExit(f"{note.name} names {match['file']}, which does not exist beside it")
        return f"<!-- results: {match['file']} -->\n{table(source)}<!-- /results -->"

    return BLOCK.sub(fill, note.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for note in sorted(NOTES.glob("20*.md")):
        wanted = rendered(note)
        if wanted != note.read_text():
            stale.append(note.name)
            if not args.check:
                note.write_text(wanted)
    if args.check and stale:
        print(f"tables disagree with their results files: {', '.join(stale)}; run `make notes`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The words a reader meets: the README, the docs site and the generated text in them.

Every figure has one source. The README's presets table and the benchmarks page are
generated from bench.json, the experiment notes' tables from their frozen results files;
these tests fail when a file disagrees with its source, when a command shown to a reader
is not one the CLI accepts, and when the site does not build strictly.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script, run_main
from fmnist.bench.render import render_markdown
from fmnist.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
README_LIMIT = 250  # lines: the front door is read in five minutes


def test_the_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_LIMIT, f"README.md has {lines} lines; the limit is {README_LIMIT}"


def reader_pages() -> list[Path]:
    """The README and every hand-written docs page (the benchmarks page is generated)."""
    return [README, REPO / "CHANGELOG.md",
            *sorted(path for path in DOCS.rglob("*.md") if path.name != "benchmarks.md")]


def fmnist_commands(text: str) -> list[str]:
    """Each `fmnist ...` command in the fenced code blocks of a Markdown text, with its
    continuation lines joined, comments dropped, and environment assignments before it
    removed; a command after `&&`, `;` or `|`, or sent to the background, counts too."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&?|;|\|\|?", line.split(" #", 1)[0]):
                words = part.split()
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                    words = words[1:]
                if words[:1] == ["fmnist"]:
                    commands.append(" ".join(words))
    return commands


def test_the_pages_show_commands(tmp_path):
    found = {page.name: fmnist_commands(page.read_text()) for page in reader_pages()}
    assert len(found["README.md"]) >= 5 and len(found["guide.md"]) >= 15, found
    # The helper sees through what the pages do: continuations, comments, variables, chains.
    sample = "```bash\nX=1 fmnist train \\\n  --seed 0  # note\ncd a && fmnist data &\n```\n"
    assert fmnist_commands(sample) == ["fmnist train --seed 0", "fmnist data"]


@pytest.mark.parametrize("page", reader_pages(), ids=lambda path: str(path.relative_to(REPO)))
def test_every_command_on_a_page_is_accepted_by_the_cli_parser(page):
    """Parsed by the real parser, not run: a renamed flag or a removed command fails here."""
    parser = build_parser()
    for command in fmnist_commands(page.read_text()):
        words = shlex.split(command)[1:]
        try:
            parser.parse_args(words)
        except SystemExit as stop:
            if stop.code != 0:  # --help and --version exit 0
                pytest.fail(f"{page.name}: the CLI refuses `{command}`")


def test_the_readme_presets_table_is_bench_json_s():
    readme_results = load_script("readme_results")
    report = json.loads((REPO / "bench.json").read_text())
    text = README.read_text()
    assert readme_results.with_block(text, report) == text, "README.md disagrees with bench.json: make readme"
    block = text[text.index(readme_results.START):text.index(readme_results.END)]
    assert block.count("\n| `") >= 5, "the README's presets table has no rows"


def test_the_benchmarks_page_is_bench_json_s():
    report = json.loads((REPO / "bench.json").read_text())
    assert (DOCS / "benchmarks.md").read_text() == render_markdown(report), (
        "docs/benchmarks.md disagrees with bench.json: make benchmarks-page")


def test_the_experiment_notes_tables_are_their_results_files_and_each_note_is_listed():
    notes_tables = load_script("notes_tables")
    notes = sorted((DOCS / "experiments").glob("20*.md"))
    assert notes
    index = (DOCS / "experiments" / "index.md").read_text()
    for note in notes:
        text = note.read_text()
        assert notes_tables.rendered(note) == text, f"{note.name} disagrees with its results: make notes"
        assert "<!-- results: " in text, f"{note.name} has no table from a results file"
        assert f"({note.name})" in index, f"{note.name} is missing from the experiments index"


def test_a_note_table_is_written_from_its_csv(tmp_path):
    notes_tables = load_script("notes_tables")
    (tmp_path / "r.csv").write_text('model,acc,s\n"`a`, b",0.9,1.5\n')
    note = tmp_path / "2026-01-01-x.md"
    note.write_text("# x\n<!-- results: r.csv -->\nstale\n<!-- /results -->\n")
    assert notes_tables.rendered(note) == ("# x\n<!-- results: r.csv -->\n| model | acc | s |\n"
                                           "| --- | ---: | ---: |\n| `a`, b | 0.9 | 1.5 |\n"
                                           "<!-- /results -->\n")


def test_bench_render_in_a_copy_of_the_repository_leaves_the_readme_alone(tmp_path, monkeypatch):
    for name in ("README.md", "bench.json"):
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    result = run_main("bench", "render")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "README.md").read_bytes() == README.read_bytes()
    assert (tmp_path / "BENCHMARKS.md").read_text() == (DOCS / "benchmarks.md").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["BENCHMARKS.md", "README.md",
                                                               "bench.json"]


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`, offline: a broken link, a page missing from the navigation
    or a docstring the API reference cannot read fails it."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                              "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("load_data") >= 2


def test_a_broken_link_fails_the_docs_build(tmp_path):
    """The build above would pass by not checking: the same site with one dead link fails."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "site", "build", "dist", "tests", "notebooks", "*.egg-info",
        "__pycache__", ".pytest_cache", ".hypothesis", ".ci"))
    with (copy / "docs" / "guide.md").open("a") as page:
        page.write("\n[gone](no-such-page.md)\n")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=copy, capture_output=True, text=True,
                            timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                              "HOME": str(tmp_path)})
    assert result.returncode != 0 and "no-such-page.md" in result.stderr

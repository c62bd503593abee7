"""A run's report: report.html (one self-contained file) and report.md (same numbers).

The HTML embeds its images as base64 data URIs and uses no scripts, fonts or styles
from elsewhere, so it opens anywhere, offline, and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from fmnist.data import CLASS_NAMES
from fmnist.errors import RunDirError

FIGURES = (  # (file in the run dir, heading)
    ("confusion.png", "Confusion matrix"),
    ("per_class.png", "Per-class accuracy"),
    ("misclassified.png", "Misclassified test images"),
    ("reliability.png", "Calibration"),
    ("curves.png", "Training curves"),
)


def headline(metrics: dict) -> list[tuple[str, str]]:
    """The numbers a reader wants first, as (label, value) pairs."""
    rows = [("Test accuracy", f"{metrics['test_accuracy']:.4f}")]
    if metrics.get("tta"):
        rows.append(("Test accuracy, flip TTA", f"{metrics['test_accuracy_tta']:.4f}"))
    rows += [
        ("Top-2 accuracy", f"{metrics['test_top2_accuracy']:.4f}"),
        ("Test loss (cross-entropy)", f"{metrics['test_loss']:.4f}"),
        ("Expected calibration error", f"{metrics['test_ece']:.4f}"),
    ]
    if metrics.get("test_ece_calibrated") is not None:
        rows += [
            ("Calibrated (temperature)", f"{metrics['temperature']:.3f}: ECE "
             f"{metrics['test_ece_calibrated']:.4f}, NLL {metrics['test_nll']:.4f} -> "
             f"{metrics['test_nll_calibrated']:.4f}"),
            ("Out-of-distribution threshold",
             f"{metrics['ood_threshold']:.2f} (accepts {100 * metrics['val_uploads_accepted']:.1f}% "
             "of validation uploads)"),
        ]
    rows += [
        ("Validation accuracy", _num(metrics.get("val_accuracy"))),
        ("Training", f"{metrics.get('train_seconds', 0):.1f} s, {metrics.get('epochs', '?')} epochs"),
        ("Parameters", f"{metrics.get('params', 0):,}"),
        ("Test images", f"{metrics['n_test']:,}"),
    ]
    return rows


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def class_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for index, scores in enumerate(metrics["test_per_class"]):
        rows.append([f"{index}", CLASS_NAMES[index], f"{scores['recall']:.3f}",
                     f"{scores['precision']:.3f}", f"{scores['f1']:.3f}", f"{scores['support']}"])
    return rows


CLASS_HEADER = ["#", "class", "accuracy (recall)", "precision", "F1", "support"]
PAIR_HEADER = ["true class", "predicted as", "images"]


def pair_rows(metrics: dict) -> list[list[str]]:
    return [[CLASS_NAMES[p["true"]], CLASS_NAMES[p["predicted"]], str(p["count"])]
            for p in metrics["test_most_confused"]]


def markdown_table(header: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """A Markdown table: the ``header`` cells, then one line per row of cells (strings);
    the columns at the indices in ``right`` are right-aligned (numbers)."""
    align = ["---:" if index in right else "---" for index in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


def render_markdown(config: dict, metrics: dict) -> str:
    title = f"fmnist run: {config.get('model', '?')} (seed {config.get('seed', '?')})"
    figures = "\n".join(f"![{heading}]({name})" for name, heading in FIGURES)
    return f"""# {title}

{markdown_table(["", ""], [[label, value] for label, value in headline(metrics)])}

## Per class

{markdown_table(CLASS_HEADER, class_rows(metrics))}

## Most confused pairs

{markdown_table(PAIR_HEADER, pair_rows(metrics))}

## Figures

{figures}

## Configuration

```json
{json.dumps(config, indent=2)}
```
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 980px; color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .6rem .9rem; min-width: 9rem; }
.card .label { font-size: .8rem; color: #666; } .card .value { font-size: 1.3rem; font-weight: 600; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: .3rem .7rem; text-align: right; }
th:nth-child(2), td:nth-child(2), th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def render_html(run_dir: Path, config: dict, metrics: dict) -> str:
    """The report as one HTML string with every figure of ``run_dir`` embedded."""
    title = f"fmnist run: {config.get('model', '?')} (seed {config.get('seed', '?')})"
    cards = "".join(f'<div class="card"><div class="label">{html.escape(label)}</div>'
                    f'<div class="value">{html.escape(value)}</div></div>'
                    for label, value in headline(metrics))
    figures = []
    for name, heading in FIGURES:
        path = Path(run_dir) / name
        if path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            figures.append(f"<h2>{html.escape(heading)}</h2>"
                           f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Run directory <code>{html.escape(str(run_dir))}</code>. Test metrics on
{metrics['n_test']:,} test images, which training never saw (it validated on its own
split of the training set).</p>
<div class="cards">{cards}</div>
<h2>Per class</h2>
{_html_table(CLASS_HEADER, class_rows(metrics))}
<h2>Most confused pairs</h2>
{_html_table(PAIR_HEADER, pair_rows(metrics))}
{''.join(figures)}
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(config, indent=2))}</pre>
</body></html>
"""


def write_reports(run_dir: Path, config: dict, metrics: dict) -> tuple[Path, Path]:
    """Write report.html and report.md into ``run_dir``."""
    run_dir = Path(run_dir)
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    html_path.write_text(render_html(run_dir, config, metrics))
    md_path.write_text(render_markdown(config, metrics))
    return html_path, md_path


def compare_runs(run_dirs: list[Path]) -> tuple[str, list[dict]]:
    """A Markdown table of evaluated runs side by side, and points for the accuracy plot.

    Columns: run, model, parameters, epochs, training seconds, test accuracy (and with
    TTA when measured), then each class's test accuracy.
    """
    from fmnist import rundir

    rows, points = [], []
    for run_dir in run_dirs:
        run_dir = rundir.require_run_dir(run_dir, needs=rundir.METRICS)
        metrics = rundir.read_json(run_dir / rundir.METRICS)
        if "test_accuracy" not in metrics:
            raise RunDirError(f"{run_dir} has not been evaluated; run `fmnist evaluate {run_dir}`")
        per_class = metrics.get("test_per_class")
        class_cells = ([f"{c['recall']:.3f}" for c in per_class] if per_class
                       else ["-"] * len(CLASS_NAMES))
        tta = metrics.get("test_accuracy_tta")
        rows.append([run_dir.name, metrics.get("model", "?"), f"{metrics.get('params', 0):,}",
                     str(metrics.get("epochs", "?")), f"{metrics.get('train_seconds', 0):.1f}",
                     f"{metrics['test_accuracy']:.4f}", "-" if tta is None else f"{tta:.4f}",
                     *class_cells])
        points.append({"label": f"{run_dir.name}", "train_seconds": metrics.get("train_seconds", 0),
                       "test_accuracy": metrics["test_accuracy"]})
    header = ["run", "model", "params", "epochs", "train s", "test acc", "TTA",
              *[name.replace("T-shirt/top", "T-shirt") for name in CLASS_NAMES]]
    return markdown_table(header, rows), points

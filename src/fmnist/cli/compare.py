"""`fmnist compare`: evaluated runs side by side."""

from __future__ import annotations

def add_parser(commands) -> None:
    compare = commands.add_parser(
        "compare", help="compare evaluated runs side by side",
        description="A table of evaluated runs (model, parameters, epochs, training seconds, "
                    "test accuracy, per-class accuracy) in the terminal and as compare.md, and "
                    "a plot of test accuracy against training time as compare.png.")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", metavar="DIR", default=".",
                         help="folder for compare.md and compare.png (default: .)")


def run(args) -> int:
    from pathlib import Path

    from fmnist.plots import plot_accuracy_vs_time
    from fmnist.report import compare_runs

    table, points = compare_runs([Path(d) for d in args.run_dirs])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(table + "\n")
    plot_accuracy_vs_time(points, out / "compare.png")
    print(table)
    print(f"\nwrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0

"""`fmnist data`: locate, verify and summarize the dataset."""

from __future__ import annotations

import sys

from fmnist.cli.args import add_data_dir


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="locate, verify and summarize the dataset",
                               description="Show where the data is, verify every file "
                               "(downloading into the cache if needed) and count each class.")
    data.add_argument("--show", action="store_true",
                      help="also draw a grid of sample images per class (PNG)")
    data.add_argument("--out", metavar="FILE", default="samples.png",
                      help="where --show writes its grid (default: samples.png)")
    add_data_dir(data)


def run(args) -> int:
    from fmnist.data import CLASS_NAMES, inspect

    source, reports = inspect(args.data_dir)
    print(f"data: {source.directory} ({source.origin})")
    failed = 0
    for report in reports:
        if report.verified:
            print(f"  ok    {report.spec.name}  (verified: {report.verified} SHA-256)")
        else:
            failed += 1
            print(f"  BAD   {report.problem}")
    arrays = {(r.spec.split, r.spec.kind): r.array for r in reports if r.array is not None}
    counts = {split: labels for (split, kind), labels in arrays.items() if kind == "labels"}
    if counts:
        import numpy as np

        splits = list(counts)
        print(f"\n  {'class':<14}" + "".join(f"{s:>8}" for s in splits))
        tallies = {s: np.bincount(counts[s], minlength=len(CLASS_NAMES)) for s in splits}
        for index, name in enumerate(CLASS_NAMES):
            print(f"  {index} {name:<12}" + "".join(f"{tallies[s][index]:>8}" for s in splits))
        print(f"  {'total':<14}" + "".join(f"{tallies[s].sum():>8}" for s in splits))
    if failed:
        print(f"fmnist data: error: {failed} file(s) failed verification (see above)",
              file=sys.stderr)
        return 1
    if args.show:
        from fmnist.plots import plot_samples

        images, labels = arrays[("train", "images")], arrays[("train", "labels")]
        print(f"\nsamples: {plot_samples(images, labels, CLASS_NAMES, args.out)}")
    return 0

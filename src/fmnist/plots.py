"""Arrays in, PNG out. Uses matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# One palette for every figure: blue for the model / training, orange for validation and
# reference lines, a single-hue blue scale for matrices.
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
SEQUENTIAL = "Blues"


def plot_history(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs validation, side by side.

    ``history`` is the run's history.json: one dict per epoch with the keys
    ``epoch`` (1-based), ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "accuracy", "Accuracy")):
        ax.plot(epochs, [row[key] for row in history], "o-", color=TRAIN_COLOR, label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", color=VAL_COLOR,
                label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy" if key == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    return name.replace("T-shirt/top", "T-shirt")


def plot_confusion(confusion: np.ndarray, class_names, path) -> Path:
    """Row-normalized confusion matrix (share of each true class), counts annotated."""
    plt = _pyplot()
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8.2, 7), constrained_layout=True)
    image = ax.imshow(shares, cmap=SEQUENTIAL, vmin=0, vmax=1)
    names = [_short(n) for n in class_names]
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (share of each true class; counts in cells)")
    for t in range(len(names)):
        for p in range(len(names)):
            if confusion[t, p]:
                ax.text(p, t, f"{confusion[t, p]}", ha="center", va="center", fontsize=8,
                        color="white" if shares[t, p] > 0.5 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    return _save(fig, path)


def plot_per_class_accuracy(recalls, class_names, path, overall: float | None = None) -> Path:
    """Horizontal bars: accuracy (recall) of each class, worst at the bottom."""
    plt = _pyplot()
    order = np.argsort(recalls)
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    values = np.asarray(recalls)[order]
    bars = ax.barh([_short(class_names[i]) for i in order], values, color=TRAIN_COLOR)
    for bar, value in zip(bars, values):
        ax.text(value - 0.005, bar.get_y() + bar.get_height() / 2, f"{value:.3f}",
                ha="right", va="center", color="white", fontsize=9)
    if overall is not None:
        ax.axvline(overall, color=VAL_COLOR, linestyle="--", label=f"overall {overall:.4f}")
        ax.legend(loc="lower right")
    ax.set_xlim(max(0.0, float(values.min()) - 0.1), 1.0)
    ax.set_xlabel("accuracy on the class's test images (recall)")
    ax.set_title("Per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_gallery(images, true, predicted, confidence, class_names, path,
                 title: str = "Misclassified test images", columns: int = 8,
                 saliency=None) -> Path:
    """A grid of images captioned 'true -> predicted (confidence)'.

    ``saliency``: float (N, 28, 28) maps in [0, 1] (saliency.py), drawn in red over each
    image: where the evidence for the predicted class lay.
    """
    plt = _pyplot()
    count = len(images)
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.45, rows * 1.75),
                             constrained_layout=True, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        if saliency is not None:
            ax.imshow(saliency[index], cmap="Reds", vmin=0, vmax=1, alpha=0.55 * (saliency[index] > 0.05))
        ax.set_title(f"{_short(class_names[true[index]])}\n→ {_short(class_names[predicted[index]])}"
                     f" {confidence[index]:.2f}", fontsize=7.5)
    shaded = ", red: where the model looked" if saliency is not None else ""
    fig.suptitle(f"{title} (true → predicted, confidence{shaded})", fontsize=11)
    return _save(fig, path)


def plot_reliability(bins: list[dict], ece: float, path, calibrated: tuple[list[dict], float] | None = None) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration.

    ``calibrated``: the bins and ECE after temperature scaling, drawn beside the model's own
    (mean confidence per bin as a second series, and a second count row).
    """
    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(6, 6.4), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]},
                                       constrained_layout=True)
    width = bins[0]["high"] - bins[0]["low"]
    series = [("model's own", bins, ece, TRAIN_COLOR, -0.25 if calibrated else 0.0)]
    if calibrated:
        series.append(("calibrated", calibrated[0], calibrated[1], VAL_COLOR, 0.25))
    for label, table, error, color, offset in series:
        filled = [b for b in table if b["count"]]
        centers = [(b["low"] + b["high"]) / 2 + offset * width for b in filled]
        bar = width * (0.45 if calibrated else 0.95)
        ax.bar(centers, [b["accuracy"] for b in filled], width=bar, color=color, alpha=0.8,
               label=f"accuracy in bin, {label} (ECE {error:.4f})")
        ax.plot(centers, [b["confidence"] for b in filled], "o", color=color, markeredgecolor="black",
                label=f"mean confidence, {label}")
        ax_count.bar(centers, [b["count"] for b in filled], width=bar, color=color, alpha=0.8)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    title = f"ECE {ece:.4f}" if not calibrated else f"ECE {ece:.4f} -> {calibrated[1]:.4f} calibrated"
    ax.set_title(f"Reliability diagram ({title}, {len(bins)} bins)")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    ax_count.set_yscale("log")
    ax_count.set_xlabel("confidence (top probability)")
    ax_count.set_ylabel("images")
    ax_count.set_xlim(0, 1)
    return _save(fig, path)


def plot_samples(images, labels, class_names, path, per_class: int = 8) -> Path:
    """The first ``per_class`` images of each class, one row per class."""
    plt = _pyplot()
    classes = len(class_names)
    fig, axes = plt.subplots(classes, per_class, figsize=(per_class * 1.0, classes * 1.05),
                             constrained_layout=True, squeeze=False)
    for row, name in enumerate(class_names):
        picks = np.flatnonzero(np.asarray(labels) == row)[:per_class]
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if column < len(picks):
                ax.imshow(images[picks[column]], cmap="gray", vmin=0, vmax=255)
            if column == 0:
                ax.set_ylabel(f"{row} {_short(name)}", rotation=0, ha="right", va="center",
                              fontsize=9)
    fig.suptitle("Fashion-MNIST: samples per class", fontsize=11)
    return _save(fig, path)


def plot_accuracy_vs_time(points: list[dict], path) -> Path:
    """Test accuracy against training seconds, one labelled point per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for point in points:
        ax.scatter(point["train_seconds"], point["test_accuracy"], s=45, color=TRAIN_COLOR)
        ax.annotate(point["label"], (point["train_seconds"], point["test_accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy against training time")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_trials(val_accuracy: list, best_index: int, path) -> Path:
    """Validation accuracy of each search trial in order (None: did not finish); best ringed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), constrained_layout=True)
    done = [(i + 1, a) for i, a in enumerate(val_accuracy) if a is not None]
    ax.plot([t for t, _ in done], [a for _, a in done], "o", color=TRAIN_COLOR, label="trial")
    best = val_accuracy[best_index]
    ax.plot([best_index + 1], [best], "o", markersize=14, markerfacecolor="none",
            color=VAL_COLOR, label=f"best: {best:.4f}")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Hyperparameter search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = _pyplot()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Arrays in, PNG out. Uses matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"


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

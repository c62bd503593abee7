"""The notebook runs top to bottom (small epochs and slices, set through the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fashion_mnist.ipynb"

pytestmark = pytest.mark.slow


def test_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_notebook_executes(real_data_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for name, value in {"FMNIST_NOTEBOOK_EPOCHS": "1", "FMNIST_NOTEBOOK_CNN_EPOCHS": "1",
                        "FMNIST_NOTEBOOK_TRAIN_SIZE": "2000", "FMNIST_NOTEBOOK_TEST_SIZE": "500",
                        "FMNIST_NOTEBOOK_RUNS": str(tmp_path / "runs"),
                        "FMNIST_DATA_DIR": str(real_data_dir)}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(output.get("text", "") for cell in notebook.cells
                   for output in cell.get("outputs", []))
    assert "test accuracy" in text and "cnn-fast" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # samples, curves, confusion, per class, predictions
    assert (tmp_path / "runs" / "cnn-fast" / "report.html").exists()

"""docs/tutorial.ipynb runs from top to bottom on the CPU without an error in any cell.

About 2 minutes (110-145 s on a 2-core machine shared with other jobs: most of it trains the autoencoder and
the short DiT run and encodes MNIST once); marked slow, which `make test` runs and `make test-fast` skips."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "tutorial.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DITLAB_TUTORIAL_DIR", str(tmp_path / "work"))
    # one thread: on a busy machine (CI beside other jobs) OpenMP threads spin and cost ten times the CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 8  # every section drew its figure
    if os.environ.get("DITLAB_TUTORIAL_OUT"):  # to look at the executed notebook
        nbformat.write(notebook, os.environ["DITLAB_TUTORIAL_OUT"])

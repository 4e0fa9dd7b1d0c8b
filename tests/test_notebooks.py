"""The notebooks: each ``.py`` (jupytext percent format) is paired with its ``.ipynb``, and each
runs top to bottom with ``SMOKE`` sizes, rendering its plots as PNG."""

import os
import pathlib

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import FAST_COMPILE

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_every_notebook_is_paired_and_in_sync():
    assert len(SOURCES) == 5
    for source in SOURCES:
        paired = source.with_suffix(".ipynb")
        assert paired.exists(), f"{paired.name} is missing: jupytext --to ipynb {source.name}"
        assert cells(jupytext.read(source)) == cells(nbformat.read(paired, as_version=4)), (
            f"{paired.name} differs from {source.name}: jupytext --sync {source.name}")


@pytest.mark.notebook
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_runs_with_smoke_sizes(source, monkeypatch, tmp_path):
    monkeypatch.setenv("JAXLM_SMOKE", "1")
    # the notebook chooses its own devices; compile fast, as the other tests do
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    opening = notebook.cells[0].source
    assert "colab.research.google.com" in opening and "Open In Colab" in opening
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot rendered"
    assert any("jaxlm" in o.get("text", "") for o in outputs)  # the version line

"""Every notebook under ``notebooks/`` runs top to bottom in smoke mode (``PYROVAE_SMOKE=1``).

Smoke mode is each notebook's own promise to cut cells/epochs so it runs in well under a minute
and to write files only into a temporary folder; this test checks that it runs without error and
leaves the repository untouched. Notebooks added later are picked up by the glob.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 120  # per notebook (smoke mode aims at < 60 s)


def _snapshot(folder: Path) -> set[str]:
    """The entries of the repository's top level and everything under ``folder`` (where the
    kernel runs, as in Jupyter). Not the whole tree: other work may touch it meanwhile."""
    return {p.name for p in REPO.iterdir()} | {
        str(p.relative_to(folder)) + f":{p.stat().st_mtime_ns}"
        for p in folder.rglob("*")
        if p.is_file() and ".ipynb_checkpoints" not in p.parts
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("PYROVAE_SMOKE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = _snapshot(path.parent)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},  # working directory, as in Jupyter
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    assert _snapshot(path.parent) == before, "the notebook wrote files into the repository"


def test_notebooks_are_found():
    assert NOTEBOOKS, "no notebooks under notebooks/"
    assert all(os.path.getsize(p) > 0 for p in NOTEBOOKS)

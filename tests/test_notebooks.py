"""The teaching notebooks (issue 8): each ``.ipynb`` matches its jupytext ``.py`` pair, is
committed with outputs, and runs top to bottom in a fresh ``python3`` kernel with
``LOWRANK_PROX_FAST=1`` (a cell that raises fails the test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
from nbclient.exceptions import CellExecutionError  # noqa: E402

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = (
    "01_svd_projection",
    "02_lorsum_power_method",
    "03_psi_lora_linear_task",
    "04_scaled_metrics",
    "05_convergence_in_training",
)
PRESENT = [name for name in NOTEBOOKS if (NB_DIR / f"{name}.py").exists()]

_spec = importlib.util.spec_from_file_location("notebooks_build", NB_DIR / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_all_notebooks_present():
    missing = [n + ext for n in NOTEBOOKS for ext in (".py", ".ipynb")
               if not (NB_DIR / (n + ext)).exists()]
    assert missing == []
    assert [p.stem for p in build.sources()] == list(NOTEBOOKS)


@pytest.mark.parametrize("name", PRESENT)
def test_ipynb_in_sync_with_py(name):
    ipynb_path = NB_DIR / f"{name}.ipynb"
    assert ipynb_path.exists(), f"{ipynb_path.name} missing: run python notebooks/build.py"
    ipynb = jupytext.read(ipynb_path)
    assert build.cells(ipynb) == build.cells(jupytext.read(NB_DIR / f"{name}.py")), (
        f"{name}.ipynb is out of date with {name}.py: run python notebooks/build.py {name[:2]}"
    )
    code = [c for c in ipynb.cells if c.cell_type == "code"]
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, (
        f"{name}.ipynb was committed without outputs"
    )
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


@pytest.mark.parametrize("name", PRESENT)
def test_notebook_executes(name, record_property):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    record_property("seconds", round(build.execute(nb, fast=True), 1))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert images >= 1, f"{name} drew no figure"


def test_raising_notebook_fails():
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import lowrank_prox\nraise ValueError('boom')")],
        metadata={"kernelspec": {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}},
    )
    with pytest.raises(CellExecutionError, match="boom"):
        build.execute(nb, fast=True)

"""Regenerate the teaching notebooks: ``NN_name.py`` (jupytext py:percent, the source) ->
``NN_name.ipynb`` executed top to bottom in a fresh ``python3`` kernel, outputs included.

    python notebooks/build.py                 # all notebooks, full (paper-like) sizes
    python notebooks/build.py 02 --fast       # only 02_*, with LOWRANK_PROX_FAST=1
    python notebooks/build.py --check         # only report which .ipynb are out of sync

The tests (tests/test_notebooks.py) run the same :func:`execute`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import jupytext
import nbclient

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600


def sources():
    """The notebook sources ``NN_name.py``, in order."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def cells(nb):
    """``(cell type, source)`` of each cell: what has to agree between a .py and its .ipynb."""
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


@contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(nb, *, fast, timeout=CELL_TIMEOUT_S):
    """Execute ``nb`` in place in a fresh ``python3`` kernel started in this folder.

    The kernel gets the repository root on ``PYTHONPATH`` (``analysis`` is not installed).
    ``fast`` sets ``LOWRANK_PROX_FAST=1`` (small sizes).  Plots use the kernel's inline backend
    (``MPLBACKEND`` is cleared for the kernel).  A cell that raises raises
    ``nbclient.exceptions.CellExecutionError``.  Returns the wall time in seconds.
    """
    env = {
        # the repository root: ``analysis`` works from a clone and is not installed
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get(
            "PYTHONPATH")])]),
        "LOWRANK_PROX_FAST": "1" if fast else None,
        "LOWRANK_PROX_QUIET": "1",
        "MPLBACKEND": None,
    }
    if fast:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    with _environ(**env):
        nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3",
            resources={"metadata": {"path": str(HERE)}},
        ).execute()
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="prefixes of the notebooks to build, e.g. 01")
    parser.add_argument("--fast", action="store_true", help="small sizes (LOWRANK_PROX_FAST=1)")
    parser.add_argument("--check", action="store_true", help="only check .py/.ipynb sync")
    args = parser.parse_args(argv)
    todo = [p for p in sources() if not args.only or p.name.startswith(tuple(args.only))]
    stale = []
    for src in todo:
        ipynb = src.with_suffix(".ipynb")
        if args.check:
            if not ipynb.exists() or cells(jupytext.read(ipynb)) != cells(jupytext.read(src)):
                stale.append(ipynb.name)
            continue
        nb = jupytext.read(src)
        seconds = execute(nb, fast=args.fast)
        jupytext.write(nb, ipynb)
        print(f"{ipynb.name}: executed in {seconds:.1f} s")
    if stale:
        print("out of sync:", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

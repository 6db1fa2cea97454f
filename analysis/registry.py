"""Figure registry: one builder per figure, registered by name.

A builder is ``fn(*, fast: bool) -> FigureResult``.  It runs its experiment (or calls a run
function that returns numbers), draws a matplotlib Figure and returns it with the numbers.
:func:`save` writes ``NAME.png``, ``NAME.pdf`` and ``NAME.json`` deterministically.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FIGURES", "FigureResult", "figure", "load_all", "progress", "save"]

#: Modules that register figures; each is imported by :func:`load_all`.
FIGURE_MODULES = (
    "analysis.figures.theory",
    "analysis.figures.linear",
    "analysis.figures.geolora",
    "analysis.figures.realdata",
    "analysis.figures.training",
)

FIGURES: dict[str, tuple[str, object]] = {}


@dataclass
class FigureResult:
    """What a builder returns: the figure and the numbers behind it."""

    fig: object
    settings: dict
    series: dict
    metrics: dict
    notes: str = ""
    extra: dict = field(default_factory=dict)


def figure(name, description):
    """Decorator registering a figure builder under ``name``."""

    def register(fn):
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        FIGURES[name] = (description, fn)
        return fn

    return register


def load_all():
    """Import every figure module (a module that does not exist yet is skipped)."""
    for mod in FIGURE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return FIGURES


def progress(iterable, *, desc=None, total=None):
    """A tqdm progress bar on a terminal, the plain iterable otherwise."""
    quiet = not sys.stderr.isatty() or os.environ.get("LOWRANK_PROX_QUIET")
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def to_jsonable(obj):
    """Convert numbers and arrays to JSON: NaN/Inf become None, arrays lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach"):  # torch tensors
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def save(name, result: FigureResult, out_dir):
    """Write ``NAME.png``, ``NAME.pdf`` and ``NAME.json`` into ``out_dir``; return the paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = result.fig
    paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.json"]
    fig.savefig(paths[0], dpi=120, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    plt.close(fig)
    sidecar = {
        "figure": name,
        "description": FIGURES[name][0] if name in FIGURES else "",
        "notes": result.notes,
        "settings": result.settings,
        "series": result.series,
        "metrics": result.metrics,
        **result.extra,
    }
    paths[2].write_text(json.dumps(to_jsonable(sidecar), indent=1, sort_keys=True) + "\n")
    return paths

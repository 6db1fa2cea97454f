"""Figure registry: one builder per figure, registered by name.

A builder is ``fn(*, fast: bool) -> FigureResult``.  It runs its experiment (or calls a run
function that returns numbers), draws a matplotlib Figure and returns it with the numbers.
:func:`build` runs it with fixed thread counts (:mod:`analysis._threads`), so the numbers do
not depend on the machine's core count; :func:`save` writes ``NAME.png``, ``NAME.pdf`` and
``NAME.json`` deterministically: the same code gives the same bytes.  Wall times are kept out
of the JSON (keys ``seconds``, ``seconds_*``, ``*_seconds`` are dropped: they differ on every
run); the CLI prints them instead.

A builder registered with ``draw=fn`` draws through ``fn(data) -> Figure``, where ``data`` is
the figure's JSON sidecar as a dict (``settings``, ``series``, ``metrics``, ``notes``): the
builder returns its numbers with ``fig=None`` and the registry draws them from the very dict
it writes (:func:`sidecar`, read back through JSON), so :func:`redraw` rebuilds ``NAME.png``
and ``NAME.pdf`` from a committed ``NAME.json`` with the same drawing as a build.

A figure registered with ``on_demand=True`` (the benchmark) is listed but only built when asked
for by name (``--only``).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "COMMITTED_DIR",
    "FIGURES",
    "FigureResult",
    "build",
    "default_names",
    "drop_timings",
    "figure",
    "is_committed",
    "load_all",
    "output_dir",
    "progress",
    "quiet",
    "redraw",
    "save",
    "save_images",
    "sidecar",
]

#: Modules that register figures; each is imported by :func:`load_all`.
FIGURE_MODULES = (
    "analysis.figures.theory",
    "analysis.figures.linear",
    "analysis.figures.geolora",
    "analysis.figures.realdata",
    "analysis.figures.training",
    "analysis.bench",
)

FIGURES: dict[str, tuple[str, object]] = {}
#: Figures built only when named (``--only NAME``): the benchmark.
ON_DEMAND: set[str] = set()
#: Thread count each builder runs with (None: the machine's default, for timing).
THREADS: dict[str, int | None] = {}
#: The drawing function of each figure: ``fn(data: dict) -> matplotlib Figure`` (data: JSON).
DRAW: dict[str, object] = {}

#: The committed figures (``figures/`` next to the ``analysis`` package).
COMMITTED_DIR = Path(__file__).resolve().parent.parent / "figures"


@dataclass
class FigureResult:
    """What a builder returns: the figure and the numbers behind it."""

    fig: object
    settings: dict
    series: dict
    metrics: dict
    notes: str = ""
    extra: dict = field(default_factory=dict)


def figure(name, description, *, on_demand=False, threads=1, draw=None):
    """Decorator registering a figure builder under ``name``.

    ``on_demand``: built only when named (not by a plain ``figures`` run).  ``threads``: the
    torch/BLAS thread count the builder runs with (``None`` leaves the machine's default).
    ``draw``: ``fn(data) -> Figure`` drawing the figure from its JSON dict; the decorated
    builder then returns ``FigureResult(fig=None, ...)`` and the figure is drawn by ``draw``
    from the sidecar of that result (see :func:`drawn`), the same call as :func:`redraw`.
    """

    def register(fn):
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        builder = fn
        if draw is not None:
            DRAW[name] = draw

            @functools.wraps(fn)
            def builder(*args, **kwargs):
                return drawn(name, fn(*args, **kwargs))

        FIGURES[name] = (description, builder)
        THREADS[name] = threads
        if on_demand:
            ON_DEMAND.add(name)
        return builder

    return register


def drawn(name, result):
    """``result`` with its figure drawn by ``DRAW[name]`` from its sidecar read back through
    JSON (the dict :func:`save` writes, so a :func:`redraw` draws the same inputs)."""
    if result.fig is None and name in DRAW:
        data = json.loads(json.dumps(sidecar(name, result), sort_keys=True))
        result.fig = DRAW[name](data)
    return result


def default_names():
    """The figures a plain ``python -m analysis figures`` builds (all but the on-demand ones)."""
    return sorted(n for n in FIGURES if n not in ON_DEMAND)


def build(name, *, fast):
    """Run the builder of ``name`` with its fixed thread count; return its FigureResult."""
    from ._threads import fixed_threads

    fn = FIGURES[name][1]
    threads = THREADS.get(name, 1)
    if threads is None:
        return fn(fast=fast)
    with fixed_threads(threads):
        return fn(fast=fast)


def is_committed(folder):
    """Whether ``folder`` is the committed ``figures/`` folder."""
    try:
        return Path(folder).resolve() == COMMITTED_DIR
    except OSError:
        return False


def output_dir(out, *, fast, force=False, result=None, log=print):
    """Where a run writes: ``out``, or ``figures/`` (full) / a new temporary folder (fast).

    The committed ``figures/`` only ever receive a full run whose result was not rejected
    (``result.extra["acceptance"]["accepted"]``, set by the benchmark); otherwise, unless
    ``force``, the files go to a temporary folder and ``log`` says why.
    """
    folder = Path(out) if out is not None else (None if fast else COMMITTED_DIR)
    reason = None
    if folder is None:
        reason = "--fast"
    elif is_committed(folder) and not force:
        accepted = (result.extra.get("acceptance", {}).get("accepted", True)
                    if result is not None else True)
        if fast:
            reason = "--fast results never replace the committed figures (use --force)"
        elif not accepted:
            reason = "the run was rejected as noisy; committed figures kept (use --force)"
    if reason is None:
        return folder
    tmp = Path(tempfile.mkdtemp(prefix="lowrank_prox_figures_"))
    log(f"{reason}: writing to {tmp}")
    return tmp


def load_all():
    """Import every figure module (a module that does not exist yet is skipped)."""
    for mod in FIGURE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return FIGURES


def quiet():
    """True when progress bars should stay off: stdout or stderr is not a terminal, or the
    environment sets ``CI`` or ``LOWRANK_PROX_QUIET`` (to anything but ``""``, ``0``,
    ``false``)."""

    def flag(name):
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")

    def tty(stream):
        try:
            return stream is not None and stream.isatty()
        except (AttributeError, ValueError):
            return False

    return flag("CI") or flag("LOWRANK_PROX_QUIET") or not (tty(sys.stdout) and tty(sys.stderr))


def progress(iterable, *, desc=None, total=None):
    """A tqdm progress bar (on stderr) on a terminal, the plain iterable otherwise."""
    if quiet():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


_TIMING_KEY = re.compile(r"^seconds(_.*)?$|_seconds$")


def drop_timings(obj):
    """``obj`` without wall-time entries (keys ``seconds``, ``seconds_*``, ``*_seconds``)."""
    if isinstance(obj, dict):
        return {k: drop_timings(v) for k, v in obj.items()
                if not (isinstance(k, str) and _TIMING_KEY.search(k))}
    if isinstance(obj, list | tuple):
        return [drop_timings(v) for v in obj]
    return obj


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


def save_images(name, fig, out_dir):
    """Write ``NAME.png`` and ``NAME.pdf`` of ``fig`` into ``out_dir`` (deterministic bytes:
    no dates or software names), close the figure; return the two paths."""
    import matplotlib
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with matplotlib.rc_context({"svg.hashsalt": "lowrank_prox", "pdf.compression": 6}):
        fig.savefig(paths[0], dpi=120, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None,
                                        "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def sidecar(name, result: FigureResult):
    """The JSON dict written as ``NAME.json`` for ``result`` (timings dropped, arrays as lists,
    NaN/Inf as None)."""
    data = {
        "figure": name,
        "description": FIGURES[name][0] if name in FIGURES else "",
        "notes": result.notes,
        "settings": result.settings,
        "series": result.series,
        "metrics": result.metrics,
        **result.extra,
    }
    if name not in ON_DEMAND:  # the benchmark's result *is* its times
        data = drop_timings(data)
    return to_jsonable(data)


def save(name, result: FigureResult, out_dir):
    """Write ``NAME.png``, ``NAME.pdf`` and ``NAME.json`` into ``out_dir``; return the paths."""
    result = drawn(name, result)
    paths = [*save_images(name, result.fig, out_dir), Path(out_dir) / f"{name}.json"]
    paths[2].write_text(json.dumps(sidecar(name, result), indent=1, sort_keys=True) + "\n")
    return paths


def redraw(name, folder=None, out=None):
    """Draw ``NAME.png`` and ``NAME.pdf`` again from ``folder/NAME.json`` (default: the
    committed ``figures/``) into ``out`` (default: ``folder``), without running anything; the
    JSON is only read.  Returns the two image paths.  ``ValueError`` when the figure has no
    drawing function or the JSON is missing."""
    load_all()
    if name not in DRAW:
        raise ValueError(f"figure {name!r} has no drawing function (draw=) to redraw with")
    folder = Path(folder) if folder is not None else COMMITTED_DIR
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no JSON to redraw {name!r} from: {path} does not exist")
    try:
        fig = DRAW[name](json.loads(path.read_text()))
    except KeyError as exc:
        raise ValueError(f"{path} lacks {exc}, which the drawing of {name!r} needs: an older "
                         "JSON format; build the figure again") from exc
    return save_images(name, fig, folder if out is None else out)

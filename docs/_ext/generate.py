"""Sphinx extension: write the pages that come from the repository into ``docs/auto/``.

Run at ``config-inited`` (before autosummary reads the sources), on every build:

- ``auto/api.rst``: one autosummary table per public module, from its ``__all__``;
- ``auto/notebooks/*.ipynb``: copies of ``notebooks/[0-9][0-9]_*.ipynb`` (rendered with their
  stored outputs; a new notebook is picked up by the glob in ``notebooks.md``);
- ``auto/gallery.md``: every ``figures/*.json`` with its PNG, description, notes and scalar
  metrics;
- ``auto/verify.md``: the table of ``python -m analysis verify --json`` (run now, ~10 s);
- ``auto/claims.md``: the table of ``python -m analysis claims --json`` when
  ``analysis/claims.py`` exists, else a sentence saying it is not there yet.

A step that cannot produce its page logs a Sphinx warning, so ``-W`` fails the build.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
AUTO = DOCS / "auto"

#: The public modules whose ``__all__`` the API reference lists.
API_MODULES = ("lowrank_prox", "lowrank_prox.metrics", "lowrank_prox.nn", "lowrank_prox.optim",
               "lowrank_prox.optim.distributed")

_MD_SPECIAL = "\\`*_[]<>$|~{}"


def md_escape(text):
    """Backslash-escape the characters MyST could read as markup in plain ``text``."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


def _cell(value):
    return md_escape(value).replace("\n", " ")


def md_table(header, rows):
    """A pipe table with escaped cells."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # keep mtimes: incremental builds
        path.write_text(text)


def _run_analysis(*args, timeout=600):
    """``python -m analysis ARGS --json TMP`` in the repository root; the parsed JSON.

    Falls back to ``--json`` without a path, reading the JSON from stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            MPLBACKEND="Agg", LOWRANK_PROX_QUIET="1")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "analysis", *args, "--json", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - t0
        if out.exists():
            return json.loads(out.read_text()), seconds
        # a report whose --json takes no path prints the JSON on stdout
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "analysis", *args, "--json"],
                              cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - t0
        try:
            return json.loads(proc.stdout), seconds
        except json.JSONDecodeError:
            raise RuntimeError(f"python -m analysis {' '.join(args)} wrote no JSON "
                               f"(exit {proc.returncode}):\n{proc.stderr[-2000:]}") from None


# -- pages --------------------------------------------------------------------------------


def api_page():
    parts = [
        "API reference\n=============\n\n"
        "One page per public name (the ``__all__`` of each module), generated from the "
        "numpydoc docstrings. The core (``lowrank_prox``) imports only NumPy, SciPy and "
        "array-api-compat; ``lowrank_prox.nn`` and ``lowrank_prox.optim`` need the ``torch`` "
        "extra.\n"
    ]
    for name in API_MODULES:
        mod = importlib.import_module(name)
        names = sorted(mod.__all__, key=str.lower)
        entries = "\n".join(f"   {n}" for n in names)
        parts.append(
            f"\n{name}\n{'-' * len(name)}\n\n"
            f".. automodule:: {name}\n   :no-members:\n\n"
            f".. currentmodule:: {name}\n\n"
            f".. autosummary::\n   :toctree: api\n   :nosignatures:\n\n{entries}\n"
        )
    _write(AUTO / "api.rst", "".join(parts))


def notebook_pages():
    dest = AUTO / "notebooks"
    dest.mkdir(parents=True, exist_ok=True)
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not sources:
        logger.warning("no notebooks/[0-9][0-9]_*.ipynb found")
    keep = {p.name for p in sources}
    for old in dest.glob("*.ipynb"):
        if old.name not in keep:
            old.unlink()
    for src in sources:
        _write(dest / src.name, src.read_text())


def _scalar_metrics(metrics):
    return [(k, _fmt(v)) for k, v in metrics.items()
            if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) < 80)]


def gallery_page():
    figdir = AUTO / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    jsons = sorted((ROOT / "figures").glob("*.json"))
    lines = [
        "# Figure gallery\n\n",
        f"Every figure in `figures/` ({len(jsons)} of them), as `make figures` (or "
        "`python -m analysis figures --only NAME`) writes it: the PNG, the description and "
        "the notes of its JSON sidecar, and its scalar metrics. Generated when the docs are "
        "built, so a new figure appears here by itself. Each figure also has a PDF and the "
        "full JSON (`settings`, `series`, `metrics`) next to it in `figures/`.\n\n",
    ]
    for path in jsons:
        name = path.stem
        data = json.loads(path.read_text())
        png = path.with_suffix(".png")
        lines.append(f"## {name}\n\n")
        if data.get("description"):
            lines.append(md_escape(data["description"]) + "\n\n")
        if png.exists():
            shutil.copyfile(png, figdir / png.name)
            lines.append(f"```{{image}} figures/{png.name}\n:alt: {name}\n:width: 100%\n```\n\n")
        else:
            logger.warning("figures/%s.json has no PNG next to it", name)
        if data.get("notes"):
            lines.append("**Notes.** " + md_escape(data["notes"]) + "\n\n")
        rows = _scalar_metrics(data.get("metrics", {}))
        if rows:
            lines.append(md_table(["metric", "value"], rows) + "\n")
    _write(AUTO / "gallery.md", "".join(lines))


def verify_page():
    try:
        data, seconds = _run_analysis("verify")
    except Exception as exc:  # noqa: BLE001 -- reported as a build warning
        logger.warning("verify table: %s", exc)
        _write(AUTO / "verify.md", "# Verification table\n\nThe table could not be built.\n")
        return
    rows = data["rows"]
    held = sum(r["holds"] for r in rows)
    text = (
        "# Verification table\n\n"
        "Generated at build time by `python -m analysis verify --json` (every check of "
        "Proposition 1, Theorem 3.1, the ridge and the special cases; see the "
        "[user guide](../guide/index.md)). `tests/test_theory.py` asserts the same numbers.\n\n"
        f"**{held}/{len(rows)} claims hold** (computed in {seconds:.1f} s while building).\n\n"
        + md_table(["claim", "setting", "predicted", "measured", "holds"],
                   [(r["claim"], r["setting"], r["predicted"], r["measured"],
                     _fmt(bool(r["holds"]))) for r in rows])
    )
    _write(AUTO / "verify.md", text)


def _rows_of(data):
    """The first list of dicts in a report's JSON: the list itself, or a value of its dict."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict):
        for key in ("rows", "claims", *data):
            value = data.get(key)
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                return value
    raise ValueError("no list of rows in the JSON")


def _cell_value(value):
    if isinstance(value, dict):
        return "; ".join(f"{k}={_cell_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell_value(v) for v in value)
    return "" if value is None else _fmt(value)


def claims_table(data):
    """A pipe table of a claims report: one row per claim, one column per key (in order)."""
    rows = _rows_of(data)
    header = list(dict.fromkeys(k for r in rows for k in r))
    return md_table(header, [[_cell_value(r.get(k)) for k in header] for r in rows]), len(rows)


def claims_page():
    title = "# Claims of the paper\n\n"
    if not (ROOT / "analysis" / "claims.py").exists():
        _write(AUTO / "claims.md", title + "The claims report (`python -m analysis claims`) "
               "is not part of this checkout yet; the [verification table](verify.md) and the "
               "[figure notes](gallery.md) hold the evidence meanwhile.\n")
        return
    try:
        data, seconds = _run_analysis("claims")
        table, count = claims_table(data)
    except Exception as exc:  # noqa: BLE001 -- reported as a build warning
        logger.warning("claims table: %s", exc)
        _write(AUTO / "claims.md", title + "The table could not be built.\n")
        return
    _write(AUTO / "claims.md", title + "Generated at build time by "
           f"`python -m analysis claims --json` ({count} claims, {seconds:.1f} s): one row per "
           "empirical claim of the paper, our experiment, the measured metric and the "
           "verdict.\n\n" + table)


def generate(app, config):
    t0 = time.perf_counter()
    api_page()
    notebook_pages()
    gallery_page()
    verify_page()
    claims_page()
    logger.info("docs/auto generated in %.1f s", time.perf_counter() - t0)


def setup(app):
    app.connect("config-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

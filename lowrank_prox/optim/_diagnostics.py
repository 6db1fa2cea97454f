"""Per-layer convergence diagnostics of the LoRSum calls inside an optimizer (SPEC §4).

    diag = SubspaceDiagnostics()
    opt = PSILoRA(model, lr=0.1, diagnostics=diag)      # or diagnostics=True, then opt.diagnostics
    ... train ...
    table = diag.table()     # dict of NumPy arrays, one row per (layer, call, step)
    diag.summary()           # per layer and call: fraction of steps where the bound holds, ...

PSILoRA, ScaledPSILoRA (its step call measured in the step's metric) and ProjPSILoRA (step
call only: its momentum lives in factor space) take ``diagnostics=``.

Each row is :func:`lowrank_prox.diagnostics.subspace_diagnostics` of one call: the exact
Π_r of the call's factored target from the QR core, the gap σ_{r+1}/σ_r, the distance of the
result to Π_r relative to ‖Π_r‖ (= its distance to SVDLoRA's step from the same point), the
largest principal angle and Theorem 3.1's predictions from the warm start.  Recording costs
``O((m + n) R² + R³)`` per call (``R`` = the target's inner dimension, e.g. r + batch + r_M);
``every`` records one step in ``every``.  Off (``optimizer.diagnostics is None``, the default)
the optimizers pay one attribute test per call.

Rows are keyed by (layer, call, step): a step that the optimizer skips (non-finite update) and
redoes is overwritten; a skipped last step leaves its row.  :func:`trainer_callback` returns a
``transformers.TrainerCallback`` that adds the latest per-layer numbers to every log entry.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate
from ..diagnostics import subspace_diagnostics

__all__ = ["COLUMNS", "SubspaceDiagnostics", "trainer_callback"]

#: Numeric columns of :meth:`SubspaceDiagnostics.table` (besides ``layer`` and ``call``).
COLUMNS = (
    "step", "rank", "iters", "ridge", "sigma_1", "sigma_r", "sigma_r1", "gap", "norm_proj",
    "distance", "distance_pred", "angle", "angle0", "tan0", "tan0_fro", "tan", "tan_pred",
    "excess", "excess_pred", "iters_for_1pct", "theory_applies", "holds",
)


class SubspaceDiagnostics:
    """Recorder of :func:`lowrank_prox.diagnostics.subspace_diagnostics` per layer and step.

    Parameters
    ----------
    every : int, default 1
        Record steps ``1, 1 + every, 1 + 2·every, ...`` of each layer.
    calls : tuple of str, default ("step", "momentum")
        Which LoRSum calls to record (PSI-LoRA makes a ``"step"`` and a ``"momentum"`` call).
    floor : float or None
        Rounding allowance of ``holds`` (see :func:`subspace_diagnostics`).
    ridge_tol : float, default 0
        Treat calls with ``λ ≤ ridge_tol`` as λ = 0 for ``theory_applies``.
    """

    def __init__(self, *, every=1, calls=("step", "momentum"), floor=None, ridge_tol=0.0):
        self.every = _validate.check_int(every, "every", low=1)
        calls = tuple(calls)
        for c in calls:
            _validate.check_choice(c, "calls", ("step", "momentum"))
        self.calls = calls
        self.floor = floor
        self.ridge_tol = _validate.check_real(ridge_tol, "ridge_tol", low=0.0)
        self._rows = {}

    @classmethod
    def attach_to(cls, optimizer, diagnostics=True):
        """Set ``optimizer.diagnostics`` (``True``: a new recorder; a recorder: that one)."""
        if diagnostics is True:
            diagnostics = cls()
        if not isinstance(diagnostics, cls):
            raise TypeError(
                "diagnostics must be a bool or a SubspaceDiagnostics; got "
                f"{type(diagnostics).__name__}"
            )
        optimizer.diagnostics = diagnostics
        return diagnostics

    # -- recording (called by LoRAOptimizer._diagnose) -------------------------------------
    def record(self, layer, call, target, start, result, *, iters, ridge, step, side="v",
               metric_in=None, metric_out=None):
        """Measure one LoRSum call of ``layer`` (``start``/``result`` are ``(U, V)`` pairs;
        ``side`` is the call's ``start`` option; ``metric_in``/``metric_out`` those of a
        scaled LoRSum call, which is then measured in its metric)."""
        if call not in self.calls or (step - 1) % self.every:
            return
        row = subspace_diagnostics(target, *start, *result, iters=iters, ridge=ridge,
                                   start=side, floor=self.floor,
                                   ridge_tol=self.ridge_tol, metric_in=metric_in,
                                   metric_out=metric_out)
        self._rows[(layer.name, call, int(step))] = row

    def clear(self):
        """Forget every row."""
        self._rows.clear()

    def __len__(self):
        return len(self._rows)

    # -- results ---------------------------------------------------------------------------
    def table(self, *, call=None):
        """All rows as a dict of NumPy arrays (``layer``, ``call``: str arrays; then COLUMNS),
        sorted by layer, call and step; ``call`` keeps only that call."""
        keys = sorted(k for k in self._rows if call is None or k[1] == call)
        out = {"layer": np.array([k[0] for k in keys], dtype=str),
               "call": np.array([k[1] for k in keys], dtype=str)}
        for col in COLUMNS:
            vals = [k[2] if col == "step" else self._rows[k][col] for k in keys]
            dtype = bool if col in ("theory_applies", "holds") else float
            out[col] = np.array(vals, dtype=dtype)
        return out

    def summary(self, *, within=0.01):
        """Per ``"layer/call"``: steps, median gap, median distance and prediction, the
        fraction of steps where the bound holds (among those where it applies and is finite),
        and the fraction within ``within`` of Π_r(Y) (SVDLoRA's step)."""
        t = self.table()
        out = {}
        for name in dict.fromkeys(f"{a}/{b}" for a, b in zip(t["layer"], t["call"],
                                                              strict=True)):
            lay, call = name.rsplit("/", 1)
            sel = (t["layer"] == lay) & (t["call"] == call)
            checked = sel & t["theory_applies"] & np.isfinite(t["distance_pred"])
            out[name] = {
                "steps": int(sel.sum()),
                "median_gap": float(np.nanmedian(t["gap"][sel])),
                "median_distance": float(np.median(t["distance"][sel])),
                "median_distance_pred": float(np.nanmedian(t["distance_pred"][sel]))
                if np.isfinite(t["distance_pred"][sel]).any() else math.nan,
                "checked_steps": int(checked.sum()),
                "holds_fraction": float(t["holds"][checked].mean()) if checked.any()
                else math.nan,
                "within_fraction": float((t["distance"][sel] <= within).mean()),
            }
        return out

    def latest(self, prefix="subspace"):
        """``{f"{prefix}/{layer}/{call}/{col}": value}`` of each layer's most recent row
        (distance, distance_pred, gap, angle, holds) -- the numbers a log entry carries."""
        last = {}
        for (lay, call, step) in sorted(self._rows, key=lambda k: k[2]):
            last[(lay, call)] = self._rows[(lay, call, step)]
        logs = {}
        for (lay, call), row in last.items():
            for col in ("distance", "distance_pred", "gap", "angle", "holds"):
                v = row[col]
                logs[f"{prefix}/{lay}/{call}/{col}"] = float(v) if col != "holds" else bool(v)
        return logs


def trainer_callback(diagnostics, *, prefix="subspace"):
    """A ``transformers.TrainerCallback`` adding ``diagnostics.latest(prefix)`` to every log.

    The entries go into the ``logs`` dict handed to the callbacks after this one and into the
    matching ``state.log_history`` entry (``trainer.state.log_history`` then carries them).
    """
    if not isinstance(diagnostics, SubspaceDiagnostics):
        raise TypeError(
            f"diagnostics must be a SubspaceDiagnostics; got {type(diagnostics).__name__}"
        )
    from transformers import TrainerCallback

    class SubspaceDiagnosticsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            entries = diagnostics.latest(prefix)
            if logs is not None:
                logs.update(entries)
            if state.log_history:
                state.log_history[-1].update(entries)

    return SubspaceDiagnosticsCallback()

"""LoRSum: the proximal low-rank-sum sub-problem solved by alternating ridge solves (SPEC §3).

    min_{U,V}  ½‖U Vᵀ − Y‖² + (λ/2)(‖U − U_a‖² + ‖V − V_a‖²),   Y = Σ_i c_i U_i V_iᵀ

Each half-step is the exact minimiser over one factor:

    V-step:  V ← (λ V_a + Yᵀ U)(UᵀU + λI)⁻¹
    U-step:  U ← (λ U_a + Y V)(VᵀV + λI)⁻¹

which is SPEC §3's ``Vᵀ ← (UᵀU + λI)⁻¹[λV_aᵀ + Σ c_i (UᵀU_i)V_iᵀ]`` transposed.  With λ = 0
one iteration (V-step then U-step) is one step of block power iteration on ``YYᵀ`` (SPEC §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from . import _validate, _xp
from .factored import LowRankSum, as_operator
from .gauge import _balance
from .geometry import principal_angles

__all__ = ["LorsumHistory", "lorsum", "lorsum_history", "lorsum_objective"]


def lorsum(
    target,
    U0,
    V0,
    *,
    iters=1,
    ridge=0.0,
    anchor=None,
    start="v",
    tol=1e-6,
    max_iters=100,
    stop="subspace",
    check_finite=True,
    balance=False,
    gram_jitter=0.0,
):
    """Approximate Π_r(Y) by ``iters`` warm-started alternating ridge solves (SPEC §3, §4).

    Parameters
    ----------
    target : LowRankSum or array of shape (m, n)
        The target ``Y``; a :class:`LowRankSum` is only ever multiplied, never formed.
    U0 : array of shape (m, r)
    V0 : array of shape (n, r)
        Warm start, ``Y ≈ U0 V0ᵀ``; ``1 <= r <= min(m, n)``.
    iters : int or "auto", default 1
        Number of alternating iterations; one iteration is a V-step then a U-step
        (the reverse with ``start="u"``).  ``"auto"`` iterates until the ``stop`` test passes
        ``tol``, at most ``max_iters`` times (see Notes).  ``iters=0`` is the *Jacobi* step:
        both factors are solved from the old point, ``V₊ = (λV_a + YᵀU0)(U0ᵀU0 + λI)⁻¹`` and
        ``U₊ = (λU_a + Y V0)(V0ᵀV0 + λI)⁻¹``.  For ``Y = U0V0ᵀ − ηG`` anchored at the start this
        is ScaledGD (λ = 0) or RPLoRA/PrecGD (λ > 0), SPEC §5.  Unlike an alternating step it
        may increase the objective.
    ridge : float, default 0
        The proximal weight λ ≥ 0 (the optimizers use λ = lr·λ0).
    anchor : (U_a, V_a) or None
        Proximal anchor, default ``(U0, V0)``.
    start : {"v", "u"}
        Which factor the first half-step updates.
    tol : float, default 1e-6
        Tolerance of ``iters="auto"`` (ignored otherwise).  ``tol=0`` never stops early, so
        the result is exactly that of ``iters=max_iters``.
    max_iters : int, default 100
        Cap on the iterations of ``iters="auto"``.
    stop : {"subspace", "objective"}, default "subspace"
        Stopping test of ``iters="auto"``, checked after every full iteration k ≥ 1:
        ``"subspace"`` stops when ``sin θ_max(span F_k, span F_{k−1}) < tol`` for the factor
        ``F`` updated last (``U`` with ``start="v"``; ``F_0`` is the warm start);
        ``"objective"`` stops when the objective decrease ``f_{k−1} − f_k < tol · f_{k−1}``.
    check_finite : bool, default True
        Refuse NaN/Inf in the inputs.
    balance : bool, default False
        Return the balanced pair of the result's product and its singular values
        (:func:`lowrank_prox.gauge.balance`: ``UᵀU = VᵀV = diag(s)``, same ``UVᵀ``).
    gram_jitter : float, default 0
        ε ≥ 0 added to every Gram solve, ``(WᵀW + λI + εI)⁻¹``, without the matching ``εW_a``
        on the right-hand side.  This is *not* a proximal term: each half-step then shrinks
        the factor it solves for.  The authors' code uses ε = 1e-6 (reference/paper.md §3.1);
        set it only to reproduce their runs.

    Returns
    -------
    U : (m, r) array
    V : (n, r) array
        In the namespace, device and dtype of ``U0``/``V0``; the computation runs in at least
        float32 (float16/bfloat16 inputs are upcast, then the result cast back).
    s : (r,) array
        Only with ``balance=True``: the singular values of ``UVᵀ``, descending.

    Notes
    -----
    The r×r systems are solved by Cholesky; a singular Gram with ``ridge=0`` (for example
    ``U0 = 0``) falls back to the minimum-norm solution, which is still an exact block
    minimiser, so the result is finite (zero factors in that example).  Cost per iteration
    ``O(r(m + n)(r + Σ r_i) + r³)``; no m×n matrix and no SVD.

    ``iters="auto"``: by Theorem 3.1 (SPEC §4, λ = 0) ``tan θ_k ≈ ρ^{2k} tan θ_0`` with
    ``ρ = σ_{r+1}/σ_r``, so the subspace change between iterations is
    ``≈ (1 − ρ²) tan θ_{k−1}`` and the angle left after stopping is about
    ``ρ²/(1 − ρ²) · tol``.  Each test costs two thin QRs and two r×r SVDs (``"subspace"``)
    or one product with ``Y`` (``"objective"``), never an m×n matrix.  The iteration count
    actually spent is ``lorsum_history(...).n_iter``.
    """
    op, U, V, Ua, Va, lam, iters, start, out_dtype = _lorsum_iv(
        target, U0, V0, iters, ridge, anchor, start, check_finite
    )
    balance, step = _gauge_iv(balance, gram_jitter)
    iters, until = _auto_iv(op, U, V, Ua, Va, lam, iters, start, tol, max_iters, stop)
    U, V = _als(op, U, V, Ua, Va, lam, iters, start, until=until, v_step=step, u_step=step)
    if balance:
        U, V, s = _balance(U, V)
        return _cast(U, out_dtype), _cast(V, out_dtype), _cast(s, out_dtype)
    return _cast(U, out_dtype), _cast(V, out_dtype)


@dataclass(frozen=True)
class LorsumHistory:
    """Record of one LoRSum run (see :func:`lorsum_history`).

    ``objective[j]`` is the objective after ``steps[j]``; ``steps[0] == "init"`` and the others
    name the half-step (``"v"``, ``"u"`` or ``"jacobi"``).  ``iterates[j]`` (when kept) is the
    ``(U, V)`` pair after that step.
    """

    U: object
    V: object
    objective: np.ndarray
    steps: tuple
    iterates: list | None = field(default=None, repr=False)

    @property
    def n_iter(self):
        """Full iterations run (0 for the Jacobi step): what ``iters="auto"`` spent."""
        return (len(self.steps) - 1) // 2


def lorsum_history(
    target,
    U0,
    V0,
    *,
    iters=1,
    ridge=0.0,
    anchor=None,
    start="v",
    tol=1e-6,
    max_iters=100,
    stop="subspace",
    keep_iterates=False,
):
    """Run :func:`lorsum` and record the objective after every half-step (SPEC §3).

    Same arguments and result as :func:`lorsum` (the run is the same code path, with a
    callback that the plain call does not pay for), returned as a :class:`LorsumHistory`.
    """
    op, U, V, Ua, Va, lam, iters, start, out_dtype = _lorsum_iv(
        target, U0, V0, iters, ridge, anchor, start, True
    )
    values, steps, iterates = [], [], []

    def record(step, U_, V_):
        values.append(_objective(op, U_, V_, Ua, Va, lam))
        steps.append(step)
        if keep_iterates:
            iterates.append((_cast(U_, out_dtype), _cast(V_, out_dtype)))

    iters, until = _auto_iv(op, U, V, Ua, Va, lam, iters, start, tol, max_iters, stop)
    record("init", U, V)
    U, V = _als(op, U, V, Ua, Va, lam, iters, start, callback=record, until=until)
    return LorsumHistory(
        U=_cast(U, out_dtype),
        V=_cast(V, out_dtype),
        objective=np.asarray(values),
        steps=tuple(steps),
        iterates=iterates if keep_iterates else None,
    )


def lorsum_objective(target, U, V, *, ridge=0.0, anchor=None):
    """``½‖UVᵀ − Y‖² + (λ/2)(‖U − U_a‖² + ‖V − V_a‖²)`` as a Python float (SPEC §3).

    Computed from Gram products (``‖Y‖²`` from :meth:`LowRankSum.norm`), without the m×n
    matrix; ``anchor`` defaults to ``(U, V)``, making the ridge term zero.
    """
    op, U, V, Ua, Va, lam, _, _, _ = _lorsum_iv(target, U, V, 1, ridge, anchor, "v", True)
    return _objective(op, U, V, Ua, Va, lam)


# -- private -------------------------------------------------------------------------------


def _lorsum_iv(target, U0, V0, iters, ridge, anchor, start, check_finite):
    op = as_operator(target, "target", check_finite=check_finite)
    m, n = op.shape
    _validate.check_array(U0, "U0", ndim=2, shape=(m, None), finite=check_finite)
    r = U0.shape[1]
    _validate.check_array(V0, "V0", ndim=2, shape=(n, r), finite=check_finite)
    _validate.check_rank(r, (m, n), name="U0.shape[1] (the rank)")
    if anchor is None:
        Ua, Va = U0, V0
    else:
        if not isinstance(anchor, tuple | list) or len(anchor) != 2:
            raise TypeError(
                f"anchor must be None or a (U_a, V_a) pair; got {type(anchor).__name__}"
            )
        Ua, Va = anchor
        _validate.check_array(Ua, "anchor[0]", ndim=2, shape=(m, r), finite=check_finite)
        _validate.check_array(Va, "anchor[1]", ndim=2, shape=(n, r), finite=check_finite)
    if not (isinstance(iters, str) and iters == "auto"):
        iters = _validate.check_int(iters, "iters", low=0)
    lam = _validate.check_real(ridge, "ridge", low=0.0)
    _validate.check_choice(start, "start", ("v", "u"))

    like = op.terms[0][1] if isinstance(op, LowRankSum) else getattr(op, "like", None)
    like = op.to_dense() if like is None else like  # protocol operators name their ``like``
    xp = _xp.get_namespace(
        like, U0, V0, Ua, Va, names=["target", "U0", "V0", "anchor[0]", "anchor[1]"]
    )
    out_dtype = xp.result_type(U0.dtype, V0.dtype)
    work = _xp.compute_dtype(xp, op.dtype, U0.dtype, V0.dtype, Ua.dtype, Va.dtype)
    op = op.astype(work)
    U0, V0, Ua, Va = (_cast(a, work) for a in (U0, V0, Ua, Va))
    return op, U0, V0, Ua, Va, lam, iters, start, out_dtype


def _auto_iv(op, U0, V0, Ua, Va, lam, iters, start, tol, max_iters, stop):
    """``(iteration cap, stopping test or None)`` for ``iters`` (an int or ``"auto"``)."""
    if iters != "auto":
        return iters, None
    tol = _validate.check_real(tol, "tol", low=0.0)
    max_iters = _validate.check_int(max_iters, "max_iters", low=1)
    _validate.check_choice(stop, "stop", ("subspace", "objective"))
    if tol == 0:
        return max_iters, None
    if stop == "objective":
        prev = [_objective(op, U0, V0, Ua, Va, lam)]

        def until(U, V):
            f = _objective(op, U, V, Ua, Va, lam)
            done = prev[0] - f < tol * prev[0]
            prev[0] = f
            return done

        return max_iters, until

    last = [U0 if start == "v" else V0]

    def until(U, V):
        F = U if start == "v" else V
        sin = math.sin(float(principal_angles(F, last[0])[0]))
        last[0] = F
        return sin < tol

    return max_iters, until


def _gauge_iv(balance, gram_jitter):
    """Validate ``balance`` and ``gram_jitter``; return the flag and the half-step to use."""
    if not isinstance(balance, bool):
        raise TypeError(f"balance must be a bool; got {type(balance).__name__}")
    jitter = _validate.check_real(gram_jitter, "gram_jitter", low=0.0)
    return balance, (partial(_half_step, jitter=jitter) if jitter > 0 else None)


def _cast(a, dtype):
    if a.dtype == dtype:
        return a
    xp = _xp.get_namespace(a)
    return xp.astype(a, dtype)


def _half_step(op, W, anchor, lam, jitter=0.0):
    """Exact minimiser over the other factor: ``(λ·anchor + op @ W)(WᵀW + λI)⁻¹``.

    ``jitter`` ε > 0 solves with ``WᵀW + (λ + ε)I`` instead (the authors' safeguard, see
    :func:`lorsum`'s ``gram_jitter``); the scaled half-step shares this through
    :func:`_ridge_gram`.
    """
    R = op @ W
    gram = W.mT @ W
    if lam > 0:
        R = R + lam * anchor
    return _xp.spd_solve_right(R, _ridge_gram(gram, lam + jitter))


def _ridge_gram(gram, shift):
    """``gram + shift·I`` (``gram`` itself when ``shift == 0``)."""
    if shift == 0:
        return gram
    xp = _xp.get_namespace(gram)
    return gram + shift * xp.eye(gram.shape[0], dtype=gram.dtype, device=_xp.device(gram))


def _als(
    op, U, V, Ua, Va, lam, iters, start, callback=None, *, v_step=None, u_step=None, until=None
):
    """The one ALS loop behind lorsum, lorsum_history, scaled_lorsum and the optimizers (SPEC §3).

    ``v_step(opT, U, Va, lam)`` and ``u_step(op, V, Ua, lam)`` are the exact block minimisers;
    the default is the unscaled :func:`_half_step` (scaled LoRSum passes metric-weighted ones).
    ``until(U, V)``, if given, is asked after every full iteration and ends the loop early.
    """
    v_step = v_step or _half_step
    u_step = u_step or _half_step
    opT = op.T

    def report(step):
        if callback is not None:
            callback(step, U, V)

    if iters == 0:
        U, V = u_step(op, V, Ua, lam), v_step(opT, U, Va, lam)
        report("jacobi")
        return U, V
    for _ in range(iters):
        for side in ("v", "u") if start == "v" else ("u", "v"):
            if side == "v":
                V = v_step(opT, U, Va, lam)
            else:
                U = u_step(op, V, Ua, lam)
            report(side)
        if until is not None and until(U, V):
            break
    return U, V


def _objective(op, U, V, Ua, Va, lam):
    xp = _xp.get_namespace(U)
    fit = (
        op.norm() ** 2
        - 2.0 * float(xp.sum(U * (op @ V)))
        + float(xp.sum((U.mT @ U) * (V.mT @ V)))
    )
    value = 0.5 * max(fit, 0.0)
    if lam > 0:
        value += 0.5 * lam * (
            float(xp.sum((U - Ua) ** 2)) + float(xp.sum((V - Va) ** 2))
        )
    return value

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
from .factored import (
    LowRankSum,
    _Dense,
    _exponent,
    _exponent_of,
    _fro,
    _ldexp,
    _normalised_sum,
    _scaled_norm,
    as_operator,
)
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

    Scaling.  When the target, the factors or λ lie outside ``2^±(emax/4)`` (``1e±77`` in
    float64, ``1e±9`` in float32) the problem is solved in exactly rescaled variables (powers
    of two, as LAPACK does) and the result scaled back, so that it is scale-equivariant from the
    smallest normal number to the overflow threshold.  The substitution is exact because each
    half-step is homogeneous: with ``Y = c·Ỹ``, ``U = α·Ũ``, ``V = β·Ṽ``,

    * ``λ = 0``: the V-step gives ``V = (c/α)·Ṽ₊`` and the U-step ``U = (c/β)·Ũ₊``, for any
      powers of two ``c, α, β``, so target, ``U0`` and ``V0`` are normalised independently and
      the gauge of the warm start is kept (``lorsum(A, 2^k U0, 2^-k V0)`` has the product of
      ``lorsum(A, U0, V0)`` and factors scaled by ``2^±k``);
    * ``λ > 0``: the ridge ties the scales.  With ``c = a²``, ``α = β = a`` (anchors scaled
      with the factors) the objective is ``a⁴·f(Ũ, Ṽ; Ỹ, λ/a²)``, so the scaled problem has
      ridge ``λ/a²``: the ridge scales like the *target*, not like the factors.  ``a`` is chosen
      so that the largest of ``‖Y‖, ‖U0‖², ‖V0‖², λ`` is near 1; ``ridge=1e308`` then returns
      the anchor, and a denormal ridge acts as the negligible ridge it is.

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
    U, V = _solve(op, U, V, Ua, Va, lam, iters, start, until=until, v_step=step, u_step=step)
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
    U, V = _solve(op, U, V, Ua, Va, lam, iters, start, callback=record, until=until)
    return LorsumHistory(
        U=_cast(U, out_dtype),
        V=_cast(V, out_dtype),
        objective=np.asarray(values),
        steps=tuple(steps),
        iterates=iterates if keep_iterates else None,
    )


def lorsum_objective(target, U, V, *, ridge=0.0, anchor=None):
    """``½‖UVᵀ − Y‖² + (λ/2)(‖U − U_a‖² + ‖V − V_a‖²)`` as a Python float (SPEC §3).

    The fit term is the norm of the residual itself, never ``‖Y‖² − 2⟨Y, UVᵀ⟩ + ‖UVᵀ‖²``: for a
    :class:`LowRankSum` it is :meth:`LowRankSum.norm` of ``Y − UVᵀ`` (QR core of the stacked
    factors, no m×n matrix), for a dense target the norm of the m×n residual, both scaled by
    powers of two.  So near an exact fit the value is accurate *relative to the true
    objective* as long as the residual exceeds ``eps·(Σ|c_i|‖U_i‖₂‖V_i‖₂ + ‖U‖₂‖V‖₂)`` (the
    absolute floor of the norm: ``½(that)²`` for the objective), and it does not overflow
    unless the objective does.  ``anchor`` defaults to ``(U, V)``, making the ridge term zero.
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


def _window(dtype, xp):
    """Exponent range ``±emax/4`` inside which LoRSum runs unscaled (256 float64, 32 float32)."""
    return int(math.log2(float(xp.finfo(dtype).max))) // 4


def _solve(op, U, V, Ua, Va, lam, iters, start, callback=None, until=None, **steps):
    """:func:`_als` in exactly rescaled variables when the data are badly scaled (see lorsum).

    The check costs one max-abs pass over each factor (``O((m + n)(r + Σ r_i))``, a dense
    target ``O(mn)``); inside the window the call is :func:`_als` on the original arrays.
    """
    xp = _xp.get_namespace(U)
    W = _window(U.dtype, xp)
    seen = {}  # exponents by array object: the warm start is often a term of the target
    if isinstance(op, LowRankSum):
        opn, eY, moved = _normalised_sum(op, W, seen)
    elif isinstance(op, _Dense):
        opn, eY, moved = op, _exponent(op.to_dense(), xp), False
    else:  # protocol operators: products only, no cheap scale estimate
        return _als(op, U, V, Ua, Va, lam, iters, start, callback, until=until, **steps)
    eY = 0 if eY is None else eY
    ex = {name: _exponent_of(a, xp, seen) for name, a in (("U", U), ("V", V), ("Ua", Ua),
                                                            ("Va", Va))}
    eLam = math.frexp(lam)[1] if lam > 0 else None
    out = [e for e in ex.values() if e is not None and abs(e) > W]
    if not (moved or abs(eY) > W or out or (eLam is not None and eLam > W)):
        return _als(op, U, V, Ua, Va, lam, iters, start, callback, until=until, **steps)

    if lam > 0:
        sq = [eY] + [2 * e for e in ex.values() if e is not None] + [eLam]
        k = -(-max(sq) // 2)
        kU = kV = k
        kY = 2 * k
        lam_s = math.ldexp(lam, -2 * k)
        kUa = kVa = k
    else:
        kY = eY
        kU = 0 if ex["U"] is None else ex["U"]
        kV = 0 if ex["V"] is None else ex["V"]
        kUa, kVa = kU, kV
        lam_s = 0.0
    if isinstance(op, LowRankSum):
        shift = kY - eY  # opn = op·2^-eY; we want op·2^-kY
        opn = LowRankSum._trusted(
            [(math.ldexp(c, -shift), A, B) for c, A, B in opn.terms], opn.xp, opn.dtype
        )
    else:
        opn = _Dense(_ldexp(op.to_dense(), -kY))
    Us, Vs = _ldexp(U, -kU), _ldexp(V, -kV)
    Uas = Us if Ua is U and kUa == kU else _ldexp(Ua, -kUa)
    Vas = Vs if Va is V and kVa == kV else _ldexp(Va, -kVa)
    scale = {"U": kU, "V": kV}

    def advance(step):
        # the exponents of the true factors after a half-step (exact by homogeneity)
        if lam > 0:
            return
        if step == "v":
            scale["V"] = kY - scale["U"]
        elif step == "u":
            scale["U"] = kY - scale["V"]
        else:  # jacobi
            scale["U"], scale["V"] = kY - scale["V"], kY - scale["U"]

    def record(step, U_, V_):
        advance(step)
        if callback is not None:
            callback(step, _ldexp(U_, scale["U"]), _ldexp(V_, scale["V"]))

    until_s = None
    if until is not None:

        def until_s(U_, V_):  # the stopping test sees the true (unscaled) factors
            return until(_ldexp(U_, scale["U"]), _ldexp(V_, scale["V"]))

    Ur, Vr = _als(opn, Us, Vs, Uas, Vas, lam_s, iters, start, record, until=until_s, **steps)
    return _ldexp(Ur, scale["U"]), _ldexp(Vr, scale["V"])


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
    """The LoRSum objective from the residual's own norm (see :func:`lorsum_objective`)."""
    xp = _xp.get_namespace(U)
    if isinstance(op, LowRankSum):
        residual = LowRankSum._trusted(op.terms + ((-1.0, U, V),), op.xp, op.dtype)
        mant, e = _scaled_norm(residual)
    elif isinstance(op, _Dense):
        mant, e = _fro(op.to_dense() - U @ V.mT, xp)
    else:  # protocol operators offer products only: the Gram formula
        fit = (
            op.norm() ** 2
            - 2.0 * float(xp.sum(U * (op @ V)))
            + float(xp.sum((U.mT @ U) * (V.mT @ V)))
        )
        mant, e = math.sqrt(max(fit, 0.0)), 0
    value = _times_pow2(0.5 * mant * mant, 2 * e)
    if lam > 0:
        mu, eu = _fro(U - Ua, xp)
        mv, ev = _fro(V - Va, xp)
        ml, el = math.frexp(lam)
        value += _times_pow2(0.5 * ml * mu * mu, 2 * eu + el)
        value += _times_pow2(0.5 * ml * mv * mv, 2 * ev + el)
    return value


def _times_pow2(x, e):
    """``x·2^e`` as a float, ``inf`` when it overflows (never an exception)."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.inf

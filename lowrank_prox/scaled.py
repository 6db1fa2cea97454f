"""Scaled LoRSum: the metric-weighted proximal low-rank sub-problem (SPEC §7).

    min_{U,V}  ½‖P_out^{1/2}(UVᵀ − T)P_in^{1/2}‖²
               + (λ/2)(‖P_out^{1/2}(U − U_a)‖² + ‖P_in^{1/2}(V − V_a)‖²)

with SPD metrics ``P_in`` (n×n) and ``P_out`` (m×m), normally diagonal.  Each half-step is the
exact minimiser over one factor (SPEC §7):

    V-step:  V ← (TᵀP_out U + λV_a)(UᵀP_out U + λI)⁻¹
    U-step:  U ← (T P_in V + λU_a)(VᵀP_in V + λI)⁻¹

The solver works on the target ``T`` exactly as given.  Scaled PSI-LoRA's target
``T = UVᵀ − ηP_out⁻¹ĜP_in⁻¹`` is built by the caller, by row-scaling the gradient and momentum
factors (``P_out⁻¹Δᵀ``, ``P_in⁻¹X``); with it the two updates above expand to SPEC §7's formulas.
With identity metrics every step is bit-for-bit the step of :func:`lowrank_prox.lorsum`.
"""

from __future__ import annotations

from . import _validate, _xp
from .factored import LowRankSum, _Dense
from .gauge import _balance
from .lorsum import _cast, _gauge_iv, _lorsum_iv, _objective, _ridge_gram, _solve

__all__ = ["scaled_lorsum", "scaled_lorsum_objective"]


def scaled_lorsum(
    target,
    U0,
    V0,
    *,
    metric_in,
    metric_out,
    iters=1,
    ridge=0.0,
    anchor=None,
    start="v",
    check_finite=True,
    balance=False,
    gram_jitter=0.0,
):
    """Approximate the metric-best rank-r approximation of ``T`` by alternating solves (SPEC §7).

    Parameters
    ----------
    target : LowRankSum or array of shape (m, n)
        The target ``T``, used as given (no metric is applied to it).
    U0 : array of shape (m, r)
    V0 : array of shape (n, r)
        Warm start; ``1 <= r <= min(m, n)``.
    metric_in : array of shape (n,) or (n, n), or None
        ``P_in``: positive diagonal (as a vector) or a dense symmetric positive-definite matrix;
        ``None`` is the identity.
    metric_out : array of shape (m,) or (m, m), or None
        ``P_out``, likewise.
    iters : int, default 1
        Alternating iterations (a V-step then a U-step; the reverse with ``start="u"``).
        ``iters=0`` is the *Jacobi* step, both factors solved from the old point:
        ``V₊ = (TᵀP_outU0 + λV_a)(U0ᵀP_outU0 + λI)⁻¹``, ``U₊ = (TP_inV0 + λU_a)(V0ᵀP_inV0 + λI)⁻¹``
        (for ``T = U0V0ᵀ − ηP_out⁻¹ĜP_in⁻¹`` this is the K-FAC-preconditioned RPLoRA step of
        SPEC §7 / reference K = 0).  It may increase the objective.
    ridge : float, default 0
        Proximal weight λ ≥ 0.
    anchor : (U_a, V_a) or None
        Proximal anchor, default ``(U0, V0)``.
    start : {"v", "u"}
        Which factor the first half-step updates.
    check_finite : bool, default True
        Refuse NaN/Inf in the inputs (metrics included).
    balance : bool, default False
        Return the pair balanced *in the metric's geometry* and its singular values
        (:func:`lowrank_prox.gauge.balance` with these metrics): the same ``UVᵀ`` with
        ``UᵀP_outU = VᵀP_inV = diag(s)``, the gauge representative that minimises the scaled
        proximal norm ``‖P_out^½U‖² + ‖P_in^½V‖²`` (= ``2‖P_out^½UVᵀP_in^½‖_*``).
    gram_jitter : float, default 0
        ε ≥ 0 added to every Gram, ``(WᵀPW + λI + εI)⁻¹`` (the authors' 1e-6 safeguard; see
        :func:`lowrank_prox.lorsum`).

    Returns
    -------
    U : (m, r) array
    V : (n, r) array
        Namespace, device and dtype of ``U0``/``V0``; computed in at least float32.
    s : (r,) array
        Only with ``balance=True``: singular values of ``P_out^½UVᵀP_in^½``, descending.

    Notes
    -----
    Cost per iteration ``O(r(m + n)(r + Σ r_i) + r³)`` for diagonal metrics, plus
    ``O(r(m² + n²))`` for dense ones; no m×n matrix, no SVD.  A singular Gram (e.g. a zero
    factor with ``ridge=0``) falls back to the minimum-norm solution, still a block minimiser.
    With ``metric_in`` and ``metric_out`` equal to ones (or ``None``) the result equals
    :func:`lowrank_prox.lorsum` exactly.
    """
    op, U, V, Ua, Va, lam, iters, start, out_dtype, P_in, P_out = _scaled_iv(
        target, U0, V0, metric_in, metric_out, iters, ridge, anchor, start, check_finite
    )
    balance, _ = _gauge_iv(balance, gram_jitter)
    eps = float(gram_jitter)
    U, V = _solve(
        op, U, V, Ua, Va, lam, iters, start,
        v_step=lambda opT, W, anchor, lam_: _half_step(opT, W, anchor, P_out, lam_, eps),
        u_step=lambda op_, W, anchor, lam_: _half_step(op_, W, anchor, P_in, lam_, eps),
    )
    if balance:
        U, V, s = _balance(U, V, P_in, P_out)
        return _cast(U, out_dtype), _cast(V, out_dtype), _cast(s, out_dtype)
    return _cast(U, out_dtype), _cast(V, out_dtype)


def scaled_lorsum_objective(target, U, V, *, metric_in, metric_out, ridge=0.0, anchor=None):
    """The scaled LoRSum objective of SPEC §7 as a Python float.

    ``½‖P_out^{1/2}(UVᵀ − T)P_in^{1/2}‖² + (λ/2)(‖P_out^{1/2}(U − U_a)‖² + ‖P_in^{1/2}(V − V_a)‖²)``
    With ``P = LLᵀ`` (the square root of a diagonal, the Cholesky factor of a dense metric) the
    weighted norms are plain norms of the transformed factors, ``‖Lᵀ_out(UVᵀ − T)L_in‖ =
    ‖(Lᵀ_outU)(Lᵀ_inV)ᵀ − Σ cᵢ(Lᵀ_outUᵢ)(Lᵀ_inVᵢ)ᵀ‖``, so the value comes from
    :func:`lowrank_prox.lorsum_objective`'s residual norm (QR core, powers-of-two scaling): it is
    accurate relative to the true objective near an exact fit, where a Gram formula cancels.
    ``anchor`` defaults to ``(U, V)``.
    """
    op, U, V, Ua, Va, lam, _, _, _, P_in, P_out = _scaled_iv(
        target, U, V, metric_in, metric_out, 1, ridge, anchor, "v", True
    )
    xp = _xp.get_namespace(U)
    L_out, L_in = _sqrt_metric(P_out, xp), _sqrt_metric(P_in, xp)
    if isinstance(op, LowRankSum):
        terms = tuple((c, _apply_t(L_out, Ui), _apply_t(L_in, Vi)) for c, Ui, Vi in op.terms)
        op = LowRankSum._trusted(terms, op.xp, op.dtype)
    else:
        op = _Dense(_apply_t(L_in, _apply_t(L_out, op.to_dense()).mT).mT)
    U, Ua = _apply_t(L_out, U), _apply_t(L_out, Ua)
    V, Va = _apply_t(L_in, V), _apply_t(L_in, Va)
    return _objective(op, U, V, Ua, Va, lam)


# -- private -------------------------------------------------------------------------------


def _scaled_iv(target, U0, V0, metric_in, metric_out, iters, ridge, anchor, start, check_finite):
    op, U, V, Ua, Va, lam, iters, start, out_dtype = _lorsum_iv(
        target, U0, V0, iters, ridge, anchor, start, check_finite
    )
    m, n = op.shape
    P_in = _check_metric(metric_in, "metric_in", n, U, check_finite)
    P_out = _check_metric(metric_out, "metric_out", m, U, check_finite)
    return op, U, V, Ua, Va, lam, iters, start, out_dtype, P_in, P_out


def _check_metric(P, name, size, like, check_finite):
    """Validate an SPD metric; return it in ``like``'s dtype (a diagonal as a column)."""
    if P is None:
        return None
    _validate.check_array(P, name, finite=check_finite)
    xp = _xp.get_namespace(like, P, names=["U0", name])
    work = like.dtype
    if len(P.shape) == 1:
        if P.shape[0] != size:
            raise ValueError(
                f"{name} must have shape ({size},) or ({size}, {size}); got {tuple(P.shape)}"
            )
        if not bool(xp.all(P > 0)):
            raise ValueError(
                f"{name} must be positive (an SPD metric); got minimum {float(xp.min(P))}"
            )
        return xp.reshape(_cast(P, work), (size, 1))
    if len(P.shape) != 2 or tuple(P.shape) != (size, size):
        raise ValueError(
            f"{name} must have shape ({size},) or ({size}, {size}); got {tuple(P.shape)}"
        )
    P = _cast(P, work)
    scale = float(xp.max(xp.abs(P)))
    if float(xp.max(xp.abs(P - P.mT))) > 100 * xp.finfo(work).eps * max(scale, 1e-300) * size:
        raise ValueError(f"{name} must be symmetric (an SPD metric)")
    if not _xp.is_positive_definite(P):
        raise ValueError(f"{name} must be positive definite (an SPD metric)")
    return P


def _apply(P, W):
    """``P @ W`` for a metric given as a column (diagonal), a matrix or None (identity)."""
    if P is None:
        return W
    if P.shape[1] == 1:
        return P * W
    return _xp.matmul_like(P, W)


def _sqrt_metric(P, xp):
    """A factor ``L`` with ``P = LLᵀ``: ``√P`` for a diagonal (column), Cholesky for a matrix."""
    if P is None:
        return None
    if P.shape[1] == 1:
        return xp.sqrt(P)
    return xp.linalg.cholesky(P)


def _apply_t(L, W):
    """``Lᵀ @ W`` for a factor from :func:`_sqrt_metric` (None: the identity)."""
    if L is None:
        return W
    if L.shape[1] == 1:
        return L * W
    return L.mT @ W


def _half_step(op, W, anchor, P, lam, jitter=0.0):
    """Exact block minimiser ``(op @ (P W) + λ·anchor)(Wᵀ P W + λI)⁻¹`` (SPEC §7).

    The order of operations follows :func:`lowrank_prox.lorsum._half_step`, so that an identity
    metric reproduces it bit for bit (``jitter`` as there).
    """
    PW = _apply(P, W)
    R = op @ PW
    gram = W.mT @ PW
    if lam > 0:
        R = R + lam * anchor
    return _xp.spd_solve_right(R, _ridge_gram(gram, lam + jitter))

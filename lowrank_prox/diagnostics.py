"""How close one LoRSum call came to Π_r(Y), next to what Theorem 3.1 predicts (SPEC §4, §11).

For a factored target ``Y`` (a :class:`LowRankSum`), the warm start ``(U_0, V_0)`` and the
result ``(U_K, V_K)`` of ``K`` LoRSum iterations, :func:`subspace_diagnostics` measures

- the exact ``Π_r(Y)`` and the spectrum of ``Y`` from the QR core of the stacked factors
  (:func:`lowrank_prox.truncated_svd`, no m×n matrix), the gap ``ρ = σ_{r+1}/σ_r``;
- ``distance = ‖U_KV_Kᵀ − Π_r(Y)‖ / ‖Π_r(Y)‖``, the norm of a factored sum taken by QR of the
  stacked factors (SPEC §11: accurate to ``eps·‖terms‖``, unlike Gram products);
- ``angle = θ_max(span U_K, U_r*)`` (:func:`lowrank_prox.principal_angles`), and ``angle0`` of
  the warm start;
- ``excess = (‖Y − U_KV_Kᵀ‖² − ‖Y − Π_r(Y)‖²) / ‖Π_r(Y)‖²``;

and Theorem 3.1's predictions from the warm start (λ = 0; SPEC §4):

- ``tan θ_max(U_K) ≤ ρ^{2K} tan θ_max(U_0)`` (``tan_pred``);
- the distance and excess forms.  After a U-step ``U_KV_Kᵀ = Y P_{V_K}`` and, over the
  singular triplets of ``Y``,

      ‖Y P_V − Π_r‖² = Σ_{i≤r} σ_i² ‖(I − P_V) v_i‖² + Σ_{i>r} σ_i² ‖P_V v_i‖²
                     ≤ (σ_1² + σ_{r+1}²) ‖sin Θ(V, V_r*)‖_F²,
      excess         = Σ_{i≤r} σ_i² ‖(I − P_V) v_i‖² − Σ_{i>r} σ_i² ‖P_V v_i‖²
                     ≤ σ_1² ‖sin Θ(V, V_r*)‖_F²,

  and, since the V-step multiplies by ``Yᵀ`` and contracts every tangent by ρ,
  ``‖sin Θ(V_K)‖_F ≤ min(√r, ρ^{2K−1} ‖tan Θ(U_0, U_r*)‖_F)``.  Hence

      distance_pred = √(σ_1² + σ_{r+1}²) · min(√r, ρ^{2K−1} ‖tan Θ_0‖_F) / ‖Π_r(Y)‖,
      excess_pred   = σ_1² · min(r, ρ^{4K−2} ‖tan Θ_0‖_F²) / ‖Π_r(Y)‖².

These bounds are derived here from the statement of SPEC §4 (not from the paper); they need
λ = 0, ``K ≥ 1`` and ``σ_r > 0`` (predictions are NaN otherwise) and are ``inf`` when the warm
start is orthogonal to ``U_r*`` (``θ_0 = π/2``).  With ``start="u"`` the roles of U and V swap
(the call is then LoRSum on ``Yᵀ``).  ``distance`` is also how far the call is from SVDLoRA's
step ``Π_r(Y)`` from the same point.  Everything is computed in float64.

Scaled LoRSum (SPEC §7).  With SPD metrics ``P_in``, ``P_out`` (``metric_in``, ``metric_out``)
every half-step of :func:`lowrank_prox.scaled_lorsum` is the plain LoRSum half-step in the
weighted variables ``Ũ = P_out^{1/2}U``, ``Ṽ = P_in^{1/2}V``, ``Ỹ = P_out^{1/2} Y P_in^{1/2}``
(the ridge ``λ(‖P_out^{1/2}ΔU‖² + ‖P_in^{1/2}ΔV‖²)`` included), so everything above holds with
``Y, U, V`` replaced by ``Ỹ, Ũ, Ṽ``: the diagnostics are then measured in the metric (gap
``σ̃_{r+1}/σ̃_r`` of ``Ỹ``, distance ``‖P_out^{1/2}(UVᵀ − Π̃_r)P_in^{1/2}‖/‖Π̃_r(Ỹ)‖``).  A
dense metric enters through its Cholesky factor ``P = LLᵀ`` (``Lᵀ`` in place of ``P^{1/2}``:
the two differ by an orthogonal factor, which changes no norm and no angle).
"""

from __future__ import annotations

import math

from . import _validate, _xp
from .factored import LowRankSum, as_operator
from .geometry import principal_angles
from .scaled import _check_metric
from .svd import truncated_svd

__all__ = ["factored_norm", "predicted_iters", "subspace_diagnostics"]


def factored_norm(terms):
    """``‖Σ c_i U_i V_iᵀ‖_F`` accurately: ``‖R_L C R_Rᵀ‖`` from thin QRs of the stacked factors.

    ``terms`` is a :class:`LowRankSum` or a sequence of ``(c, U_i, V_i)``; error
    ``≈ eps·Σ|c_i|‖U_iV_iᵀ‖`` (SPEC §11), where the Gram form loses everything below
    ``√eps·‖terms‖``.  Cost ``O((m + n) R²)``, ``R = Σ r_i``.  Returns a Python float.
    """
    op = terms if isinstance(terms, LowRankSum) else LowRankSum(terms)
    return _factored_norm(op.terms, op.xp)


def predicted_iters(gap, tan0, *, target=0.01, rank=1, sigma1_over_norm=1.0):
    """Smallest K ≥ 1 whose Theorem 3.1 distance bound (module docstring) is ≤ ``target``.

    ``gap`` = σ_{r+1}/σ_r, ``tan0`` = ‖tan Θ(U_0, U_r*)‖_F, ``sigma1_over_norm`` =
    √(σ_1² + σ_{r+1}²)/‖Π_r(Y)‖.  Returns 1 when even K = 1 meets the target (or the gap is 0),
    ``inf`` when no K does (gap ≥ 1 or an infinite angle).
    """
    gap = _validate.check_real(gap, "gap", low=0.0)
    tan0 = float(tan0)
    need = target / sigma1_over_norm
    if gap == 0 or tan0 * gap <= need:
        return 1
    if gap >= 1 or not math.isfinite(tan0):
        return math.inf
    # ρ^{2K−1} tan0 ≤ need  <=>  K ≥ (log(need/tan0)/log ρ + 1)/2
    return max(1, math.ceil((math.log(need / tan0) / math.log(gap) + 1) / 2 - 1e-12))


def subspace_diagnostics(
    target, U0, V0, U, V, *, iters, ridge=0.0, start="v", floor=None, ridge_tol=0.0,
    metric_in=None, metric_out=None,
):
    """Measured distance of a LoRSum result to Π_r(Y) and Theorem 3.1's prediction (SPEC §4).

    Parameters
    ----------
    target : LowRankSum or array of shape (m, n)
        The LoRSum target ``Y``.
    U0, V0 : arrays of shape (m, r), (n, r)
        The warm start of the call.
    U, V : arrays of shape (m, r), (n, r)
        Its result after ``iters`` iterations.
    iters : int
        K ≥ 0 (0 is the Jacobi step, for which nothing is predicted).
    ridge : float, default 0
        λ of the call; the theorem is stated for λ = 0 (``theory_applies`` says so).
    start : {"v", "u"}
        The ``start`` of the call.
    floor : float or None
        Rounding allowance of ``holds`` (relative distance); default ``100·eps`` of the
        result's dtype.
    ridge_tol : float, default 0
        Count the theory as applicable when ``ridge ≤ ridge_tol`` (a ridge kept only so that a
        zero ``lora_B`` can move).  Its effect on the result is ``O(λ/σ_min(U0)²)``, set by the
        warm start's *gauge*, not by ``σ_r(Y)``: a pair grown from ``lora_B = 0`` can stay far
        from balanced (seen in training: ``σ_min(U0) = 1.7e-4``, ``‖V0‖ = 5.6e3``), and then
        λ = 2e-10 moves ``tan θ_1`` from 1.6e-8 to 5.7e-8, past a bound of 4.5e-8.
    metric_in, metric_out : arrays of shape (n,) / (m,) (positive diagonals), (n, n) / (m, m)
        (SPD), or None (identity)
        The metrics of a :func:`lowrank_prox.scaled_lorsum` call: everything is then measured
        for the weighted target ``P_out^{1/2} Y P_in^{1/2}`` and factors (module docstring).

    Returns
    -------
    dict of Python floats/bools: ``rank``, ``iters``, ``ridge``, ``sigma_1``, ``sigma_r``,
    ``sigma_r1``, ``gap``, ``norm_proj``, ``distance``, ``distance_pred``, ``angle``,
    ``angle0``, ``tan0``, ``tan0_fro``, ``tan``, ``tan_pred``, ``excess``, ``excess_pred``,
    ``iters_for_1pct`` (the smallest K whose predicted distance is ≤ 1 %),
    ``theory_applies`` (λ ≤ ridge_tol, K ≥ 1, σ_r > 0) and ``holds``
    (``distance ≤ distance_pred + floor`` and ``tan ≤ tan_pred·(1 + 1e-6) + floor``;
    True where the theory does not apply).
    """
    op = as_operator(target, "target")
    m, n = op.shape
    _validate.check_array(U0, "U0", ndim=2, shape=(m, None))
    r = U0.shape[1]
    _validate.check_rank(r, (m, n), name="U0.shape[1] (the rank)")
    _validate.check_array(V0, "V0", ndim=2, shape=(n, r))
    _validate.check_array(U, "U", ndim=2, shape=(m, r))
    _validate.check_array(V, "V", ndim=2, shape=(n, r))
    iters = _validate.check_int(iters, "iters", low=0)
    ridge = _validate.check_real(ridge, "ridge", low=0.0)
    _validate.check_choice(start, "start", ("v", "u"))
    xp = _xp.get_namespace(U0, V0, U, V, names=["U0", "V0", "U", "V"])
    if floor is None:
        floor = 100.0 * float(xp.finfo(U.dtype).eps)
    floor = _validate.check_real(floor, "floor", low=0.0)
    ridge_tol = _validate.check_real(ridge_tol, "ridge_tol", low=0.0)
    if not isinstance(op, LowRankSum):
        A = op.to_dense()
        op = LowRankSum([(1.0, A, xp.eye(n, dtype=A.dtype, device=_xp.device(A)))])
    f64 = xp.float64
    op = op.astype(f64)
    U0, V0, U, V = (xp.astype(a, f64) for a in (U0, V0, U, V))
    if metric_in is not None or metric_out is not None:
        op, U0, V0, U, V = _weighted(op, (U0, V0, U, V), metric_in, metric_out, n, m)
    if start == "u":  # LoRSum on Yᵀ with the roles of U and V swapped
        op, U0, V0, U, V = op.T, V0, U0, V, U
    return _diagnose(op, U0, U, V, r, iters, ridge, floor, ridge_tol, xp)


# -- private -------------------------------------------------------------------------------


def _factored_norm(terms, xp):
    P = xp.concat([c * Ui for c, Ui, _ in terms], axis=1)
    Q = xp.concat([Vi for _, _, Vi in terms], axis=1)
    _, Rp = xp.linalg.qr(P)
    _, Rq = xp.linalg.qr(Q)
    return float(xp.linalg.vector_norm(Rp @ Rq.mT))


def _sqrt_metric(P, name, size, like):
    """``W -> P^{1/2}W`` (diagonal) or ``W -> LᵀW`` (dense ``P = LLᵀ``); identity for None."""
    P = _check_metric(P, name, size, like, True)
    if P is None:
        return lambda W: W
    xp = _xp.get_namespace(like)
    if P.shape[1] == 1:
        root = xp.sqrt(P)
        return lambda W: root * W
    Lt = xp.linalg.cholesky(P).mT
    return lambda W: Lt @ W


def _weighted(op, factors, metric_in, metric_out, n, m):
    """The weighted target ``P_out^{1/2} Y P_in^{1/2}`` and factors (module docstring)."""
    like = factors[0]
    s_in = _sqrt_metric(metric_in, "metric_in", n, like)
    s_out = _sqrt_metric(metric_out, "metric_out", m, like)
    wop = LowRankSum([(c, s_out(Ui), s_in(Vi)) for c, Ui, Vi in op.terms], check_finite=False)
    U0, V0, U, V = factors
    return wop, s_out(U0), s_in(V0), s_out(U), s_in(V)


def _angles(A, B, r):
    """Principal angles of span A (r columns) to span B, largest first; a rank-deficient A
    (e.g. a zero warm start) counts as orthogonal (π/2) in its missing directions."""
    theta = [float(t) for t in _xp.to_numpy(principal_angles(A, B))]
    return [math.pi / 2] * (r - len(theta)) + theta


def _tan_fro(theta):
    """(‖tan Θ‖_2, ‖tan Θ‖_F) from the principal angles."""
    if max(theta) >= math.pi / 2 - 1e-15:
        return math.inf, math.inf
    tans = [math.tan(t) for t in theta]
    return max(tans), math.sqrt(sum(t * t for t in tans))


def _diagnose(op, U0, U, V, r, K, lam, floor, ridge_tol, xp):
    m, n = op.shape
    k = min(op.inner_dim, m, n)  # all nonzero singular values, exact QR-core path
    Us, s, Vh = truncated_svd(op, k, check_finite=False)
    sig = [float(x) for x in _xp.to_numpy(s)]
    s1, sr = sig[0], sig[r - 1]
    sr1 = sig[r] if len(sig) > r else 0.0
    norm_proj = math.sqrt(sum(x * x for x in sig[:r]))
    Ustar = Us[:, :r]
    proj = (Us[:, :r] * s[:r], Vh[:r, :].mT)
    dist_abs = _factored_norm([(1.0, U, V), (-1.0, *proj)], xp)
    resid = _factored_norm([*op.terms, (-1.0, U, V)], xp)
    tail2 = sum(x * x for x in sig[r:])
    theta = _angles(U, Ustar, r)[0]
    angles0 = _angles(U0, Ustar, r)
    theta0 = angles0[0]
    tan_m = math.tan(theta) if theta < math.pi / 2 else math.inf
    tan0, tan0_fro = _tan_fro(angles0)
    if norm_proj == 0:
        distance = math.inf if dist_abs > 0 else 0.0
        excess = math.nan
    else:
        distance = dist_abs / norm_proj
        excess = (resid**2 - tail2) / norm_proj**2
    applies = lam <= ridge_tol and K >= 1 and sr > 0
    nan = math.nan
    gap = sr1 / sr if sr > 0 else nan
    if K >= 1 and sr > 0:
        tan_pred = gap ** (2 * K) * tan0 if gap > 0 else 0.0
        sin_v = min(math.sqrt(r), gap ** (2 * K - 1) * tan0_fro if gap > 0 else 0.0)
        distance_pred = math.sqrt(s1**2 + sr1**2) * sin_v / norm_proj
        excess_pred = s1**2 * sin_v**2 / norm_proj**2
        iters_1pct = predicted_iters(gap, tan0_fro, rank=r,
                                     sigma1_over_norm=math.sqrt(s1**2 + sr1**2) / norm_proj)
    else:
        tan_pred = distance_pred = excess_pred = iters_1pct = nan
    holds = True
    if applies:
        holds = (distance <= distance_pred + floor
                 and tan_m <= tan_pred * (1 + 1e-6) + floor)
    return {
        "rank": r,
        "iters": K,
        "ridge": lam,
        "sigma_1": s1,
        "sigma_r": sr,
        "sigma_r1": sr1,
        "gap": gap,
        "norm_proj": norm_proj,
        "distance": distance,
        "distance_pred": distance_pred,
        "angle": theta,
        "angle0": theta0,
        "tan0": tan0,
        "tan0_fro": tan0_fro,
        "tan": tan_m,
        "tan_pred": tan_pred,
        "excess": excess,
        "excess_pred": excess_pred,
        "iters_for_1pct": iters_1pct,
        "theory_applies": applies,
        "holds": bool(holds),
    }

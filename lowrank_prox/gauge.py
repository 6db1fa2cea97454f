"""The gauge of a factored matrix, and its balanced representative (SPEC §3, §6).

A pair ``(U, V)`` with ``U Vᵀ = X`` is determined by ``X`` only up to the gauge
``(U, V) → (U D, V D⁻ᵀ)``, ``D ∈ GL(r)``.  The LoRSum fit ``½‖UVᵀ − Y‖²`` is gauge invariant,
the proximal term ``(λ/2)(‖U − U_a‖² + ‖V − V_a‖²)`` is not: on an unbalanced pair
(``‖U‖ ≫ ‖V‖``) a fixed λ damps one factor far more than the other.  :func:`balance` returns the
representative of least gauge norm,

    U_b = Q_U A Σ^½,   V_b = Q_V B Σ^½,      U = Q_U R_U,  V = Q_V R_V,  R_U R_Vᵀ = A Σ Bᵀ,

for which ``U_b V_bᵀ = U Vᵀ``, ``U_bᵀU_b = V_bᵀV_b = Σ`` (column norms equal, columns
orthogonal) and ``‖U_b‖² + ‖V_b‖² = 2‖UVᵀ‖_* = min_D ‖UD‖² + ‖VD⁻ᵀ‖²`` (by AM–GM and
``‖X‖_* = min_{UVᵀ=X} ‖U‖‖V‖``).  ``Σ`` is the spectrum of ``UVᵀ``, for free.

In a metric (SPEC §7, the geometry of :func:`lowrank_prox.scaled_lorsum`) the same holds with
``P_out^½U`` and ``P_in^½V`` in place of ``U`` and ``V``: the balanced pair minimises
``‖P_out^½U‖² + ‖P_in^½V‖²`` (the scaled proximal term's norm), equal to
``2‖P_out^½ UVᵀ P_in^½‖_*``, and ``Σ`` is the spectrum of ``P_out^½ UVᵀ P_in^½``.
"""

from __future__ import annotations

from . import _validate, _xp
from .svd import svd_flip

__all__ = ["balance"]


def balance(U, V, *, metric_in=None, metric_out=None, check_finite=True):
    """The balanced pair of ``U Vᵀ`` and its singular values (module docstring; SPEC §3).

    Parameters
    ----------
    U : array of shape (m, r)
    V : array of shape (n, r)
        The factors, ``1 <= r <= min(m, n)``.
    metric_in : array of shape (n,) or (n, n), or None
        ``P_in`` of :func:`lowrank_prox.scaled_lorsum` (positive diagonal or dense SPD);
        ``None`` is the identity.
    metric_out : array of shape (m,) or (m, m), or None
        ``P_out``, likewise.
    check_finite : bool, default True
        Refuse NaN/Inf in the inputs.

    Returns
    -------
    U_b : (m, r) array
    V_b : (n, r) array
        Same product ``U_b V_bᵀ = U Vᵀ`` (to rounding), with
        ``U_bᵀ P_out U_b = V_bᵀ P_in V_b = diag(s)``.  Signs are deterministic
        (:func:`lowrank_prox.svd_flip` on ``U_b``).  Directions with ``s_i = 0`` come back as
        zero columns in both factors (the least-norm choice).
    s : (r,) array
        Singular values of ``P_out^½ U Vᵀ P_in^½`` (of ``UVᵀ`` without metrics), descending.

    Arrays are in the namespace, device and dtype of ``U``/``V`` (computed in float32 at
    least).  Cost ``O((m + n) r² + r³)`` with diagonal metrics: two thin QRs and one r×r SVD,
    no m×n matrix.  A dense metric adds a Cholesky factorisation and a triangular solve,
    ``O(m³ + n³)``.
    """
    _validate.check_array(U, "U", ndim=2, finite=check_finite)
    m, r = U.shape
    _validate.check_array(V, "V", ndim=2, shape=(None, r), finite=check_finite)
    n = V.shape[0]
    _validate.check_rank(r, (m, n), name="U.shape[1] (the rank)")
    xp = _xp.get_namespace(U, V, names=["U", "V"])
    out_dtype = xp.result_type(U.dtype, V.dtype)
    work = _xp.compute_dtype(xp, U.dtype, V.dtype)
    U, V = xp.astype(U, work), xp.astype(V, work)
    from .scaled import _check_metric  # scaled imports lorsum, which imports this module

    P_in = _check_metric(metric_in, "metric_in", n, U, check_finite)
    P_out = _check_metric(metric_out, "metric_out", m, U, check_finite)
    Ub, Vb, s = _balance(U, V, P_in, P_out)
    if work != out_dtype:
        Ub, Vb, s = (xp.astype(a, out_dtype) for a in (Ub, Vb, s))
    return Ub, Vb, s


# -- private -------------------------------------------------------------------------------


def _balance(U, V, P_in=None, P_out=None):
    """:func:`balance` on validated inputs; metrics as :func:`lowrank_prox.scaled._check_metric`
    returns them (a diagonal as an (size, 1) column, a dense matrix, or None)."""
    xp = _xp.get_namespace(U, V)
    Wu, unwhiten_u = _whiten(U, P_out, xp)
    Wv, unwhiten_v = _whiten(V, P_in, xp)
    Qu, Ru = xp.linalg.qr(Wu)
    Qv, Rv = xp.linalg.qr(Wv)
    A, s, Bh = xp.linalg.svd(Ru @ Rv.mT, full_matrices=False)
    root = xp.sqrt(s)
    Ub = unwhiten_u(Qu @ (A * root))
    Vb = unwhiten_v(Qv @ (Bh.mT * root))
    Ub, VbT = svd_flip(Ub, Vb.mT)
    return Ub, VbT.mT, s


def _whiten(W, P, xp):
    """``(P^½-whitened W, its inverse map)`` for P None / diagonal column / dense SPD."""
    if P is None:
        return W, lambda Z: Z
    if P.shape[1] == 1:
        root = xp.sqrt(P)
        return root * W, lambda Z: Z / root
    L = xp.linalg.cholesky(P)  # P = L Lᵀ, ‖P^½W‖ = ‖LᵀW‖
    return L.mT @ W, lambda Z: xp.linalg.solve(L.mT, Z)

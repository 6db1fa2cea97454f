"""Subspace geometry: principal angles between column spans, tangent-space projection."""

from __future__ import annotations

from . import _validate, _xp
from .factored import LowRankSum

__all__ = ["principal_angles", "tangent_project"]


def principal_angles(A, B):
    """Principal angles (radians) between ``span(A)`` and ``span(B)``, largest first.

    Follows the convention and the accurate small-angle formula of
    ``scipy.linalg.subspace_angles`` (Knyazev & Argentati 2002): cosines from the singular values
    of ``Q_Aᵀ Q_B``, sines from those of ``Q_B − Q_A Q_Aᵀ Q_B``, each used where it is accurate.

    Parameters
    ----------
    A : array of shape (m, p)
    B : array of shape (m, q)
        Bases (need not be orthonormal); rank-deficient columns are dropped.

    Returns
    -------
    theta : array of shape (min(rank A, rank B),), in ``[0, π/2]``, descending, in the promoted
        dtype of ``A`` and ``B`` (float16/bfloat16 inputs are computed in float32, then cast
        back).
    """
    _validate.check_array(A, "A", ndim=2)
    _validate.check_array(B, "B", ndim=2, shape=(A.shape[0], None))
    xp = _xp.get_namespace(A, B, names=["A", "B"])
    work = _xp.compute_dtype(xp, A.dtype, B.dtype)
    QA, QB = _orth(xp.astype(A, work), xp), _orth(xp.astype(B, work), xp)
    if QA.shape[1] < QB.shape[1]:
        QA, QB = QB, QA
    k = QB.shape[1]
    if k == 0:
        return xp.zeros((0,), dtype=xp.result_type(A.dtype, B.dtype), device=_xp.device(A))
    C = QA.mT @ QB
    cos = xp.linalg.svdvals(C)  # descending -> angles ascending
    sin = xp.linalg.svdvals(QB - QA @ C)  # descending -> angles descending
    cos_by_angle_desc = xp.flip(cos)
    one = xp.asarray(1.0, dtype=work, device=_xp.device(A))
    from_cos = xp.acos(xp.clip(cos_by_angle_desc, max=one))
    from_sin = xp.asin(xp.clip(sin[:k], max=one))
    theta = xp.where(cos_by_angle_desc**2 >= 0.5, from_sin, from_cos)
    out = xp.result_type(A.dtype, B.dtype)
    return xp.astype(theta, out) if out != work else theta


def tangent_project(G, U, V):
    """Projection onto the tangent space of the rank-r manifold at ``U Vᵀ`` (SPEC §5, §8).

        P_T(G) = P_U G + G P_V − P_U G P_V = G − (I − P_U) G (I − P_V)

    with ``P_U``, ``P_V`` the orthogonal projectors onto ``span(U)`` and ``span(V)``.  This is
    LoRA-Pro's SGD-equivalent update direction and the first-order part of both the SVDLoRA step
    ``Π_r(UVᵀ − ηG)`` and GeoLoRA's augmented step (SPEC §8).

    Parameters
    ----------
    G : array of shape (m, n) or LowRankSum
        The matrix to project, e.g. a gradient ``Δᵀ X`` given as the term ``(1, Δᵀ, Xᵀ)``.
    U : array of shape (m, r)
    V : array of shape (n, s)
        Bases of the column and row spaces of the point; they need not be orthonormal (they are
        orthonormalised by QR inside; a rank-deficient basis is reduced to its span by an SVD).

    Returns
    -------
    array of shape (m, n) when ``G`` is dense; a :class:`LowRankSum` of inner dimension
    ``r + s`` (rank ≤ 2r) when ``G`` is a LowRankSum, never formed as an m×n matrix:
    ``Q_U [(I − P_V) Gᵀ Q_U]ᵀ + (G Q_V) Q_Vᵀ``.  The dtype is the promoted dtype of the inputs
    (computed in at least float32).
    """
    factored = isinstance(G, LowRankSum)
    if not factored:
        _validate.check_array(G, "G", ndim=2)
    m, n = G.shape
    _validate.check_array(U, "U", ndim=2, shape=(m, None))
    _validate.check_array(V, "V", ndim=2, shape=(n, None))
    _validate.check_int(U.shape[1], "U.shape[1]", low=1, high=m)
    _validate.check_int(V.shape[1], "V.shape[1]", low=1, high=n)
    like = G.terms[0][1] if factored else G
    xp = _xp.get_namespace(like, U, V, names=["G", "U", "V"])
    out = xp.result_type(G.dtype, U.dtype, V.dtype)
    work = _xp.compute_dtype(xp, out)
    G = G.astype(work) if factored else xp.astype(G, work)
    QU = _orth_qr(xp.astype(U, work), xp)
    QV = _orth_qr(xp.astype(V, work), xp)
    GQV = G @ QV  # (m, s)
    GtQU = (G.T @ QU) if factored else (G.mT @ QU)  # (n, r)
    left = GtQU - QV @ (QV.mT @ GtQU)  # (I − P_V) Gᵀ Q_U
    if factored:
        terms = [(1.0, QU, left), (1.0, GQV, QV)]
        terms = [(c, xp.astype(a, out), xp.astype(b, out)) for c, a, b in terms]
        return LowRankSum(terms, check_finite=False)
    return xp.astype(QU @ left.mT + GQV @ QV.mT, out)


def _orth_qr(A, xp):
    """Orthonormal basis of ``span(A)``: QR, or the SVD basis when ``A`` is rank-deficient."""
    Q, R = xp.linalg.qr(A)
    d = xp.abs(xp.linalg.diagonal(R))
    dmax = float(xp.max(d))
    if dmax > 0 and float(xp.min(d)) > dmax * max(A.shape) * xp.finfo(A.dtype).eps:
        return Q
    return _orth(A, xp)


def _orth(A, xp):
    """Orthonormal basis of ``span(A)`` from the SVD, dropping directions below rcond."""
    if A.shape[1] == 0:
        return A
    U, s, _ = xp.linalg.svd(A, full_matrices=False)
    eps = xp.finfo(A.dtype).eps
    tol = float(xp.max(s)) * max(A.shape) * eps if s.shape[0] else 0.0
    keep = int(xp.sum(xp.astype(s > tol, xp.int64)))
    return U[:, :keep]

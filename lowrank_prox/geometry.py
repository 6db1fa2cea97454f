"""Subspace geometry: principal angles between column spans."""

from __future__ import annotations

from . import _validate, _xp

__all__ = ["principal_angles"]


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
    theta : array of shape (min(rank A, rank B),), in ``[0, π/2]``, descending.
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
        return xp.zeros((0,), dtype=work, device=_xp.device(A))
    C = QA.mT @ QB
    cos = xp.linalg.svdvals(C)  # descending -> angles ascending
    sin = xp.linalg.svdvals(QB - QA @ C)  # descending -> angles descending
    cos_by_angle_desc = xp.flip(cos)
    one = xp.asarray(1.0, dtype=work, device=_xp.device(A))
    from_cos = xp.acos(xp.clip(cos_by_angle_desc, max=one))
    from_sin = xp.asin(xp.clip(sin[:k], max=one))
    theta = xp.where(cos_by_angle_desc**2 >= 0.5, from_sin, from_cos)
    return xp.astype(theta, xp.result_type(A.dtype, B.dtype)) if work != theta.dtype else theta


def _orth(A, xp):
    """Orthonormal basis of ``span(A)`` from the SVD, dropping directions below rcond."""
    if A.shape[1] == 0:
        return A
    U, s, _ = xp.linalg.svd(A, full_matrices=False)
    eps = xp.finfo(A.dtype).eps
    tol = float(xp.max(s)) * max(A.shape) * eps if s.shape[0] else 0.0
    keep = int(xp.sum(xp.astype(s > tol, xp.int64)))
    return U[:, :keep]

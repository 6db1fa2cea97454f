"""Truncated SVD: the projection Π_r onto matrices of rank ≤ r (SPEC §2)."""

from __future__ import annotations

import numpy as np

from . import _validate, _xp
from .factored import LowRankSum, as_operator

__all__ = ["svd_flip", "truncated_svd"]


def truncated_svd(
    A,
    rank,
    *,
    method="exact",
    n_oversamples=10,
    n_iter="auto",
    random_state=None,
    check_finite=True,
):
    """Rank-``rank`` truncated SVD ``A ≈ U diag(s) Vh``, i.e. Π_r(A) (SPEC §2).

    By Eckart–Young–Mirsky ``U diag(s) Vh`` is a best rank-r approximation of ``A`` in the
    Frobenius norm, with residual ``(Σ_{i>r} σ_i²)^{1/2}``; it is unique iff ``σ_r > σ_{r+1}``.

    Parameters
    ----------
    A : array of shape (m, n) or LowRankSum
        Dense matrix or factored target.  A :class:`LowRankSum` is never formed: ``"exact"``
        takes QR factorisations of the stacked factors and the SVD of their small core
        (``O((m + n) R²)`` for ``R = Σ r_i``), ``"randomized"`` uses only products.
    rank : int
        Number of singular triplets, ``1 <= rank <= min(m, n)``.
    method : {"exact", "randomized"}
        ``"randomized"`` is the range finder of Halko, Martinsson & Tropp with power iterations
        and oversampling (the algorithm of scikit-learn's ``randomized_svd``).
    n_oversamples : int, default 10
        Extra sketch columns for ``"randomized"``.
    n_iter : int or "auto", default "auto"
        Power iterations for ``"randomized"``; "auto" is 7 when ``rank < 0.1 min(m, n)`` and 4
        otherwise (scikit-learn's rule).
    random_state : None, int or numpy.random.Generator
        Seed of the Gaussian sketch (drawn on the host, so all backends see the same sketch).
    check_finite : bool, default True
        Refuse NaN/Inf in ``A``.

    Returns
    -------
    U : (m, rank) array, orthonormal columns
    s : (rank,) array, non-negative and descending
    Vh : (rank, n) array, orthonormal rows

    Signs follow :func:`svd_flip`: the largest-magnitude entry of each column of ``U`` is
    positive, so results are deterministic across backends.  Arrays come back in the namespace,
    dtype and device of ``A`` (computed in float32 at least).
    """
    op = as_operator(A, "A", check_finite=check_finite)
    rank = _validate.check_rank(rank, op.shape)
    _validate.check_choice(method, "method", ("exact", "randomized"))
    n_oversamples = _validate.check_int(n_oversamples, "n_oversamples", low=0)
    if n_iter != "auto":
        n_iter = _validate.check_int(n_iter, "n_iter", low=0)
    rng = _as_generator(random_state)
    return _truncated_svd(op, rank, method, n_oversamples, n_iter, rng)


def _as_generator(random_state):
    if random_state is None or isinstance(random_state, int | np.integer):
        if isinstance(random_state, bool):
            raise TypeError("random_state must be None, an int or a numpy Generator; got a bool")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    raise TypeError(
        "random_state must be None, an int or a numpy Generator; "
        f"got {type(random_state).__name__}"
    )


def _namespace_of(op):
    if isinstance(op, LowRankSum):
        return op.xp, op.terms[0][1]
    A = op.to_dense()
    return _xp.get_namespace(A), A


def _truncated_svd(op, rank, method, n_oversamples, n_iter, rng):
    xp, like = _namespace_of(op)
    out_dtype = op.dtype
    work = _xp.compute_dtype(xp, out_dtype)
    op = op.astype(work)
    if method == "exact":
        U, s, Vh = _exact(op, rank, xp)
    else:
        U, s, Vh = _randomized(op, rank, n_oversamples, n_iter, rng, xp, like)
    U, Vh = svd_flip(U[:, :rank], Vh[:rank, :])
    s = s[:rank]
    if work != out_dtype:
        U, s, Vh = (xp.astype(a, out_dtype) for a in (U, s, Vh))
    return U, s, Vh


def _exact(op, rank, xp):
    if isinstance(op, LowRankSum) and op.inner_dim >= rank:
        # Y = P Qᵀ with P = [c_i U_i], Q = [V_i]; QR of both, SVD of the small core.
        P = xp.concat([c * U for c, U, _ in op.terms], axis=1)
        Q = xp.concat([V for _, _, V in op.terms], axis=1)
        Qp, Rp = xp.linalg.qr(P)
        Qq, Rq = xp.linalg.qr(Q)
        Uc, s, Vhc = xp.linalg.svd(Rp @ Rq.mT, full_matrices=False)
        return Qp @ Uc, s, Vhc @ Qq.mT
    return xp.linalg.svd(op.to_dense(), full_matrices=False)


def _randomized(op, rank, n_oversamples, n_iter, rng, xp, like):
    m, n = op.shape
    k = min(rank + n_oversamples, m, n)
    if n_iter == "auto":
        n_iter = 7 if rank < 0.1 * min(m, n) else 4
    omega = _xp.normal(xp, (n, k), rng=rng, dtype=op.dtype, like=like)
    Q, _ = xp.linalg.qr(op @ omega)
    opT = op.T
    for _ in range(n_iter):
        Q, _ = xp.linalg.qr(opT @ Q)
        Q, _ = xp.linalg.qr(op @ Q)
    Bt = opT @ Q  # (n, k) = (Qᵀ A)ᵀ
    Ub, s, Vh = xp.linalg.svd(Bt.mT, full_matrices=False)
    return Q @ Ub, s, Vh


def svd_flip(U, Vh):
    """Make the largest-magnitude entry of each column of ``U`` positive (scikit-learn's rule).

    Flips the matching row of ``Vh`` so that ``U diag(s) Vh`` is unchanged.
    """
    xp = _xp.get_namespace(U, Vh)
    m, k = U.shape
    idx = xp.argmax(xp.abs(U), axis=0)
    flat = xp.reshape(U.mT, (-1,))
    offsets = xp.arange(k, dtype=idx.dtype, device=_xp.device(U)) * m
    signs = xp.sign(xp.take(flat, idx + offsets))
    signs = xp.where(signs == 0, xp.ones_like(signs), signs)
    return U * signs, Vh * signs[:, None]

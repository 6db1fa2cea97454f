"""Truncated SVD: the projection Π_r onto matrices of rank ≤ r (SPEC §2)."""

from __future__ import annotations

import warnings

import numpy as np

from . import _validate, _xp
from .factored import (
    LowRankSum,
    _Dense,
    _exponent,
    _ldexp,
    _normalised_sum,
    _stacked_core,
    as_operator,
)

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
        (``O((m + n) R²)`` for ``R = Σ r_i``), for every ``rank``: above the rank bound
        ``min(m, n, R)`` the extra singular values are exact zeros and the extra singular
        vectors an orthonormal completion; ``"randomized"`` uses only products.
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

    Accuracy and scaling.  ``"exact"`` is backward stable: the triplets are exact for a matrix
    within ``O(eps·‖A‖₂)`` of ``A`` (for a LowRankSum: of ``eps·Σ|c_i|‖U_i‖₂‖V_i‖₂``), so each
    ``σ_i`` has absolute error of that order (Weyl) and the subspaces the usual
    ``eps·‖A‖/gap`` error.  The target is scaled by a power of two (exact) so that its largest
    entry is near 1 before anything is computed, and the singular values are scaled back: the
    result is scale-equivariant, ``truncated_svd(c·A)`` gives ``c·s`` with the same vectors,
    from the smallest normal number to the overflow threshold.  Singular values that exceed the
    dtype's range come back as ``inf`` with a ``RuntimeWarning`` (both methods), never as a
    failure deep inside LAPACK.
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
        if random_state is not None and random_state < 0:
            raise ValueError(
                f"random_state must be None, a non-negative int or a numpy Generator; "
                f"got {random_state}"
            )
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
    if method == "exact" and isinstance(op, LowRankSum):
        U, s, Vh, e = _exact_factored(op, rank, xp, like)
    else:
        op, e = _normalised(op, xp)
        if method == "exact":
            U, s, Vh = xp.linalg.svd(op.to_dense(), full_matrices=False)
        else:
            U, s, Vh = _randomized(op, rank, n_oversamples, n_iter, rng, xp, like)
    U, Vh = svd_flip(U[:, :rank], Vh[:rank, :])
    s = _scale_back(s[:rank], e, xp)
    if work != out_dtype:
        U, s, Vh = (xp.astype(a, out_dtype) for a in (U, s, Vh))
    return U, s, Vh


def _normalised(op, xp):
    """``(op·2^-e, e)`` with the largest entry of ``op`` near 1 (an exact rescale)."""
    if isinstance(op, LowRankSum):
        return _normalised_sum(op)[:2]
    if not isinstance(op, _Dense):
        return op, 0
    A = op.to_dense()
    e = _exponent(A, xp)
    if e is None or abs(e) < 2:
        return op, 0
    return _Dense(_ldexp(A, -e)), e


def _scale_back(s, e, xp):
    """``s·2^e``; values beyond the dtype's range become ``inf`` with a ``RuntimeWarning``."""
    if e != 0:
        with np.errstate(over="ignore"):
            s = _ldexp(s, e)
    if not _xp.all_finite(s):
        warnings.warn(
            f"truncated_svd: singular values overflow {s.dtype}; they are returned as inf",
            RuntimeWarning,
            stacklevel=4,
        )
    return s


def _exact_factored(op, rank, xp, like):
    """SVD of ``Y = Σ c_i U_i V_iᵀ`` from the QR core, for every rank (never forms m×n).

    ``Y = 2^e Q_L (R_L C R_Rᵀ) Q_Rᵀ`` (:func:`lowrank_prox.factored._stacked_core`); the SVD of
    the core gives the leading triplets.  When ``rank`` exceeds the core's size the remaining
    singular values are zero and the vectors are completed to an orthonormal set.
    """
    m, n = op.shape
    core, e, QL, QR = _stacked_core(op.terms, xp, op.dtype)
    if core is None:
        U = xp.zeros((m, 0), dtype=op.dtype, device=_xp.device(like))
        Vt = xp.zeros((n, 0), dtype=op.dtype, device=_xp.device(like))
        s = xp.zeros((0,), dtype=op.dtype, device=_xp.device(like))
    else:
        Uc, s, Vhc = xp.linalg.svd(core, full_matrices=False)
        U, Vt = QL @ Uc, QR @ Vhc.mT
    k = s.shape[0]
    if k < rank:
        U = _complete(U, rank, xp)
        Vt = _complete(Vt, rank, xp)
        s = xp.concat([s, xp.zeros((rank - k,), dtype=s.dtype, device=_xp.device(s))])
    return U, s, Vt.mT, e


def _complete(Q, rank, xp):
    """``Q`` (orthonormal columns) extended to ``rank`` orthonormal columns, deterministically.

    The first ``rank`` coordinate vectors, projected off ``span(Q)`` twice (classical
    Gram–Schmidt with reorthogonalisation); their leading left singular vectors span at least
    ``rank − k`` new directions, since at most ``k`` of the ``rank`` coordinate directions can
    lie in a ``k``-dimensional span.
    """
    m, k = Q.shape
    E = xp.eye(m, rank, dtype=Q.dtype, device=_xp.device(Q))
    for _ in range(2):
        E = E - Q @ (Q.mT @ E)
    W, _, _ = xp.linalg.svd(E, full_matrices=False)
    return xp.concat([Q, W[:, : rank - k]], axis=1)


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
    _validate.check_array(U, "U", ndim=2, finite=False)
    _validate.check_array(Vh, "Vh", ndim=2, finite=False)
    if U.shape[1] != Vh.shape[0]:
        raise ValueError(
            "U must be (m, k) and Vh (k, n) with the same k; got U "
            f"{tuple(U.shape)} and Vh {tuple(Vh.shape)}"
        )
    xp = _xp.get_namespace(U, Vh, names=["U", "Vh"])
    m, k = U.shape
    idx = xp.argmax(xp.abs(U), axis=0)
    flat = xp.reshape(U.mT, (-1,))
    offsets = xp.arange(k, dtype=idx.dtype, device=_xp.device(U)) * m
    signs = xp.sign(xp.take(flat, idx + offsets))
    signs = xp.where(signs == 0, xp.ones_like(signs), signs)
    return U * signs, Vh * signs[:, None]

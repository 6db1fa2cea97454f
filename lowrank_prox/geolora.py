"""GeoLoRA: one rank-adaptive geometric integration step on ``W = U S Vᵀ`` (SPEC §8).

Schotthöfer, Zangrando, Ceruti, Tudisco & Kusch, "GeoLoRA: Geometric integration for parameter
efficient fine-tuning" (ICLR 2025).  One step, all from the old point ``(U, S, V)``:

1. K/L gradients ``G_K = G V`` and ``G_L = Gᵀ U`` (from one backward pass these are
   ``∇_U S⁻ᵀ`` and ``∇_V S⁻¹``, see :func:`geolora_tangent`);
2. basis augmentation ``[U, Ũ] = qr([U, G_K])``, ``[V, Ṽ] = qr([V, G_L])``;
3. the augmented coefficient matrix ::

       M = [[S − η UᵀGV,  −η G_Lᵀ Ṽ],
            [−η Ũᵀ G_K,   0        ]]

4. truncation by the SVD of ``M`` to the smallest rank whose discarded singular values satisfy
   ``‖σ_tail‖ < τ‖σ‖``, clamped to ``[min_rank, max_rank]``.

Before truncation ``[U, Ũ] M [V, Ṽ]ᵀ = W − η P_T(G)`` exactly, with
``P_T(G) = P_U G + G P_V − P_U G P_V`` the tangent projection at ``W`` (SPEC §5, §8): a GeoLoRA
step is a Riemannian gradient step on the rank manifold followed by a τ-truncated SVD.
"""

from __future__ import annotations

import math

from . import _validate, _xp
from .factored import LowRankSum, as_operator

__all__ = ["geolora_step", "geolora_tangent", "tail_rank"]


def geolora_step(
    U, S, V, G, lr, *, tau, min_rank=2, max_rank=None, augment=True, max_augmented_rank=None,
    check_finite=True,
):
    """One GeoLoRA step ``W₊ = T_τ(W − lr·P_T(G))`` for ``W = U S Vᵀ`` (SPEC §8).

    Parameters
    ----------
    U : array of shape (m, r)
    V : array of shape (n, r)
        Orthonormal columns (not checked: the step keeps them orthonormal).
    S : array of shape (r, r)
        The coefficient matrix; any square matrix (it need not be diagonal or invertible here).
    G : array of shape (m, n) or LowRankSum
        The gradient ``∇_W L``; only ``G V``, ``Gᵀ U`` and ``Uᵀ G V`` are used, so a factored
        gradient (for instance the tangent vector from :func:`geolora_tangent`) is never formed.
    lr : float
        Step size η ≥ 0.
    tau : float
        Relative truncation tolerance in ``[0, 1]``: the new rank is the smallest ``k`` with
        ``‖σ_{k+1:}‖ < τ‖σ‖`` over the singular values σ of the augmented coefficient matrix
        (see :func:`tail_rank`).  ``tau=0`` truncates nothing.
    min_rank : int, default 2
        Lower clamp of the new rank (GeoLoRA's ``r_min = 2``).
    max_rank : int or None
        Upper clamp of the new rank, default ``min(m, n)``.  The rank can at most double per step
        (the augmented basis has ``min(2r, m)`` and ``min(2r, n)`` columns), so the result has rank
        ``min(max(tail_rank, min_rank), max_rank, min(2r, m), min(2r, n))``.
    augment : bool, default True
        ``False`` skips the basis augmentation: only the coefficient ("S") step
        ``S − lr·UᵀGV`` in the current bases, then the truncation (the "coefficient steps" that
        GeoLoRA's reference trainers run between augmentations, peers.md §1.4).
    max_augmented_rank : int or None
        Largest number of columns of each augmented basis, default ``2r`` (capped at ``m``,
        ``n``): the SVD then sees every new direction.  GeoLoRA's reference trainers
        preallocate ``max_rank`` columns and augment only to ``min(2r, max_rank)``, keeping
        the first ``max_rank − r`` new directions of the QR before the SVD; pass
        ``max_augmented_rank=max_rank`` for that.  A value ``≤ r`` augments nothing.
    check_finite : bool, default True
        Refuse NaN/Inf in the inputs.

    Returns
    -------
    U : (m, k) array, orthonormal columns
    S : (k, k) array, diagonal with non-negative, descending entries
    V : (n, k) array, orthonormal columns
        In the namespace, device and dtype of ``U`` (computed in at least float32).

    Notes
    -----
    The new directions ``Ũ`` are the last columns of the reduced QR of ``[U, G_K]``; the first
    block stays exactly ``U`` (QR would only flip its signs), so ``S − η UᵀGV`` sits in the old
    basis.  When ``G_K`` has fewer independent directions than columns, QR completes ``Ũ`` with
    arbitrary orthonormal directions whose coefficients are zero; truncation removes them.
    Cost ``O((m + n) r² + r³)`` plus the products with ``G``; no m×n matrix for factored ``G``.
    """
    _validate.check_array(U, "U", ndim=2, finite=check_finite)
    m, r = U.shape
    _validate.check_array(S, "S", ndim=2, shape=(r, r), finite=check_finite)
    _validate.check_array(V, "V", ndim=2, shape=(None, r), finite=check_finite)
    n = V.shape[0]
    _validate.check_rank(r, (m, n), name="U.shape[1] (the rank)")
    op = as_operator(G, "G", check_finite=check_finite)
    if tuple(op.shape) != (m, n):
        raise ValueError(f"G must have shape ({m}, {n}) like U Vᵀ; got {tuple(op.shape)}")
    lr = _validate.check_real(lr, "lr", low=0.0)
    tau = _validate.check_real(tau, "tau", low=0.0, high=1.0)
    min_rank = _validate.check_rank(min_rank, (m, n), name="min_rank")
    if max_rank is None:
        max_rank = min(m, n)
    max_rank = _validate.check_int(max_rank, "max_rank", low=min_rank, high=min(m, n))
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be True or False; got {augment!r}")
    if max_augmented_rank is not None:
        max_augmented_rank = _validate.check_int(max_augmented_rank, "max_augmented_rank", low=1)

    like = op.terms[0][1] if isinstance(op, LowRankSum) else op.to_dense()
    xp = _xp.get_namespace(U, S, V, like, names=["U", "S", "V", "G"])
    out_dtype = U.dtype
    work = _xp.compute_dtype(xp, U.dtype, S.dtype, V.dtype, op.dtype)
    U, S, V = (_cast(a, work) for a in (U, S, V))
    op = op.astype(work)

    GK = op @ V  # G V        (m × r)
    GL = op.T @ U  # Gᵀ U     (n × r)
    grad_S = U.mT @ GK  # Uᵀ G V (r × r)
    if augment:
        U_new = _augment(U, GK, xp)  # Ũ: m × (p − r), orthogonal to U
        V_new = _augment(V, GL, xp)  # Ṽ: n × (q − r)
        if max_augmented_rank is not None:  # the reference trainers' min(2r, max_rank)
            extra = max(max_augmented_rank - r, 0)
            U_new, V_new = U_new[:, :extra], V_new[:, :extra]
    else:
        U_new, V_new = U[:, :0], V[:, :0]
    p, q = r + U_new.shape[1], r + V_new.shape[1]

    M = xp.zeros((p, q), dtype=work, device=_xp.device(U))
    M[:r, :r] = S - lr * grad_S
    M[r:, :r] = -lr * (U_new.mT @ GK)
    M[:r, r:] = -lr * (GL.mT @ V_new)
    P, sigma, Qh = xp.linalg.svd(M, full_matrices=False)

    k = tail_rank(sigma, tau)
    k = max(1, min(max(k, min_rank), max_rank, p, q))
    U_hat = xp.concat([U, U_new], axis=1)
    V_hat = xp.concat([V, V_new], axis=1)
    U_out = U_hat @ P[:, :k]
    V_out = V_hat @ Qh[:k, :].mT
    S_out = _diag(sigma[:k], xp)
    return _cast(U_out, out_dtype), _cast(S_out, out_dtype), _cast(V_out, out_dtype)


def geolora_tangent(U, S, V, grad_U, grad_S, grad_V, *, rcond=None):
    """The tangent gradient ``P_T(G)`` rebuilt from one backward pass through ``U S Vᵀ`` (SPEC §8).

    For ``W = U S Vᵀ`` autograd gives ``∇_U = G V Sᵀ``, ``∇_S = Uᵀ G V`` and ``∇_V = Gᵀ U S``,
    so ``G V = ∇_U S⁻ᵀ`` and ``Gᵀ U = ∇_V S⁻¹`` (peers.md §1.3; for the diagonal S that GeoLoRA
    keeps this is ``∇_U S⁻¹`` and ``∇_V S⁻ᵀ`` of SPEC §8).  With ``U, V`` orthonormal ::

        P_T(G) = U ∇_S Vᵀ + (I − P_U) G V Vᵀ + U (Gᵀ U)ᵀ (I − P_V)

    returned as a :class:`LowRankSum` of inner dimension ``3r``; :func:`geolora_step` on it is
    the same step as on ``G`` because it only reads ``G V``, ``Gᵀ U`` and ``Uᵀ G V``.

    The inverse is the pseudo-inverse of ``S`` (singular values below ``rcond·σ_max`` dropped,
    default ``r·eps``).  So a singular ``S`` loses the matching parts of ``G V`` and ``Gᵀ U``; in
    particular at ``S = 0`` (GeoLoRA's zero initialisation) only the ``∇_S`` term survives and the
    step updates ``S`` alone, as in the reference code.  ``∇_S`` is used directly, never
    ``Uᵀ (∇_U S⁻ᵀ)``, so the S-step is exact whatever ``S`` is.
    """
    _validate.check_array(U, "U", ndim=2)
    m, r = U.shape
    _validate.check_array(S, "S", ndim=2, shape=(r, r))
    _validate.check_array(V, "V", ndim=2, shape=(None, r))
    n = V.shape[0]
    _validate.check_array(grad_U, "grad_U", ndim=2, shape=(m, r))
    _validate.check_array(grad_S, "grad_S", ndim=2, shape=(r, r))
    _validate.check_array(grad_V, "grad_V", ndim=2, shape=(n, r))
    xp = _xp.get_namespace(U, S, V, grad_U, grad_S, grad_V, names=["U", "S", "V", "grads"])
    work = _xp.compute_dtype(xp, U.dtype, S.dtype, V.dtype, grad_U.dtype, grad_V.dtype)
    U, S, V, gU, gS, gV = (_cast(a, work) for a in (U, S, V, grad_U, grad_S, grad_V))
    if rcond is None:
        rcond = r * float(xp.finfo(work).eps)
    rcond = _validate.check_real(rcond, "rcond", low=0.0)
    S_pinv = xp.linalg.pinv(S, rtol=rcond)
    GK = gU @ S_pinv.mT  # ∇_U S⁻ᵀ = G V
    GL = gV @ S_pinv  # ∇_V S⁻¹ = Gᵀ U
    GK_perp = GK - U @ (U.mT @ GK)
    GL_perp = GL - V @ (V.mT @ GL)
    terms = [(1.0, U, V @ gS.mT), (1.0, GK_perp, V), (1.0, U, GL_perp)]
    return LowRankSum._trusted(terms, xp, work)


def tail_rank(sigma, tau):
    """Smallest ``k`` with ``‖σ_{k+1:}‖₂ < τ‖σ‖₂`` (GeoLoRA's relative-tail rule, SPEC §8).

    ``sigma`` is a descending 1-D array of singular values.  When no ``k < len(σ)`` qualifies
    (``tau=0``, or all σ zero) the full length is returned: nothing is discarded.
    """
    xp = _xp.get_namespace(sigma)
    tau = _validate.check_real(tau, "tau", low=0.0, high=1.0)
    s = [float(v) for v in _xp.to_numpy(xp.astype(sigma, xp.float64)).tolist()]
    total = math.sqrt(sum(v * v for v in s))
    tail2 = 0.0
    k = len(s)
    # walk from the end: tail(k) = ‖σ[k:]‖ grows as k decreases
    for j in range(len(s) - 1, -1, -1):
        tail2 += s[j] * s[j]
        if math.sqrt(tail2) < tau * total:
            k = j
        else:
            break
    return k


# -- private -------------------------------------------------------------------------------


def _augment(Q0, D, xp):
    """Orthonormal ``Q̃`` with ``span [Q0, Q̃] ⊇ span [Q0, D]`` and ``Q̃ ⟂ Q0`` (Q0 orthonormal).

    The last columns of the reduced QR of ``[Q0, D]``; one re-orthogonalisation against ``Q0``
    keeps ``Q0ᵀ Q̃`` at rounding level when ``D`` lies almost in ``span Q0``.
    """
    m, r = Q0.shape
    Q, _ = xp.linalg.qr(xp.concat([Q0, D], axis=1), mode="reduced")
    Qt = Q[:, r:]
    if Qt.shape[1] == 0:
        return Qt
    Qt = Qt - Q0 @ (Q0.mT @ Qt)
    Qt, _ = xp.linalg.qr(Qt, mode="reduced")
    return Qt


def _diag(s, xp):
    k = s.shape[0]
    out = xp.zeros((k, k), dtype=s.dtype, device=_xp.device(s))
    idx = xp.arange(k, device=_xp.device(s))
    # array-API has no fill_diagonal; a masked product keeps it library-neutral
    eye = xp.astype(idx[:, None] == idx[None, :], s.dtype)
    return out + eye * s[None, :]


def _cast(a, dtype):
    if a.dtype == dtype:
        return a
    xp = _xp.get_namespace(a)
    return xp.astype(a, dtype)

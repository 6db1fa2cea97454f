"""Diagonal fractional K-FAC and Shampoo metrics for Scaled PSI-LoRA (SPEC §7).

For a linear layer with inputs ``X`` (N×n) and output gradients ``Δ`` (N×m) the gradient is
``G = ΔᵀX`` (m×n); nothing here forms it.  Per layer the state is ``a ∈ Rⁿ`` (input side) and
``g ∈ Rᵐ`` (output side), initialised to 1 and updated by an exponential moving average *before*
each step; damping ε and the fractional power p are applied on use:

    P_in = (a + ε)^p,    P_out = (g + ε)^p,    p ∈ [0, 1], ε ≥ 0.

Statistics (``s`` undoes the loss reduction: ``s = N`` for a mean-reduced loss, whose Δ carries
1/N, and ``s = 1/N`` for a sum-reduced one):

- K-FAC diagonal:   a = (1/N) Σ_rows x ⊙ x,    g = s Σ_rows δ ⊙ δ;
- Shampoo diagonal: a = s diag(GᵀG) = s Σ_rows X ⊙ ((ΔΔᵀ) X),
                    g = s diag(GGᵀ) = s Σ_rows Δ ⊙ ((XXᵀ) Δ),   O(N²(m + n)) work.

With p = 1/2 the diagonal K-FAC step ``P_out⁻¹GP_in⁻¹`` divides ``G_jk`` by
``sqrt((g_j + ε)(a_k + ε))``, an Adafactor-like factored second moment.

Dense metrics (the authors' ``metric_type="dense"``) keep the full matrices instead,
``A = (1/N) XᵀX`` and ``S = s ΔᵀΔ`` (K-FAC) or ``A = s GᵀG = s Xᵀ(ΔΔᵀ)X`` and
``S = s GGᵀ = s Δᵀ(XXᵀ)Δ`` (Shampoo), and use the matrix powers ``P_in = (A + εI)^p``,
``P_out = (S + εI)^p`` (:func:`matrix_fractional_power`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import _validate, _xp
from .lorsum import _cast

__all__ = [
    "DiagonalMetric",
    "dense_statistics",
    "diagonal_statistics",
    "ema_update",
    "fractional_power",
    "kfac_dense",
    "kfac_diagonal",
    "lowrank_fractional_power",
    "matrix_fractional_power",
    "shampoo_dense",
    "shampoo_diagonal",
]

KINDS = ("kfac", "shampoo")
REDUCTIONS = ("mean", "sum")
POWER_METHODS = ("eigh", "newton_schulz")


def kfac_diagonal(X, Delta, *, reduction="mean"):
    """Diagonal K-FAC statistics ``(a, g)`` of one mini-batch (SPEC §7).

    Parameters
    ----------
    X : array of shape (N, n)
        Layer inputs, one row per example (or token).
    Delta : array of shape (N, m)
        Gradients of the loss with respect to the layer outputs.
    reduction : {"mean", "sum"}
        How the loss was reduced over the N rows; sets ``s = N`` or ``s = 1/N``.

    Returns
    -------
    a : (n,) array
        ``(1/N) Σ_rows x ⊙ x``, the diagonal of the input second moment.
    g : (m,) array
        ``s Σ_rows δ ⊙ δ``, the diagonal of the (per-example) output-gradient second moment.
        Both in at least float32.
    """
    X, Delta, s, xp = _stats_iv(X, Delta, reduction)
    N = X.shape[0]
    return xp.sum(X * X, axis=0) / N, s * xp.sum(Delta * Delta, axis=0)


def shampoo_diagonal(X, Delta, *, reduction="mean"):
    """Diagonal Shampoo statistics ``(a, g) = s·(diag(GᵀG), diag(GGᵀ))`` for ``G = ΔᵀX`` (SPEC §7).

    Computed as ``a = s Σ_rows X ⊙ ((ΔΔᵀ)X)`` and ``g = s Σ_rows Δ ⊙ ((XXᵀ)Δ)`` from the two
    N×N Gram matrices: ``O(N²(m + n))`` work and no m×n matrix.  Arguments as in
    :func:`kfac_diagonal`.
    """
    X, Delta, s, xp = _stats_iv(X, Delta, reduction)
    a = xp.sum(X * ((Delta @ Delta.mT) @ X), axis=0)
    g = xp.sum(Delta * ((X @ X.mT) @ Delta), axis=0)
    return s * a, s * g


def diagonal_statistics(X, Delta, *, kind="kfac", reduction="mean"):
    """:func:`kfac_diagonal` (``kind="kfac"``) or :func:`shampoo_diagonal` (``"shampoo"``)."""
    _validate.check_choice(kind, "kind", KINDS)
    fn = kfac_diagonal if kind == "kfac" else shampoo_diagonal
    return fn(X, Delta, reduction=reduction)


def ema_update(average, value, beta):
    """``β·average + (1 − β)·value`` as a new array (the inputs are not modified).

    ``average`` and ``value`` have one shape: vectors (diagonal metrics) or matrices (dense).
    """
    beta = _validate.check_real(beta, "beta", low=0.0, high=1.0)
    _validate.check_array(average, "average")
    if len(average.shape) not in (1, 2):
        raise ValueError(
            f"average must be a vector or a matrix; got shape {tuple(average.shape)}"
        )
    _validate.check_array(value, "value", ndim=len(average.shape), shape=tuple(average.shape))
    _xp.get_namespace(average, value, names=["average", "value"])
    return beta * average + (1.0 - beta) * value


def fractional_power(stat, *, damping=1e-5, power=0.5):
    """The diagonal metric ``(stat + ε)^p`` (SPEC §7).

    Parameters
    ----------
    stat : array of shape (k,)
        The raw EMA statistic (``a`` or ``g``).
    damping : float, default 1e-5
        ε ≥ 0.
    power : float, default 0.5
        p ∈ [0, 1] (p = 1: diagonal K-FAC natural gradient; p = 0: identity metric).

    Raises
    ------
    ValueError
        For p outside [0, 1], ε < 0, or a non-positive ``stat + ε`` entry (no SPD metric).
    """
    damping = _validate.check_real(damping, "damping", low=0.0)
    power = _validate.check_real(power, "power", low=0.0, high=1.0)
    _validate.check_array(stat, "stat", ndim=1)
    xp = _xp.get_namespace(stat)
    shifted = stat + damping
    if not bool(xp.all(shifted > 0)):
        raise ValueError(
            "the metric stat + damping must be positive everywhere; got minimum "
            f"{float(xp.min(shifted))} (raise damping, or check the statistics)"
        )
    if power == 1.0:
        return shifted
    if power == 0.0:
        return xp.ones_like(shifted)
    return shifted**power


def kfac_dense(X, Delta, *, reduction="mean"):
    """Dense K-FAC statistics ``(A, S) = ((1/N) XᵀX, s ΔᵀΔ)`` of one mini-batch (SPEC §7).

    Arguments as in :func:`kfac_diagonal`; the diagonals of the results are its ``(a, g)``.
    Returns symmetric (n, n) and (m, m) arrays (made exactly symmetric, ``(M + Mᵀ)/2``).
    """
    X, Delta, s, xp = _stats_iv(X, Delta, reduction)
    N = X.shape[0]
    return _sym(X.mT @ X) / N, s * _sym(Delta.mT @ Delta)


def shampoo_dense(X, Delta, *, reduction="mean"):
    """Dense Shampoo statistics ``(A, S) = s·(GᵀG, GGᵀ)`` for ``G = ΔᵀX`` (SPEC §7).

    Computed as ``A = s Xᵀ((ΔΔᵀ)X)`` and ``S = s Δᵀ((XXᵀ)Δ)`` through the two N×N Gram
    matrices, without G; the diagonals are :func:`shampoo_diagonal`'s ``(a, g)``.
    """
    X, Delta, s, xp = _stats_iv(X, Delta, reduction)
    A = X.mT @ ((Delta @ Delta.mT) @ X)
    S = Delta.mT @ ((X @ X.mT) @ Delta)
    return s * _sym(A), s * _sym(S)


def dense_statistics(X, Delta, *, kind="kfac", reduction="mean"):
    """:func:`kfac_dense` (``kind="kfac"``) or :func:`shampoo_dense` (``"shampoo"``)."""
    _validate.check_choice(kind, "kind", KINDS)
    fn = kfac_dense if kind == "kfac" else shampoo_dense
    return fn(X, Delta, reduction=reduction)


def matrix_fractional_power(
    stat, *, damping=1e-5, power=0.5, method="eigh", iters=25, return_inverse=False
):
    """The dense metric ``P = (S + εI)^p`` of a symmetric PSD statistic ``S`` (SPEC §7).

    Parameters
    ----------
    stat : array of shape (k, k)
        The EMA statistic ``S``: symmetric positive semidefinite (symmetric up to rounding,
        which ``(S + Sᵀ)/2`` removes; eigenvalues below 0 are rounding and are clipped).
    damping : float, default 1e-5
        ε ≥ 0.
    power : float, default 0.5
        p ∈ [0, 1].  ``method="newton_schulz"`` supports p ∈ {0, 1/4, 1/2, 1}.
    method : {"eigh", "newton_schulz"}, default "eigh"
        ``"eigh"``: ``S = Q diag(w) Qᵀ``, eigenvalues clipped at 0 (the PSD projection, which
        only removes rounding), ``P = Q diag((w₊ + ε)^p) Qᵀ`` and ``P⁻¹ = Q diag((w₊ + ε)^{-p})
        Qᵀ`` from one decomposition, ``O(k³)``.  ``"newton_schulz"``: the coupled Newton–Schulz
        iteration (Higham 2008, eq. 6.35) on ``B = (S + εI)/‖S + εI‖_F``,
        ``T = (3I − ZY)/2, Y ← YT, Z ← TZ`` from ``Y = B, Z = I``, which converges to
        ``Y → B^{1/2}``, ``Z → B^{-1/2}`` with matrix products only (p = 1/4: the iteration
        applied twice); ``iters`` products per root, no accuracy guarantee below convergence.
    iters : int, default 25
        Newton–Schulz iterations per square root (≥ 1).  The error falls by ~1.5× per
        iteration until the smallest eigenvalue of ``B`` is reached, then quadratically: in
        float64, 10 iterations reach 1e-10 for condition number 1e2, 20 for 1e4, 25 for 1e6.
        The authors' code uses 6 (1–3 % error at condition numbers ≥ 1e2).
    return_inverse : bool, default False
        Also return ``P⁻¹`` (computed by the same method, no extra solve).

    Returns
    -------
    P : (k, k) array
        Symmetric positive definite, dtype at least float32, namespace and device of ``stat``.
    P_inv : (k, k) array
        Only with ``return_inverse=True``.

    Raises
    ------
    ValueError
        For p outside [0, 1] (or not in {0, 1/4, 1/2, 1} with Newton–Schulz), ε < 0, a
        non-square or non-symmetric ``stat``, or ``S + εI`` not positive definite (raise
        damping: a PSD statistic with ε = 0 can be singular).
    """
    damping = _validate.check_real(damping, "damping", low=0.0)
    power = _validate.check_real(power, "power", low=0.0, high=1.0)
    _validate.check_choice(method, "method", POWER_METHODS)
    iters = _validate.check_int(iters, "iters", low=1)
    _validate.check_bool(return_inverse, "return_inverse")
    _validate.check_array(stat, "stat", ndim=2)
    if stat.shape[0] != stat.shape[1]:
        raise ValueError(f"stat must be a square matrix; got shape {tuple(stat.shape)}")
    if method == "newton_schulz" and power not in _NS_POWERS:
        raise ValueError(
            f"power must be one of {sorted(_NS_POWERS)} with method='newton_schulz' (a "
            f"composition of square roots); got {power} (use method='eigh')"
        )
    xp = _xp.get_namespace(stat)
    S = _cast(stat, _xp.compute_dtype(xp, stat.dtype))
    k = S.shape[0]
    scale = float(xp.max(xp.abs(S)))
    if float(xp.max(xp.abs(S - S.mT))) > 100 * xp.finfo(S.dtype).eps * max(scale, 1e-300) * k:
        raise ValueError("stat must be symmetric (a PSD statistic)")
    S = _sym(S)
    eye = xp.eye(k, dtype=S.dtype, device=_xp.device(S))
    if method == "eigh":
        P, P_inv = _eigh_power(S, damping, power, xp)
    else:
        P, P_inv = _newton_schulz_power(S + damping * eye, power, iters, eye, xp)
    return (P, P_inv) if return_inverse else P


_NS_POWERS = (0.0, 0.25, 0.5, 1.0)


def lowrank_fractional_power(U, V, *, shift=0.0, damping=1e-5, power=0.5, return_inverse=False):
    """The metric ``P = (K + (c + ε)I)^p`` of a low-rank statistic ``K ≈ U Vᵀ`` (SPEC §7).

    ``K`` is used through its symmetric positive semidefinite part: ``K_s = (UVᵀ + VUᵀ)/2``
    lives in the span of ``[U V]`` (orthonormal basis ``Q``, at most 2k columns), so with
    ``QᵀK_sQ = W diag(σ) Wᵀ``, ``σ₊ = max(σ, 0)``, ``B = QW`` and ``τ = c + ε``::

        P   = τ^p  I + B diag((σ₊ + τ)^p  − τ^p)  Bᵀ
        P⁻¹ = τ^-p I + B diag((σ₊ + τ)^-p − τ^-p) Bᵀ

    exactly (a low-rank plus scaled-identity matrix has the same eigenvectors for every
    power), in ``O(n k² + k³)`` plus ``O(n² k)`` to form the n×n results.

    Parameters
    ----------
    U, V : arrays of shape (n, k)
        Factors of the statistic (e.g. a LoRSum-compressed EMA of ``XᵀX/N``).
    shift : float, default 0
        ``c ≥ 0``, a multiple of the identity that is part of the statistic (the decayed
        start ``init·Π β2`` of an EMA started at ``init·I``).
    damping : float, default 1e-5
        ε ≥ 0.
    power : float, default 0.5
        p ∈ [0, 1].
    return_inverse : bool, default False
        Also return ``P⁻¹``.

    Returns
    -------
    P : (n, n) array
    P_inv : (n, n) array
        Only with ``return_inverse=True``.

    Raises
    ------
    ValueError
        For mismatched factors, p outside [0, 1], negative ε or c, or ``c + ε = 0`` (the
        metric would be singular off the span of K).
    """
    shift = _validate.check_real(shift, "shift", low=0.0)
    damping = _validate.check_real(damping, "damping", low=0.0)
    power = _validate.check_real(power, "power", low=0.0, high=1.0)
    _validate.check_bool(return_inverse, "return_inverse")
    _validate.check_array(U, "U", ndim=2)
    _validate.check_array(V, "V", ndim=2, shape=tuple(U.shape))
    tau = shift + damping
    if not tau > 0:
        raise ValueError(
            "shift + damping must be positive (a low-rank statistic is singular off its span); "
            f"got {tau}"
        )
    xp = _xp.get_namespace(U, V, names=["U", "V"])
    work = _xp.compute_dtype(xp, U.dtype, V.dtype)
    U, V = _cast(U, work), _cast(V, work)
    Q, _ = xp.linalg.qr(xp.concat([U, V], axis=1))
    QU, QV = Q.mT @ U, Q.mT @ V
    sigma, W = xp.linalg.eigh(_sym(QU @ QV.mT))
    sigma = xp.where(sigma > 0, sigma, xp.zeros_like(sigma))
    B = Q @ W
    eye = xp.eye(U.shape[0], dtype=work, device=_xp.device(U))

    def power_of(q):
        return _sym(tau**q * eye + (B * ((sigma + tau) ** q - tau**q)) @ B.mT)

    P = power_of(power)
    return (P, power_of(-power)) if return_inverse else P


def _sym(M):
    return 0.5 * (M + M.mT)


def _eigh_power(S, damping, power, xp):
    w, Q = xp.linalg.eigh(S)
    top = float(xp.max(xp.abs(w)))
    if float(xp.min(w)) < -100 * S.shape[0] * float(xp.finfo(S.dtype).eps) * top:
        raise ValueError(
            "stat must be positive semidefinite (a negative eigenvalue beyond rounding: "
            f"{float(xp.min(w))}); the metric stat + damping·I must be positive definite"
        )
    w = xp.where(w > 0, w, xp.zeros_like(w)) + damping
    if not bool(xp.all(w > 0)):
        raise ValueError(
            "the metric stat + damping·I must be positive definite; got smallest eigenvalue "
            f"{float(xp.min(w))} (raise damping, or check the statistics)"
        )
    return _sym((Q * w**power) @ Q.mT), _sym((Q * w ** (-power)) @ Q.mT)


def _newton_schulz_power(A, power, iters, eye, xp):
    if not _xp.is_positive_definite(A):
        raise ValueError(
            "the metric stat + damping·I must be positive definite (raise damping, or check "
            "the statistics)"
        )
    if power == 0.0:
        return eye, eye
    if power == 1.0:
        return A, _sym(xp.linalg.inv(A))
    Y, Z = _newton_schulz_sqrt(A, iters, eye, xp)
    if power == 0.25:
        Y, Z = _newton_schulz_sqrt(Y, iters, eye, xp)
    return Y, Z


def _newton_schulz_sqrt(A, iters, eye, xp):
    """``(A^{1/2}, A^{-1/2})`` of an SPD ``A`` by the coupled Newton–Schulz iteration."""
    c = float(xp.sqrt(xp.sum(A * A)))
    Y, Z = A / c, eye
    for _ in range(iters):
        T = 0.5 * (3.0 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    root = c**0.5
    return _sym(Y) * root, _sym(Z) / root


@dataclass(frozen=True)
class DiagonalMetric:
    """EMA state of a diagonal K-FAC or Shampoo metric for one layer (SPEC §7).

    Immutable: :meth:`update` returns a new state.  Build one with :meth:`initial`.

    Attributes
    ----------
    a : (n,) array
        Input-side EMA statistic.
    g : (m,) array
        Output-side EMA statistic.
    kind : {"kfac", "shampoo"}
    beta : float
        EMA factor β2 ∈ [0, 1].
    reduction : {"mean", "sum"}
    steps : int
        Number of updates so far.
    """

    a: object
    g: object
    kind: str = "kfac"
    beta: float = 0.99
    reduction: str = "mean"
    steps: int = 0

    def __post_init__(self):
        _validate.check_choice(self.kind, "kind", KINDS)
        _validate.check_choice(self.reduction, "reduction", REDUCTIONS)
        _validate.check_real(self.beta, "beta", low=0.0, high=1.0)
        _validate.check_array(self.a, "a", ndim=1)
        _validate.check_array(self.g, "g", ndim=1)

    @classmethod
    def initial(cls, n, m, *, like, kind="kfac", beta=0.99, reduction="mean", init_scale=1.0):
        """A fresh state ``a = init_scale·1ₙ``, ``g = init_scale·1ₘ`` placed like ``like``."""
        n = _validate.check_int(n, "n", low=1)
        m = _validate.check_int(m, "m", low=1)
        init_scale = _validate.check_real(init_scale, "init_scale", low=0.0, low_open=True)
        xp = _xp.get_namespace(like)
        dtype = _xp.compute_dtype(xp, like.dtype)
        dev = _xp.device(like)
        a = xp.full((n,), init_scale, dtype=dtype, device=dev)
        g = xp.full((m,), init_scale, dtype=dtype, device=dev)
        return cls(a, g, kind=kind, beta=beta, reduction=reduction)

    def update(self, X, Delta):
        """The state after one mini-batch ``(X, Δ)``: ``a ← βa + (1−β)a_batch``, same for g."""
        a_new, g_new = diagonal_statistics(X, Delta, kind=self.kind, reduction=self.reduction)
        n, m = self.a.shape[0], self.g.shape[0]
        if (a_new.shape[0], g_new.shape[0]) != (n, m):
            raise ValueError(
                f"X and Delta must have {n} and {m} columns for this metric; got "
                f"{tuple(X.shape)} and {tuple(Delta.shape)}"
            )
        a_new, g_new = _cast(a_new, self.a.dtype), _cast(g_new, self.g.dtype)
        return replace(
            self,
            a=ema_update(self.a, a_new, self.beta),
            g=ema_update(self.g, g_new, self.beta),
            steps=self.steps + 1,
        )

    def preconditioners(self, *, damping=1e-5, power=0.5):
        """``(P_in, P_out) = ((a + ε)^p, (g + ε)^p)`` as vectors (see :func:`fractional_power`)."""
        return (
            fractional_power(self.a, damping=damping, power=power),
            fractional_power(self.g, damping=damping, power=power),
        )


# -- private -------------------------------------------------------------------------------


def _stats_iv(X, Delta, reduction):
    _validate.check_array(X, "X", ndim=2)
    _validate.check_array(Delta, "Delta", ndim=2, shape=(X.shape[0], None))
    if X.shape[0] < 1:
        raise ValueError("X and Delta must have at least one row; got 0")
    _validate.check_choice(reduction, "reduction", REDUCTIONS)
    xp = _xp.get_namespace(X, Delta, names=["X", "Delta"])
    work = _xp.compute_dtype(xp, X.dtype, Delta.dtype)
    X, Delta = _cast(X, work), _cast(Delta, work)
    N = X.shape[0]
    s = float(N) if reduction == "mean" else 1.0 / N
    return X, Delta, s, xp

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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import _validate, _xp
from .lorsum import _cast

__all__ = [
    "DiagonalMetric",
    "diagonal_statistics",
    "ema_update",
    "fractional_power",
    "kfac_diagonal",
    "shampoo_diagonal",
]

KINDS = ("kfac", "shampoo")
REDUCTIONS = ("mean", "sum")


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
    """``β·average + (1 − β)·value`` as a new array (the inputs are not modified)."""
    beta = _validate.check_real(beta, "beta", low=0.0, high=1.0)
    _validate.check_array(average, "average", ndim=1)
    _validate.check_array(value, "value", ndim=1, shape=(average.shape[0],))
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

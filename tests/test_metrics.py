"""Diagonal K-FAC / Shampoo metrics (SPEC §7): formulas vs the dense gradient, EMA, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank_prox import metrics as M


def _batch(rng, N=6, n=5, m=4):
    return rng.standard_normal((N, n)), rng.standard_normal((N, m))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kfac_diagonal_formula(xp, reduction):
    rng = np.random.default_rng(0)
    X, D = _batch(rng)
    N = X.shape[0]
    s = N if reduction == "mean" else 1.0 / N
    a, g = M.kfac_diagonal(xp.asarray(X), xp.asarray(D), reduction=reduction)
    np.testing.assert_allclose(xp.to_numpy(a), np.diag(X.T @ X) / N, rtol=xp.tol(1, 1e3))
    np.testing.assert_allclose(xp.to_numpy(g), s * np.diag(D.T @ D), rtol=xp.tol(1, 1e3))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shampoo_diagonal_equals_dense_gradient(xp, reduction):
    rng = np.random.default_rng(1)
    X, D = _batch(rng, N=7, n=9, m=3)
    N = X.shape[0]
    s = N if reduction == "mean" else 1.0 / N
    G = D.T @ X  # m×n, formed here only as the reference
    a, g = M.shampoo_diagonal(xp.asarray(X), xp.asarray(D), reduction=reduction)
    assert tuple(a.shape) == (9,) and tuple(g.shape) == (3,)
    ref_a, ref_g = s * np.diag(G.T @ G), s * np.diag(G @ G.T)
    np.testing.assert_allclose(xp.to_numpy(a), ref_a, rtol=xp.tol(1, 1e4))
    np.testing.assert_allclose(xp.to_numpy(g), ref_g, rtol=xp.tol(1, 1e4))
    a2, g2 = M.diagonal_statistics(
        xp.asarray(X), xp.asarray(D), kind="shampoo", reduction=reduction
    )
    np.testing.assert_array_equal(xp.to_numpy(a2), xp.to_numpy(a))
    np.testing.assert_array_equal(xp.to_numpy(g2), xp.to_numpy(g))


def test_mean_reduced_delta_scaling_is_undone():
    """Δ of a mean-reduced loss is (1/N)·Δ_sum; with s = N, g is that of the per-example loss."""
    rng = np.random.default_rng(2)
    X, D = _batch(rng, N=8)
    N = X.shape[0]
    _, g_mean = M.kfac_diagonal(X, D / N, reduction="mean")
    np.testing.assert_allclose(g_mean, np.sum(D * D, axis=0) / N, rtol=1e-12)
    a_mean, _ = M.shampoo_diagonal(X, D / N, reduction="mean")
    a_sum, _ = M.shampoo_diagonal(X, D, reduction="sum")
    np.testing.assert_allclose(a_mean, a_sum, rtol=1e-12)


def test_fractional_power_values_and_step_scaling():
    a = np.array([0.0, 1.0, 4.0, 99.0])
    np.testing.assert_allclose(M.fractional_power(a, damping=1.0, power=0.5), np.sqrt(a + 1))
    np.testing.assert_allclose(M.fractional_power(a, damping=0.5, power=1.0), a + 0.5)
    np.testing.assert_array_equal(M.fractional_power(a, damping=1e-3, power=0.0), np.ones(4))
    np.testing.assert_allclose(M.fractional_power(a, damping=2.0, power=0.25), (a + 2) ** 0.25)
    # p = 1/2 K-FAC: the full step P_out⁻¹ G P_in⁻¹ is G_jk / sqrt((g_j + ε)(a_k + ε))
    rng = np.random.default_rng(3)
    X, D = _batch(rng)
    a, g = M.kfac_diagonal(X, D)
    eps = 1e-3
    P_in, P_out = M.fractional_power(a, damping=eps), M.fractional_power(g, damping=eps)
    G = D.T @ X
    np.testing.assert_allclose(
        (G / P_out[:, None]) / P_in[None, :], G / np.sqrt(np.outer(g + eps, a + eps)), rtol=1e-12
    )


def test_diagonal_metric_ema(xp):
    rng = np.random.default_rng(4)
    n, m, beta = 5, 4, 0.9
    state = M.DiagonalMetric.initial(n, m, like=xp.asarray(np.zeros(1)), beta=beta)
    np.testing.assert_array_equal(xp.to_numpy(state.a), np.ones(n))
    batches = [_batch(rng, N=6, n=n, m=m) for _ in range(3)]
    a_ref, g_ref = np.ones(n), np.ones(m)
    first = state
    for X, D in batches:
        state = state.update(xp.asarray(X), xp.asarray(D))
        a_ref = beta * a_ref + (1 - beta) * np.mean(X * X, axis=0)
        g_ref = beta * g_ref + (1 - beta) * X.shape[0] * np.sum(D * D, axis=0)
    assert state.steps == 3 and first.steps == 0
    np.testing.assert_array_equal(xp.to_numpy(first.a), np.ones(n))  # immutable
    np.testing.assert_allclose(xp.to_numpy(state.a), a_ref, rtol=xp.tol(1, 1e3))
    np.testing.assert_allclose(xp.to_numpy(state.g), g_ref, rtol=xp.tol(1, 1e3))
    P_in, P_out = state.preconditioners(damping=1e-2, power=0.25)
    np.testing.assert_allclose(xp.to_numpy(P_in), (a_ref + 1e-2) ** 0.25, rtol=xp.tol(1, 1e3))
    np.testing.assert_allclose(xp.to_numpy(P_out), (g_ref + 1e-2) ** 0.25, rtol=xp.tol(1, 1e3))


def test_low_precision_inputs_upcast():
    torch = pytest.importorskip("torch")
    X = torch.randn(5, 3, dtype=torch.bfloat16)
    D = torch.randn(5, 2, dtype=torch.bfloat16)
    a, g = M.shampoo_diagonal(X, D)
    assert a.dtype == torch.float32 and g.dtype == torch.float32
    state = M.DiagonalMetric.initial(3, 2, like=X, kind="shampoo").update(X, D)
    assert state.a.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(power=1.5), ValueError, "power must be <= 1"),
        (dict(power=-0.1), ValueError, "power must be >= 0"),
        (dict(power=float("nan")), ValueError, "power must be finite"),
        (dict(damping=-1e-3), ValueError, "damping must be >= 0"),
        (dict(power="half"), TypeError, "power must be a real number"),
    ],
)
def test_fractional_power_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        M.fractional_power(np.ones(3), **kwargs)


def test_non_positive_metric_is_refused():
    with pytest.raises(ValueError, match="must be positive"):
        M.fractional_power(np.array([1.0, 0.0]), damping=0.0)
    with pytest.raises(ValueError, match="must be positive"):
        M.fractional_power(np.array([1.0, -2.0]), damping=1.0)
    with pytest.raises(ValueError, match="NaN"):
        M.fractional_power(np.array([1.0, np.nan]))


def test_statistics_bad_input():
    rng = np.random.default_rng(5)
    X, D = _batch(rng)
    with pytest.raises(ValueError, match="Delta must have shape"):
        M.kfac_diagonal(X, D[:3])
    with pytest.raises(ValueError, match="reduction"):
        M.kfac_diagonal(X, D, reduction="none")
    with pytest.raises(ValueError, match="kind"):
        M.diagonal_statistics(X, D, kind="adam")
    with pytest.raises(ValueError, match="X must be 2-dimensional"):
        M.shampoo_diagonal(X[0], D)
    with pytest.raises(ValueError, match="at least one row"):
        M.kfac_diagonal(X[:0], D[:0])
    with pytest.raises(ValueError, match="NaN"):
        M.kfac_diagonal(np.where(X > 1, np.inf, X), D)
    state = M.DiagonalMetric.initial(5, 4, like=X)
    with pytest.raises(ValueError, match="columns"):
        state.update(X[:, :3], D)
    with pytest.raises(ValueError, match="beta"):
        M.DiagonalMetric.initial(5, 4, like=X, beta=1.5)
    with pytest.raises(ValueError, match="init_scale"):
        M.DiagonalMetric.initial(5, 4, like=X, init_scale=0.0)

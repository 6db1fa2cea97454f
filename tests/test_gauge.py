"""Gauge balancing (lowrank_prox.gauge, lorsum/scaled_lorsum ``balance=``, ``gram_jitter=``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowrank_prox as lp
from lowrank_prox.gauge import balance


def _pair(rng, m, n, r, ratio=1.0):
    return rng.standard_normal((m, r)) * ratio, rng.standard_normal((n, r)) / ratio


@pytest.mark.parametrize("ratio", [1.0, 1e3, 1e-3])
def test_balance_identities(xp, ratio):
    """Same product, UᵀU = VᵀV = diag(s), s = σ(UVᵀ), gauge norm = 2‖UVᵀ‖_* (its minimum)."""
    rng = np.random.default_rng(0)
    U, V = _pair(rng, 30, 20, 4, ratio)
    Ub, Vb, s = balance(xp.asarray(U), xp.asarray(V))
    Ub, Vb, s = xp.to_numpy(Ub), xp.to_numpy(Vb), xp.to_numpy(s)
    X = xp.to_numpy(xp.asarray(U)) @ xp.to_numpy(xp.asarray(V)).T
    sigma = np.linalg.svd(X, compute_uv=False)[:4]
    tol = xp.tol(sigma[0], 300.0)
    assert np.abs(Ub @ Vb.T - X).max() <= tol
    np.testing.assert_allclose(s, sigma, atol=tol)
    np.testing.assert_allclose(Ub.T @ Ub, np.diag(s), atol=tol)
    np.testing.assert_allclose(Vb.T @ Vb, np.diag(s), atol=tol)
    np.testing.assert_allclose(np.linalg.norm(Ub, axis=0), np.linalg.norm(Vb, axis=0),
                               rtol=xp.tol(1.0, 300.0))
    gauge = (Ub**2).sum() + (Vb**2).sum()
    assert gauge == pytest.approx(2 * sigma.sum(), rel=xp.tol(1.0, 300.0))


@given(seed=st.integers(0, 2**32 - 1), log_d=st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_balanced_pair_minimises_the_gauge_norm(seed, log_d):
    """For any D ∈ GL(r), ‖UD‖² + ‖VD⁻ᵀ‖² ≥ ‖U_b‖² + ‖V_b‖² (= 2‖UVᵀ‖_*), and balance is a
    function of the product: (UD, VD⁻ᵀ) balances to the same pair."""
    rng = np.random.default_rng(seed)
    U, V = _pair(rng, 12, 9, 3)
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    D = Q @ np.diag(10.0 ** np.asarray(log_d))
    U2, V2 = U @ D, V @ np.linalg.inv(D).T
    Ub, Vb, s = balance(U, V)
    Ub2, Vb2, s2 = balance(U2, V2)
    best = (Ub**2).sum() + (Vb**2).sum()
    assert (U2**2).sum() + (V2**2).sum() >= best * (1 - 1e-10)
    scale = s[0]
    np.testing.assert_allclose(s2, s, atol=1e-9 * scale)
    if s[1] - s[2] > 1e-3 * scale and s[0] - s[1] > 1e-3 * scale:  # unique up to the signs
        np.testing.assert_allclose(Ub2, Ub, atol=1e-6 * np.sqrt(scale))
        np.testing.assert_allclose(Vb2, Vb, atol=1e-6 * np.sqrt(scale))


@pytest.mark.parametrize("dense", [False, True])
def test_balance_in_a_metric(dense):
    """UᵀP_outU = VᵀP_inV = diag(s), s = σ(P_out^½UVᵀP_in^½), product unchanged; diagonal and
    dense forms of the same metric agree."""
    rng = np.random.default_rng(1)
    U, V = _pair(rng, 25, 15, 3, 100.0)
    p_in, p_out = rng.uniform(0.1, 3, 15), rng.uniform(0.1, 3, 25)
    kw = ({"metric_in": np.diag(p_in), "metric_out": np.diag(p_out)} if dense
          else {"metric_in": p_in, "metric_out": p_out})
    Ub, Vb, s = balance(U, V, **kw)
    X = U @ V.T
    np.testing.assert_allclose(Ub @ Vb.T, X, atol=1e-12 * np.abs(X).max())
    np.testing.assert_allclose(Ub.T @ (p_out[:, None] * Ub), np.diag(s), atol=1e-10 * s[0])
    np.testing.assert_allclose(Vb.T @ (p_in[:, None] * Vb), np.diag(s), atol=1e-10 * s[0])
    sigma = np.linalg.svd(np.sqrt(p_out)[:, None] * X * np.sqrt(p_in), compute_uv=False)[:3]
    np.testing.assert_allclose(s, sigma, rtol=1e-10)


def test_balance_zero_product_and_validation():
    U, V = np.zeros((6, 2)), np.ones((5, 2))
    Ub, Vb, s = balance(U, V)
    assert np.all(s == 0) and np.all(Ub == 0) and np.all(Vb == 0)
    with pytest.raises(ValueError, match="V"):
        balance(np.ones((6, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="metric_in"):
        balance(np.ones((6, 2)), np.ones((5, 2)), metric_in=-np.ones(5))
    with pytest.raises(TypeError, match="balance"):
        lp.lorsum(np.ones((6, 5)), np.ones((6, 2)), np.ones((5, 2)), balance="yes")
    with pytest.raises(ValueError, match="gram_jitter"):
        lp.lorsum(np.ones((6, 5)), np.ones((6, 2)), np.ones((5, 2)), gram_jitter=-1.0)


def test_lorsum_balance_keeps_the_product_and_returns_its_spectrum(xp):
    rng = np.random.default_rng(2)
    Y = xp.asarray(rng.standard_normal((20, 15)))
    U0, V0 = (xp.asarray(a) for a in _pair(rng, 20, 15, 3, 30.0))
    U, V = lp.lorsum(Y, U0, V0, iters=2, ridge=0.1)
    Ub, Vb, s = lp.lorsum(Y, U0, V0, iters=2, ridge=0.1, balance=True)
    X = xp.to_numpy(U) @ xp.to_numpy(V).T
    tol = xp.tol(np.abs(X).max(), 1000.0)
    np.testing.assert_allclose(xp.to_numpy(Ub) @ xp.to_numpy(Vb).T, X, atol=tol)
    np.testing.assert_allclose(xp.to_numpy(s), np.linalg.svd(X, compute_uv=False)[:3],
                               atol=tol)
    Ub_s, Vb_s, s_s = lp.scaled_lorsum(Y, U0, V0, metric_in=None, metric_out=None, iters=2,
                                       ridge=0.1, balance=True)
    np.testing.assert_allclose(xp.to_numpy(s_s), xp.to_numpy(s), atol=tol)


def test_gram_jitter_is_the_authors_solve():
    """gram_jitter ε solves with (WᵀW + (λ + ε)I) but keeps λ·anchor on the right: one U-step
    from V equals the closed form, and scaled_lorsum with identity metrics agrees bit for bit."""
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((10, 8))
    U0, V0 = _pair(rng, 10, 8, 2)
    lam, eps = 0.3, 0.05
    U, V = lp.lorsum(Y, U0, V0, iters=1, ridge=lam, gram_jitter=eps, start="u")
    U_ref = (lam * U0 + Y @ V0) @ np.linalg.inv(V0.T @ V0 + (lam + eps) * np.eye(2))
    V_ref = (lam * V0 + Y.T @ U_ref) @ np.linalg.inv(U_ref.T @ U_ref + (lam + eps) * np.eye(2))
    np.testing.assert_allclose(U, U_ref, rtol=1e-12)
    np.testing.assert_allclose(V, V_ref, rtol=1e-12)
    Us, Vs = lp.scaled_lorsum(Y, U0, V0, metric_in=None, metric_out=None, iters=1, ridge=lam,
                              gram_jitter=eps, start="u")
    assert np.array_equal(Us, U) and np.array_equal(Vs, V)
    # with ε = 0 the result is bit-for-bit the plain call
    a = lp.lorsum(Y, U0, V0, iters=2, ridge=lam)
    b = lp.lorsum(Y, U0, V0, iters=2, ridge=lam, gram_jitter=0.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_gauge_verify_rows_hold_with_their_numbers():
    """The verify rows of issue 15: invariance at λ = 0 to rounding, not at λ > 0; the balanced
    pair is the gauge-norm minimum; the balanced proximal iteration lands on Π_r(Y)."""
    from analysis import theory as T
    from analysis.verify import gauge_rows

    rows = gauge_rows()
    assert len(rows) == 5 and all(r.holds for r in rows), [r.measured for r in rows]
    g = T.run_gauge(T.GaugeConfig(tries=20, iters=100, lambdas=(1e-3, 1e-2)))
    for row in g["invariance"]:
        if row["lambda"] == 0:
            assert row["rel_diff"] <= 100 * T.EPS * row["cond"]
        else:
            assert row["rel_diff"] >= 1e-5
    assert g["balanced_ratio"] == pytest.approx(1.0, abs=1e-12) and g["min_ratio"] >= 1.0
    assert g["max_prox_dist"] <= 1e-10
    for row in g["rows"]:  # the fixed anchor keeps the O(λ) bias, balanced or not
        assert 0.5 < row["balanced_fixed_dist"] / row["fixed_dist"] < 2

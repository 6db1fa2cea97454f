"""Scaled LoRSum (SPEC §7): exact block minimisers, identity metrics = lorsum, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, Backend
from hypothesis import given
from hypothesis import strategies as st

import lowrank_prox as lp
from lowrank_prox.scaled import scaled_lorsum, scaled_lorsum_objective

F64 = [b for b in BACKENDS if b[1] == "float64"]


def _problem(rng, m, n, r, ranks=(3, 2)):
    terms = [
        (float(rng.uniform(-2, 2)), rng.standard_normal((m, k)), rng.standard_normal((n, k)))
        for k in ranks
    ]
    U0, V0 = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    return terms, U0, V0


def _spd(rng, k):
    A = rng.standard_normal((k, k))
    return A @ A.T / k + 0.5 * np.eye(k)


def _sqrtm(P):
    if P.ndim == 1:
        return np.diag(np.sqrt(P))
    w, Q = np.linalg.eigh(P)
    return (Q * np.sqrt(w)) @ Q.T


def _dense_objective(T, U, V, P_in, P_out, lam, Ua, Va):
    Si, So = _sqrtm(P_in), _sqrtm(P_out)
    return 0.5 * np.sum((So @ (U @ V.T - T) @ Si) ** 2) + 0.5 * lam * (
        np.sum((So @ (U - Ua)) ** 2) + np.sum((Si @ (V - Va)) ** 2)
    )


def _direct_v_step(T, U, P_in, P_out, lam, Va):
    """argmin over V by least squares on the Kronecker form (independent of the solver)."""
    n, r = Va.shape
    Si, So = _sqrtm(P_in), _sqrtm(P_out)
    # column-major vec: vec(A X B) = (Bᵀ ⊗ A) vec(X), unknown X = Vᵀ (r×n)
    K1 = np.kron(Si.T, So @ U)
    b1 = (So @ T @ Si).reshape(-1, order="F")
    K2 = np.sqrt(lam) * np.kron(Si, np.eye(r))
    b2 = K2 @ Va.T.reshape(-1, order="F")
    x = np.linalg.lstsq(np.vstack([K1, K2]), np.concatenate([b1, b2]), rcond=None)[0]
    return x.reshape(r, n, order="F").T


def _direct_u_step(T, V, P_in, P_out, lam, Ua):
    # U-step of (T, P_in, P_out) is the V-step of (Tᵀ, P_out, P_in)
    return _direct_v_step(T.T, V, P_out, P_in, lam, Ua)


def _metrics(rng, m, n, kind):
    if kind == "diag":
        return rng.uniform(0.2, 5.0, n), rng.uniform(0.2, 5.0, m)
    return _spd(rng, n), _spd(rng, m)


@pytest.mark.parametrize("kind", ["diag", "dense"])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_half_steps_are_exact_block_minimisers(xp, kind, lam):
    rng = np.random.default_rng(0)
    m, n, r = 7, 5, 2
    terms, U0, V0 = _problem(rng, m, n, r)
    P_in, P_out = _metrics(rng, m, n, kind)
    T = sum(c * A @ B.T for c, A, B in terms)
    Y = lp.LowRankSum([(c, xp.asarray(A), xp.asarray(B)) for c, A, B in terms])
    args = dict(metric_in=xp.asarray(P_in), metric_out=xp.asarray(P_out), ridge=lam)
    # one iteration = V-step from U0, then U-step from the new V: compare each with a direct solve
    U1, V1 = scaled_lorsum(Y, xp.asarray(U0), xp.asarray(V0), iters=1, **args)
    V_direct = _direct_v_step(T, U0, P_in, P_out, lam, V0)
    U_direct = _direct_u_step(T, V_direct, P_in, P_out, lam, U0)
    scale = max(1.0, np.abs(U_direct).max(), np.abs(V_direct).max())
    np.testing.assert_allclose(xp.to_numpy(V1), V_direct, atol=xp.tol(scale, 3e3))
    np.testing.assert_allclose(xp.to_numpy(U1), U_direct, atol=xp.tol(scale, 3e3))
    # and neither block can be improved by a perturbation (first-order optimality, float64 check)
    U1n, V1n = xp.to_numpy(U1), xp.to_numpy(V1)
    f = _dense_objective(T, U1n, V1n, P_in, P_out, lam, U0, V0)
    for _ in range(5):
        E = 1e-3 * rng.standard_normal(U1n.shape)
        assert _dense_objective(T, U1n + E, V1n, P_in, P_out, lam, U0, V0) >= f - xp.tol(f, 1e3)


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_jacobi_step_matches_direct_solves(xp64, kind):
    xp = xp64
    rng = np.random.default_rng(1)
    m, n, r, lam = 6, 8, 3, 0.2
    terms, U0, V0 = _problem(rng, m, n, r)
    P_in, P_out = _metrics(rng, m, n, kind)
    T = sum(c * A @ B.T for c, A, B in terms)
    U, V = scaled_lorsum(
        xp.asarray(T),
        xp.asarray(U0),
        xp.asarray(V0),
        iters=0,
        ridge=lam,
        metric_in=xp.asarray(P_in),
        metric_out=xp.asarray(P_out),
    )
    np.testing.assert_allclose(
        xp.to_numpy(V), _direct_v_step(T, U0, P_in, P_out, lam, V0), atol=1e-10
    )
    np.testing.assert_allclose(
        xp.to_numpy(U), _direct_u_step(T, V0, P_in, P_out, lam, U0), atol=1e-10
    )


@pytest.mark.parametrize("iters", [0, 1, 3])
@pytest.mark.parametrize("start", ["v", "u"])
@pytest.mark.parametrize("lam", [0.0, 0.05])
@pytest.mark.parametrize("dense", [False, True])
def test_identity_metrics_equal_lorsum_exactly(xp, iters, start, lam, dense):
    rng = np.random.default_rng(2)
    m, n, r = 9, 6, 2
    terms, U0, V0 = _problem(rng, m, n, r)
    Y = lp.LowRankSum([(c, xp.asarray(A), xp.asarray(B)) for c, A, B in terms])
    U0, V0 = xp.asarray(U0), xp.asarray(V0)
    ones = (
        (xp.asarray(np.eye(n)), xp.asarray(np.eye(m)))
        if dense
        else (xp.asarray(np.ones(n)), xp.asarray(np.ones(m)))
    )
    Ul, Vl = lp.lorsum(Y, U0, V0, iters=iters, ridge=lam, start=start)
    for P_in, P_out in (ones, (None, None)):
        Us, Vs = lp.scaled_lorsum(
            Y, U0, V0, iters=iters, ridge=lam, start=start, metric_in=P_in, metric_out=P_out
        )
        np.testing.assert_array_equal(xp.to_numpy(Us), xp.to_numpy(Ul))
        np.testing.assert_array_equal(xp.to_numpy(Vs), xp.to_numpy(Vl))


@pytest.mark.parametrize("backend", F64, ids=lambda b: "-".join(b))
@given(
    seed=st.integers(0, 2**32 - 1),
    dims=st.tuples(st.integers(2, 9), st.integers(2, 9)),
    lam=st.sampled_from([0.0, 1e-3, 0.5]),
    kind=st.sampled_from(["diag", "dense"]),
)
def test_objective_never_increases(backend, seed, dims, lam, kind):
    be = Backend(*backend)
    rng = np.random.default_rng(seed)
    m, n = dims
    r = int(rng.integers(1, min(m, n) + 1))
    terms, U, V = _problem(rng, m, n, r)
    P_in, P_out = _metrics(rng, m, n, kind)
    Y = lp.LowRankSum([(c, be.asarray(A), be.asarray(B)) for c, A, B in terms])
    U, V = be.asarray(U), be.asarray(V)
    Ua, Va = U, V
    kw = dict(metric_in=be.asarray(P_in), metric_out=be.asarray(P_out), ridge=lam, anchor=(Ua, Va))
    prev = scaled_lorsum_objective(Y, U, V, **kw)
    T = Y.to_dense()
    assert np.isclose(
        prev,
        _dense_objective(
            be.to_numpy(T),
            be.to_numpy(U),
            be.to_numpy(V),
            P_in,
            P_out,
            lam,
            be.to_numpy(Ua),
            be.to_numpy(Va),
        ),
        rtol=1e-9,
        atol=1e-9,
    )
    for _ in range(4):
        U, V = scaled_lorsum(Y, U, V, iters=1, **kw)
        cur = scaled_lorsum_objective(Y, U, V, **kw)
        assert cur <= prev + 1e-9 * max(1.0, prev)
        prev = cur


def test_objective_dense_target_equals_lowranksum(xp64):
    rng = np.random.default_rng(3)
    terms, U, V = _problem(rng, 8, 5, 2)
    P_in, P_out = _metrics(rng, 8, 5, "diag")
    Y = lp.LowRankSum([(c, xp64.asarray(A), xp64.asarray(B)) for c, A, B in terms])
    kw = dict(
        metric_in=xp64.asarray(P_in),
        metric_out=xp64.asarray(P_out),
        ridge=0.1,
        anchor=(xp64.asarray(U + 1), xp64.asarray(V - 1)),
    )
    a = scaled_lorsum_objective(Y, xp64.asarray(U), xp64.asarray(V), **kw)
    b = scaled_lorsum_objective(Y.to_dense(), xp64.asarray(U), xp64.asarray(V), **kw)
    c = _dense_objective(xp64.to_numpy(Y.to_dense()), U, V, P_in, P_out, 0.1, U + 1, V - 1)
    assert abs(a - c) <= 1e-9 * c and abs(b - c) <= 1e-9 * c


def test_preconditioned_target_gives_spec_expanded_formulas():
    """T = c0 UaVaᵀ + Σ c_i P_out⁻¹U_iV_iᵀP_in⁻¹ by row scaling gives SPEC §7's V/U-steps."""
    rng = np.random.default_rng(4)
    m, n, r, N, lam = 10, 7, 3, 5, 0.1
    U0, V0 = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    D, X = rng.standard_normal((m, N)), rng.standard_normal((n, N))
    p_in, p_out = rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, m)
    c0, c1 = 1.0, -0.3
    Y = lp.LowRankSum([(c0, U0, V0), (c1, D / p_out[:, None], X / p_in[:, None])])
    U, V = scaled_lorsum(Y, U0, V0, iters=1, ridge=lam, metric_in=p_in, metric_out=p_out)
    Pi, Po = np.diag(p_in), np.diag(p_out)
    # SPEC §7 V-step, then U-step with the new V
    Vt = np.linalg.solve(
        U0.T @ Po @ U0 + lam * np.eye(r),
        lam * V0.T + c0 * (U0.T @ Po @ U0) @ V0.T + c1 * (U0.T @ D) @ (X.T @ np.linalg.inv(Pi)),
    )
    Vs = Vt.T
    Us = (
        lam * U0 + c0 * U0 @ (V0.T @ Pi @ Vs) + c1 * (np.linalg.inv(Po) @ D) @ (X.T @ Vs)
    ) @ np.linalg.inv(Vs.T @ Pi @ Vs + lam * np.eye(r))
    np.testing.assert_allclose(V, Vs, atol=1e-10)
    np.testing.assert_allclose(U, Us, atol=1e-10)


def test_dtypes_and_no_mutation():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    U0 = torch.as_tensor(rng.standard_normal((6, 2))).to(torch.bfloat16)
    V0 = torch.as_tensor(rng.standard_normal((4, 2))).to(torch.bfloat16)
    T = torch.as_tensor(rng.standard_normal((6, 4))).to(torch.bfloat16)
    p_in = torch.rand(4, dtype=torch.bfloat16) + 0.5
    p_out = torch.rand(6, dtype=torch.bfloat16) + 0.5
    saved = [a.clone() for a in (U0, V0, T, p_in, p_out)]
    U, V = scaled_lorsum(T, U0, V0, metric_in=p_in, metric_out=p_out, iters=2, ridge=0.1)
    assert U.dtype == torch.bfloat16 and V.dtype == torch.bfloat16
    assert bool(torch.isfinite(U).all()) and bool(torch.isfinite(V).all())
    for a, b in zip((U0, V0, T, p_in, p_out), saved, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("P_in", "P_out", "err", "match"),
    [
        (np.ones(4), np.ones(5), ValueError, "metric_out must have shape"),
        (np.ones(3), np.ones(6), ValueError, "metric_in must have shape"),
        (np.r_[1.0, 0.0, 1.0, 1.0], np.ones(6), ValueError, "metric_in must be positive"),
        (np.ones(4), -np.ones(6), ValueError, "metric_out must be positive"),
        (np.ones(4), np.diag(np.r_[1.0, 1, 1, 1, 1, -1]), ValueError, "positive definite"),
        (np.triu(np.ones((4, 4))) + 3 * np.eye(4), np.ones(6), ValueError, "symmetric"),
        (np.r_[1.0, np.nan, 1, 1], np.ones(6), ValueError, "NaN"),
        (np.ones(4, dtype=int), np.ones(6), TypeError, "floating"),
        (np.ones((4, 4, 1)), np.ones(6), ValueError, "metric_in must have shape"),
    ],
)
def test_bad_metrics(P_in, P_out, err, match):
    rng = np.random.default_rng(6)
    T, U0, V0 = (rng.standard_normal(s) for s in ((6, 4), (6, 2), (4, 2)))
    with pytest.raises(err, match=match):
        scaled_lorsum(T, U0, V0, metric_in=P_in, metric_out=P_out)


def test_bad_other_arguments():
    rng = np.random.default_rng(7)
    T, U0, V0 = (rng.standard_normal(s) for s in ((6, 4), (6, 2), (4, 2)))
    kw = dict(metric_in=np.ones(4), metric_out=np.ones(6))
    with pytest.raises(ValueError, match="ridge"):
        scaled_lorsum(T, U0, V0, ridge=-1.0, **kw)
    with pytest.raises(ValueError, match="iters"):
        scaled_lorsum(T, U0, V0, iters=-1, **kw)
    with pytest.raises(ValueError, match="V0"):
        scaled_lorsum(T, U0, V0[:3], **kw)
    with pytest.raises(TypeError):
        scaled_lorsum(T, U0, V0, metric_in=np.ones(4))  # metric_out is required
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        scaled_lorsum(
            T, U0, V0, metric_in=torch.ones(4, dtype=torch.float64), metric_out=np.ones(6)
        )

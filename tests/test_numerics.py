"""Numerics at every scale (issue 14): one test per row of the issue's table, an svds-style
invariant checker for ``truncated_svd``, and hypothesis properties over the backends.

Every assertion is a number: a relative error against an exact or dense reference, a dtype, an
orthonormality defect, or the error message naming the argument.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_prox as lp
from lowrank_prox import LowRankSum, lorsum, lorsum_history, lorsum_objective, truncated_svd

EPS = np.finfo(np.float64).eps
rng0 = np.random.default_rng(0)
m, n, r = 60, 50, 4
A = rng0.standard_normal((m, n))
U0, V0 = rng0.standard_normal((m, r)), rng0.standard_normal((n, r))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float))
                 / np.linalg.norm(np.asarray(b, float)))


def _product(U, V):
    return np.asarray(U, np.float64) @ np.asarray(V, np.float64).T


REF = _product(*lorsum(A, U0, V0, iters=3))


# -- norms and objectives near cancellation and at extreme scales --------------------------


@pytest.mark.parametrize("seed", range(10))
def test_cancelling_norm_is_accurate(seed):
    g = np.random.default_rng(seed)
    U, V, E = g.standard_normal((m, r)), g.standard_normal((n, r)), g.standard_normal((n, r))
    Y = LowRankSum([(1, U, V), (-1, U, V + 1e-10 * E)])
    true = np.linalg.norm(1e-10 * U @ E.T)  # ~1e-8; the Gram formula gave 0 or 1e-6
    assert abs(Y.norm() - true) / true <= 1e-6


def test_objective_near_exact_fit_is_accurate():
    g = np.random.default_rng(1)
    Ua, Vb = g.standard_normal((m, r)), g.standard_normal((n, r))
    D, F = g.standard_normal((m, 1)), g.standard_normal((n, 1))
    c = 1e-9 * np.linalg.norm(Ua @ Vb.T) / np.linalg.norm(D @ F.T)
    Y = LowRankSum([(1, Ua, Vb), (c, D, F)])
    true = 0.5 * np.linalg.norm(c * D @ F.T) ** 2
    assert abs(lorsum_objective(Y, Ua, Vb) - true) / true <= 1e-3
    hist = lorsum_history(Y, Ua, Vb, iters=0).objective[0]
    assert abs(hist - true) / true <= 1e-3


@pytest.mark.parametrize("dense_metric", [False, True])
def test_scaled_objective_near_exact_fit_is_accurate(dense_metric):
    # The weighted residual comes from the QR core of Lᵀ-transformed factors (P = LLᵀ); the
    # Gram formula it replaced lost everything below √eps·‖T‖_P here.
    from lowrank_prox.scaled import scaled_lorsum_objective

    g = np.random.default_rng(2)
    Ua, Vb = g.standard_normal((m, r)), g.standard_normal((n, r))
    D, F = g.standard_normal((m, 1)), g.standard_normal((n, 1))
    c = 1e-9 * np.linalg.norm(Ua @ Vb.T) / np.linalg.norm(D @ F.T)
    Y = LowRankSum([(1, Ua, Vb), (c, D, F)])
    if dense_metric:
        Qo, Qi = g.standard_normal((m, m)), g.standard_normal((n, n))
        P_out, P_in = Qo @ Qo.T / m + np.eye(m), Qi @ Qi.T / n + np.eye(n)
        R = c * D @ F.T
        true = 0.5 * float(np.sum(R * (P_out @ R @ P_in)))
    else:
        P_out, P_in = g.uniform(0.5, 2.0, m), g.uniform(0.5, 2.0, n)
        true = 0.5 * float(np.sum((np.sqrt(P_out)[:, None] * c * D @ F.T * np.sqrt(P_in)) ** 2))
    kw = dict(metric_in=P_in, metric_out=P_out)
    assert abs(scaled_lorsum_objective(Y, Ua, Vb, **kw) - true) / true <= 1e-6
    assert abs(scaled_lorsum_objective(Y.to_dense(), Ua, Vb, **kw) - true) / true <= 1e-3


@pytest.mark.parametrize("s", [1e155, 1e-170, 1e300, 1e-300])
def test_norm_extreme_entries(s):
    Y = LowRankSum([(1.0, s * U0, V0)])
    true = np.linalg.norm(U0 @ V0.T)
    assert abs(Y.norm() / s - true) / true <= 1e-14


def test_objective_at_exact_fit_with_huge_target():
    s = 1e155 / np.linalg.norm(U0 @ V0.T)
    Y = LowRankSum([(1.0, s * U0, V0)])
    value = lorsum_objective(Y, s * U0, V0)
    # ≈ 0 relative to ‖Y‖² = 1e310 (the Gram formula gave NaN)
    assert np.isfinite(value) and value <= (1e155 * 1e-14) ** 2


# -- scale equivariance of lorsum -----------------------------------------------------------


@pytest.mark.parametrize(
    "c, su, sv",
    [(1e250, 1e125, 1e125), (1.0, 1e200, 1e-200), (1e-250, 1e-125, 1e-125),
     (1e-300, 1e-160, 1e-160), (1.0, 1e-160, 1e-160)],
)
def test_lorsum_scale_equivariant(c, su, sv):
    U, V = lorsum(c * A, su * U0, sv * V0, iters=3)
    P = _product(U, V) / c
    assert np.all(np.isfinite(P))
    assert _rel(P, REF) <= 1e-12


def test_lorsum_huge_ridge_gives_anchor():
    U, V = lorsum(A, U0, V0, ridge=1e308, iters=3)
    assert _rel(_product(U, V), U0 @ V0.T) <= 1e-12


def test_lorsum_denormal_ridge_is_the_ridge_free_answer():
    U, V = lorsum(A, U0, V0, ridge=1e-310, iters=3)
    assert _rel(_product(U, V), REF) <= 1e-12


def test_lorsum_float32_huge_target():
    A32 = (1e30 * A).astype(np.float32)
    U, V = lorsum(A32, (1e15 * U0).astype(np.float32), (1e15 * V0).astype(np.float32), iters=3)
    assert U.dtype == np.float32
    assert _rel(_product(U, V) / 1e30, REF) <= 1e-4


# -- dtype promotion, array_api_strict, half precision --------------------------------------


def test_torch_mixed_dtype_terms_promote():
    torch = pytest.importorskip("torch")
    Y = LowRankSum([(1.0, torch.tensor(U0, dtype=torch.float32),
                     torch.tensor(V0, dtype=torch.float32)),
                    (1.0, torch.tensor(U0), torch.tensor(V0))])
    dense = 2 * U0 @ V0.T
    B = torch.ones((n, 2), dtype=torch.float64)
    assert (Y @ B).dtype == torch.float64
    assert _rel((Y @ B).numpy(), dense @ np.ones((n, 2))) <= 1e-6
    L = torch.ones((2, m), dtype=torch.float64)
    assert _rel((L @ Y).numpy(), np.ones((2, m)) @ dense) <= 1e-6
    assert abs(Y.norm() - np.linalg.norm(dense)) / np.linalg.norm(dense) <= 1e-6
    assert _rel(Y.to_dense().numpy(), dense) <= 1e-6


def test_principal_angles_keeps_half_dtypes():
    torch = pytest.importorskip("torch")
    a, b = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    for dt in (torch.float16, torch.bfloat16):
        assert lp.principal_angles(a.to(dt), b.to(dt)).dtype == dt
    a16, b16 = a.numpy().astype(np.float16), b.numpy().astype(np.float16)
    assert lp.principal_angles(a16, b16).dtype == np.float16


def test_array_api_strict_left_product():
    xs = pytest.importorskip("array_api_strict")
    Y = LowRankSum([(1.0, xs.asarray(U0), xs.asarray(V0))])
    L = rng0.standard_normal((3, m))
    out = xs.asarray(L) @ Y
    assert tuple(out.shape) == (3, n)
    assert _rel(np.asarray(out), L @ (U0 @ V0.T)) <= 1e-13


# -- clear argument errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, word",
    [
        (lambda: truncated_svd(A, 2, method="randomized", random_state=-1), ValueError,
         "random_state"),
        (lambda: truncated_svd(np.matrix(A), 2), TypeError, "matrix"),
        (lambda: truncated_svd(A.astype(np.longdouble), 2), TypeError, "float64"),
        (lambda: truncated_svd(np.ma.masked_array(A, mask=A > 2), 2), TypeError, "masked"),
        (lambda: lp.svd_flip(U0, rng0.standard_normal((3, n))), ValueError, "v"),
        (lambda: truncated_svd(A, 2, check_finite="no"), TypeError, "check_finite"),
        (lambda: lorsum(A, U0, V0, check_finite="no"), TypeError, "check_finite"),
    ],
)
def test_bad_arguments_named(call, exc, word):
    with pytest.raises(exc) as info:
        call()
    assert word.lower() in str(info.value).lower()


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_overflowing_singular_values_warn_inf(method):
    B = np.full((60, 50), 1e307) + 1e305 * rng0.standard_normal((60, 50))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kw = {"random_state": 0} if method == "randomized" else {}
        _, s, _ = truncated_svd(B, 2, method=method, **kw)
    assert np.isinf(np.asarray(s)[0])
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)


def test_exact_svd_of_sum_above_inner_dim_never_forms_matrix():
    g = np.random.default_rng(3)
    big_m = big_n = 3000
    Y = LowRankSum([(1.0, g.standard_normal((big_m, 2)), g.standard_normal((big_n, 2))),
                    (-0.5, g.standard_normal((big_m, 2)), g.standard_normal((big_n, 2)))])
    U, s, Vh = truncated_svd(Y, 6)
    s = np.asarray(s)
    assert s.shape == (6,) and np.all(s[4:] == 0) and np.all(s[:4] > 0)
    assert np.abs(np.asarray(U).T @ np.asarray(U) - np.eye(6)).max() <= 1e-12
    assert np.abs(np.asarray(Vh) @ np.asarray(Vh).T - np.eye(6)).max() <= 1e-12
    # the top 4 triplets reproduce Y: ‖Y − U S Vh‖ from products with random probes
    probe = g.standard_normal((big_n, 3))
    lhs = np.asarray(Y @ probe)
    rhs = (np.asarray(U) * s) @ (np.asarray(Vh) @ probe)
    assert _rel(rhs, lhs) <= 1e-12


# -- an svds-style invariant checker over the backends --------------------------------------


def check_svd(xp, M_dense, U, s, Vh, rank, *, factor=200.0):
    """Orthonormality, descending non-negative s, and the residual identity of Π_r."""
    Un, sn, Vn = (xp.to_numpy(a) for a in (U, s, Vh))
    assert Un.shape == (M_dense.shape[0], rank) and Vn.shape == (rank, M_dense.shape[1])
    tol = xp.tol(factor=factor)
    assert np.abs(Un.T @ Un - np.eye(rank)).max() <= tol
    assert np.abs(Vn @ Vn.T - np.eye(rank)).max() <= tol
    assert np.all(sn >= 0) and np.all(np.diff(sn) <= tol * max(sn[0], 1e-300))
    ref = np.linalg.svd(M_dense, compute_uv=False)
    scale = ref[0] if ref[0] > 0 else 1.0
    assert np.abs(sn - ref[:rank]).max() <= tol * scale * 10
    resid = np.linalg.norm(M_dense - (Un * sn) @ Vn)
    floor = np.sqrt(np.sum(ref[rank:] ** 2))
    assert resid <= floor + 10 * tol * scale * np.sqrt(rank)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1.0, 1e150, 1e300])
@pytest.mark.parametrize("shape", [(40, 25), (25, 40)])
def test_truncated_svd_invariants_known_spectrum(xp, scale, shape):
    if xp.dtype_name == "float32" and not 1e-30 <= scale <= 1e30:
        scale = 1e30 if scale > 1 else 1e-30
    g = np.random.default_rng(7)
    k = min(shape)
    # repeated and clustered singular values: 3, 3, 2, 2(1+1e-9), 1, then a tail
    spec = np.concatenate([[3, 3, 2, 2 * (1 + 1e-9), 1], 0.1 * 0.5 ** np.arange(k - 5)])
    Qu, _ = np.linalg.qr(g.standard_normal((shape[0], k)))
    Qv, _ = np.linalg.qr(g.standard_normal((shape[1], k)))
    M = (Qu * spec) @ Qv.T * scale
    M = np.asarray(np.asarray(M, dtype=xp.dtype_name), dtype=np.float64)
    for rank in (1, 2, 5):
        U, s, Vh = truncated_svd(xp.asarray(M), rank)
        check_svd(xp, M, U, s, Vh, rank)
    # the factored path: the same matrix as a LowRankSum of two terms
    Y = LowRankSum([(scale, xp.asarray(Qu * spec), xp.asarray(Qv))])
    U, s, Vh = truncated_svd(Y, 5)
    check_svd(xp, M, U, s, Vh, 5)


# -- hypothesis properties (CI profile: 15 properties × 700 = 10 500 cases) ----------------

PROPERTY_BACKENDS = [("numpy", "float64"), ("torch", "float64"), ("array_api_strict", "float64")]
_MANY = settings(max_examples=700) if settings().max_examples >= 300 else settings()


def _mats(g, mm, nn, rr):
    return g.standard_normal((mm, rr)), g.standard_normal((nn, rr))


dims = st.tuples(st.integers(3, 12), st.integers(3, 12), st.integers(1, 3),
                 st.integers(0, 2 ** 32 - 1))


@pytest.mark.parametrize("name, dt", PROPERTY_BACKENDS)
@_MANY
@given(d=dims, k=st.integers(-900, 900))
def test_property_scale_equivariance(name, dt, d, k):
    xp = Backend(name, dt)
    mm, nn, rr, seed = d
    rr = min(rr, mm, nn)
    g = np.random.default_rng(seed)
    Yd = g.standard_normal((mm, nn))
    Ua, Va = _mats(g, mm, nn, rr)
    c = 2.0 ** k
    U1, V1 = lorsum(xp.asarray(Yd), xp.asarray(Ua), xp.asarray(Va), iters=2)
    U2, V2 = lorsum(xp.asarray(Yd * c), xp.asarray(Ua * 2.0 ** (k // 2)),
                    xp.asarray(Va * 2.0 ** (k - k // 2)), iters=2)
    P1 = xp.to_numpy(U1) @ xp.to_numpy(V1).T
    P2 = (xp.to_numpy(U2) * 2.0 ** -(k // 2)) @ (xp.to_numpy(V2) * 2.0 ** -(k - k // 2)).T
    assert np.abs(P1 - P2).max() <= 1e-8 * max(1.0, np.abs(P1).max())


@pytest.mark.parametrize("name, dt", PROPERTY_BACKENDS)
@_MANY
@given(d=dims, k=st.integers(-600, 600),
       coefs=st.lists(st.floats(0.01, 3) | st.floats(-3, -0.01), min_size=1, max_size=3))
def test_property_norm_accuracy(name, dt, d, coefs, k):
    xp = Backend(name, dt)
    mm, nn, rr, seed = d
    g = np.random.default_rng(seed)
    terms = [(c * 2.0 ** k, *(xp.asarray(a) for a in _mats(g, mm, nn, rr))) for c in coefs]
    Y = LowRankSum(terms)
    dense = sum(c / 2.0 ** k * xp.to_numpy(U) @ xp.to_numpy(V).T for c, U, V in terms)
    true = np.linalg.norm(dense)
    bound = 50 * EPS * sum(abs(c) / 2.0 ** k * np.linalg.norm(xp.to_numpy(U), 2)
                           * np.linalg.norm(xp.to_numpy(V), 2) for c, U, V in terms)
    assert abs(Y.norm() / 2.0 ** k - true) <= bound + 1e-300


@pytest.mark.parametrize("name, dt", PROPERTY_BACKENDS)
@_MANY
@given(d=dims, ridge=st.sampled_from([0.0, 1e-3, 0.1, 1.0]), start=st.sampled_from("vu"))
def test_property_objective_monotone_per_half_step(name, dt, d, ridge, start):
    xp = Backend(name, dt)
    mm, nn, rr, seed = d
    rr = min(rr, mm, nn)
    g = np.random.default_rng(seed)
    Y = LowRankSum([(1.0, *(xp.asarray(a) for a in _mats(g, mm, nn, rr + 2)))])
    Ua, Va = (xp.asarray(a) for a in _mats(g, mm, nn, rr))
    obj = lorsum_history(Y, Ua, Va, iters=3, ridge=ridge, start=start).objective
    assert np.all(np.diff(obj) <= 1e-10 * max(obj[0], 1.0))


@pytest.mark.parametrize("name, dt", PROPERTY_BACKENDS)
@_MANY
@given(d=dims, rank=st.integers(1, 8))
def test_property_exact_factored_svd_is_optimal(name, dt, d, rank):
    xp = Backend(name, dt)
    mm, nn, rr, seed = d
    rank = min(rank, mm, nn)
    g = np.random.default_rng(seed)
    terms = [(1.0, *(xp.asarray(a) for a in _mats(g, mm, nn, rr))),
             (-0.7, *(xp.asarray(a) for a in _mats(g, mm, nn, rr)))]
    Y = LowRankSum(terms)
    dense = sum(c * xp.to_numpy(U) @ xp.to_numpy(V).T for c, U, V in terms)
    _, s, _ = truncated_svd(Y, rank)
    ref = np.linalg.svd(dense, compute_uv=False)[:rank]
    assert np.abs(xp.to_numpy(s) - ref).max() <= 1e-12 * max(ref[0], 1.0)


@pytest.mark.parametrize("name, dt", PROPERTY_BACKENDS)
@_MANY
@given(d=dims, k=st.integers(1, 600))
def test_property_unbalanced_warm_start_same_product(name, dt, d, k):
    xp = Backend(name, dt)
    mm, nn, rr, seed = d
    rr = min(rr, mm, nn)
    g = np.random.default_rng(seed)
    Yd = g.standard_normal((mm, nn))
    Ua, Va = _mats(g, mm, nn, rr)
    U1, V1 = lorsum(xp.asarray(Yd), xp.asarray(Ua), xp.asarray(Va), iters=2)
    U2, V2 = lorsum(xp.asarray(Yd), xp.asarray(Ua * 2.0 ** k), xp.asarray(Va * 2.0 ** -k),
                    iters=2)
    P1 = xp.to_numpy(U1) @ xp.to_numpy(V1).T
    P2 = xp.to_numpy(U2) @ xp.to_numpy(V2).T
    assert np.all(np.isfinite(P2))
    assert np.abs(P1 - P2).max() <= 1e-8 * max(1.0, np.abs(P1).max())

"""Core: LowRankSum, truncated_svd, lorsum, principal_angles (SPEC §1–§4) on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from conftest import BACKENDS, Backend, spectrum_matrix
from hypothesis import given
from hypothesis import strategies as st

import lowrank_prox as lp

F64 = [b for b in BACKENDS if b[1] == "float64"]


def assert_svd(A, U, s, Vh, rank, be, *, exact_s=None):
    """Every invariant of a truncated SVD result (the one checker the SVD tests share).

    Orthonormal columns/rows, non-negative descending ``s``, shapes, the Eckart–Young residual
    ``‖A − U diag(s) Vh‖ = (Σ_{i>r} σ_i²)^{1/2}`` and, when given, the exact singular values.
    """
    A = np.asarray(A, dtype=np.float64)
    U, s, Vh = be.to_numpy(U), be.to_numpy(s), be.to_numpy(Vh)
    m, n = A.shape
    assert U.shape == (m, rank) and s.shape == (rank,) and Vh.shape == (rank, n)
    scale = max(1.0, float(np.linalg.norm(A, 2)))
    tol = be.tol(scale, factor=300.0)
    np.testing.assert_allclose(U.T @ U, np.eye(rank), atol=be.tol(1.0, 300.0))
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(rank), atol=be.tol(1.0, 300.0))
    assert np.all(s >= -tol) and np.all(np.diff(s) <= tol)
    sigma = np.linalg.svd(A, compute_uv=False)
    floor = np.sqrt(np.sum(sigma[rank:] ** 2))
    resid = np.linalg.norm(A - (U * s) @ Vh)
    assert abs(resid - floor) <= 10 * tol * np.sqrt(min(m, n)), (resid, floor)
    np.testing.assert_allclose(s, sigma[:rank] if exact_s is None else exact_s, atol=tol)


def _terms(rng, m, n, ranks, be, coefs=None):
    coefs = coefs if coefs is not None else rng.uniform(-2, 2, size=len(ranks))
    return [
        (float(c), be.asarray(rng.standard_normal((m, r))), be.asarray(rng.standard_normal((n, r))))
        for c, r in zip(coefs, ranks, strict=True)
    ]


def _dense_np(terms, be):
    return sum(c * be.to_numpy(U) @ be.to_numpy(V).T for c, U, V in terms)


# --------------------------------------------------------------------------- LowRankSum


dims = st.tuples(st.integers(1, 12), st.integers(1, 12))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: "-".join(b))
@given(seed=st.integers(0, 2**32 - 1), mn=dims,
       ranks=st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_lowranksum_products_equal_dense(backend, seed, mn, ranks):
    be = Backend(*backend)
    rng = np.random.default_rng(seed)
    m, n = mn
    terms = _terms(rng, m, n, ranks, be)
    Y = lp.LowRankSum(terms)
    D = _dense_np(terms, be)
    B = rng.standard_normal((n, 3))
    A = rng.standard_normal((2, m))
    scale = max(1.0, float(np.abs(D).max())) * 10
    assert Y.shape == (m, n) and Y.inner_dim == sum(ranks)
    np.testing.assert_allclose(be.to_numpy(Y @ be.asarray(B)), D @ B, atol=be.tol(scale))
    np.testing.assert_allclose(be.to_numpy(Y.T @ be.asarray(A.T)), D.T @ A.T, atol=be.tol(scale))
    if be.name == "numpy":  # ndarray defers to LowRankSum.__rmatmul__
        np.testing.assert_allclose(A @ Y, A @ D, atol=be.tol(scale))
    np.testing.assert_allclose(be.to_numpy(Y.T.to_dense()), D.T, atol=be.tol(scale))
    np.testing.assert_allclose(be.to_numpy(Y.to_dense()), D, atol=be.tol(scale))
    assert abs(Y.norm() - np.linalg.norm(D)) <= be.tol(scale * np.sqrt(m * n), 1e3)
    np.testing.assert_allclose(
        be.to_numpy((2.0 * Y - Y).to_dense()), D, atol=be.tol(3 * scale)
    )


def test_lowranksum_keeps_namespace_and_dtype(xp):
    rng = np.random.default_rng(0)
    Y = lp.LowRankSum(_terms(rng, 5, 4, [2, 3], xp))
    out = Y @ xp.asarray(rng.standard_normal((4, 2)))
    assert Y.dtype == xp.dtype and out.dtype == xp.dtype
    assert type(out) is type(xp.asarray(np.zeros(1)))


# --------------------------------------------------------------------------- truncated_svd


@st.composite
def spectra(draw, max_dim=12, gap=None):
    """(m, n, rank, singular values) with σ_rank > σ_rank+1 (ratio ≤ ``gap`` if given)."""
    m = draw(st.integers(2, max_dim))
    n = draw(st.integers(2, max_dim))
    k = min(m, n)
    rank = draw(st.integers(1, k - 1))
    top = sorted(draw(st.lists(st.floats(1.0, 10.0), min_size=rank, max_size=rank)), reverse=True)
    ratio = draw(st.floats(0.05, gap if gap is not None else 0.95))
    tail = sorted(
        draw(st.lists(st.floats(0.0, 1.0), min_size=k - rank, max_size=k - rank)), reverse=True
    )
    s = np.concatenate([top, ratio * top[-1] * np.asarray(tail, dtype=float)])
    s[rank] = ratio * top[-1]  # σ_{r+1}/σ_r = ratio exactly
    return m, n, rank, s, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: "-".join(b))
@given(case=spectra())
def test_truncated_svd_matches_exact(backend, case):
    be = Backend(*backend)
    m, n, rank, s, seed = case
    A = spectrum_matrix(np.random.default_rng(seed), m, n, s)
    U, sv, Vh = lp.truncated_svd(be.asarray(A), rank)
    assert_svd(A, U, sv, Vh, rank, be, exact_s=s[:rank])
    assert U.dtype == be.dtype


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: "-".join(b))
@given(seed=st.integers(0, 2**32 - 1), mn=dims,
       ranks=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_truncated_svd_of_lowranksum_never_forms_dense(backend, seed, mn, ranks):
    be = Backend(*backend)
    rng = np.random.default_rng(seed)
    m, n = mn
    terms = _terms(rng, m, n, ranks, be)
    D = _dense_np(terms, be)
    rank = int(rng.integers(1, min(m, n) + 1))
    U, s, Vh = lp.truncated_svd(lp.LowRankSum(terms), rank)
    assert_svd(D, U, s, Vh, rank, be)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_truncated_svd_randomized_on_factored_target(xp, method):
    rng = np.random.default_rng(1)
    m, n, r = 80, 60, 5
    s = np.concatenate([np.linspace(10, 5, r), 0.3 * np.logspace(0, -3, min(m, n) - r)])
    A = spectrum_matrix(rng, m, n, s)
    Ua, sa, Vah = np.linalg.svd(A, full_matrices=False)
    # the same matrix as a LowRankSum of two terms
    Y = lp.LowRankSum([(1.0, xp.asarray(Ua * sa), xp.asarray(Vah.T)),
                       (0.0, xp.asarray(Ua[:, :2]), xp.asarray(Vah[:2].T))])
    U, sv, Vh = lp.truncated_svd(Y, r, method=method, random_state=0)
    assert_svd(A, U, sv, Vh, r, xp, exact_s=s[:r])
    # deterministic: same seed, same result
    U2, _, _ = lp.truncated_svd(Y, r, method=method, random_state=0)
    np.testing.assert_array_equal(xp.to_numpy(U), xp.to_numpy(U2))


def test_svd_flip_signs_agree_across_backends():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((9, 7))
    ref = None
    for backend in F64:
        be = Backend(*backend)
        U, s, Vh = (be.to_numpy(a) for a in lp.truncated_svd(be.asarray(A), 4))
        idx = np.argmax(np.abs(U), axis=0)
        assert np.all(U[idx, np.arange(4)] > 0)
        if ref is None:
            ref = (U, s, Vh)
        for a, b in zip(ref, (U, s, Vh), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-12)


# --------------------------------------------------------------------------- lorsum


@st.composite
def lorsum_problems(draw):
    m = draw(st.integers(2, 12))
    n = draw(st.integers(2, 12))
    r = draw(st.integers(1, min(m, n)))
    ranks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    ridge = draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0]) | st.floats(0.0, 10.0))
    iters = draw(st.integers(1, 4))
    start = draw(st.sampled_from(["v", "u"]))
    return m, n, r, ranks, ridge, iters, start, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: "-".join(b))
@given(problem=lorsum_problems())
def test_lorsum_never_increases_objective(backend, problem):
    """Each half-step is an exact block minimiser (SPEC §3), so the objective never goes up."""
    be = Backend(*backend)
    m, n, r, ranks, ridge, iters, start, seed = problem
    rng = np.random.default_rng(seed)
    U0 = be.asarray(rng.standard_normal((m, r)))
    V0 = be.asarray(rng.standard_normal((n, r)))
    terms = [(1.0, U0, V0)] + _terms(rng, m, n, ranks, be)
    Y = lp.LowRankSum(terms)
    h = lp.lorsum_history(Y, U0, V0, iters=iters, ridge=ridge, start=start)
    assert h.steps[0] == "init" and len(h.objective) == 2 * iters + 1
    # rounding of the Gram-form objective: ‖Y‖² + ‖UVᵀ‖² terms at dtype precision
    scale = Y.norm() ** 2 + float(np.sum(_dense_np(terms[:1], be) ** 2)) + 1.0
    tol = be.tol(scale, 1e3)
    assert np.all(np.diff(h.objective) <= tol), h.objective
    U, V = lp.lorsum(Y, U0, V0, iters=iters, ridge=ridge, start=start)
    np.testing.assert_array_equal(be.to_numpy(U), be.to_numpy(h.U))
    np.testing.assert_array_equal(be.to_numpy(V), be.to_numpy(h.V))


@pytest.mark.parametrize("backend", F64, ids=lambda b: "-".join(b))
@given(case=spectra(max_dim=10, gap=0.5))
def test_lorsum_ridge0_reaches_projection(backend, case):
    """With λ = 0 and enough iterations LoRSum lands on Π_r(Y) (SPEC §4)."""
    be = Backend(*backend)
    m, n, rank, s, seed = case
    rng = np.random.default_rng(seed)
    A = spectrum_matrix(rng, m, n, s)
    Ua, sa, Vah = np.linalg.svd(A)
    proj = (Ua[:, :rank] * sa[:rank]) @ Vah[:rank]
    # start close enough that no start direction is (numerically) orthogonal to the top subspace
    U0 = Ua[:, :rank] + 0.3 * rng.standard_normal((m, rank))
    V0 = rng.standard_normal((n, rank))
    U, V = lp.lorsum(be.asarray(A), be.asarray(U0), be.asarray(V0), iters=60)
    err = np.linalg.norm(be.to_numpy(U) @ be.to_numpy(V).T - proj)
    assert err <= 1e-8 * s[0], err


def test_lorsum_jacobi_step_is_rplora_formula(xp):
    """iters=0: both factors from the old point (SPEC §3 "Jacobi" form, §5 RPLoRA)."""
    rng = np.random.default_rng(3)
    m, n, r, N, eta, lam = 9, 7, 3, 4, 0.3, 0.05
    U, V = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    D, X = rng.standard_normal((N, m)), rng.standard_normal((N, n))
    G = D.T @ X
    Y = lp.LowRankSum([(1.0, xp.asarray(U), xp.asarray(V)),
                       (-eta, xp.asarray(D.T), xp.asarray(X.T))])
    Un, Vn = lp.lorsum(Y, xp.asarray(U), xp.asarray(V), iters=0, ridge=lam)
    V_ref = V - eta * G.T @ U @ np.linalg.inv(U.T @ U + lam * np.eye(r))
    U_ref = U - eta * G @ V @ np.linalg.inv(V.T @ V + lam * np.eye(r))
    np.testing.assert_allclose(xp.to_numpy(Vn), V_ref, atol=xp.tol(100))
    np.testing.assert_allclose(xp.to_numpy(Un), U_ref, atol=xp.tol(100))


def test_lorsum_dense_and_factored_targets_agree(xp):
    rng = np.random.default_rng(4)
    terms = _terms(rng, 8, 6, [2, 3], xp)
    U0, V0 = xp.asarray(rng.standard_normal((8, 2))), xp.asarray(rng.standard_normal((6, 2)))
    a = lp.lorsum(lp.LowRankSum(terms), U0, V0, iters=3, ridge=0.1)
    b = lp.lorsum(lp.LowRankSum(terms).to_dense(), U0, V0, iters=3, ridge=0.1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(xp.to_numpy(x), xp.to_numpy(y), atol=xp.tol(1e3))


def test_backends_agree():
    rng = np.random.default_rng(5)
    data = [rng.standard_normal(s) for s in [(10, 3), (8, 3), (10, 5), (8, 5), (10, 3), (8, 3)]]
    out = {}
    for backend in F64:
        be = Backend(*backend)
        U0, V0, D, X, Ua, Va = (be.asarray(a) for a in data)
        Y = lp.LowRankSum([(1.0, U0, V0), (-0.5, D, X)])
        U, V = lp.lorsum(Y, U0, V0, iters=3, ridge=0.01, anchor=(Ua, Va))
        Us, s, Vh = lp.truncated_svd(Y, 3, method="randomized", random_state=1)
        out[backend[0]] = [be.to_numpy(a) for a in (U, V, Us, s, Vh)]
    ref = out.pop("numpy")
    for name, arrs in out.items():
        for a, b in zip(ref, arrs, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-11, err_msg=name)


def test_lorsum_low_precision_computes_in_float32():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    U0 = torch.as_tensor(rng.standard_normal((12, 2)), dtype=torch.bfloat16)
    V0 = torch.as_tensor(rng.standard_normal((9, 2)), dtype=torch.bfloat16)
    D = torch.as_tensor(rng.standard_normal((12, 4)), dtype=torch.bfloat16)
    X = torch.as_tensor(rng.standard_normal((9, 4)), dtype=torch.bfloat16)
    Y = lp.LowRankSum([(1.0, U0, V0), (-0.1, D, X)])
    U, V = lp.lorsum(Y, U0, V0, iters=2, ridge=1e-3)
    assert U.dtype == torch.bfloat16 and V.dtype == torch.bfloat16
    ref = lp.lorsum(Y.astype(torch.float32), U0.float(), V0.float(), iters=2, ridge=1e-3)
    torch.testing.assert_close(U, ref[0].to(torch.bfloat16), rtol=0, atol=0)


def test_lorsum_does_not_mutate_inputs(xp):
    rng = np.random.default_rng(7)
    terms = _terms(rng, 6, 5, [2, 2], xp)
    U0, V0 = terms[0][1], terms[0][2]
    before = [xp.to_numpy(a).copy() for _, U, V in terms for a in (U, V)]
    lp.lorsum(lp.LowRankSum(terms), U0, V0, iters=2, ridge=0.5)
    lp.truncated_svd(lp.LowRankSum(terms), 2, method="randomized")
    after = [xp.to_numpy(a) for _, U, V in terms for a in (U, V)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_singular_gram_gives_finite_minimiser(xp):
    """U0 = 0 with ridge 0: the Gram is singular; the documented result is the min-norm one."""
    rng = np.random.default_rng(8)
    A = xp.asarray(rng.standard_normal((6, 5)))
    U0 = xp.asarray(np.zeros((6, 2)))
    V0 = xp.asarray(rng.standard_normal((5, 2)))
    U, V = lp.lorsum(A, U0, V0, iters=2)
    for a in (U, V):
        assert np.all(np.isfinite(xp.to_numpy(a)))
    np.testing.assert_array_equal(xp.to_numpy(V), 0.0)
    # a rank-deficient (not zero) start still progresses: one column duplicated
    U1 = xp.asarray(np.repeat(rng.standard_normal((6, 1)), 2, axis=1))
    U, V = lp.lorsum(A, U1, V0, iters=3)
    assert np.all(np.isfinite(xp.to_numpy(U))) and np.all(np.isfinite(xp.to_numpy(V)))
    h = lp.lorsum_history(A, U1, V0, iters=3)
    assert np.all(np.diff(h.objective) <= xp.tol(100 * h.objective[0], 1e3))


# --------------------------------------------------------------------------- principal_angles


@pytest.mark.parametrize("backend", F64, ids=lambda b: "-".join(b))
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(2, 12), data=st.data())
def test_principal_angles_match_scipy(backend, seed, m, data):
    be = Backend(*backend)
    p = data.draw(st.integers(1, m))
    q = data.draw(st.integers(1, m))
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((m, p)), rng.standard_normal((m, q))
    if data.draw(st.booleans()):  # nearly equal subspaces: the small-angle regime
        k = min(p, q)
        B[:, :k] = A[:, :k] + 1e-7 * rng.standard_normal((m, k))
    got = be.to_numpy(lp.principal_angles(be.asarray(A), be.asarray(B)))
    want = scipy.linalg.subspace_angles(A, B)
    # scipy takes some small angles from arccos (error ~ sqrt(eps) = 1.5e-8); ours from arcsin
    np.testing.assert_allclose(got, want, atol=5e-8)
    assert np.all(np.diff(got) <= 1e-15)


def test_principal_angles_known_values(xp):
    """Planes at prescribed angles, tiny ones included, recovered to relative accuracy."""
    theta = np.array([1.2, 0.3, 1e-9])
    m = 8
    Q, _ = np.linalg.qr(np.random.default_rng(10).standard_normal((m, m)))
    A = Q[:, :3]
    B = Q[:, :3] * np.cos(theta) + Q[:, 3:6] * np.sin(theta)
    got = xp.to_numpy(lp.principal_angles(xp.asarray(A), xp.asarray(B)))
    if xp.dtype_name == "float64":
        np.testing.assert_allclose(got, theta, rtol=1e-6)
    else:  # inputs rounded to float32 move the angles by ~eps32
        np.testing.assert_allclose(got, theta, atol=xp.tol(1.0, 100))


# --------------------------------------------------------------------------- bad input


def _good(be):
    rng = np.random.default_rng(9)
    U0, V0 = be.asarray(rng.standard_normal((6, 2))), be.asarray(rng.standard_normal((5, 2)))
    return lp.LowRankSum([(1.0, U0, V0)]), U0, V0


@pytest.mark.parametrize("backend", F64, ids=lambda b: "-".join(b))
def test_bad_input_messages(backend):
    be = Backend(*backend)
    Y, U0, V0 = _good(be)
    nan = be.asarray(np.full((6, 2), np.nan))
    cases = [
        (ValueError, "rank", lambda: lp.truncated_svd(Y, 0)),
        (ValueError, "rank", lambda: lp.truncated_svd(Y, 6)),
        (TypeError, "rank", lambda: lp.truncated_svd(Y, 2.0)),
        (ValueError, "method", lambda: lp.truncated_svd(Y, 2, method="lanczos")),
        (ValueError, "n_oversamples", lambda: lp.truncated_svd(Y, 2, n_oversamples=-1)),
        (TypeError, "random_state", lambda: lp.truncated_svd(Y, 2, random_state="x")),
        (ValueError, "V0", lambda: lp.lorsum(Y, U0, be.asarray(np.ones((4, 2))))),
        (ValueError, "U0", lambda: lp.lorsum(Y, be.asarray(np.ones((5, 2))), V0)),
        (ValueError, "U0", lambda: lp.lorsum(Y, be.asarray(np.ones(6)), V0)),
        (ValueError, "rank",
         lambda: lp.lorsum(Y, be.asarray(np.ones((6, 6))), be.asarray(np.ones((5, 6))))),
        (ValueError, "anchor[0]",
         lambda: lp.lorsum(Y, U0, V0, anchor=(be.asarray(np.ones((6, 3))), V0))),
        (TypeError, "anchor", lambda: lp.lorsum(Y, U0, V0, anchor=U0)),
        (ValueError, "ridge", lambda: lp.lorsum(Y, U0, V0, ridge=-1e-3)),
        (ValueError, "ridge", lambda: lp.lorsum(Y, U0, V0, ridge=float("nan"))),
        (ValueError, "iters", lambda: lp.lorsum(Y, U0, V0, iters=-1)),
        (TypeError, "iters", lambda: lp.lorsum(Y, U0, V0, iters=1.5)),
        (TypeError, "iters", lambda: lp.lorsum(Y, U0, V0, iters=True)),
        (ValueError, "start", lambda: lp.lorsum(Y, U0, V0, start="w")),
        (ValueError, "U0", lambda: lp.lorsum(Y, nan, V0)),
        (ValueError, "terms[0] U", lambda: lp.LowRankSum([(1.0, nan, V0)])),
        (ValueError, "terms[1]", lambda: lp.LowRankSum([(1.0, U0, V0), (1.0, V0, U0)])),
        (ValueError, "terms[0]", lambda: lp.LowRankSum([(1.0, U0, be.asarray(np.ones((5, 3))))])),
        (TypeError, "coefficient", lambda: lp.LowRankSum([("a", U0, V0)])),
        (ValueError, "coefficient", lambda: lp.LowRankSum([(float("inf"), U0, V0)])),
        (ValueError, "terms", lambda: lp.LowRankSum([])),
        (TypeError, "terms[0]", lambda: lp.LowRankSum([(1.0, U0)])),
        (ValueError, "target", lambda: lp.lorsum(be.asarray(np.full((6, 5), np.inf)), U0, V0)),
        (ValueError, "B", lambda: Y @ be.asarray(np.ones((4, 2)))),
        (ValueError, "B must have shape", lambda: lp.principal_angles(U0, V0)),
        (TypeError, "floating dtype",
         lambda: lp.lorsum(Y, be.xp.ones((6, 2), dtype=be.xp.int64), V0)),
    ]
    for exc, needle, call in cases:
        with pytest.raises(exc, match=needle.replace("[", r"\[").replace("]", r"\]")):
            call()


def test_integer_arrays_are_refused():
    U0 = np.ones((6, 2), dtype=np.int64)
    with pytest.raises(TypeError, match="U0 must have a real floating dtype"):
        lp.lorsum(np.ones((6, 5)), U0, np.ones((5, 2)))


def test_mixed_libraries_are_refused():
    torch = pytest.importorskip("torch")
    U0, V0 = np.ones((6, 2)), np.ones((5, 2))
    with pytest.raises(TypeError, match="one array library"):
        lp.lorsum(np.ones((6, 5)), torch.ones(6, 2, dtype=torch.float64), V0)
    with pytest.raises(TypeError, match="one array library"):
        lp.LowRankSum([(1.0, U0, torch.ones(5, 2, dtype=torch.float64))])

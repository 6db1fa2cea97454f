"""tangent_project: P_T(G) = P_U G + G P_V − P_U G P_V (SPEC §5, §8) on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, Backend
from hypothesis import given
from hypothesis import strategies as st

import lowrank_prox as lp


def _reference(G, U, V):
    """The defining formula with explicit projectors (NumPy, float64)."""
    PU = U @ np.linalg.pinv(U)
    PV = V @ np.linalg.pinv(V)
    return PU @ G + G @ PV - PU @ G @ PV


def _problem(rng, m=9, n=7, r=3, N=5):
    U = rng.standard_normal((m, r))
    V = rng.standard_normal((n, r))
    Dt = rng.standard_normal((m, N))
    X = rng.standard_normal((n, N))
    return U, V, Dt, X


def _as_np(P, xp):
    return xp.to_numpy(P.to_dense() if isinstance(P, lp.LowRankSum) else P)


def test_matches_definition_dense_and_factored(xp):
    rng = np.random.default_rng(0)
    U, V, Dt, X = _problem(rng)
    G = Dt @ X.T
    want = _reference(G, U, V)
    scale = np.linalg.norm(G)
    dense = lp.tangent_project(xp.asarray(G), xp.asarray(U), xp.asarray(V))
    fact = lp.tangent_project(
        lp.LowRankSum([(1.0, xp.asarray(Dt), xp.asarray(X))]), xp.asarray(U), xp.asarray(V)
    )
    assert isinstance(fact, lp.LowRankSum) and fact.inner_dim == 2 * U.shape[1]
    assert dense.dtype == xp.dtype and fact.dtype == xp.dtype
    np.testing.assert_allclose(_as_np(dense, xp), want, atol=xp.tol(scale))
    np.testing.assert_allclose(_as_np(fact, xp), want, atol=xp.tol(scale))
    # Rank ≤ 2r.
    s = np.linalg.svd(_as_np(fact, xp), compute_uv=False)
    assert s[2 * U.shape[1] :].max() <= xp.tol(scale)


def test_idempotent_and_fixes_tangent_vectors(xp):
    rng = np.random.default_rng(1)
    U, V, Dt, X = _problem(rng)
    Ux, Vx = xp.asarray(U), xp.asarray(V)
    G = xp.asarray(Dt @ X.T)
    P1 = lp.tangent_project(G, Ux, Vx)
    P2 = lp.tangent_project(P1, Ux, Vx)
    scale = float(np.linalg.norm(_as_np(P1, xp)))
    np.testing.assert_allclose(_as_np(P2, xp), _as_np(P1, xp), atol=xp.tol(scale))
    # A tangent vector U Aᵀ + B Vᵀ is left unchanged; a normal one (I−P_U) C (I−P_V) vanishes.
    A, B = rng.standard_normal(V.shape), rng.standard_normal(U.shape)
    T = U @ A.T + B @ V.T
    PT = lp.tangent_project(xp.asarray(T), Ux, Vx)
    np.testing.assert_allclose(_as_np(PT, xp), T, atol=xp.tol(np.linalg.norm(T)))
    C = rng.standard_normal(T.shape)
    Nrm = C - U @ np.linalg.pinv(U) @ C
    Nrm = Nrm - Nrm @ V @ np.linalg.pinv(V)
    PN = lp.tangent_project(xp.asarray(Nrm), Ux, Vx)
    assert np.abs(_as_np(PN, xp)).max() <= xp.tol(np.linalg.norm(Nrm))


def test_factored_equals_dense_property():
    @given(
        seed=st.integers(0, 2**32 - 1),
        m=st.integers(2, 10),
        n=st.integers(2, 10),
        r=st.integers(1, 4),
        N=st.integers(1, 6),
        backend=st.sampled_from([b for b in BACKENDS if b[1] == "float64"]),
    )
    def check(seed, m, n, r, N, backend):
        be = Backend(*backend)
        r = min(r, m, n)
        rng = np.random.default_rng(seed)
        U, V, Dt, X = _problem(rng, m, n, r, N)
        G = Dt @ X.T
        Uq, Vq = be.asarray(U), be.asarray(V)
        fact = lp.tangent_project(lp.LowRankSum([(1.0, be.asarray(Dt), be.asarray(X))]), Uq, Vq)
        dense = lp.tangent_project(be.asarray(G), Uq, Vq)
        scale = max(1.0, np.linalg.norm(G))
        np.testing.assert_allclose(_as_np(fact, be), _as_np(dense, be), atol=be.tol(scale, 1e3))

    check()


def test_non_orthonormal_and_rank_deficient_bases():
    rng = np.random.default_rng(2)
    U, V, Dt, X = _problem(rng, r=2)
    G = Dt @ X.T
    # Rescaled / mixed bases give the same projector.
    M = np.array([[3.0, 1.0], [0.0, 1e-3]])
    np.testing.assert_allclose(
        lp.tangent_project(G, U @ M, V @ M.T), lp.tangent_project(G, U, V), atol=1e-10
    )
    # A repeated column spans the same space as the basis without it.
    U_dup = np.concatenate([U, U[:, :1]], axis=1)
    np.testing.assert_allclose(
        lp.tangent_project(G, U_dup, V), _reference(G, U, V), atol=1e-12 * np.linalg.norm(G)
    )
    # U = 0: P_U = 0 and P_T(G) = G P_V.
    Z = np.zeros_like(U)
    np.testing.assert_allclose(
        lp.tangent_project(G, Z, V), G @ V @ np.linalg.pinv(V), atol=1e-12 * np.linalg.norm(G)
    )


def test_does_not_mutate_inputs():
    rng = np.random.default_rng(3)
    U, V, Dt, X = _problem(rng)
    G = Dt @ X.T
    copies = [a.copy() for a in (G, U, V)]
    lp.tangent_project(G, U, V)
    for a, b in zip((G, U, V), copies, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((np.ones((4, 3)), np.ones((5, 2)), np.ones((3, 2))), ValueError, "U must have shape"),
        ((np.ones((4, 3)), np.ones((4, 2)), np.ones((4, 2))), ValueError, "V must have shape"),
        ((np.ones(4), np.ones((4, 2)), np.ones((3, 2))), ValueError, "G must be 2-dimensional"),
        ((np.ones((4, 3)), np.ones((4, 2), dtype=int), np.ones((3, 2))), TypeError, "U must"),
        ((np.full((4, 3), np.nan), np.ones((4, 2)), np.ones((3, 2))), ValueError, "G contains"),
        ((np.ones((4, 3)), np.ones((4, 0)), np.ones((3, 2))), ValueError, r"U.shape\[1\]"),
        (("G", np.ones((4, 2)), np.ones((3, 2))), TypeError, "G must be an array"),
    ],
)
def test_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        lp.tangent_project(*args)


def test_mixed_libraries_are_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        lp.tangent_project(torch.ones(4, 3, dtype=torch.float64), np.ones((4, 2)), np.ones((3, 2)))

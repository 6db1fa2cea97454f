"""GeoLoRA (SPEC §8): core step identities, rank rule, torch layer/optimizer, figure metrics."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

from lowrank_prox import LowRankSum, geolora_step, geolora_tangent, tangent_project
from lowrank_prox.geolora import tail_rank

torch = pytest.importorskip("torch")


def _point(rng, m, n, r, S=None):
    U, _ = np.linalg.qr(rng.standard_normal((m, r)))
    V, _ = np.linalg.qr(rng.standard_normal((n, r)))
    if S is None:
        S = rng.standard_normal((r, r))
    return U, S, V


def _dense_PT(G, U, V):
    PU, PV = U @ U.T, V @ V.T
    return PU @ G + G @ PV - PU @ G @ PV


# -- core ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factored", [False, True])
def test_step_equals_riemannian_step_before_truncation(xp, factored):
    """τ = 0, no cap: U₊S₊V₊ᵀ = W − η P_T(G) to rounding (SPEC §8), over every backend."""
    rng = np.random.default_rng(0)
    m, n, r, N, lr = 13, 9, 3, 5, 0.37
    U, S, V = _point(rng, m, n, r)
    D, Xf = rng.standard_normal((N, m)), rng.standard_normal((N, n))
    G = D.T @ Xf
    expected = U @ S @ V.T - lr * _dense_PT(G, U, V)
    Ga = (LowRankSum([(1.0, xp.asarray(D.T), xp.asarray(Xf.T))]) if factored
          else xp.asarray(G))
    U1, S1, V1 = geolora_step(xp.asarray(U), xp.asarray(S), xp.asarray(V), Ga, lr, tau=0.0,
                              min_rank=1)
    assert U1.dtype == xp.dtype and U1.shape == (m, 2 * r) and V1.shape == (n, 2 * r)
    U1, S1, V1 = (xp.to_numpy(a) for a in (U1, S1, V1))
    scale = np.linalg.norm(expected)
    assert np.abs(U1 @ S1 @ V1.T - expected).max() < xp.tol(scale)
    assert np.abs(U1.T @ U1 - np.eye(2 * r)).max() < xp.tol()
    assert np.abs(V1.T @ V1 - np.eye(2 * r)).max() < xp.tol()
    s = np.diag(S1)
    assert np.allclose(S1, np.diag(s)) and np.all(np.diff(s) <= 0) and s.min() >= 0


def test_step_matches_tangent_project_and_truncated_svd():
    """With truncation the result is the τ-truncated SVD of W − η P_T(G) (tangent_project)."""
    rng = np.random.default_rng(1)
    m, n, r, lr = 20, 15, 4, 0.5
    U, S, V = _point(rng, m, n, r)
    G = rng.standard_normal((m, n))
    Y = U @ S @ V.T - lr * tangent_project(G, U, V)
    s = np.linalg.svd(Y, compute_uv=False)
    U1, S1, V1 = geolora_step(U, S, V, G, lr, tau=0.3, min_rank=1)
    k = U1.shape[1]
    assert k == tail_rank(s[: 2 * r], 0.3)
    np.testing.assert_allclose(np.diag(S1), s[:k], rtol=1e-12, atol=1e-12)
    Uy, sy, Vyh = np.linalg.svd(Y)
    best = (Uy[:, :k] * sy[:k]) @ Vyh[:k]
    assert np.abs(U1 @ S1 @ V1.T - best).max() < 1e-12 * np.linalg.norm(Y)


def test_tangent_from_one_backward_pass(xp64):
    """geolora_tangent(∇_U, ∇_S, ∇_V) rebuilds P_T(G) exactly for invertible S."""
    rng = np.random.default_rng(2)
    m, n, r = 11, 8, 3
    U, S, V = _point(rng, m, n, r)
    G = rng.standard_normal((m, n))
    gU, gS, gV = G @ V @ S.T, U.T @ G @ V, G.T @ U @ S
    T = geolora_tangent(*(xp64.asarray(a) for a in (U, S, V, gU, gS, gV)))
    assert T.inner_dim == 3 * r
    err = np.abs(xp64.to_numpy(T.to_dense()) - _dense_PT(G, U, V)).max()
    assert err < xp64.tol(np.linalg.norm(G) * np.linalg.cond(S))


def test_tangent_at_zero_S_is_the_S_step():
    """S = 0 (zero init): ∇_U = ∇_V = 0, only U ∇_S Vᵀ survives, finite."""
    rng = np.random.default_rng(3)
    U, _, V = _point(rng, 7, 6, 2)
    G = rng.standard_normal((7, 6))
    Z = np.zeros((2, 2))
    T = geolora_tangent(U, Z, V, G @ V @ Z, U.T @ G @ V, G.T @ U @ Z).to_dense()
    np.testing.assert_allclose(T, U @ U.T @ G @ V @ V.T, atol=1e-14)


@pytest.mark.parametrize(
    ("sigma", "tau", "expected"),
    [
        ([10, 5, 1, 0.1], 0.15, 2),  # tails 0.1, 1.005 < 1.684; 5.1 is not
        ([10, 5, 1, 0.1], 0.0, 4),  # τ = 0 keeps everything
        ([1, 1, 1, 1], 0.49, 4),  # tail 0.5·2 = 1.0 is not < 0.98
        ([1, 1, 1, 1], 0.51, 3),
        ([0, 0, 0], 0.3, 3),  # all zero: nothing qualifies, keep the length
        ([3.0], 0.5, 1),
    ],
)
def test_tail_rank_rule(sigma, tau, expected):
    assert tail_rank(np.asarray(sigma, dtype=float), tau) == expected


def test_rank_rule_and_clamp_through_the_step():
    """lr = 0: M = [[S, 0], [0, 0]], so the rank is the tail rule on σ(S), then clamped."""
    rng = np.random.default_rng(4)
    U, _, V = _point(rng, 12, 10, 4)
    S = np.diag([10.0, 5.0, 1.0, 0.1])
    G = rng.standard_normal((12, 10))
    assert geolora_step(U, S, V, G, 0.0, tau=0.15)[0].shape[1] == 2
    assert geolora_step(U, S, V, G, 0.0, tau=0.15, min_rank=3)[0].shape[1] == 3
    assert geolora_step(U, S, V, G, 0.0, tau=0.0, max_rank=3)[0].shape[1] == 3
    assert geolora_step(U, S, V, G, 0.0, tau=0.9)[0].shape[1] == 2  # min_rank floor
    assert geolora_step(U, S, V, G, 0.0, tau=0.9, min_rank=1)[0].shape[1] == 1
    # growth is at most ×2 per step, and bounded by the dimensions
    U1, S1, V1 = geolora_step(U, S, V, G, 1.0, tau=0.0)
    assert U1.shape[1] == 8
    U2, *_ = geolora_step(U1, S1, V1, G, 1.0, tau=0.0)
    assert U2.shape[1] == 10  # min(16, m=12, n=10)
    np.testing.assert_allclose(np.diag(geolora_step(U, S, V, G, 0.0, tau=0.0)[1])[:4],
                               [10, 5, 1, 0.1], rtol=1e-13)


def test_coefficient_step_without_augmentation():
    """augment=False is the S-step S − η UᵀGV in the current bases (rank never grows)."""
    rng = np.random.default_rng(5)
    U, S, V = _point(rng, 9, 7, 3)
    G = rng.standard_normal((9, 7))
    U1, S1, V1 = geolora_step(U, S, V, G, 0.2, tau=0.0, min_rank=1, augment=False)
    assert U1.shape[1] == 3
    expected = U @ (S - 0.2 * U.T @ G @ V) @ V.T
    assert np.abs(U1 @ S1 @ V1.T - expected).max() < 1e-13


def test_inputs_not_mutated_and_float32_computed():
    rng = np.random.default_rng(6)
    U, S, V = _point(rng, 8, 6, 2)
    G = rng.standard_normal((8, 6))
    copies = [a.copy() for a in (U, S, V, G)]
    geolora_step(U, S, V, G, 0.1, tau=0.1)
    for a, b in zip((U, S, V, G), copies, strict=True):
        np.testing.assert_array_equal(a, b)
    out = geolora_step(*(a.astype(np.float32) for a in (U, S, V, G)), 0.1, tau=0.1)
    assert all(a.dtype == np.float32 for a in out)


def test_bad_inputs():
    rng = np.random.default_rng(7)
    U, S, V = _point(rng, 8, 6, 2)
    G = rng.standard_normal((8, 6))
    with pytest.raises(ValueError, match="tau"):
        geolora_step(U, S, V, G, 0.1, tau=1.5)
    with pytest.raises(ValueError, match="tau"):
        geolora_step(U, S, V, G, 0.1, tau=-0.1)
    with pytest.raises(ValueError, match="lr"):
        geolora_step(U, S, V, G, -0.1, tau=0.1)
    with pytest.raises(ValueError, match="G must have shape"):
        geolora_step(U, S, V, G.T, 0.1, tau=0.1)
    with pytest.raises(ValueError, match="S must have shape"):
        geolora_step(U, S[:1], V, G, 0.1, tau=0.1)
    with pytest.raises(ValueError, match="max_rank"):
        geolora_step(U, S, V, G, 0.1, tau=0.1, min_rank=3, max_rank=2)
    with pytest.raises(ValueError, match="min_rank"):
        geolora_step(U, S, V, G, 0.1, tau=0.1, min_rank=0)
    with pytest.raises(TypeError, match="min_rank"):
        geolora_step(U, S, V, G, 0.1, tau=0.1, min_rank=2.0)
    with pytest.raises(ValueError, match="NaN"):
        geolora_step(U, S, V, np.full_like(G, np.nan), 0.1, tau=0.1)
    with pytest.raises(TypeError, match="augment"):
        geolora_step(U, S, V, G, 0.1, tau=0.1, augment=1)
    with pytest.raises(TypeError, match="one array library"):
        geolora_step(torch.as_tensor(U), S, V, G, 0.1, tau=0.1)


# -- torch layer and optimizer ---------------------------------------------------------------


def _regression(seed=0, n=20, m=15, N=200, rank=4):
    g = torch.Generator().manual_seed(seed)
    W_star = torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, n, generator=g, dtype=torch.float64)
    X = torch.randn(N, n, generator=g, dtype=torch.float64)
    return W_star, X, X @ W_star.T


def test_optimizer_reduces_loss_and_finds_the_rank():
    from lowrank_prox.nn.geolora import GeoLoRALinear
    from lowrank_prox.optim.geolora import GeoLoRA

    W_star, X, Y = _regression()
    layer = GeoLoRALinear(20, 15, 2, bias=False, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.weight.zero_()
    opt = GeoLoRA(layer, lr=0.3, tau=0.02)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = 0.5 * ((layer(X) - Y) ** 2).sum() / len(X)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-12 * losses[0]
    assert opt.ranks == [4] and layer.rank == 4
    Uf = layer.U.detach()
    assert torch.allclose(Uf.T @ Uf, torch.eye(4, dtype=torch.float64), atol=1e-12)
    S = layer.S.detach()
    assert torch.count_nonzero(S - torch.diag(torch.diagonal(S))) == 0


def test_optimizer_step_is_the_core_step():
    """One optimizer step equals geolora_step on the dense gradient (one backward pass)."""
    from lowrank_prox.nn.geolora import GeoLoRALinear
    from lowrank_prox.optim.geolora import GeoLoRA

    W_star, X, Y = _regression(seed=3)
    layer = GeoLoRALinear(20, 15, 3, bias=False, init="random", init_scale=0.5,
                          dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    U, S, V = (p.detach().clone() for p in (layer.U, layer.S, layer.V))
    W0 = layer.weight.detach()
    G = ((X @ (W0 + U @ S @ V.T).T - Y).T @ X) / len(X)
    expected = geolora_step(U, S, V, G, 0.05, tau=0.1)
    opt = GeoLoRA(layer, lr=0.05, tau=0.1)
    (0.5 * ((layer(X) - Y) ** 2).sum() / len(X)).backward()
    opt.step()
    got = layer.U @ layer.S @ layer.V.T
    want = expected[0] @ expected[1] @ expected[2].T
    assert layer.rank == expected[0].shape[1]
    assert torch.abs(got - want).max() < 1e-11


def _mlp(rank, seed=1):
    from lowrank_prox.nn.geolora import GeoLoRALinear

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Sequential(
        GeoLoRALinear(20, 15, rank, generator=g, dtype=torch.float64, init="random"),
        torch.nn.Tanh(),
        torch.nn.Linear(15, 3, dtype=torch.float64),
    )


def _train(model, opt, X, Y, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(X) - Y) ** 2).mean()
        loss.backward()
        opt.step()
    return loss.item()


def test_rank_change_and_state_dict_resume():
    from lowrank_prox.optim.geolora import GeoLoRA

    g = torch.Generator().manual_seed(2)
    X = torch.randn(64, 20, generator=g, dtype=torch.float64)
    Y = torch.randn(64, 3, generator=g, dtype=torch.float64)
    A = _mlp(3)
    opt_a = GeoLoRA(A, 0.5, tau=0.05, momentum=0.5)
    _train(A, opt_a, X, Y, 5)
    assert opt_a.ranks != [3]  # the rank changed and the next passes still ran
    buf = io.BytesIO()
    torch.save({"model": A.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    B = _mlp(7, seed=5)  # another initial rank: loading resizes the adapter
    B.load_state_dict(ckpt["model"])
    opt_b = GeoLoRA(B, 0.5, tau=0.05, momentum=0.5)
    opt_b.load_state_dict(copy.deepcopy(ckpt["opt"]))
    assert opt_b.ranks == opt_a.ranks
    la, lb = _train(A, opt_a, X, Y, 5), _train(B, opt_b, X, Y, 5)
    assert la == lb
    for p, q in zip(A.parameters(), B.parameters(), strict=True):
        assert torch.equal(p, q)


def test_optimizer_skips_nonfinite_and_validates():
    from lowrank_prox.optim.geolora import GeoLoRA

    model = _mlp(3)
    before = [p.detach().clone() for p in model[0].parameters()]
    opt = GeoLoRA(model, 0.1)
    for p in (model[0].U, model[0].S, model[0].V):
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    for p, q in zip(model[0].parameters(), before, strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="GeoLoRALinear"):
        GeoLoRA(torch.nn.Linear(3, 3), 0.1)
    with pytest.raises(ValueError, match="lr"):
        GeoLoRA(model, -1.0)
    with pytest.raises(ValueError, match="tau"):
        GeoLoRA(model, 0.1, tau=2.0)
    with pytest.raises(ValueError, match="max_rank"):
        GeoLoRA(model, 0.1, min_rank=4, max_rank=3)
    with pytest.raises(TypeError, match="model"):
        GeoLoRA([torch.nn.Parameter(torch.zeros(2))], 0.1)


def test_layer_from_linear_and_set_factors():
    from lowrank_prox.nn.geolora import GeoLoRALinear

    lin = torch.nn.Linear(6, 4)
    layer = GeoLoRALinear.from_linear(lin, 2)
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), lin(x))  # S = 0 at init: ΔW = 0
    assert not layer.weight.requires_grad and layer.U.requires_grad
    with pytest.raises(ValueError, match="S must have shape"):
        layer.set_factors(torch.zeros(4, 3), torch.zeros(2, 2), torch.zeros(6, 3))
    with pytest.raises(ValueError, match="rank"):
        GeoLoRALinear(6, 4, 5)


# -- figures ---------------------------------------------------------------------------------


def test_figure_matrix_regression_metrics():
    from analysis.figures.geolora import geolora_matrix_regression

    res = geolora_matrix_regression(fast=True)
    m = res.metrics
    assert m["lr_ratio_geolora_over_simgd"] >= 10  # GeoLoRA's lr is "much larger"
    assert m["simgd_diverges_at_geolora_lr"]
    assert m["final_loss_geolora"] < 1e-8 * m["initial_loss"]
    assert m["final_loss_simgd"] > 1e4 * m["final_loss_geolora"]
    assert m["final_rank_geolora"] == m["target_rank"]
    assert m["simgd_loss_increase_fraction_last_quarter"] > 0.2  # oscillating
    assert m["geolora_loss_increase_fraction_last_quarter"] == 0.0
    assert "not published" in res.notes
    _check_matrix_regression_drawing(res.fig)
    import matplotlib.pyplot as plt

    plt.close(res.fig)


def _integer_ticks(axis):
    lo, hi = axis.get_view_interval()
    ticks = [t for t in axis.get_major_locator()() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def _lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def _check_matrix_regression_drawing(fig):
    """Panel (c): every method in the legend, GeoLoRA dashed above SVDLoRA in the family
    colours; panel (d): integer rank ticks; an overall title."""
    from matplotlib.colors import same_color

    from analysis.style import FAMILY_COLORS, figure_title

    assert "GeoLoRA Fig 5" in figure_title(fig)
    ax_c, ax_d = fig.axes[2], fig.axes[3]
    legend = [t.get_text() for t in ax_c.get_legend().get_texts()]
    for prefix in ("Simultaneous GD, lr", "GeoLoRA", "PSI-LoRA", "SVDLoRA"):
        assert any(lab.startswith(prefix) for lab in legend), prefix
    assert len(legend) == 5
    lines = {lab.split(",")[0]: line for lab, line in _lines_by_label(ax_c).items()}
    geo, svd = lines["GeoLoRA"], lines["SVDLoRA"]
    assert same_color(geo.get_color(), FAMILY_COLORS["GeoLoRA"])
    assert same_color(svd.get_color(), FAMILY_COLORS["SVDLoRA"])
    assert geo.get_linestyle() == "--" and geo.get_zorder() > svd.get_zorder()
    assert geo.get_linewidth() < svd.get_linewidth()  # the wide line shows under the dashes
    assert ax_c.child_axes  # the GeoLoRA / SVDLoRA loss-ratio inset
    assert _integer_ticks(ax_d.yaxis) and ax_d.get_ylim()[0] == 0


def test_figure_rank_adaptivity_metrics():
    from analysis.figures.geolora import geolora_rank_adaptivity

    res = geolora_rank_adaptivity(fast=True)
    m, s = res.metrics, res.series
    # default τ: over-estimated ranks shrink, but from below the rank stays too small
    # (a finding reported in the figure notes, see the README)
    assert m["geolora_never_above_target"]
    assert not m["geolora_recovers_from_below"]
    assert m["geolora_small_tau_recovers_all"]
    assert m["geolora_small_tau_max_rel_error"] < 1e-3
    # fixed-rank methods keep their rank, and below the target cannot beat Eckart–Young
    assert s["svdlora_final_rank"] == list(s["ranks0"])
    assert m["fixed_rank_min_excess_over_floor_under"] >= -1e-9
    # drawing: rank axes in integers, one legend naming every method, family colours
    from matplotlib.colors import same_color

    from analysis.style import FAMILY_COLORS, figure_title

    fig = res.fig
    assert figure_title(fig).startswith("Rank adaptivity")
    ax_a, ax_b, ax_c = fig.axes
    assert all(_integer_ticks(a) for a in (ax_a.xaxis, ax_a.yaxis, ax_b.xaxis, ax_c.yaxis))
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    for name in ("GeoLoRA (τ = 0.15)", "GeoLoRA (τ = 0.02)", "SVDLoRA (fixed rank)",
                 "PSI-LoRA ×1 (fixed rank)", "target rank 5"):
        assert name in labels
    lines = _lines_by_label(ax_a)
    assert same_color(lines["GeoLoRA (τ = 0.15)"].get_color(), FAMILY_COLORS["GeoLoRA"])
    assert same_color(lines["SVDLoRA (fixed rank)"].get_color(), FAMILY_COLORS["SVDLoRA"])
    assert [t.get_text() for t in ax_c.get_legend().get_texts()] == [
        f"r0 = {r0}" for r0 in s["ranks0"]]
    import matplotlib.pyplot as plt

    plt.close(res.fig)

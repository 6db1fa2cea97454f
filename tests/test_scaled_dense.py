"""Scaled PSI-LoRA options of issue 18 (SPEC §7): dense metrics and their matrix powers, the
Adam warm-up (``start_precondition_step``), ``beta2_warmup`` and the FISTA / naive momentum
modes, each against its defining formula on small problems."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.linalg as sla
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from lowrank_prox import metrics  # noqa: E402
from lowrank_prox.nn import LoRALinear  # noqa: E402
from lowrank_prox.optim import NonFiniteStepWarning, PSILoRAFISTA, RPLoRA  # noqa: E402
from lowrank_prox.optim._scaled_options import beta2_at, beta2_decay  # noqa: E402
from lowrank_prox.optim.scaled import ScaledPSILoRA  # noqa: E402

F64 = torch.float64


def _spd(k, cond, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return (Q * np.logspace(0, -np.log10(cond), k)) @ Q.T


def _layer(n=6, m=4, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = LoRALinear(n, m, r, generator=g, dtype=F64)
    with torch.no_grad():
        layer.set_factors(torch.randn(m, r, generator=g, dtype=F64) * 0.5,
                          torch.randn(n, r, generator=g, dtype=F64) * 0.5)
    return layer


def _data(N=8, n=6, m=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, n, generator=g, dtype=F64), torch.randn(N, m, generator=g, dtype=F64))


def _loss_step(model, opt, x, t):
    opt.zero_grad()
    loss = 0.5 * ((model(x) - t) ** 2).sum(1).mean()
    loss.backward()
    opt.step()


def _factors(layer):
    return layer.lora_B.detach().numpy().copy(), layer.lora_A.detach().numpy().T.copy()


# -- the matrix power (core, array API) ----------------------------------------------------


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6])
@pytest.mark.parametrize("power", [0.25, 0.5, 0.7, 1.0])
def test_matrix_power_matches_scipy(xp, cond, power):
    """eigh: P = (S + εI)^p and P⁻¹ against scipy's fractional_matrix_power, incl. κ = 1e6."""
    S, eps = _spd(6, cond), 1e-8
    ref = sla.fractional_matrix_power(S + eps * np.eye(6), power).real
    ref_inv = sla.fractional_matrix_power(S + eps * np.eye(6), -power).real
    P, P_inv = metrics.matrix_fractional_power(xp.asarray(S), damping=eps, power=power,
                                               return_inverse=True)
    assert P.dtype == xp.dtype
    kappa = cond**power  # condition number of P
    P, P_inv = xp.to_numpy(P), xp.to_numpy(P_inv)
    assert np.abs(P - ref).max() <= xp.tol(kappa, 100) * np.abs(ref).max()
    assert np.abs(P_inv - ref_inv).max() <= xp.tol(kappa**2, 100) * np.abs(ref_inv).max()
    np.testing.assert_allclose(P, P.T, rtol=0, atol=0)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), logcond=st.floats(0.0, 6.0),
       power=st.floats(0.0, 1.0), damping=st.sampled_from([0.0, 1e-8, 1e-3]))
def test_matrix_powers_compose_and_invert(seed, k, logcond, power, damping):
    """P(p)·P(1 − p) = S + εI and P(p)·P(p)⁻¹ = I for SPD S with κ up to 1e6."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    S = (Q * np.logspace(0, -logcond, k)) @ Q.T
    P, P_inv = metrics.matrix_fractional_power(S, damping=damping, power=power,
                                               return_inverse=True)
    P_rest = metrics.matrix_fractional_power(S, damping=damping, power=1.0 - power)
    np.testing.assert_allclose(P @ P_rest, S + damping * np.eye(k), rtol=0, atol=1e-12)
    kappa = 10.0 ** (logcond * power)
    np.testing.assert_allclose(P_inv @ P, np.eye(k), rtol=0, atol=1e-13 * kappa + 1e-14)


@pytest.mark.parametrize("power", [0.25, 0.5])
@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6])
def test_newton_schulz_converges_to_the_eigh_power(cond, power):
    S = _spd(7, cond, seed=3)
    P, P_inv = metrics.matrix_fractional_power(S, damping=0.0, power=power, return_inverse=True)
    Pn, Pn_inv = metrics.matrix_fractional_power(S, damping=0.0, power=power,
                                                 method="newton_schulz", return_inverse=True)
    np.testing.assert_allclose(Pn, P, rtol=0, atol=1e-9 * np.abs(P).max())
    np.testing.assert_allclose(Pn_inv @ P, np.eye(7), rtol=0, atol=1e-7)
    # float32 (κ ≤ 1e4), torch
    if cond <= 1e4:
        P32 = metrics.matrix_fractional_power(torch.tensor(S, dtype=torch.float32), damping=0.0,
                                              power=power, method="newton_schulz")
        assert P32.dtype == torch.float32
        np.testing.assert_allclose(P32.numpy(), P, rtol=0, atol=2e-5 * np.abs(P).max())
    # the authors' 6 iterations have not converged at κ ≥ 1e2 (the default 25 has)
    P6 = metrics.matrix_fractional_power(S, damping=0.0, power=power, method="newton_schulz",
                                         iters=6)
    assert np.abs(P6 - P).max() > 1e-3 * np.abs(P).max()


def test_matrix_power_special_powers_and_clipping():
    S = _spd(5, 1e2)
    np.testing.assert_allclose(metrics.matrix_fractional_power(S, power=0.0), np.eye(5),
                               atol=1e-14)
    np.testing.assert_allclose(metrics.matrix_fractional_power(S, damping=0.1, power=1.0),
                               S + 0.1 * np.eye(5), atol=1e-14)
    # a PSD statistic with a rounding-level negative eigenvalue is clipped, not rooted to NaN
    v = np.ones((5, 1)) / 5**0.5
    S_sing = np.eye(5) - v @ v.T - 1e-15 * (v @ v.T)
    P = metrics.matrix_fractional_power(S_sing, damping=1e-4, power=0.5)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(v.T @ P @ v, [[1e-2]], rtol=1e-6)
    before = S.copy()
    metrics.matrix_fractional_power(S, power=0.5, method="newton_schulz")
    np.testing.assert_array_equal(S, before)  # inputs are not modified


@pytest.mark.parametrize(
    "stat, kwargs, err, match",
    [
        (np.ones((3, 4)), {}, ValueError, "square"),
        (np.triu(np.ones((3, 3))), {}, ValueError, "symmetric"),
        (-np.eye(3), {}, ValueError, "positive definite"),
        (-np.eye(3), {"method": "newton_schulz"}, ValueError, "positive definite"),
        (np.zeros((3, 3)), {"damping": 0.0}, ValueError, "positive definite"),
        (np.eye(3), {"method": "newton_schulz", "power": 0.7}, ValueError, "power"),
        (np.eye(3), {"method": "qr"}, ValueError, "method"),
        (np.eye(3), {"iters": 0}, ValueError, "iters"),
        (np.eye(3), {"damping": -1.0}, ValueError, "damping"),
        (np.eye(3), {"power": 1.5}, ValueError, "power"),
        (np.eye(3), {"return_inverse": "yes"}, TypeError, "return_inverse"),
        (np.eye(3)[0], {}, ValueError, "2-dimensional"),
    ],
)
def test_matrix_power_validation(stat, kwargs, err, match):
    with pytest.raises(err, match=match):
        metrics.matrix_fractional_power(stat, **kwargs)


def test_dense_statistics_against_their_definitions(xp):
    rng = np.random.default_rng(0)
    X, D = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    G = D.T @ X
    for reduction, s in (("mean", 5.0), ("sum", 1 / 5)):
        A, S = metrics.kfac_dense(xp.asarray(X), xp.asarray(D), reduction=reduction)
        np.testing.assert_allclose(xp.to_numpy(A), X.T @ X / 5, atol=xp.tol(10))
        np.testing.assert_allclose(xp.to_numpy(S), s * D.T @ D, atol=xp.tol(10))
        A, S = metrics.dense_statistics(xp.asarray(X), xp.asarray(D), kind="shampoo",
                                        reduction=reduction)
        np.testing.assert_allclose(xp.to_numpy(A), s * G.T @ G, atol=xp.tol(300))
        np.testing.assert_allclose(xp.to_numpy(S), s * G @ G.T, atol=xp.tol(300))
        a, g = metrics.shampoo_diagonal(xp.asarray(X), xp.asarray(D), reduction=reduction)
        np.testing.assert_allclose(np.diag(xp.to_numpy(A)), xp.to_numpy(a), atol=xp.tol(300))
        np.testing.assert_allclose(np.diag(xp.to_numpy(S)), xp.to_numpy(g), atol=xp.tol(300))


@pytest.mark.parametrize("power", [0.25, 0.5, 1.0])
def test_lowrank_power_is_the_power_of_the_psd_part_plus_shift(xp, power):
    """P = (K₊ + (c + ε)I)^p with K₊ the PSD part of (UVᵀ + VUᵀ)/2, against scipy."""
    rng = np.random.default_rng(2)
    U = rng.standard_normal((7, 2))
    V = U * np.array([1.0, 3.0]) + 0.3 * rng.standard_normal((7, 2))  # K_s is indefinite
    w, Q = np.linalg.eigh((U @ V.T + V @ U.T) / 2)
    assert w.min() < -1e-3
    K_psd = (Q * np.maximum(w, 0)) @ Q.T
    ref = sla.fractional_matrix_power(K_psd + 0.3 * np.eye(7), power).real
    P, P_inv = metrics.lowrank_fractional_power(xp.asarray(U), xp.asarray(V), shift=0.2,
                                                damping=0.1, power=power, return_inverse=True)
    np.testing.assert_allclose(xp.to_numpy(P), ref, rtol=0, atol=xp.tol(np.abs(ref).max()))
    np.testing.assert_allclose(xp.to_numpy(P_inv) @ ref, np.eye(7), rtol=0, atol=xp.tol(100))
    with pytest.raises(ValueError, match="shift \\+ damping"):
        metrics.lowrank_fractional_power(U, V, damping=0.0)
    with pytest.raises(ValueError, match="V must have shape"):
        metrics.lowrank_fractional_power(U, V[:, :1])


def test_ema_update_of_matrices():
    A, B = np.eye(2), np.ones((2, 2))
    np.testing.assert_allclose(metrics.ema_update(A, B, 0.75), 0.75 * A + 0.25 * B)
    with pytest.raises(ValueError, match="value must have shape"):
        metrics.ema_update(A, np.ones((3, 3)), 0.5)


# -- the optimizer: dense metrics ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kfac", "shampoo"])
def test_dense_metric_steps_match_the_dense_formula(kind):
    """β1 = 0, K = 1, bias correction: T = UVᵀ − ηP_out⁻¹GP_in⁻¹ with P = (Ŝ + εI)^p dense."""
    layer = _layer()
    x, t = _data()
    lr, ridge, b2, eps, p = 0.3, 1e-2, 0.9, 1e-3, 0.5
    opt = ScaledPSILoRA(layer, lr=lr, ridge=ridge, betas=(0.0, b2), damping=eps, metric=kind,
                        power=p, metric_type="dense", balance="none")
    U, V = _factors(layer)
    W0, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    A, S = np.zeros((6, 6)), np.zeros((4, 4))
    lam, I2 = lr * ridge, np.eye(2)
    for step in range(1, 4):
        xs, ts = (x + 0.1 * step).numpy(), (t - 0.1 * step).numpy()
        N = xs.shape[0]
        D = (xs @ W0.T + b + xs @ V @ U.T - ts) / N
        G = D.T @ xs
        A_b, S_b = (xs.T @ xs / N, N * D.T @ D) if kind == "kfac" else (N * G.T @ G, N * G @ G.T)
        A, S = b2 * A + (1 - b2) * A_b, b2 * S + (1 - b2) * S_b
        c = 1 - b2**step
        Pi = sla.fractional_matrix_power(A / c + eps * np.eye(6), p).real
        Po = sla.fractional_matrix_power(S / c + eps * np.eye(4), p).real
        T = U @ V.T - lr * np.linalg.solve(Po, G) @ np.linalg.inv(Pi)
        Ua, Va = U, V
        V = (T.T @ Po @ U + lam * Va) @ np.linalg.inv(U.T @ Po @ U + lam * I2)
        U = (T @ Pi @ V + lam * Ua) @ np.linalg.inv(V.T @ Pi @ V + lam * I2)
        _loss_step(layer, opt, x + 0.1 * step, t - 0.1 * step)
        Ug, Vg = _factors(layer)
        np.testing.assert_allclose(Ug, U, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(Vg, V, rtol=1e-9, atol=1e-11)
        state = opt.state[layer.lora_B]
        np.testing.assert_allclose(state["metric_in"].numpy(), A, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state["metric_out"].numpy(), S, rtol=1e-12, atol=1e-14)
    P_in, P_out = opt.preconditioners(opt.layers[0])
    np.testing.assert_allclose(P_in.numpy(), Pi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(P_out.numpy(), Po, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["kfac", "shampoo"])
@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_dense_equals_diagonal_when_the_statistics_are_diagonal(kind, method):
    """Inputs and output gradients with orthogonal columns make XᵀX, ΔᵀΔ (and GᵀG, GGᵀ)
    diagonal: the dense metric is then the diagonal one, momentum and all."""
    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.standard_normal((9, 6)))
    x = torch.tensor(Q * np.array([3.0, 2.0, 1.5, 1.0, 0.7, 0.4]))
    C = torch.tensor(Q[:, :4] * np.array([0.5, 0.2, 0.1, 0.05]))  # Δ of the loss ⟨y, C⟩
    layers = [_layer(), _layer()]
    opts = [ScaledPSILoRA(la, lr=0.2, damping=1e-3, metric=kind, metric_type=mt, seed=0,
                          matrix_power_method=method, balance="both")
            for la, mt in zip(layers, ["diagonal", "dense"], strict=True)]
    for step in range(3):
        for la, opt in zip(layers, opts, strict=True):
            opt.zero_grad()
            (la(x * (1 + 0.2 * step)) * C).sum().backward()
            opt.step()
    tol = 1e-10 if method == "eigh" else 1e-8
    for a, b in zip(_factors(layers[0]), _factors(layers[1]), strict=True):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    assert not np.allclose(_factors(layers[0])[0], _factors(_layer())[0])  # it moved


@pytest.mark.parametrize("bias_correction", [True, False])
def test_full_rank_lowrank_metric_equals_the_dense_metric(bias_correction):
    """metric_rank = n and λ = 0: the LoRSum EMA of the (full-rank) K-FAC statistics is exact,
    so the low-rank metric (with the EMA's decayed start c·I without the correction) is the
    dense one, momentum and all.  (Shampoo's GᵀG has rank ≤ min(m, n) < n here: a rank-
    deficient iterate cannot grow back at λ = 0, so the EMA is not exact for it.)"""
    kind = "kfac"
    x, t = _data()
    layers = [_layer(), _layer()]
    opts = [ScaledPSILoRA(la, lr=0.2, ridge=0.0, min_ridge=0.0, damping=1e-3, metric=kind,
                          metric_type=mt, metric_rank=6, bias_correction=bias_correction,
                          seed=0)
            for la, mt in zip(layers, ["dense", "lowrank"], strict=True)]
    opts[1].state[layers[1].lora_B]["momentum_V"] = opts[0].state[layers[0].lora_B][
        "momentum_V"].clone()  # the low-rank metric's sketches used the generator first
    for step in range(3):
        for la, opt in zip(layers, opts, strict=True):
            _loss_step(la, opt, x * (1 + 0.3 * step), t)
    for a, b in zip(_factors(layers[0]), _factors(layers[1]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)
    for P, Q in zip(opts[0].preconditioners(opts[0].layers[0]),
                    opts[1].preconditioners(opts[1].layers[0]), strict=True):
        np.testing.assert_allclose(Q.numpy(), P.numpy(), rtol=1e-8, atol=1e-10)
    state = opts[1].state[layers[1].lora_B]
    assert tuple(state["metric_in_U"].shape) == (6, 6)
    assert tuple(state["metric_out_U"].shape) == (4, 4)  # capped at the side's size


def test_lowrank_metric_of_rank_one_is_low_rank_plus_identity():
    """rank k: P − τ^p I has rank ≤ 2k (the symmetric part of a rank-k K), and it moves."""
    layer = _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=0.2, metric_type="lowrank", metric_rank=1, damping=1e-2,
                        seed=0)
    for step in range(3):
        _loss_step(layer, opt, x * (1 + step), t)
    P_in, _ = opt.preconditioners(opt.layers[0])
    rest = P_in.numpy() - 1e-2**0.5 * np.eye(6)
    s = np.linalg.svd(rest, compute_uv=False)
    assert s[0] > 0.1 and s[2] < 1e-12 * s[0]


# -- warm-ups -----------------------------------------------------------------------------


def test_start_precondition_step_is_adam_then_preconditioned():
    """Steps t < S are torch.optim.Adam on lora_A, lora_B (betas (β1, β2), eps 1e-8, lr);
    the metric EMA is updated meanwhile, the momentum is not; step S is preconditioned."""
    S, lr, betas = 3, 0.05, (0.8, 0.95)
    layer, twin = _layer(), _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=lr, betas=betas, seed=0, start_precondition_step=S)
    adam = torch.optim.Adam([twin.lora_A, twin.lora_B], lr=lr, betas=betas, eps=1e-8)
    M0 = opt.state[layer.lora_B]["momentum_U"].clone()
    a = torch.zeros(6, dtype=F64)
    for step in range(1, S):
        xs = x + 0.1 * step
        _loss_step(layer, opt, xs, t)
        _loss_step(twin, adam, xs, t)
        torch.testing.assert_close(layer.lora_A, twin.lora_A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(layer.lora_B, twin.lora_B, rtol=1e-12, atol=1e-14)
        a = betas[1] * a + (1 - betas[1]) * (xs * xs).mean(0)
        state = opt.state[layer.lora_B]
        torch.testing.assert_close(state["metric_in"], a, rtol=1e-13, atol=0)
        assert torch.equal(state["momentum_U"], M0) and state["adam_step"] == step
    # step S: the Scaled PSI-LoRA step from the warmed-up metric; Adam's moments are dropped
    ref = ScaledPSILoRA(_layer(), lr=lr, betas=betas, seed=0)
    ref.load_state_dict(opt.state_dict())
    ref_layer = ref.layers[0]
    ref_layer.write(*opt.layers[0].factors())
    ref.state[ref_layer.B] = {k: v for k, v in ref.state[ref_layer.B].items()
                              if not k.startswith("adam_")}
    _loss_step(layer, opt, x + 0.1 * S, t)
    _loss_step(ref_layer.module, ref, x + 0.1 * S, t)
    assert not any(k.startswith("adam_") for k in opt.state[layer.lora_B])
    torch.testing.assert_close(layer.lora_B, ref_layer.B, rtol=0, atol=0)
    assert not torch.equal(opt.state[layer.lora_B]["momentum_U"], M0)


@given(beta2=st.floats(0.0, 0.999), step=st.integers(1, 3000))
def test_beta2_decay_is_the_product_of_the_warmup_factors(beta2, step):
    prod = 1.0
    for s in range(1, step + 1):
        prod *= beta2_at(s, beta2, True)
        assert beta2_at(s, beta2, True) <= beta2
    assert beta2_decay(step, beta2, True) == pytest.approx(prod, rel=1e-9, abs=1e-300)
    assert beta2_decay(step, beta2, False) == beta2**step


@pytest.mark.parametrize("bias_correction", [False, True])
def test_beta2_warmup_makes_the_metric_a_running_mean(bias_correction):
    """β2_t = min(β2, 1 − 1/(t+1)): for t < β2/(1−β2) the EMA is the mean of the batch
    statistics (started at 1, counted as one sample, without the correction)."""
    layer = _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=0.1, betas=(0.9, 0.99), beta2_warmup=True, seed=0,
                        bias_correction=bias_correction)
    total = torch.zeros(6, dtype=F64)
    for step in range(1, 5):
        xs = x * (1 + 0.3 * step)
        _loss_step(layer, opt, xs, t)
        total += (xs * xs).mean(0)
        state = opt.state[layer.lora_B]
        if bias_correction:
            a_hat, _ = opt._corrected(state["metric_in"], state["metric_out"], step,
                                      opt.param_groups[0])
            torch.testing.assert_close(a_hat, total / step, rtol=1e-12, atol=0)
        else:
            torch.testing.assert_close(state["metric_in"], (1 + total) / (step + 1),
                                       rtol=1e-12, atol=0)


# -- momentum modes -----------------------------------------------------------------------


@pytest.mark.parametrize("K", [0, 1, 2])
def test_fista_mode_with_identity_metric_is_psilora_fista(K):
    """power 0 (P = I) and λ = η·λ0: momentum_mode='fista' is PSILoRAFISTA with μ = β1."""
    x, t = _data()
    la, lb = _layer(), _layer()
    oa = ScaledPSILoRA(la, lr=0.3, iters=K, ridge=1e-2, betas=(0.7, 0.9), power=0.0,
                       min_ridge=0.0, momentum_mode="fista", balance="none")
    ob = PSILoRAFISTA(lb, 0.3, iters=K, ridge=1e-2, momentum=0.7)
    for step in range(3):
        _loss_step(la, oa, x * (1 + step), t)
        _loss_step(lb, ob, x * (1 + step), t)
        torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=1e-13, atol=1e-15)
    assert "momentum_U" not in oa.state[la.lora_B]


def test_fista_mode_is_projected_extrapolation_at_convergence():
    """K large, λ = 0: x₁ = Π_r(y₀ − ηP_out⁻¹GP_in⁻¹) in the metric, y₁ = Π_r((1+μ)x₁ − μx₀)."""
    layer = _layer()
    x, t = _data()
    mu, lr = 0.5, 0.2
    opt = ScaledPSILoRA(layer, lr=lr, iters=200, ridge=0.0, min_ridge=0.0, betas=(mu, 0.9),
                        momentum_mode="fista", balance="none")
    U, V = _factors(layer)
    W0, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    xs, ts = x.numpy(), t.numpy()
    _loss_step(layer, opt, x, t)
    P_in, P_out = (p.numpy() for p in opt.preconditioners(opt.layers[0]))
    G = ((xs @ W0.T + b + xs @ V @ U.T - ts) / 8).T @ xs
    T = U @ V.T - lr * G / P_out[:, None] / P_in[None, :]
    # metric-best rank-2 approximation: SVD in the whitened coordinates
    w_in, w_out = np.sqrt(P_in), np.sqrt(P_out)
    Uw, s, Vh = np.linalg.svd(w_out[:, None] * T * w_in[None, :])
    X1 = (Uw[:, :2] * s[:2]) @ Vh[:2] / w_out[:, None] / w_in[None, :]
    E = (1 + mu) * X1 - mu * U @ V.T
    Ue, se, Vhe = np.linalg.svd(E)
    Y1 = (Ue[:, :2] * se[:2]) @ Vhe[:2]
    Ug, Vg = _factors(layer)
    np.testing.assert_allclose(Ug @ Vg.T, Y1, rtol=0, atol=1e-9)
    Up, Vp = (opt.state[layer.lora_B][k].numpy() for k in ("prev_U", "prev_V"))
    np.testing.assert_allclose(Up @ Vp.T, X1, rtol=0, atol=1e-9)


def test_naive_mode_jacobi_identity_metric_is_rplora_with_heavy_ball():
    """iters 0, power 0: D_U = GV(VᵀV+λI)⁻¹, D_V = GᵀU(UᵀU+λI)⁻¹ and B ← β1B + D, W ← W − ηB:
    RPLoRA with SGD momentum β1 (dampening 0) at ridge λ = max(η·λ0, min_ridge)."""
    x, t = _data()
    la, lb = _layer(), _layer()
    lr, ridge, mu = 0.2, 1e-2, 0.8
    oa = ScaledPSILoRA(la, lr=lr, iters=0, ridge=ridge, betas=(mu, 0.9), power=0.0,
                       momentum_mode="naive", balance="none")
    ob = RPLoRA(lb, lr, ridge=max(lr * ridge, 1e-5), momentum=mu)
    for step in range(4):
        _loss_step(la, oa, x * (1 + 0.2 * step), t)
        _loss_step(lb, ob, x * (1 + 0.2 * step), t)
        torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=1e-10, atol=1e-12)
    assert set(oa.state[la.lora_B]) >= {"buffer_U", "buffer_V"}


def test_naive_mode_without_momentum_is_the_plain_scaled_step():
    x, t = _data()
    la, lb = _layer(), _layer()
    oa = ScaledPSILoRA(la, lr=0.2, betas=(0.0, 0.9), momentum_mode="naive", balance="none")
    ob = ScaledPSILoRA(lb, lr=0.2, betas=(0.0, 0.9), balance="none")
    for step in range(2):
        _loss_step(la, oa, x * (1 + step), t)
        _loss_step(lb, ob, x * (1 + step), t)
    torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=1e-12, atol=1e-14)


# -- resume, NaN skip, validation ---------------------------------------------------------

OPTIONS = [
    {"metric_type": "dense", "metric": "shampoo"},
    {"metric_type": "dense", "matrix_power_method": "newton_schulz", "power": 0.25},
    {"start_precondition_step": 3},
    {"beta2_warmup": True, "bias_correction": False},
    {"momentum_mode": "fista", "metric_type": "dense"},
    {"momentum_mode": "naive"},
    {"metric_type": "lowrank", "metric_rank": 2, "metric": "shampoo", "power": 0.25},
    {"metric_type": "lowrank", "bias_correction": False, "beta2_warmup": True},
]


@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda k: "-".join(map(str, k.values())))
def test_state_dict_resume_is_bit_identical(kwargs):
    x, t = _data()
    model = torch.nn.Sequential(_layer(), torch.nn.Linear(4, 4, dtype=F64))
    opt = ScaledPSILoRA(model, lr=0.1, seed=3, **kwargs)
    for step in range(2):
        _loss_step(model, opt, x + step, t)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for step in range(2, 5):  # across the warm-up's end for start_precondition_step=3
        _loss_step(model, opt, x + step, t)
    model2 = torch.nn.Sequential(_layer(seed=5), torch.nn.Linear(4, 4, dtype=F64))
    model2.load_state_dict(saved_model)
    opt2 = ScaledPSILoRA(model2, lr=0.1, seed=9, **kwargs)
    opt2.load_state_dict(saved_opt)
    for step in range(2, 5):
        _loss_step(model2, opt2, x + step, t)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    s1, s2 = opt.state[model[0].lora_B], opt2.state[model2[0].lora_B]
    assert s1.keys() == s2.keys()
    for k, v in s1.items():
        assert torch.equal(v, s2[k]) if isinstance(v, torch.Tensor) else v == s2[k]


@pytest.mark.parametrize("kwargs", OPTIONS, ids=lambda k: "-".join(map(str, k.values())))
def test_nonfinite_gradient_skips_the_step(kwargs):
    layer = _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=0.1, seed=0, **kwargs)
    _loss_step(layer, opt, x, t)
    params = [p.detach().clone() for p in (layer.lora_A, layer.lora_B)]
    state = copy.deepcopy(opt.state[layer.lora_B])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.warns(NonFiniteStepWarning):
        _loss_step(layer, opt, bad, t)
    assert opt.skipped_steps == 1
    assert torch.equal(layer.lora_A, params[0]) and torch.equal(layer.lora_B, params[1])
    assert opt.state[layer.lora_B].keys() == state.keys()
    for k, v in opt.state[layer.lora_B].items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteStepWarning)
        _loss_step(layer, opt, x, t)  # and it recovers
    assert opt.state[layer.lora_B]["step"] == 2


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"metric_type": "sparse"}, ValueError, "metric_type"),
        ({"metric_type": "lowrank", "metric_rank": 0}, ValueError, "metric_rank"),
        ({"matrix_power_method": "svd"}, ValueError, "matrix_power_method"),
        ({"newton_schulz_iters": 0}, ValueError, "newton_schulz_iters"),
        ({"metric_type": "dense", "matrix_power_method": "newton_schulz", "power": 0.3},
         ValueError, "power"),
        ({"start_precondition_step": -1}, ValueError, "start_precondition_step"),
        ({"start_precondition_step": 1.5}, TypeError, "start_precondition_step"),
        ({"beta2_warmup": 1}, TypeError, "beta2_warmup"),
        ({"momentum_mode": "nesterov"}, ValueError, "momentum_mode"),
        ({"momentum_mode": "naive", "balance": "adapter"}, ValueError, "balance"),
    ],
)
def test_bad_options(kwargs, err, match):
    with pytest.raises(err, match=match):
        ScaledPSILoRA(_layer(), **kwargs)

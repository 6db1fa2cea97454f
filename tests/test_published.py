"""The authors' small implementation choices as options, and ``preset="published"`` (issue 18).

Each option is checked against its defining formula, and the presets step by step against small
re-implementations of the authors' updates written here from reference/paper.md (float64): their
Scaled PSI-LoRA (clip on X, no bias correction, no floor on the momentum ridge, 1e-6 jitter),
RPLoRA (autograd factor gradients, decoupled weight decay, Adam's ``√v + ε``), PSI-LoRA with a
PEFT-style scaling that is ignored, and GeoLoRA's reference layer (augmentation capped at
``max_rank``, adapter scaled by ``α/r``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from lowrank_prox import geolora_step  # noqa: E402
from lowrank_prox.nn import GeoLoRALinear, LoRALinear  # noqa: E402
from lowrank_prox.optim import (  # noqa: E402
    GeoLoRA,
    NonFiniteStepWarning,
    ProjPSILoRA,
    PSILoRA,
    PSILoRAFISTA,
    RPLoRA,
    ScaledPSILoRA,
)
from lowrank_prox.optim.baselines import RuleOptimizer  # noqa: E402

F64 = torch.float64
JIT = 1e-6  # the authors' Cholesky jitter


class ScaledLoRA(LoRALinear):
    """``y = x W0ᵀ + b + s·x Aᵀ Bᵀ`` (a PEFT-style ``scaling`` attribute)."""

    def __init__(self, *args, s, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaling = s

    def forward(self, x):
        lora = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scaling * lora


def _layer(n=7, m=5, r=2, seed=0, s=None):
    g = torch.Generator().manual_seed(seed)
    layer = LoRALinear(n, m, r, generator=g, dtype=F64) if s is None else ScaledLoRA(
        n, m, r, s=s, generator=g, dtype=F64)
    with torch.no_grad():
        layer.set_factors(torch.randn(m, r, generator=g, dtype=F64) * 0.5,
                          torch.randn(n, r, generator=g, dtype=F64) * 0.5)
    return layer


def _batches(steps, N=9, n=7, m=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(N, n, generator=g, dtype=F64), torch.randn(N, m, generator=g, dtype=F64))
            for _ in range(steps)]


def _loss(model, x, t):
    return 0.5 * ((model(x) - t) ** 2).sum(1).mean()


def _train(model, opt, batches):
    for x, t in batches:
        opt.zero_grad()
        _loss(model, x, t).backward()
        opt.step()


def _np(t):
    return t.detach().numpy().copy()


def _delta(layer, x, t):
    """``Δ = ∂loss/∂y`` (N × m) of the mean-reduced loss, and the layer's ``G = ΔᵀX``."""
    W = _np(layer.weight) + getattr(layer, "scaling", 1.0) * _np(layer.lora_B) @ _np(layer.lora_A)
    X = _np(x)
    D = (X @ W.T + _np(layer.bias) - _np(t)) / X.shape[0]
    return X, D, D.T @ X


def _als(T, U0, V0, lam, K, Pi=None, Po=None, eps=JIT):
    """LoRSum (scaled when Pi, Po are given) of the target matrix T as the authors' code solves it.

    V-step ``Vᵀ ← (UᵀP_oU + (λ + ε)I)⁻¹(λV0ᵀ + UᵀP_o T)``, U-step
    ``U ← (λU0 + T P_i V)(VᵀP_iV + (λ + ε)I)⁻¹``; K = 0 is the simultaneous (Jacobi) step.
    """
    Pi = np.ones(V0.shape[0]) if Pi is None else Pi
    Po = np.ones(U0.shape[0]) if Po is None else Po
    eye = np.eye(U0.shape[1])

    def v_step(U):
        return np.linalg.solve(U.T @ (Po[:, None] * U) + (lam + eps) * eye,
                               lam * V0.T + U.T @ (Po[:, None] * T)).T

    def u_step(V):
        return np.linalg.solve(V.T @ (Pi[:, None] * V) + (lam + eps) * eye,
                               (lam * U0 + T @ (Pi[:, None] * V)).T).T

    if K == 0:
        return u_step(V0), v_step(U0)
    U, V = U0, V0
    for _ in range(K):
        V = v_step(U)
        U = u_step(V)
    return U, V


def _clip(G_list, c):
    """The authors' clip factor ``min(1, c/(‖G‖ + 1e-6))`` over all layers."""
    norm = sum(float((G * G).sum()) for G in G_list) ** 0.5
    return min(1.0, c / (norm + 1e-6))


# -- preset and validation ---------------------------------------------------------------------

FACTORIES = {
    "PSILoRA": lambda m, **kw: PSILoRA(m, 0.1, momentum=0.5, seed=0, **kw),
    "ProjPSILoRA": lambda m, **kw: ProjPSILoRA(m, 0.1, momentum=0.5, **kw),
    "PSILoRAFISTA": lambda m, **kw: PSILoRAFISTA(m, 0.1, momentum=0.5, **kw),
    "ScaledPSILoRA": lambda m, **kw: ScaledPSILoRA(m, 0.1, seed=0, max_grad_norm=0.05, **kw),
    "RPLoRA": lambda m, **kw: RPLoRA(m, 0.1, momentum=0.5, weight_decay=0.1, **kw),
}

EXPECTED = {
    "PSILoRA": {"balance": "none", "gram_jitter": JIT, "peft_scaling": "ignore"},
    "ProjPSILoRA": {"gram_jitter": JIT, "peft_scaling": "ignore"},
    "PSILoRAFISTA": {"gram_jitter": JIT, "peft_scaling": "ignore"},
    "ScaledPSILoRA": {"balance": "none", "gram_jitter": JIT, "peft_scaling": "ignore",
                      "bias_correction": False, "momentum_min_ridge": 0.0, "clip_side": "input"},
    "RPLoRA": {"gram_jitter": JIT, "peft_scaling": "ignore", "decoupled_weight_decay": True,
               "eps_mode": "raw"},
}
PROJECT = {
    "PSILoRA": {"balance": "momentum", "gram_jitter": 0.0, "peft_scaling": "fold"},
    "ProjPSILoRA": {"gram_jitter": 0.0, "peft_scaling": "fold"},
    "PSILoRAFISTA": {"gram_jitter": 0.0, "peft_scaling": "fold"},
    "ScaledPSILoRA": {"balance": "momentum", "gram_jitter": 0.0, "peft_scaling": "fold",
                      "bias_correction": True, "momentum_min_ridge": 1e-5, "clip_side": "output"},
    "RPLoRA": {"gram_jitter": 0.0, "peft_scaling": "fold", "decoupled_weight_decay": False,
               "eps_mode": "corrected"},
}
#: One non-default value per option, to check that an explicit keyword beats the preset.
OVERRIDE = {"balance": "both", "gram_jitter": 1e-3, "peft_scaling": "fold",
            "bias_correction": True, "momentum_min_ridge": 1e-4, "clip_side": "output",
            "decoupled_weight_decay": False, "eps_mode": "corrected"}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_preset_sets_each_option_and_keywords_win(name):
    group = FACTORIES[name](_layer(), preset="published").param_groups[0]
    assert {k: group[k] for k in EXPECTED[name]} == EXPECTED[name]
    group = FACTORIES[name](_layer()).param_groups[0]
    assert {k: group[k] for k in PROJECT[name]} == PROJECT[name]
    for key in EXPECTED[name]:
        opt = FACTORIES[name](_layer(), preset="published", **{key: OVERRIDE[key]})
        group = opt.param_groups[0]
        assert group[key] == OVERRIDE[key]
        assert all(group[k] == v for k, v in EXPECTED[name].items() if k != key)


def test_preset_sets_the_other_parameters_rule():
    model = nn.Sequential(_layer(), nn.Linear(5, 3, dtype=F64))
    for opt in (ScaledPSILoRA(model, 0.1, preset="published"),
                ScaledPSILoRA(model, 0.1, other_eps_mode="raw")):
        other = opt.other_optimizer
        assert isinstance(other, RuleOptimizer)
        assert other.param_groups[0]["eps_mode"] == "raw"
        assert other.param_groups[0]["optimizer"] == "adamw"
        opt.remove_hooks()
    assert isinstance(ScaledPSILoRA(model, 0.1).other_optimizer, torch.optim.AdamW)
    assert isinstance(ScaledPSILoRA(model, 0.1, preset="published",
                                    other_eps_mode="corrected").other_optimizer, torch.optim.AdamW)
    rp = RPLoRA(model, 0.1, optimizer="adam", preset="published")
    assert isinstance(rp.other_optimizer, RuleOptimizer)
    assert rp.other_optimizer.param_groups[0]["eps_mode"] == "raw"
    assert isinstance(RPLoRA(model, 0.1).other_optimizer, torch.optim.SGD)
    assert isinstance(RPLoRA(model, 0.1, preset="published", other_rule="sgd").other_optimizer,
                      torch.optim.SGD)


def test_geolora_preset():
    model = GeoLoRALinear(40, 36, 4, dtype=F64)
    assert GeoLoRA(model, 0.1).param_groups[0]["max_rank"] is None
    group = GeoLoRA(model, 0.1, preset="published").param_groups[0]
    assert (group["cap_augmentation"], group["max_rank"]) == (True, 32)
    group = GeoLoRA(model, 0.1, preset="published", max_rank=6, cap_augmentation=False)
    assert (group.param_groups[0]["cap_augmentation"], group.param_groups[0]["max_rank"]) == (
        False, 6)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"preset": "paper"}, ValueError, "preset must be one of None, 'published'; got 'paper'"),
    ({"peft_scaling": "drop"}, ValueError, "peft_scaling must be one of 'fold', 'ignore'"),
    ({"clip_side": "both"}, ValueError, "clip_side must be one of 'output', 'input'"),
    ({"other_eps_mode": "inside"}, ValueError, "other_eps_mode must be one of"),
    ({"momentum_min_ridge": -1.0}, ValueError, "momentum_min_ridge"),
    ({"bias_correction": "no"}, TypeError, "bias_correction"),
])
def test_scaled_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ScaledPSILoRA(_layer(), 0.1, **kwargs)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"preset": "paper"}, ValueError, "preset must be one of"),
    ({"eps_mode": "torch"}, ValueError, "eps_mode must be one of 'corrected', 'raw'"),
    ({"decoupled_weight_decay": 1}, TypeError, "decoupled_weight_decay must be True or False"),
    ({"other_rule": "adam"}, ValueError, "other_rule must be one of 'sgd', 'same'"),
    ({"gram_jitter": -1e-6}, ValueError, "gram_jitter"),
])
def test_rplora_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RPLoRA(_layer(), 0.1, **kwargs)


def test_other_validation():
    with pytest.raises(ValueError, match="preset must be one of"):
        PSILoRA(_layer(), 0.1, preset=True)
    with pytest.raises(ValueError, match="gram_jitter"):
        ProjPSILoRA(_layer(), 0.1, gram_jitter=-1.0)
    with pytest.raises(TypeError, match="cap_augmentation must be True or False"):
        GeoLoRA(GeoLoRALinear(6, 5, 2), 0.1, cap_augmentation="yes")
    with pytest.raises(ValueError, match="preset must be one of"):
        GeoLoRA(GeoLoRALinear(6, 5, 2), 0.1, preset="authors")
    with pytest.raises(ValueError, match="alpha"):
        GeoLoRALinear(6, 5, 2, alpha=0.0)
    with pytest.raises(ValueError, match="max_augmented_rank"):
        geolora_step(torch.eye(5, 2, dtype=F64), torch.eye(2, dtype=F64),
                     torch.eye(6, 2, dtype=F64), torch.zeros(5, 6, dtype=F64), 0.1, tau=0.1,
                     max_augmented_rank=0)
    # a scaled layer needs peft_scaling="ignore"
    with pytest.raises(ValueError, match="peft_scaling='ignore'"):
        PSILoRA(_layer(s=2.0), 0.1)


# -- each option against its formula ---------------------------------------------------------


def test_rule_optimizer_adam_eps_placement_and_decoupled_decay():
    """``raw``: W − η√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + ε).

    ``corrected``: W − η/(1−β1ᵗ)·m/(√(v/(1−β2ᵗ)) + ε); decoupled decay W ← (1 − ηδ)W first.
    """
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(4, 3, generator=g, dtype=F64)
    grads = [torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3)]
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.99), 1e-2, 0.05
    for mode in ("raw", "corrected"):
        p = nn.Parameter(w0.clone())
        opt = RuleOptimizer([p], lr=lr, optimizer="adam", betas=(b1, b2), eps=eps,
                            weight_decay=wd, decoupled_weight_decay=True, eps_mode=mode)
        W, m, v = _np(w0), 0.0, 0.0
        for t, gr in enumerate(grads, 1):
            p.grad = gr.clone()
            opt.step()
            G = _np(gr)
            m, v = b1 * m + (1 - b1) * G, b2 * v + (1 - b2) * G * G
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            W = W * (1 - lr * wd)
            if mode == "raw":
                W = W - lr * np.sqrt(bc2) / bc1 * m / (np.sqrt(v) + eps)
            else:
                W = W - lr / bc1 * m / (np.sqrt(v / bc2) + eps)
            np.testing.assert_allclose(_np(p), W, rtol=1e-13, atol=1e-15)
        if mode == "raw":
            raw = _np(p)
    assert np.abs(raw - _np(p)).max() > 1e-4  # the two placements differ at this ε


def test_rule_optimizer_sgd_decoupled_vs_l2():
    """Decoupled: W ← (1 − ηδ)W − η·buf with buf from g; L2: buf from g + δW (torch.optim.SGD)."""
    w0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3)
    grads = [torch.full((2, 3), 0.3, dtype=F64), torch.linspace(0, 1, 6, dtype=F64).reshape(2, 3)]
    lr, mu, wd = 0.2, 0.9, 0.1
    p = nn.Parameter(w0.clone())
    opt = RuleOptimizer([p], lr=lr, momentum=mu, weight_decay=wd, decoupled_weight_decay=True)
    q = nn.Parameter(w0.clone())
    ref = torch.optim.SGD([q], lr=lr, momentum=mu, weight_decay=wd)
    W, buf = _np(w0), None
    for gr in grads:
        p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
        buf = _np(gr) if buf is None else mu * buf + _np(gr)
        W = (1 - lr * wd) * W - lr * buf
        np.testing.assert_allclose(_np(p), W, rtol=1e-14)
    L2 = RuleOptimizer([r := nn.Parameter(w0.clone())], lr=lr, momentum=mu, weight_decay=wd)
    for gr in grads:
        r.grad = gr.clone()
        L2.step()
    torch.testing.assert_close(r.detach(), q.detach(), rtol=1e-14, atol=1e-15)
    assert float((p - q).detach().abs().max()) > 1e-3


def test_scaled_clip_side_statistics():
    """With clipping factor c: "input" gives a ← c²·mean(x²), g unchanged; "output" the reverse."""
    b2 = 0.9
    for side in ("input", "output"):
        layer = _layer()
        x, t = _batches(1)[0]
        X, D, G = _delta(layer, x, t)
        c = _clip([G], 0.05)
        assert c < 0.5  # clipping is active
        opt = ScaledPSILoRA(layer, 0.1, betas=(0.9, b2), bias_correction=False, clip_side=side,
                            max_grad_norm=0.05, seed=0)
        _train(layer, opt, [(x, t)])
        st = opt.state[layer.lora_B]
        cx, cd = (c, 1.0) if side == "input" else (1.0, c)
        a = b2 + (1 - b2) * np.mean((cx * X) ** 2, 0)
        g = b2 + (1 - b2) * X.shape[0] * np.sum((cd * D) ** 2, 0)
        np.testing.assert_allclose(_np(st["metric_in"]), a, rtol=1e-13)
        np.testing.assert_allclose(_np(st["metric_out"]), g, rtol=1e-13)


def test_scaled_clip_side_same_for_shampoo():
    """Shampoo statistics are quadratic in G = c·ΔᵀX, so both sides give the same metric."""
    out = []
    for side in ("input", "output"):
        layer = _layer()
        opt = ScaledPSILoRA(layer, 0.1, metric="shampoo", clip_side=side, max_grad_norm=0.05,
                            seed=0)
        _train(layer, opt, _batches(2))
        out.append([_np(opt.state[layer.lora_B][k]) for k in ("metric_in", "metric_out")])
    for u, v in zip(*out, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12)


def test_scaled_momentum_min_ridge():
    """The momentum call's λ is max(η·λ0, momentum_min_ridge): 1e-6 (authors) vs 1e-5 (floor)."""
    lr, lam0, b1 = 1e-4, 1e-2, 0.9  # η·λ0 = 1e-6 < the floor 1e-5
    for floor in (0.0, None):
        layer = _layer()
        x, t = _batches(1)[0]
        X, D, G = _delta(layer, x, t)
        opt = ScaledPSILoRA(layer, lr, ridge=lam0, betas=(b1, 0.99), momentum_min_ridge=floor,
                            balance="none", seed=0)
        MU, MV = (_np(opt.state[layer.lora_B][k]) for k in ("momentum_U", "momentum_V"))
        _train(layer, opt, [(x, t)])
        lam = 1e-5 if floor is None else lr * lam0
        ref = _als(b1 * MU @ MV.T + (1 - b1) * G, MU, MV, lam, 1, eps=0.0)
        st = opt.state[layer.lora_B]
        np.testing.assert_allclose(_np(st["momentum_U"]), ref[0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(_np(st["momentum_V"]), ref[1], rtol=1e-10, atol=1e-14)


def test_psilora_peft_scaling_ignore():
    """"ignore": U = B, so (B, Aᵀ) ← LoRSum(BA − ηG) and ΔW = s·BA moves by s times the step."""
    s, lr, lam0 = 2.0, 0.1, 1e-2
    layer = _layer(s=s)
    x, t = _batches(1)[0]
    _, _, G = _delta(layer, x, t)
    B, A = _np(layer.lora_B), _np(layer.lora_A)
    _train(layer, PSILoRA(layer, lr, ridge=lam0, peft_scaling="ignore"), [(x, t)])
    U, V = _als(B @ A - lr * G, B, A.T, lr * lam0, 1, eps=0.0)
    np.testing.assert_allclose(_np(layer.lora_B), U, rtol=1e-12)
    np.testing.assert_allclose(_np(layer.lora_A), V.T, rtol=1e-12)


class FakePeftLinear(nn.Module):
    """What identifies a PEFT ``lora.Linear`` (see ``_peft``), with ``y = base(x) + s·BAx``."""

    def __init__(self, n, m, r, s, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.base_layer = nn.Linear(n, m, dtype=F64).requires_grad_(False)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(n, r, bias=False, dtype=F64)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, m, bias=False, dtype=F64)})
        with torch.no_grad():
            self.lora_A["default"].weight.copy_(torch.randn(r, n, generator=g, dtype=F64))
            self.lora_B["default"].weight.copy_(torch.randn(m, r, generator=g, dtype=F64))
        self.scaling = {"default": s}
        self.active_adapters = ["default"]

    def forward(self, x):
        return self.base_layer(x) + self.scaling["default"] * self.lora_B["default"](
            self.lora_A["default"](x))


@pytest.mark.parametrize("mode", ["fold", "ignore"])
def test_peft_layer_scaling_modes(mode):
    """PEFT layer, s = 2: "fold" steps U = s·B (then B = U/s), "ignore" steps U = B."""
    s, lr, lam0 = 2.0, 0.1, 1e-2
    layer = FakePeftLinear(7, 5, 2, s)
    x, t = _batches(1)[0]
    B, A = _np(layer.lora_B["default"].weight), _np(layer.lora_A["default"].weight)
    W = _np(layer.base_layer.weight) + s * B @ A
    D = (_np(x) @ W.T + _np(layer.base_layer.bias) - _np(t)) / x.shape[0]
    G = D.T @ _np(x)
    _train(layer, PSILoRA(layer, lr, ridge=lam0, peft_scaling=mode), [(x, t)])
    f = s if mode == "fold" else 1.0
    U, V = _als(f * B @ A - lr * G, f * B, A.T, lr * lam0, 1, eps=0.0)
    np.testing.assert_allclose(_np(layer.lora_B["default"].weight), U / f, rtol=1e-12)
    np.testing.assert_allclose(_np(layer.lora_A["default"].weight), V.T, rtol=1e-12)


def test_rplora_gram_jitter_formula():
    """``g_U = G V (VᵀV + (λ + ε)I)⁻¹``, ``g_V = GᵀU (UᵀU + (λ + ε)I)⁻¹``, then SGD."""
    lr, lam, eps = 0.1, 1e-3, 1e-2
    layer = _layer()
    x, t = _batches(1)[0]
    _, _, G = _delta(layer, x, t)
    U, V = _np(layer.lora_B), _np(layer.lora_A).T
    _train(layer, RPLoRA(layer, lr, ridge=lam, gram_jitter=eps), [(x, t)])
    I = np.eye(2)
    np.testing.assert_allclose(_np(layer.lora_B),
                               U - lr * G @ V @ np.linalg.inv(V.T @ V + (lam + eps) * I),
                               rtol=1e-13)
    np.testing.assert_allclose(_np(layer.lora_A).T,
                               V - lr * G.T @ U @ np.linalg.inv(U.T @ U + (lam + eps) * I),
                               rtol=1e-13)


def test_geolora_capped_augmentation_formula():
    """Capped: the augmented bases keep k = ``max_augmented_rank`` columns before the SVD."""
    g = np.random.default_rng(4)
    m, n, r, k, lr = 9, 8, 3, 4, 0.3
    U = np.linalg.qr(g.standard_normal((m, r)))[0]
    V = np.linalg.qr(g.standard_normal((n, r)))[0]
    S = np.diag([2.0, 1.0, 0.5])
    G = g.standard_normal((m, n))
    # the authors' layer: QR of [U, GV], keep the first k − r new columns, 2×2 block matrix
    Q1 = np.linalg.qr(np.hstack([U, G @ V]))[0][:, r:k]
    Q2 = np.linalg.qr(np.hstack([V, G.T @ U]))[0][:, r:k]
    M = np.zeros((k, k))
    M[:r, :r] = S - lr * U.T @ G @ V
    M[r:, :r] = Q1.T @ (U @ S - lr * G @ V)
    M[:r, r:] = (V @ S.T - lr * G.T @ U).T @ Q2
    P, d, Qh = np.linalg.svd(M)
    ref = np.hstack([U, Q1]) @ P @ np.diag(d) @ Qh @ np.hstack([V, Q2]).T  # tau = 0: keep all
    T = [torch.from_numpy(a) for a in (U, S, V, G)]
    U1, S1, V1 = geolora_step(*T, lr, tau=0.0, min_rank=1, max_augmented_rank=k)
    assert U1.shape[1] == k
    np.testing.assert_allclose(_np(U1 @ S1 @ V1.mT), ref, rtol=1e-12, atol=1e-13)
    full = geolora_step(*T, lr, tau=0.0, min_rank=1)
    assert full[0].shape[1] == 2 * r
    W_full = _np(full[0] @ full[1] @ full[2].mT)
    assert np.abs(W_full - ref).max() > 1e-3  # capping drops directions: a different step


def test_geolora_linear_alpha_scaling():
    """``y = base + (α/r)·x V Sᵀ Uᵀ``; a rank change r → r' rescales ΔW by r/r'."""
    layer = GeoLoRALinear(6, 5, 4, init="random", init_scale=0.3, alpha=8.0, dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 6, dtype=F64)
    plain = F.linear(x, layer.weight, layer.bias)
    core = (layer.U @ layer.S @ layer.V.mT).detach()
    torch.testing.assert_close(layer(x), plain + 2.0 * x @ core.mT)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * core)
    U, S, V = (p.detach().clone() for p in (layer.U, layer.S, layer.V))
    layer.set_factors(U[:, :2], S[:2, :2], V[:, :2])  # the same S entries at rank 2
    assert layer.scaling == 4.0
    torch.testing.assert_close(layer.delta_weight(),
                               4.0 * (layer.U @ layer.S @ layer.V.mT).detach())
    assert "alpha=8" in repr(layer)
    assert GeoLoRALinear(6, 5, 2).scaling == 1.0


# -- presets step by step against the authors' formulas ----------------------------------------


def test_scaled_published_matches_authors_formula():
    """ScaledPSILoRA(preset="published") = the authors' update, 4 steps, K = 1, with clipping."""
    # λ0 = 1e-5: η·λ0 = 2e-6 is below the floor 1e-5, so the momentum ridge differs from the step's
    lr, lam0, (b1, b2), eps, p, K, clip = 0.2, 1e-5, (0.9, 0.99), 1e-5, 0.5, 1, 0.05
    layer = _layer()
    opt = ScaledPSILoRA(layer, lr, iters=K, ridge=lam0, betas=(b1, b2), damping=eps, power=p,
                        max_grad_norm=clip, seed=0, preset="published")
    st = opt.state[layer.lora_B]
    U, V = _np(layer.lora_B), _np(layer.lora_A).T
    MU, MV = _np(st["momentum_U"]), _np(st["momentum_V"])
    a, g = np.ones(7), np.ones(5)
    for x, t in _batches(4):
        X, D, G = _delta(layer, x, t)
        c = _clip([G], clip)
        Xc, N = c * X, X.shape[0]  # the authors clip the cached inputs
        a = b2 * a + (1 - b2) * np.sum(Xc**2, 0) / N
        g = b2 * g + (1 - b2) * N * np.sum(D**2, 0)
        Pi, Po = (a + eps) ** p, (g + eps) ** p
        Gc = D.T @ Xc
        T = U @ V.T - lr * ((1 - b1) * Gc + b1 * MU @ MV.T) / Po[:, None] / Pi[None, :]
        U, V = _als(T, U, V, max(lr * lam0, 1e-5), K, Pi, Po)
        MU, MV = _als(b1 * MU @ MV.T + (1 - b1) * Gc, MU, MV, lr * lam0, max(K, 1))
        _train(layer, opt, [(x, t)])
        np.testing.assert_allclose(_np(layer.lora_B), U, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(_np(layer.lora_A).T, V, rtol=1e-10, atol=1e-13)
        st = opt.state[layer.lora_B]
        np.testing.assert_allclose(_np(st["momentum_U"]), MU, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(_np(st["metric_in"]), a, rtol=1e-13)
    # the project's default differs (bias correction, clip side, floor, balance): not a no-op
    other = _layer()
    _train(other, ScaledPSILoRA(other, lr, iters=K, ridge=lam0, betas=(b1, b2), damping=eps,
                                power=p, max_grad_norm=clip, seed=0), _batches(4))
    assert float((other.lora_B - layer.lora_B).detach().abs().max()) > 1e-3


def test_scaled_published_k0_momentum_moves():
    """The authors' K = 0 freezes the Scaled momentum at 0; the preset does not copy that."""
    layer = _layer()
    opt = ScaledPSILoRA(layer, 0.2, iters=0, seed=0, preset="published")
    _train(layer, opt, _batches(2))
    assert float(opt.state[layer.lora_B]["momentum_U"].abs().max()) > 1e-3


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_rplora_published_matches_authors_formula(rule):
    """RPLoRA(preset="published") with a scaled layer (s = 2): the authors' autograd-gradient
    update, preconditioned with the jitter, then ``sgd_step_`` / ``adam_step_``, 3 steps."""
    s, lr, lam, mu, wd, betas, eps = 2.0, 0.05, 1e-3, 0.9, 0.1, (0.9, 0.99), 1e-3
    layer = _layer(s=s)
    opt = RPLoRA(layer, lr, ridge=lam, optimizer=rule, momentum=mu, weight_decay=wd,
                 betas=betas, eps=eps, preset="published")
    B, A = _np(layer.lora_B), _np(layer.lora_A)
    state = {"B": {}, "A": {}}
    I = np.eye(2)

    def step(W, g, st, t):
        if rule == "sgd":
            st["buf"] = g.copy() if "buf" not in st else mu * st["buf"] + g
            return W - lr * wd * W - lr * st["buf"]
        st["m"] = betas[0] * st.get("m", 0.0) + (1 - betas[0]) * g
        st["v"] = betas[1] * st.get("v", 0.0) + (1 - betas[1]) * g * g
        size = lr * np.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t)
        return W - lr * wd * W - size * st["m"] / (np.sqrt(st["v"]) + eps)

    for t_, (x, t) in enumerate(_batches(3), 1):
        _, _, G = _delta(layer, x, t)
        gB, gA = s * G @ A.T, s * B.T @ G  # autograd gradients of B and A
        gA = np.linalg.solve(B.T @ B + (lam + JIT) * I, gA)
        gB = np.linalg.solve(A @ A.T + (lam + JIT) * I, gB.T).T
        B, A = step(B, gB, state["B"], t_), step(A, gA, state["A"], t_)
        _train(layer, opt, [(x, t)])
        np.testing.assert_allclose(_np(layer.lora_B), B, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(_np(layer.lora_A), A, rtol=1e-12, atol=1e-14)


def test_psilora_published_matches_authors_formula():
    """PSILoRA(preset="published") on a scaled layer (s = 2): LoRSum of BA − η[(1−d)G + μM]
    in (B, Aᵀ) with the jitter, momentum LoRSum unbalanced, 3 steps, K = 2."""
    s, lr, lam0, mu, K = 2.0, 0.1, 1e-2, 0.5, 2
    layer = _layer(s=s)
    opt = PSILoRA(layer, lr, iters=K, ridge=lam0, momentum=mu, seed=0, preset="published")
    st = opt.state[layer.lora_B]
    U, V = _np(layer.lora_B), _np(layer.lora_A).T
    MU, MV = _np(st["momentum_U"]), _np(st["momentum_V"])
    for x, t in _batches(3):
        _, _, G = _delta(layer, x, t)
        U, V = _als(U @ V.T - lr * (G + mu * MU @ MV.T), U, V, lr * lam0, K)
        MU, MV = _als(mu * MU @ MV.T + G, MU, MV, lr * lam0, K)
        _train(layer, opt, [(x, t)])
        np.testing.assert_allclose(_np(layer.lora_B), U, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(_np(layer.lora_A).T, V, rtol=1e-10, atol=1e-13)


def test_proj_psilora_published_matches_authors_formula():
    """ProjPSILoRA(preset="published"): LoRSum with the jitter, then the preconditioned and
    transported buffers with ``(WᵀW + (λ + ε)I)⁻¹`` (the authors' ``proj_momentum_and_apply``)."""
    lr, lam0, mu, K = 0.1, 1e-2, 0.5, 1
    layer = _layer()
    opt = ProjPSILoRA(layer, lr, iters=K, ridge=lam0, momentum=mu, preset="published")
    U, V = _np(layer.lora_B), _np(layer.lora_A).T
    lam, I, buf, prev = lr * lam0, np.eye(2), None, None
    for x, t in _batches(3):
        _, _, G = _delta(layer, x, t)
        Up, Vp = _als(U @ V.T - lr * G, U, V, lam, K)
        inv_U = np.linalg.inv(Up.T @ Up + (lam + JIT) * I)
        inv_V = np.linalg.inv(Vp.T @ Vp + (lam + JIT) * I)
        gU, gV = G @ Vp @ inv_V, G.T @ Up @ inv_U
        if buf is None:
            buf, U, V = (gU, gV), Up, Vp
        else:
            tU = buf[0] @ prev[1].T @ Vp @ inv_V
            tV = buf[1] @ prev[0].T @ Up @ inv_U
            buf = (mu * tU + gU, mu * tV + gV)
            U, V = Up - lr * mu * tU, Vp - lr * mu * tV
        prev = (Up, Vp)
        _train(layer, opt, [(x, t)])
        np.testing.assert_allclose(_np(layer.lora_B), U, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(_np(layer.lora_A).T, V, rtol=1e-10, atol=1e-13)


def test_fista_published_matches_authors_formula():
    """PSILoRAFISTA(preset="published"): x₊ = LoRSum(y − ηG), y₊ = LoRSum((1+μ)x₊ − μx), both
    with the jitter and warm-started at their first pair (x₀ = the starting adapter)."""
    lr, lam0, mu, K = 0.1, 1e-2, 0.5, 2
    layer = _layer()
    opt = PSILoRAFISTA(layer, lr, iters=K, ridge=lam0, momentum=mu, preset="published")
    U, V = _np(layer.lora_B), _np(layer.lora_A).T
    prev = (U, V)
    for x, t in _batches(3):
        _, _, G = _delta(layer, x, t)
        Ux, Vx = _als(U @ V.T - lr * G, U, V, lr * lam0, K)
        U, V = _als((1 + mu) * Ux @ Vx.T - mu * prev[0] @ prev[1].T, Ux, Vx, lr * lam0, K)
        prev = (Ux, Vx)
        _train(layer, opt, [(x, t)])
        np.testing.assert_allclose(_np(layer.lora_B), U, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(_np(layer.lora_A).T, V, rtol=1e-10, atol=1e-13)


def _authors_geolora(U, S, V, W0, b, x, t, *, lr, tau, alpha, rmax, rmin=2):
    """One step of GeoLoRA's reference layer (augment to min(2r, rmax), then Truncate)."""
    r = U.shape[1]
    s = alpha / r
    N = x.shape[0]
    D = (x @ (W0 + s * U @ S @ V.T).T + b - t) / N
    G = D.T @ x
    gU, gS, gV = s * G @ V @ S.T, s * U.T @ G @ V, s * G.T @ U @ S  # autograd gradients
    Sinv = np.diag(1.0 / np.diag(S))
    GK, GL = gU @ Sinv, gV @ Sinv
    r1 = min(2 * r, rmax)
    Q1 = np.linalg.qr(np.hstack([U, GK]))[0][:, r:r1]
    Q2 = np.linalg.qr(np.hstack([V, GL]))[0][:, r:r1]
    M = np.zeros((r1, r1))
    M[r:, :r] = Q1.T @ (U @ S - lr * GK)
    M[:r, r:] = (V @ S.T - lr * GL).T @ Q2
    M[:r, :r] = S - lr * gS
    P, d, Qh = np.linalg.svd(M)
    k = r1
    for j in range(r1):
        if np.linalg.norm(d[j:]) < tau * np.linalg.norm(d):
            k = j
            break
    k = max(min(k, rmax), rmin)
    return np.hstack([U, Q1]) @ P[:, :k], np.diag(d[:k]), np.hstack([V, Q2]) @ Qh.T[:, :k]


def test_geolora_published_matches_reference_layer():
    """GeoLoRA(preset="published") on GeoLoRALinear(alpha=16) = the reference layer, 4 steps."""
    lr, tau, alpha, rmax = 0.5, 0.02, 16.0, 5
    layer = GeoLoRALinear(8, 7, 3, init="random", init_scale=0.5, alpha=alpha, dtype=F64,
                          generator=torch.Generator().manual_seed(2))
    opt = GeoLoRA(layer, lr, tau=tau, max_rank=rmax, preset="published")
    U, S, V = (_np(p) for p in (layer.U, layer.S, layer.V))
    W0, b = _np(layer.weight), _np(layer.bias)
    ranks = []
    for x, t in _batches(4, N=6, n=8, m=7, seed=5):
        U, S, V = _authors_geolora(U, S, V, W0, b, _np(x), _np(t), lr=lr, tau=tau, alpha=alpha,
                                   rmax=rmax)
        opt.zero_grad()
        _loss(layer, x, t).backward()
        opt.step()
        assert layer.rank == U.shape[1]
        ranks.append(layer.rank)
        np.testing.assert_allclose(_np(layer.delta_weight()), alpha / U.shape[1] * U @ S @ V.T,
                                   rtol=1e-9, atol=1e-12)
    assert ranks[0] > 3  # the rank grew, from a basis augmented to min(2r, max_rank) = 5 columns
    # without the cap the first step augments to 2r = 6 and keeps other directions
    free = GeoLoRALinear(8, 7, 3, init="random", init_scale=0.5, alpha=alpha, dtype=F64,
                         generator=torch.Generator().manual_seed(2))
    opt = GeoLoRA(free, lr, tau=tau, max_rank=rmax, preset="published", cap_augmentation=False)
    x, t = _batches(1, N=6, n=8, m=7, seed=5)[0]
    U1, S1, V1 = _authors_geolora(*(_np(p) for p in (free.U, free.S, free.V)), W0, b, _np(x),
                                  _np(t), lr=lr, tau=tau, alpha=alpha, rmax=rmax)
    opt.zero_grad()
    _loss(free, x, t).backward()
    opt.step()
    gap = np.abs(_np(free.delta_weight()) - alpha / U1.shape[1] * U1 @ S1 @ V1.T).max()
    assert gap > 1e-6


# -- resume and NaN skip with the options on ----------------------------------------------------


def _with_head(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(_layer(s=2.0), nn.Linear(5, 3, dtype=F64))


RESUME = {
    "PSILoRA": lambda m: PSILoRA(m, 0.1, momentum=0.5, seed=0, preset="published"),
    "ProjPSILoRA": lambda m: ProjPSILoRA(m, 0.1, momentum=0.5, preset="published"),
    "PSILoRAFISTA": lambda m: PSILoRAFISTA(m, 0.1, momentum=0.5, preset="published"),
    "ScaledPSILoRA": lambda m: ScaledPSILoRA(m, 0.1, seed=0, max_grad_norm=0.05,
                                             other_weight_decay=0.01, preset="published"),
    "RPLoRA-sgd": lambda m: RPLoRA(m, 0.1, momentum=0.5, weight_decay=0.1, preset="published"),
    "RPLoRA-adam": lambda m: RPLoRA(m, 0.01, optimizer="adam", weight_decay=0.1,
                                    preset="published"),
}


def _loss_head(model, x, t):
    return 0.5 * ((model(x) - t[:, :3]) ** 2).sum(1).mean()


def _train_head(model, opt, batches):
    for x, t in batches:
        opt.zero_grad()
        _loss_head(model, x, t).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(RESUME))
def test_state_dict_round_trip_bit_identical(name):
    batches = _batches(4)
    model = _with_head()
    opt = RESUME[name](model)
    _train_head(model, opt, batches[:2])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train_head(model, opt, batches[2:])
    resumed = _with_head(seed=1)
    resumed.load_state_dict(saved_model)
    opt2 = RESUME[name](resumed)
    opt2.load_state_dict(saved_opt)
    _train_head(resumed, opt2, batches[2:])
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_geolora_state_dict_round_trip_bit_identical():
    def build(seed):
        return GeoLoRALinear(8, 7, 3, init="random", alpha=16.0, dtype=F64,
                             generator=torch.Generator().manual_seed(seed))

    batches = _batches(4, N=6, n=8, m=7)
    layer = build(0)
    opt = GeoLoRA(layer, 0.3, max_rank=5, preset="published")
    for x, t in batches[:2]:
        opt.zero_grad()
        _loss(layer, x, t).backward()
        opt.step()
    saved_model, saved_opt = copy.deepcopy(layer.state_dict()), copy.deepcopy(opt.state_dict())
    resumed = build(1)
    resumed.load_state_dict(saved_model)
    opt2 = GeoLoRA(resumed, 0.3, max_rank=5, preset="published")
    opt2.load_state_dict(saved_opt)
    for mod, o in ((layer, opt), (resumed, opt2)):
        for x, t in batches[2:]:
            o.zero_grad()
            _loss(mod, x, t).backward()
            o.step()
    for p, q in zip(layer.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", sorted(RESUME))
def test_nan_skip_with_options(name):
    model = _with_head()
    opt = RESUME[name](model)
    _train_head(model, opt, _batches(1))
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    x, t = _batches(1, seed=7)[0]
    x[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train_head(model, opt, [(x, t)])
    assert any(issubclass(w.category, NonFiniteStepWarning) for w in caught)
    assert opt.skipped_steps == 1
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q)
    after = opt.state_dict()
    for key, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after["state"][key][k])

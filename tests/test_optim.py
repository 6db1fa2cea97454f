"""The torch optimizers against the core formulas (SPEC §2, §3, §5, §6)."""

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lowrank_prox import LowRankSum, lorsum
from lowrank_prox.nn import LoRALinear
from lowrank_prox.optim import NonFiniteStepWarning, ProjPSILoRA, PSILoRA, RPLoRA, SVDLoRA

F64 = torch.float64


def tiny(seed=0, dtype=F64, m=7, n=5, r=2, head=False):
    torch.manual_seed(seed)
    layer = LoRALinear(n, m, r, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_()
    if head:
        return nn.Sequential(layer, nn.Linear(m, 3, dtype=dtype))
    return layer


def batch(seed, N=6, n=5, m=7, dtype=F64):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(N, n, generator=g, dtype=dtype), torch.randn(N, m, generator=g, dtype=dtype)


def loss_fn(model, X, Y):
    return ((model(X) - Y[..., : model(X).shape[-1]]) ** 2).mean()


def dense_grad(layer, X, Y):
    """∂L/∂W of the effective weight, by autograd on a copy (the reference for G)."""
    W = (layer.weight + layer.lora_B @ layer.lora_A).detach().requires_grad_(True)
    out = X @ W.T + layer.bias
    ((out - Y) ** 2).mean().backward()
    return W.grad


def uv(layer):
    return layer.lora_B.detach().clone(), layer.lora_A.detach().mT.clone()


def one_step(opt, model, X, Y):
    opt.zero_grad()
    loss_fn(model, X, Y).backward()
    opt.step()


def check_resume_bit_identical(make, dtype, *, state_keys=()):
    """Three steps, save, three more; a fresh model + optimizer loaded from the save and run
    over the same three batches must end bit-identical (parameters and every state tensor).
    Returns the saved optimizer state dict (for extra assertions, e.g. ``state_keys``)."""
    model = tiny(head=True, dtype=dtype)
    opt = make(model)
    for s in range(3):
        one_step(opt, model, *batch(s, dtype=dtype))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for key in state_keys:
        assert key in saved_opt["state"][1], key
    for s in range(3, 6):
        one_step(opt, model, *batch(s, dtype=dtype))
    fresh = tiny(seed=9, head=True, dtype=dtype)
    fresh.load_state_dict(saved_model)
    opt2 = make(fresh)
    opt2.load_state_dict(saved_opt)
    for s in range(3, 6):
        one_step(opt2, fresh, *batch(s, dtype=dtype))
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert p.dtype == dtype and torch.equal(p, q)
    st1, st2 = opt.state[model[0].lora_B], opt2.state[fresh[0].lora_B]
    assert set(st1) == set(st2)
    for k, v in st1.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == st2[k].dtype and torch.equal(v, st2[k]), k
    return saved_opt


def check_nonfinite_step_skipped(make, *, value=float("nan")):
    """A batch with one non-finite input entry is skipped with a warning (parameters and
    state unchanged, ``skipped_steps`` counted) and the next clean batch steps normally."""
    model = tiny(head=True)
    opt = make(model)
    one_step(opt, model, *batch(0))
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
             for k, v in opt.state[model[0].lora_B].items()}
    X, Y = batch(1)
    X[2, 1] = value
    with pytest.warns(NonFiniteStepWarning, match="skipped"):
        one_step(opt, model, X, Y)
    assert opt.skipped_steps == 1
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    for k, v in opt.state[model[0].lora_B].items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_step(opt, model, *batch(2))  # recovers on the next clean batch
    assert opt.state[model[0].lora_B]["step"] == 2


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_psilora_step_is_lorsum_of_full_step(iters):
    layer = tiny()
    X, Y = batch(0)
    G = dense_grad(layer, X, Y)
    U, V = uv(layer)
    lr, lam0 = 0.3, 1e-2
    opt = PSILoRA(layer, lr, iters=iters, ridge=lam0)
    one_step(opt, layer, X, Y)
    Ue, Ve = lorsum(U @ V.T - lr * G, U, V, iters=iters, ridge=lr * lam0)
    torch.testing.assert_close(layer.lora_B.detach(), Ue, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.lora_A.detach(), Ve.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("where", ["none", "momentum", "adapter", "both"])
def test_psilora_momentum_two_steps_by_hand(where):
    from lowrank_prox.gauge import balance

    layer = tiny()
    lr, mu, d, lam0, K = 0.2, 0.6, 0.1, 1e-2, 2
    opt = PSILoRA(layer, lr, iters=K, ridge=lam0, momentum=mu, dampening=d, momentum_rank=3,
                  balance=where)
    st = opt.state[layer.lora_B]
    MU, MV = st["momentum_U"].clone(), st["momentum_V"].clone()
    assert MU.shape == (7, 3) and MV.shape == (5, 3) and float(MU.abs().max()) == 0
    U, V = uv(layer)
    lam = lr * lam0
    for s in range(2):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        one_step(opt, layer, X, Y)
        U, V = lorsum(U @ V.T - lr * ((1 - d) * G + mu * MU @ MV.T), U, V, iters=K, ridge=lam)
        MU, MV = lorsum(mu * MU @ MV.T + (1 - d) * G, MU, MV, iters=K, ridge=lam)
        if where in ("adapter", "both"):
            U, V, _ = balance(U, V)
        if where in ("momentum", "both"):
            MU, MV, _ = balance(MU, MV)
            assert float((MU.norm(dim=0) / MV.norm(dim=0) - 1).abs().max()) < 1e-12
        torch.testing.assert_close(layer.lora_B.detach(), U, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(opt.state[layer.lora_B]["momentum_U"], MU, rtol=1e-9,
                                   atol=1e-11)
    assert opt.state[layer.lora_B]["step"] == 2


def test_rplora_sgd_equals_jacobi_psilora():
    lr, lam0 = 0.25, 1e-2
    a, b = tiny(), tiny()
    X, Y = batch(0)
    one_step(PSILoRA(a, lr, iters=0, ridge=lam0), a, X, Y)
    one_step(RPLoRA(b, lr, ridge=lr * lam0), b, X, Y)
    torch.testing.assert_close(a.lora_A, b.lora_A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.lora_B, b.lora_B, rtol=1e-10, atol=1e-12)


def test_svdlora_is_projected_sgd_momentum():
    layer = tiny()
    lr, mu = 0.3, 0.5
    opt = SVDLoRA(layer, lr, momentum=mu)
    W = (layer.lora_B @ layer.lora_A).detach()
    buf = None
    for s in range(2):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        one_step(opt, layer, X, Y)
        buf = G if buf is None else mu * buf + G
        U, S, Vh = torch.linalg.svd(W - lr * buf)
        W = (U[:, :2] * S[:2]) @ Vh[:2]
        torch.testing.assert_close(layer.delta_weight(), W, rtol=1e-9, atol=1e-11)
        # the two factors are balanced: B = U S½, A = S½ Vᵀ
        torch.testing.assert_close(layer.lora_B.T @ layer.lora_B,
                                   layer.lora_A @ layer.lora_A.T, rtol=1e-9, atol=1e-11)


def test_proj_psilora_two_steps_by_hand():
    layer = tiny()
    lr, mu, lam0 = 0.2, 0.7, 1e-2
    lam = lr * lam0
    opt = ProjPSILoRA(layer, lr, ridge=lam0, momentum=mu)
    U, V = uv(layer)
    I = torch.eye(2, dtype=F64)
    for s in range(2):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        one_step(opt, layer, X, Y)
        Up, Vp = lorsum(U @ V.T - lr * G, U, V, ridge=lam)
        gU = G @ Vp @ torch.linalg.inv(Vp.T @ Vp + lam * I)
        gV = G.T @ Up @ torch.linalg.inv(Up.T @ Up + lam * I)
        if s == 0:
            bU, bV, U, V = gU, gV, Up, Vp
        else:
            tU = bU @ prevV.T @ Vp @ torch.linalg.inv(Vp.T @ Vp + lam * I)  # noqa: F821
            tV = bV @ prevU.T @ Up @ torch.linalg.inv(Up.T @ Up + lam * I)  # noqa: F821
            U, V = Up - lr * mu * tU, Vp - lr * mu * tV
        prevU, prevV = Up, Vp  # noqa: F841
        torch.testing.assert_close(layer.lora_B.detach(), U, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(layer.lora_A.detach(), V.T, rtol=1e-9, atol=1e-11)


def test_captured_gradient_matches_autograd_with_accumulation_and_reuse():
    """Rows of 2 backward passes (one calls the layer twice) give the summed .grad."""
    layer = tiny()
    opt = PSILoRA(layer, 0.1)
    opt.zero_grad()
    X1, Y1 = batch(1)
    X2, _ = batch(2)
    (loss_fn(layer, X1, Y1) / 2).backward()
    out = layer(layer(X2)[:, :5])  # the layer is used twice in one graph
    (out.sum() / 2).backward()
    rows = layer_rows(opt)
    X, D = rows
    G = D.T @ X
    torch.testing.assert_close(G @ layer.lora_A.detach().T, layer.lora_B.grad)
    torch.testing.assert_close(layer.lora_B.detach().T @ G, layer.lora_A.grad)
    assert X.shape[0] == 6 + 2 * 6


def layer_rows(opt):
    return opt.layers[0].capture.rows()


def test_zero_grad_between_forward_and_backward_keeps_the_inputs():
    a, b = tiny(), tiny()
    X, Y = batch(0)
    oa, ob = PSILoRA(a, 0.3), PSILoRA(b, 0.3)
    one_step(oa, a, X, Y)
    loss = loss_fn(b, X, Y)
    ob.zero_grad()
    loss.backward()
    ob.step()
    torch.testing.assert_close(a.lora_B, b.lora_B)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: PSILoRA(m, 0.2, iters=2, momentum=0.5, momentum_rank=3),
        lambda m: ProjPSILoRA(m, 0.2, momentum=0.5),
        lambda m: SVDLoRA(m, 0.1, optimizer="adamw", weight_decay=1e-2),
        lambda m: RPLoRA(m, 0.1, optimizer="adam"),
        lambda m: PSILoRA(m, 0.2, momentum=0.5,
                          other_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resume_is_bit_identical(make, dtype):
    check_resume_bit_identical(make, dtype)


def test_scheduler_moves_lr_and_ridge():
    model = tiny(head=True)
    lr, lam0 = 0.4, 0.5
    opt = PSILoRA(model, lr, ridge=lam0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
    one_step(opt, model, *batch(0))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    layer = model[0]
    X, Y = batch(1)
    out = layer(X).detach().requires_grad_(True)
    loss = ((model[1](out) - Y[:, :3]) ** 2).mean()
    loss.backward()
    D = out.grad
    G = D.T @ X
    U, V = uv(layer)
    head_w = model[1].weight.detach().clone()
    head_g = torch.autograd.grad(((nn.functional.linear(out.detach(), model[1].weight,
                                                        model[1].bias) - Y[:, :3]) ** 2).mean(),
                                 model[1].weight)[0]
    one_step(opt, model, X, Y)
    Ue, _ = lorsum(U @ V.T - 0.1 * G, U, V, ridge=0.1 * lam0)
    torch.testing.assert_close(layer.lora_B.detach(), Ue, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model[1].weight.detach(), head_w - 0.1 * head_g)
    # λ = lr·λ0 matters: the un-scheduled ridge gives another point
    Uw, _ = lorsum(U @ V.T - 0.1 * G, U, V, ridge=lr * lam0)
    assert float((Uw - Ue).abs().max()) > 1e-6


def test_nonfinite_gradient_skips_the_step():
    check_nonfinite_step_skipped(lambda m: PSILoRA(m, 0.3, momentum=0.5))


def test_clipping_scales_the_captured_gradient():
    layer = tiny()
    X, Y = batch(0)
    G = dense_grad(layer, X, Y)
    norm = float(torch.linalg.matrix_norm(G))
    U, V = uv(layer)
    opt = PSILoRA(layer, 0.5, ridge=1e-2, max_grad_norm=0.1 * norm)
    one_step(opt, layer, X, Y)
    coef = 0.1 * norm / (norm + 1e-6)
    Ue, _ = lorsum(U @ V.T - 0.5 * coef * G, U, V, ridge=0.5e-2)
    torch.testing.assert_close(layer.lora_B.detach(), Ue, rtol=1e-9, atol=1e-11)
    # the implicit norm ⟨XXᵀ, ΔΔᵀ⟩ equals the dense one
    t = LowRankSum([(1.0, G, torch.eye(5, dtype=F64))]).norm()
    assert t == pytest.approx(norm)


def test_bfloat16_parameters_use_float32_math():
    ref, half = tiny(dtype=torch.float32), tiny(dtype=torch.float32)
    half = half.to(torch.bfloat16)
    with torch.no_grad():  # same starting point, representable in bf16
        for p, q in zip(ref.parameters(), half.parameters(), strict=True):
            p.copy_(q.float())
    X, Y = batch(0, dtype=torch.float32)
    o1 = PSILoRA(ref, 0.2, momentum=0.5, seed=0)
    o2 = PSILoRA(half, 0.2, momentum=0.5, seed=0)
    one_step(o1, ref, X, Y)
    one_step(o2, half, X.bfloat16(), Y.bfloat16())
    assert half.lora_B.dtype == torch.bfloat16
    assert o2.state[half.lora_B]["momentum_U"].dtype == torch.float32
    err = float((half.lora_B.detach().float() - ref.lora_B.detach()).abs().max())
    assert err < 0.05 * float(ref.lora_B.detach().abs().max())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "lr"),
        ({"ridge": -1e-3}, "ridge"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"dampening": -0.5}, "dampening"),
        ({"momentum_rank": 0}, "momentum_rank"),
        ({"iters": -1}, "iters"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_bad_configuration(kwargs, match):
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        PSILoRA(tiny(), kwargs.pop("lr"), **kwargs)


def test_model_without_lora_layers_is_refused():
    for cls in (PSILoRA, ProjPSILoRA, SVDLoRA, RPLoRA):
        with pytest.raises(ValueError, match="LoRA layer"):
            cls(nn.Linear(3, 4), 0.1)
    with pytest.raises(ValueError, match="optimizer"):
        SVDLoRA(tiny(), 0.1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="momentum"):
        ProjPSILoRA(tiny(), 0.1, momentum=1.5)


def test_layer_without_gradient_is_left_alone():
    model = nn.ModuleDict({"a": tiny(), "b": tiny(seed=1)})
    opt = PSILoRA(model, 0.3)
    B = model["b"].lora_B.detach().clone()
    X, Y = batch(0)
    opt.zero_grad()
    loss_fn(model["a"], X, Y).backward()
    opt.step()
    assert torch.equal(model["b"].lora_B, B)
    assert opt.state[model["b"].lora_B]["step"] == 0
    assert np.isfinite(float(model["a"].lora_B.detach().sum()))


def test_psilora_gram_jitter_and_balance_options():
    """gram_jitter reaches both LoRSum calls (one step = lorsum with gram_jitter by hand); the
    zero momentum before the first step is left unbalanced; bad values are refused."""
    layer = tiny()
    lr, mu, lam0, eps = 0.2, 0.5, 1e-2, 1e-3
    opt = PSILoRA(layer, lr, iters=1, ridge=lam0, momentum=mu, balance="none", gram_jitter=eps)
    st = opt.state[layer.lora_B]
    MU, MV = st["momentum_U"].clone(), st["momentum_V"].clone()
    U, V = uv(layer)
    X, Y = batch(0)
    G = dense_grad(layer, X, Y)
    one_step(opt, layer, X, Y)
    Ue, _ = lorsum(U @ V.T - lr * G, U, V, iters=1, ridge=lr * lam0, gram_jitter=eps)
    Me, _ = lorsum(G, MU, MV, iters=1, ridge=lr * lam0, gram_jitter=eps)
    torch.testing.assert_close(layer.lora_B.detach(), Ue, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(opt.state[layer.lora_B]["momentum_U"], Me, rtol=1e-10,
                               atol=1e-12)
    from lowrank_prox.optim.psilora import balanced

    Z, W = torch.zeros(7, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    Zb, Wb = balanced(Z, W)
    assert Zb is Z and Wb is W
    with pytest.raises(ValueError, match="balance"):
        PSILoRA(tiny(), 0.1, balance="sometimes")
    with pytest.raises(ValueError, match="gram_jitter"):
        PSILoRA(tiny(), 0.1, gram_jitter=-1e-6)


@pytest.mark.parametrize("make", [
    lambda m: PSILoRA(m, 0.5, momentum=0.9),
    lambda m: PSILoRA(m, 0.5, iters=2),
    lambda m: ProjPSILoRA(m, 0.5, momentum=0.9),
    lambda m: __import__("lowrank_prox.optim", fromlist=["PSILoRAFISTA"]).PSILoRAFISTA(m, 0.5),
], ids=["psilora-momentum", "psilora-x2", "proj", "fista"])
def test_zero_lr_first_step_keeps_the_factors_from_a_zero_lora_B(make):
    """A step at lr 0 (a linear warm-up's first) is the identity on the adapter's factors.

    LoRSum of the target UVᵀ from PEFT's B = 0 with λ = lr·λ0 = 0 returns A = 0 as well (the
    minimum-norm V-step), and the adapter then never leaves 0; the step must not.
    """
    layer = tiny()
    with torch.no_grad():
        layer.lora_B.zero_()
    opt = make(layer)
    A0 = layer.lora_A.detach().clone()
    opt.param_groups[0]["lr"] = 0.0
    one_step(opt, layer, *batch(0))
    assert torch.equal(layer.lora_A.detach(), A0) and not layer.lora_B.detach().any()
    opt.param_groups[0]["lr"] = 0.5
    for seed in (1, 2):
        one_step(opt, layer, *batch(seed))
    assert float(layer.lora_B.detach().norm()) > 1e-3 and float(layer.lora_A.detach().norm()) > 1e-3

"""Variance-reduced PSI-LoRA (STORM, MARS) against its defining formula, written densely here."""

import copy
import math
import warnings

import pytest
import torch

from lowrank_prox import lorsum
from lowrank_prox.optim import NonFiniteStepWarning, PSILoRA, PSILoRAVR, step_in_backward
from tests.test_optim import batch, loss_fn, tiny, uv

F64 = torch.float64


def make_closure(opt, model, X, Y, calls=None, poison_call=None):
    """The closure of the same batch; ``poison_call`` puts a NaN into that call's input."""

    def closure():
        if calls is not None:
            calls.append(1)
        Xc = X
        if poison_call is not None and calls is not None and len(calls) == poison_call:
            Xc = X.clone()
            Xc[0, 0] = float("nan")
        opt.zero_grad()
        loss = loss_fn(model, Xc, Y)
        loss.backward()
        return loss

    return closure


def grad_at(layer, U, V, X, Y):
    """∂L/∂W at ``W = W0 + U Vᵀ`` on the batch (autograd on a dense copy)."""
    W = (layer.weight + U @ V.T).detach().requires_grad_(True)
    ((X @ W.T + layer.bias - Y) ** 2).mean().backward()
    return W.grad


def coefficients(variant, mu, gamma, G, Gp, clip):
    """(c_d, c_g, c_p) from the definitions: STORM d = G + μ(d − G_p); MARS d = βd + (1−β)κc."""
    if variant == "storm":
        return mu, 1.0, -mu
    w = gamma * mu / (1 - mu)
    c = G + w * (G - Gp)
    kappa = 1.0 if clip is None else min(1.0, clip / float(torch.linalg.norm(c)))
    return mu, (1 - mu) * kappa * (1 + w), -(1 - mu) * kappa * w


@pytest.mark.parametrize(
    "variant, iters, ridge, clip",
    [("storm", 1, 1e-2, None), ("storm", 0, 1e-2, None), ("storm", 3, 0.0, None),
     ("mars", 1, 1e-2, None), ("mars", 2, 1e-2, 0.05)],
)
def test_three_steps_match_the_dense_formula(variant, iters, ridge, clip):
    layer = tiny()
    lr, mu, gamma = 0.3, 0.6, 0.5
    lam = lr * ridge
    opt = PSILoRAVR(layer, lr, variant=variant, iters=iters, ridge=ridge, momentum=mu,
                    correction_strength=gamma, mars_clip=clip, balance="none")
    U, V = uv(layer)
    st = opt.state[layer.lora_B]
    MU, MV = st["momentum_U"].clone(), st["momentum_V"].clone()
    prev = None
    kappas = []
    for s in range(3):
        X, Y = batch(s)
        G = grad_at(layer, U, V, X, Y)
        Gp = G if prev is None else grad_at(layer, *prev, X, Y)
        c_d, c_g, c_p = coefficients(variant, mu, gamma, G, Gp, clip)
        kappas.append(c_g / (1 - mu + gamma * mu) if variant == "mars" else 1.0)
        D = c_d * (MU @ MV.T) + c_g * G + c_p * Gp
        U1, V1 = lorsum(U @ V.T - lr * D, U, V, iters=iters, ridge=lam)
        start = "u" if lam == 0 and not bool(MU.any()) else "v"
        MU, MV = lorsum(D, MU, MV, iters=max(iters, 1), ridge=lam, start=start)
        prev, (U, V) = (U, V), (U1, V1)
        opt.step(make_closure(opt, layer, X, Y))
        torch.testing.assert_close(layer.lora_B.detach(), U, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(layer.lora_A.detach(), V.T, rtol=1e-9, atol=1e-11)
        st = opt.state[layer.lora_B]
        torch.testing.assert_close(st["momentum_U"] @ st["momentum_V"].T, MU @ MV.T,
                                   rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(st["prev_U"] @ st["prev_V"].T, prev[0] @ prev[1].T)
    if clip is not None:  # the clipping was active at least once, and only shrinks
        assert min(kappas) < 0.99 and max(kappas) <= 1.0


def test_the_whole_model_is_evaluated_at_the_previous_point():
    """The head (an other parameter) gets the dense STORM estimate, both gradients taken at
    the full previous / current model on the same batch (checked on deep copies)."""
    model = tiny(head=True)
    lr, mu = 0.2, 0.5
    opt = PSILoRAVR(model, lr, momentum=mu, balance="none")
    head = model[1].weight
    d, prev_model = None, None
    for s in range(3):
        X, Y = batch(s)

        def head_grad(m, X=X, Y=Y):
            m = copy.deepcopy(m)
            loss_fn(m, X, Y).backward()
            return m[1].weight.grad

        g = head_grad(model)
        gp = g if prev_model is None else head_grad(prev_model)
        d = (1 - mu) * g if d is None else mu * d + g - mu * gp
        expected = head.detach() - lr * d
        prev_model = copy.deepcopy(model)
        calls = []
        opt.step(make_closure(opt, model, X, Y, calls))
        assert len(calls) == (1 if s == 0 else 2)
        torch.testing.assert_close(head.detach(), expected, rtol=1e-12, atol=1e-14)


def test_without_momentum_it_is_psilora_and_calls_once():
    a, b = tiny(), tiny()
    oa = PSILoRAVR(a, 0.3, variant="mars", iters=2, ridge=1e-2)
    ob = PSILoRA(b, 0.3, iters=2, ridge=1e-2)
    calls = []
    for s in range(3):
        X, Y = batch(s)
        oa.step(make_closure(oa, a, X, Y, calls))
        ob.zero_grad()
        loss_fn(b, X, Y).backward()
        ob.step()
    assert len(calls) == 3
    assert torch.equal(a.lora_B, b.lora_B) and torch.equal(a.lora_A, b.lora_A)
    assert set(oa.state[a.lora_B]) == {"step"}


@pytest.mark.parametrize("variant", ["storm", "mars"])
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_state_dict_resume_is_bit_identical(variant, dtype):
    def make(m):
        return PSILoRAVR(m, 0.1, variant=variant, iters=2, momentum=0.5, mars_clip=1.0)

    def run(opt, model, steps):
        for s in steps:
            opt.step(make_closure(opt, model, *batch(s, dtype=dtype)))

    model = tiny(head=True, dtype=dtype)
    opt = make(model)
    run(opt, model, range(3))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    assert "prev_U" in saved_opt["state"][1] and len(saved_opt["vr_other"]) == 2
    run(opt, model, range(3, 6))
    fresh = tiny(seed=9, head=True, dtype=dtype)
    fresh.load_state_dict(saved_model)
    opt2 = make(fresh)
    opt2.load_state_dict(saved_opt)
    run(opt2, fresh, range(3, 6))
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert p.dtype == dtype and torch.equal(p, q)
    st1, st2 = opt.state[model[0].lora_B], opt2.state[fresh[0].lora_B]
    for k, v in st1.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == st2[k].dtype and torch.equal(v, st2[k]), k


@pytest.mark.parametrize("poison_call", [1, 2])  # NaN at the current / at the previous point
def test_nonfinite_gradient_skips_the_step(poison_call):
    model = tiny(head=True)
    opt = PSILoRAVR(model, 0.3, variant="mars", momentum=0.5)
    opt.step(make_closure(opt, model, *batch(0)))
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v)
             for k, v in opt.state[model[0].lora_B].items()}
    vr_other = copy.deepcopy(opt.state_dict()["vr_other"])
    with pytest.warns(NonFiniteStepWarning, match="skipped"):
        opt.step(make_closure(opt, model, *batch(1), calls=[], poison_call=poison_call))
    assert opt.skipped_steps == 1
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    for k, v in opt.state[model[0].lora_B].items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    for a, b in zip(opt.state_dict()["vr_other"], vr_other, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(make_closure(opt, model, *batch(2)))
    assert opt.state[model[0].lora_B]["step"] == 2


def test_low_rank_state_and_returned_loss():
    layer = tiny(m=9, n=8, r=2)
    opt = PSILoRAVR(layer, 0.1, momentum=0.5, momentum_rank=3)
    X = torch.randn(6, 8, dtype=F64)
    Y = torch.randn(6, 9, dtype=F64)
    for _ in range(2):
        loss = opt.step(make_closure(opt, layer, X, Y))
    st = opt.state[layer.lora_B]
    assert st["momentum_U"].shape == (9, 3) and st["momentum_V"].shape == (8, 3)
    assert st["prev_U"].shape == (9, 2) and st["prev_V"].shape == (8, 2)
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0


def test_step_needs_a_closure():
    layer = tiny()
    opt = PSILoRAVR(layer, 0.1, momentum=0.5)
    loss_fn(layer, *batch(0)).backward()
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="closure"):
        opt.step(3)
    step_in_backward(opt)
    with pytest.raises(ValueError, match="step_in_backward"):
        opt.step(make_closure(opt, layer, *batch(0)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "svrg"}, "variant"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"iters": -1}, "iters"),
        ({"ridge": -1.0}, "ridge"),
        ({"correction_strength": -0.5}, "correction_strength"),
        ({"mars_clip": 0.0}, "mars_clip"),
        ({"momentum_rank": 0}, "momentum_rank"),
        ({"balance": "always"}, "balance"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSILoRAVR(tiny(), 0.1, **kwargs)


@pytest.mark.parametrize("name", ["momentum", "correction_strength", "mars_clip", "iters"])
def test_bad_types(name):
    with pytest.raises(TypeError, match=name):
        PSILoRAVR(tiny(), 0.1, **{name: "0.5"})

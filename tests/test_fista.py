"""FISTA PSI-LoRA and the SVDLoRA options (threshold, extrapolation) against their formulas."""


import pytest
import torch

from lowrank_prox import lorsum
from lowrank_prox.optim import PSILoRA, PSILoRAFISTA, SVDLoRA
from tests.test_optim import (
    batch,
    check_nonfinite_step_skipped,
    check_resume_bit_identical,
    dense_grad,
    one_step,
    tiny,
    uv,
)

F64 = torch.float64


def product(layer):
    return (layer.lora_B @ layer.lora_A).detach()


def proj(W, r, tau=0.0):
    """Π_r with soft-thresholded singular values, from the dense SVD."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[:, :r] * (s[:r] - tau).clamp_min(0.0)) @ Vh[:r]


def test_svdlora_threshold_is_soft_thresholded_projection():
    layer = tiny()
    X, Y = batch(0)
    lr = 0.4
    W = product(layer) - lr * dense_grad(layer, X, Y)
    s = torch.linalg.svdvals(W)
    tau = float(0.5 * (s[0] + s[1]))  # between σ1 and σ2: the result has rank 1
    opt = SVDLoRA(layer, lr, threshold=tau)
    one_step(opt, layer, X, Y)
    torch.testing.assert_close(product(layer), proj(W, 2, tau), rtol=1e-10, atol=1e-12)
    assert torch.linalg.matrix_rank(product(layer)) == 1
    assert float(torch.linalg.svdvals(product(layer))[0]) == pytest.approx(float(s[0]) - tau)


def test_svdlora_extrapolation_three_steps_by_hand():
    layer = tiny()
    lr, mu, tau, r = 0.3, 0.6, 0.05, 2
    opt = SVDLoRA(layer, lr, momentum=0.5, threshold=tau, extrapolation=mu)
    x_prev, buf = product(layer), None
    for s in range(3):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        buf = G if buf is None else 0.5 * buf + G
        x = proj(product(layer) - lr * buf, r, tau)
        y = proj((1 + mu) * x - mu * x_prev, r)
        one_step(opt, layer, X, Y)
        torch.testing.assert_close(product(layer), y, rtol=1e-9, atol=1e-11)
        st = opt.state[layer.lora_B]
        torch.testing.assert_close(st["prev_U"] @ st["prev_V"].T, x, rtol=1e-9, atol=1e-11)
        x_prev = x


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_fista_psilora_two_steps_by_hand(iters):
    layer = tiny()
    lr, mu, lam0 = 0.3, 0.7, 1e-2
    lam = lr * lam0
    opt = PSILoRAFISTA(layer, lr, iters=iters, ridge=lam0, momentum=mu)
    U, V = uv(layer)
    Up, Vp = U, V
    for s in range(2):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        Ux, Vx = lorsum(U @ V.T - lr * G, U, V, iters=iters, ridge=lam)
        U, V = lorsum((1 + mu) * Ux @ Vx.T - mu * Up @ Vp.T, Ux, Vx, iters=iters, ridge=lam)
        Up, Vp = Ux, Vx
        one_step(opt, layer, X, Y)
        torch.testing.assert_close(layer.lora_B.detach(), U, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.lora_A.detach(), V.T, rtol=1e-10, atol=1e-12)
    assert opt.state[layer.lora_B]["step"] == 2


def test_fista_without_momentum_is_psilora():
    a, b = tiny(), tiny()
    oa, ob = PSILoRAFISTA(a, 0.3, iters=2, ridge=1e-2), PSILoRA(b, 0.3, iters=2, ridge=1e-2)
    for s in range(3):
        one_step(oa, a, *batch(s))
        one_step(ob, b, *batch(s))
    assert torch.equal(a.lora_B, b.lora_B) and torch.equal(a.lora_A, b.lora_A)
    assert set(oa.state[a.lora_B]) == {"step"}


def test_fista_many_iterations_is_projected_fista():
    """K → ∞, λ = 0: both LoRSum calls are Π_r, so PSILoRAFISTA = SVDLoRA(extrapolation=μ)."""
    a, b = tiny(), tiny()
    oa = PSILoRAFISTA(a, 0.2, iters=300, ridge=0.0, momentum=0.5)
    ob = SVDLoRA(b, 0.2, extrapolation=0.5)
    for s in range(3):
        one_step(oa, a, *batch(s))
        one_step(ob, b, *batch(s))
    torch.testing.assert_close(product(a), product(b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: PSILoRAFISTA(m, 0.2, iters=2, momentum=0.5),
        lambda m: SVDLoRA(m, 0.1, optimizer="adam", threshold=0.01, extrapolation=0.5),
    ],
)
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_state_dict_resume_is_bit_identical(make, dtype):
    check_resume_bit_identical(make, dtype, state_keys=("prev_U",))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: PSILoRAFISTA(m, 0.3, momentum=0.5),
        lambda m: SVDLoRA(m, 0.3, threshold=0.01, extrapolation=0.5),
    ],
)
def test_nonfinite_gradient_skips_the_step(make):
    check_nonfinite_step_skipped(make)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (PSILoRAFISTA, {"momentum": 1.0}, "momentum"),
        (PSILoRAFISTA, {"momentum": -0.1}, "momentum"),
        (PSILoRAFISTA, {"iters": -1}, "iters"),
        (PSILoRAFISTA, {"ridge": -1.0}, "ridge"),
        (SVDLoRA, {"threshold": -0.1}, "threshold"),
        (SVDLoRA, {"threshold": float("inf")}, "threshold"),
        (SVDLoRA, {"extrapolation": 1.0}, "extrapolation"),
        (SVDLoRA, {"extrapolation": -0.5}, "extrapolation"),
    ],
)
def test_bad_configuration(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(tiny(), 0.1, **kwargs)
    with pytest.raises(TypeError, match=match):
        cls(tiny(), 0.1, **{match: "0.5"})

"""PSI-LoRA's momentum residual and quartic kernels against their formulas (optim/_options.py)."""


import numpy as np
import pytest
import torch

from lowrank_prox import lorsum
from lowrank_prox.optim import PSILoRA
from lowrank_prox.optim._options import scalar_quartic_factor
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


def test_momentum_residual_two_steps_by_hand():
    layer = tiny()
    lr, mu, d, lam0, K = 0.2, 0.6, 0.1, 1e-2, 2
    opt = PSILoRA(layer, lr, iters=K, ridge=lam0, momentum=mu, dampening=d, momentum_rank=1,
                  balance="none", use_momentum_residual=True, residual_rank=3, seed=0)
    st = opt.state[layer.lora_B]
    assert st["residual_U"].shape == (7, 3) and st["residual_V"].shape == (5, 3)
    assert float(st["residual_U"].abs().max()) == 0.0
    MU, MV, EU, EV = (st[k].clone() for k in ("momentum_U", "momentum_V", "residual_U",
                                                "residual_V"))
    U, V = uv(layer)
    lam = lr * lam0
    for s in range(2):
        X, Y = batch(s)
        G = dense_grad(layer, X, Y)
        M, E = MU @ MV.T, EU @ EV.T
        U, V = lorsum(U @ V.T - lr * ((1 - d) * G + mu * M), U, V, iters=K, ridge=lam)
        T = mu * M + (1 - d) * G + E
        MU, MV = lorsum(T, MU, MV, iters=K, ridge=lam)
        EU, EV = lorsum(T - MU @ MV.T, EU, EV, iters=K, ridge=lam)
        one_step(opt, layer, X, Y)
        st = opt.state[layer.lora_B]
        torch.testing.assert_close(layer.lora_B.detach(), U, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st["momentum_U"], MU, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st["residual_U"], EU, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(st["residual_V"], EV, rtol=1e-10, atol=1e-12)


def test_full_rank_residual_keeps_what_the_momentum_drops():
    """λ_M = 0, r_E = min(in, out): E⁺ = T − M⁺ exactly, so M⁺ + E⁺ = μM + (1−d)G + E."""
    layer = tiny()
    mu, d = 0.5, 0.2
    opt = PSILoRA(layer, 0.1, iters=3, momentum=mu, dampening=d, momentum_rank=1, balance="none",
                  momentum_ridge=0.0, use_momentum_residual=True, seed=1)
    st = opt.state[layer.lora_B]
    assert st["residual_U"].shape == (7, 5)
    for s in range(3):
        st = opt.state[layer.lora_B]
        M, E = st["momentum_U"] @ st["momentum_V"].T, st["residual_U"] @ st["residual_V"].T
        X, Y = batch(s)
        T = mu * M + (1 - d) * dense_grad(layer, X, Y) + E
        one_step(opt, layer, X, Y)
        st = opt.state[layer.lora_B]
        M1, E1 = st["momentum_U"] @ st["momentum_V"].T, st["residual_U"] @ st["residual_V"].T
        torch.testing.assert_close(M1 + E1, T, rtol=1e-10, atol=1e-12)
        assert float(torch.linalg.matrix_norm(E1)) > 1e-3 * float(torch.linalg.matrix_norm(T))


@pytest.mark.parametrize("norm_sq, expect", [(0.0, 0.1), (1e-6, 0.1), (1e6, 10.0)])
def test_scalar_factor_is_clipped(norm_sq, expect):
    assert scalar_quartic_factor(norm_sq, 1e-3, 1e-2) == expect


@pytest.mark.parametrize("sigma, alpha, n", [(1e-3, 1e-2, 5.0), (0.5, 0.1, 30.0), (0.0, 1.0, 2.0)])
def test_scalar_factor_is_the_positive_root(sigma, alpha, n):
    s = scalar_quartic_factor(n, sigma, alpha)
    roots = np.roots([1.0, -sigma, 0.0, -alpha * n])
    real = roots[np.abs(roots.imag) < 1e-12].real
    assert s == pytest.approx(float(real.max()), rel=1e-12)
    assert abs(s**3 - sigma * s**2 - alpha * n) < 1e-12 * max(1.0, alpha * n)


def test_scalar_quartic_kernel_scales_the_step():
    layer, ref = tiny(), tiny()
    lr, lam0, sigma, alpha = 0.3, 1e-2, 1e-3, 0.05
    X, Y = batch(0)
    G = dense_grad(layer, X, Y)
    U, V = uv(layer)
    opt = PSILoRA(layer, lr, ridge=lam0, quartic_kernel="scalar", quartic_sigma=sigma,
                  quartic_alpha=alpha)
    one_step(opt, layer, X, Y)
    U1, V1 = lorsum(U @ V.T - lr * G, U, V, ridge=lr * lam0)
    n = float((U**2).sum() + (V**2).sum())
    s = float(np.roots([1.0, -sigma, 0.0, -alpha * n])[0].real)
    assert 0.1 < s < 10 and abs(s - 1) > 0.1
    torch.testing.assert_close(layer.lora_B.detach(), U + s * (U1 - U), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.lora_A.detach().T, V + s * (V1 - V), rtol=1e-10, atol=1e-12)
    # σ = α = 0 ⇒ s = 0.1: a tenth of the PSI-LoRA step
    one_step(PSILoRA(ref, lr, ridge=lam0, quartic_kernel="scalar", quartic_sigma=0.0,
                     quartic_alpha=0.0), ref, X, Y)
    torch.testing.assert_close(ref.lora_B.detach(), U + 0.1 * (U1 - U), rtol=1e-10, atol=1e-12)


def test_gram_quartic_kernel_shrinks_each_direction():
    layer = tiny()
    lr, lam0, gamma = 0.5, 1e-2, 3.0
    X, Y = batch(0)
    G = dense_grad(layer, X, Y)
    U, V = uv(layer)
    opt = PSILoRA(layer, lr, ridge=lam0, quartic_kernel="gram", quartic_gamma=gamma)
    one_step(opt, layer, X, Y)
    U1, V1 = lorsum(U @ V.T - lr * G, U, V, ridge=lr * lam0)
    D = torch.cat([U1 - U, V1 - V])  # ΔX = [ΔU; ΔV], (m + n) × r
    w, P = torch.linalg.eigh(D.T @ D)
    B = P @ torch.diag((1 + gamma * w) ** -0.5) @ P.T
    step = torch.cat([layer.lora_B.detach() - U, layer.lora_A.detach().T - V])
    torch.testing.assert_close(step, D @ B, rtol=1e-10, atol=1e-12)
    # singular values δ of the step become δ/√(1 + γδ²)
    delta = torch.linalg.svdvals(D)
    torch.testing.assert_close(torch.linalg.svdvals(step), delta / (1 + gamma * delta**2).sqrt())
    assert float(delta.max()) ** 2 * gamma > 0.1  # the shrinkage is not negligible here


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 0.5, "momentum_rank": 1, "use_momentum_residual": True},
        {"momentum": 0.5, "quartic_kernel": "scalar"},
        {"quartic_kernel": "gram", "quartic_gamma": 0.5},
    ],
)
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_state_dict_resume_is_bit_identical(kwargs, dtype):
    check_resume_bit_identical(lambda m: PSILoRA(m, 0.2, iters=2, **kwargs), dtype)


def test_nonfinite_gradient_skips_the_step_with_residual_and_kernel():
    check_nonfinite_step_skipped(
        lambda m: PSILoRA(m, 0.3, momentum=0.5, use_momentum_residual=True,
                          quartic_kernel="gram"),
        value=float("inf"),
    )


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"use_momentum_residual": True}, ValueError, "momentum"),
        ({"momentum": 0.5, "use_momentum_residual": 1}, TypeError, "use_momentum_residual"),
        ({"momentum": 0.5, "use_momentum_residual": True, "residual_rank": 0}, ValueError,
         "residual_rank"),
        ({"quartic_kernel": "scalar_quartic"}, ValueError, "quartic_kernel"),
        ({"quartic_sigma": -1.0}, ValueError, "quartic_sigma"),
        ({"quartic_alpha": float("nan")}, ValueError, "quartic_alpha"),
        ({"quartic_gamma": -0.1}, ValueError, "quartic_gamma"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PSILoRA(tiny(), 0.1, **kwargs)

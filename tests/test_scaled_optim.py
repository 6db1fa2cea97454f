"""ScaledPSILoRA (SPEC §7): steps by hand, momentum updates, resume, scheduler, NaN, bf16."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_prox.nn import LoRALinear  # noqa: E402
from lowrank_prox.optim import NonFiniteStepWarning, PSILoRA  # noqa: E402
from lowrank_prox.optim.scaled import ScaledPSILoRA  # noqa: E402

F64 = torch.float64


def _layer(n=7, m=5, r=2, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    layer = LoRALinear(n, m, r, generator=g, dtype=dtype)
    with torch.no_grad():
        layer.set_factors(
            torch.randn(m, r, generator=g, dtype=F64).to(dtype) * 0.5,
            torch.randn(n, r, generator=g, dtype=F64).to(dtype) * 0.5,
        )
    return layer


def _data(N=9, n=7, m=5, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, n, generator=g, dtype=F64).to(dtype), torch.randn(
        N, m, generator=g, dtype=F64
    ).to(dtype)


def _loss_step(layer, opt, x, t):
    opt.zero_grad()
    loss = 0.5 * ((layer(x) - t) ** 2).sum(1).mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _ref_step(U, V, x, t, W0, b, st, *, lr, K, lam, b1, b2, eps, p, kind, step=None):
    """One Scaled PSI-LoRA step written out densely from SPEC §7 (numpy, float64).

    ``step`` (1-based) turns on Adam's bias correction: the metric uses ``a / (1 − β2^step)``.
    """
    N = x.shape[0]
    D = (x @ W0.T + b + x @ V @ U.T - t) / N  # ∂loss/∂y of the mean-reduced loss
    G = D.T @ x
    if kind == "kfac":
        a_b, g_b = np.mean(x * x, 0), N * np.sum(D * D, 0)
    else:
        a_b, g_b = N * np.diag(G.T @ G), N * np.diag(G @ G.T)
    a = b2 * st["a"] + (1 - b2) * a_b
    g = b2 * st["g"] + (1 - b2) * g_b
    c = 1.0 if step is None else 1.0 - b2**step
    Pi, Po = np.diag((a / c + eps) ** p), np.diag((g / c + eps) ** p)
    M = st["MU"] @ st["MV"].T
    T = U @ V.T - lr * np.linalg.inv(Po) @ ((1 - b1) * G + b1 * M) @ np.linalg.inv(Pi)
    Ua, Va, r = U, V, U.shape[1]
    I = np.eye(r)

    def v_step(U_):
        return (T.T @ Po @ U_ + lam * Va) @ np.linalg.inv(U_.T @ Po @ U_ + lam * I)

    def u_step(V_):
        return (T @ Pi @ V_ + lam * Ua) @ np.linalg.inv(V_.T @ Pi @ V_ + lam * I)

    if K == 0:
        U, V = u_step(V), v_step(U)
    for _ in range(K):
        V = v_step(U)
        U = u_step(V)
    # unscaled momentum LoRSum on β1 M + (1−β1) G, max(K, 1) iterations from (M_U, M_V)
    Y = b1 * M + (1 - b1) * G
    MU, MV = st["MU"], st["MV"]
    MUa, MVa = MU, MV
    rM = MU.shape[1]
    for _ in range(max(K, 1)):
        MV = (Y.T @ MU + lam * MVa) @ np.linalg.inv(MU.T @ MU + lam * np.eye(rM))
        MU = (Y @ MV + lam * MUa) @ np.linalg.inv(MV.T @ MV + lam * np.eye(rM))
    return U, V, {"a": a, "g": g, "MU": MU, "MV": MV}


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("kind", ["kfac", "shampoo"])
@pytest.mark.parametrize("K", [0, 1, 2])
def test_steps_match_dense_formulas(kind, K, bias_correction):
    """``bias_correction=False``: the reference's EMA started at 1; ``True``: Adam's rule."""
    layer = _layer()
    x, t = _data()
    lr, ridge, betas, eps, p = 0.3, 1e-2, (0.9, 0.99), 1e-3, 0.5
    opt = ScaledPSILoRA(
        layer, lr=lr, iters=K, ridge=ridge, betas=betas, damping=eps, metric=kind, power=p, seed=0,
        balance="none",  # the reference formulas are the published, unbalanced algorithm
        bias_correction=bias_correction,
    )
    st0 = opt.state[layer.lora_B]
    init = 0.0 if bias_correction else 1.0
    st = {
        "a": np.full(7, init),
        "g": np.full(5, init),
        "MU": st0["momentum_U"].numpy().copy(),
        "MV": st0["momentum_V"].numpy().copy(),
    }
    U, V = layer.lora_B.detach().numpy().copy(), layer.lora_A.detach().numpy().T.copy()
    W0, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    for step in range(3):  # step 2 and 3 use a non-zero momentum in the weight step
        xs, ts = x + 0.1 * step, t - 0.1 * step
        U, V, st = _ref_step(
            U,
            V,
            xs.numpy(),
            ts.numpy(),
            W0,
            b,
            st,
            lr=lr,
            K=K,
            lam=max(lr * ridge, 1e-5),
            b1=betas[0],
            b2=betas[1],
            eps=eps,
            p=p,
            kind=kind,
            step=step + 1 if bias_correction else None,
        )
        _loss_step(layer, opt, xs, ts)
        s = opt.state[layer.lora_B]
        np.testing.assert_allclose(layer.lora_B.detach().numpy(), U, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(layer.lora_A.detach().numpy().T, V, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(s["metric_in"].numpy(), st["a"], rtol=1e-12)
        np.testing.assert_allclose(s["metric_out"].numpy(), st["g"], rtol=1e-12)
        np.testing.assert_allclose(s["momentum_U"].numpy(), st["MU"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(s["momentum_V"].numpy(), st["MV"], rtol=1e-9, atol=1e-12)
        assert s["step"] == step + 1


@pytest.mark.parametrize("K", [0, 1])
def test_momentum_really_updates(K):
    """The reference's K = 0 momentum is a no-op (M stays 0): here M changes at every step."""
    layer = _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=0.1, iters=K, seed=0)
    prev = {k: v.clone() for k, v in opt.state[layer.lora_B].items() if k.startswith("mom")}
    assert float(prev["momentum_U"].abs().max()) == 0.0
    for step in range(3):
        _loss_step(layer, opt, x + 0.1 * step, t)
        cur = opt.state[layer.lora_B]
        assert float(cur["momentum_U"].abs().max()) > 1e-3
        assert not torch.allclose(cur["momentum_U"], prev["momentum_U"])
        if step > 0:
            assert not torch.allclose(cur["momentum_V"], prev["momentum_V"])
        prev = {k: cur[k].clone() for k in prev}
    # and after one step M approximates Π_r((1−β1) G) of the first batch direction
    M = prev["momentum_U"] @ prev["momentum_V"].mT
    assert torch.linalg.matrix_rank(M) == 2


def test_identity_metric_without_momentum_equals_psilora():
    """power 0 (P = I), β1 = 0, λ floor 0: Scaled PSI-LoRA is PSI-LoRA without momentum."""
    x, t = _data()
    for K in (0, 1, 3):
        la, lb = _layer(), _layer()
        oa = ScaledPSILoRA(
            la, lr=0.4, iters=K, ridge=1e-2, betas=(0.0, 0.5), power=0.0, min_ridge=0.0
        )
        ob = PSILoRA(lb, 0.4, iters=K, ridge=1e-2)
        for step in range(3):
            _loss_step(la, oa, x * (1 + step), t)
            _loss_step(lb, ob, x * (1 + step), t)
        torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=0, atol=0)
        torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=0, atol=0)
        assert "momentum_U" not in oa.state[la.lora_B]


def test_state_dict_resume_is_bit_identical():
    x, t = _data()
    model = torch.nn.Sequential(_layer(), torch.nn.Linear(5, 5, dtype=F64))
    opt = ScaledPSILoRA(model, lr=0.2, iters=1, metric="shampoo", seed=3)
    for step in range(2):
        _loss_step(model, opt, x + step, t)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for step in range(2, 4):
        _loss_step(model, opt, x + step, t)

    model2 = torch.nn.Sequential(_layer(seed=5), torch.nn.Linear(5, 5, dtype=F64))
    model2.load_state_dict(saved_model)
    opt2 = ScaledPSILoRA(model2, lr=0.2, iters=1, metric="shampoo", seed=9)
    opt2.load_state_dict(saved_opt)
    for step in range(2, 4):
        _loss_step(model2, opt2, x + step, t)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    for k, v in opt.state[model[0].lora_B].items():
        w = opt2.state[model2[0].lora_B][k]
        assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w


def test_scheduler_moves_lr_and_ridge():
    """A step at a scheduled lr η equals a step of an optimizer built with η (λ = η·λ0 too)."""
    x, t = _data()
    la, lb = _layer(), _layer()
    oa = ScaledPSILoRA(la, lr=0.5, ridge=0.1, seed=0)
    sched = torch.optim.lr_scheduler.LambdaLR(oa, lambda epoch: 0.2)  # lr → 0.1 now
    assert oa.param_groups[0]["lr"] == pytest.approx(0.1)
    assert oa._ridge(oa.param_groups[0]) == pytest.approx(0.01)
    ob = ScaledPSILoRA(lb, lr=0.1, ridge=0.1, seed=0)
    _loss_step(la, oa, x, t)
    _loss_step(lb, ob, x, t)
    sched.step()
    torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=1e-12, atol=1e-14)
    # without the scheduler the step differs
    lc = _layer()
    _loss_step(lc, ScaledPSILoRA(lc, lr=0.5, ridge=0.1, seed=0), x, t)
    assert not torch.allclose(lc.lora_B, la.lora_B)


def test_nan_gradient_skips_step():
    layer = _layer()
    x, t = _data()
    opt = ScaledPSILoRA(layer, lr=0.2, seed=0)
    _loss_step(layer, opt, x, t)
    params = [p.detach().clone() for p in (layer.lora_A, layer.lora_B)]
    state = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v)
        for k, v in opt.state[layer.lora_B].items()
    }
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.warns(NonFiniteStepWarning):
        _loss_step(layer, opt, bad, t)
    assert opt.skipped_steps == 1
    assert torch.equal(layer.lora_A, params[0]) and torch.equal(layer.lora_B, params[1])
    for k, v in opt.state[layer.lora_B].items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    _loss_step(layer, opt, x, t)  # and it recovers
    assert opt.state[layer.lora_B]["step"] == 2


def test_bf16_model_trains_in_float32_state():
    torch.manual_seed(0)
    layer = _layer(n=16, m=8, r=2, dtype=torch.bfloat16)
    x, _ = _data(N=64, n=16, m=8, dtype=torch.float64)
    W_true = torch.randn(8, 16, dtype=F64) / 4
    t = (x @ W_true.T).to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    opt = ScaledPSILoRA(layer, lr=0.2, seed=0)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteStepWarning)
        for _ in range(30):
            losses.append(_loss_step(layer, opt, x, t))
    st = opt.state[layer.lora_B]
    assert layer.lora_A.dtype == torch.bfloat16 and layer.lora_B.dtype == torch.bfloat16
    assert st["metric_in"].dtype == torch.float32 and st["momentum_U"].dtype == torch.float32
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(("kind", "power", "lr"), [("kfac", 0.5, 1.0), ("shampoo", 0.25, 2.0)])
def test_regression_converges_and_adam_for_other_params(kind, power, lr):
    """Rank-2 target on a frozen zero base: the loss falls by orders of magnitude.

    Shampoo-diagonal statistics scale like ‖G‖² (K-FAC's like ‖x‖², ‖δ‖²), so with p = 0.5 the
    step shrinks as 1/‖G‖²: p = 0.25 (Shampoo's exponent) is its working setting.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, m, r, N = 12, 10, 2, 128
    layer = LoRALinear(n, m, r, bias=False, generator=g, dtype=F64)
    with torch.no_grad():
        layer.weight.zero_()
    head = torch.nn.Linear(m, m, dtype=F64)
    model = torch.nn.Sequential(layer, head)
    x = torch.randn(N, n, generator=g, dtype=F64) * torch.linspace(0.2, 3, n, dtype=F64)
    W = torch.randn(m, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g, dtype=F64)
    t = head(x @ W.T).detach()
    opt = ScaledPSILoRA(model, lr=lr, metric=kind, power=power, seed=0)
    assert isinstance(opt.other_optimizer, torch.optim.AdamW)
    assert opt.other_optimizer.param_groups[0]["lr"] == 1e-4
    head_before = head.weight.detach().clone()
    losses = [_loss_step(model, opt, x, t) for _ in range(200)]
    assert losses[-1] < 1e-2 * losses[0], (losses[0], losses[-1])
    assert not torch.equal(head.weight, head_before)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(lr=-1.0), ValueError, "lr must be >= 0"),
        (dict(iters=-1), ValueError, "iters"),
        (dict(ridge=-1e-3), ValueError, "ridge"),
        (dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\]"),
        (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
        (dict(betas=0.9), TypeError, "betas must be a pair"),
        (dict(damping=-1e-5), ValueError, "damping"),
        (dict(metric="adam"), ValueError, "metric must be one of"),
        (dict(power=1.5), ValueError, "power must be <= 1"),
        (dict(power=-0.5), ValueError, "power must be >= 0"),
        (dict(momentum_rank=0), ValueError, "momentum_rank"),
        (dict(reduction="none"), ValueError, "reduction"),
        (dict(init_metric_scale=0.0), ValueError, "init_metric_scale"),
        (dict(bias_correction=1), TypeError, "bias_correction must be a bool"),
    ],
)
def test_bad_configuration(kwargs, err, match):
    with pytest.raises(err, match=match):
        ScaledPSILoRA(_layer(), **kwargs)


def test_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="at least one LoRA layer"):
        ScaledPSILoRA(torch.nn.Linear(3, 3))

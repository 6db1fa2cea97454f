"""``step_in_backward`` (issue 17): same parameters as the ordinary step, rows freed in backward,
clear errors for what it does not support."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lowrank_prox.nn import LoRALinear
from lowrank_prox.optim import (
    NonFiniteStepWarning,
    ProjPSILoRA,
    PSILoRA,
    RPLoRA,
    ScaledPSILoRA,
    SVDLoRA,
    step_in_backward,
)

IN, HID, OUT, N, STEPS = 12, 10, 6, 16, 4

OPTIMIZERS = {
    "psilora_momentum": lambda m: PSILoRA(m, lr=0.2, momentum=0.9, ridge=1e-2, seed=0),
    "psilora_x2": lambda m: PSILoRA(m, lr=0.2, iters=2, ridge=1e-2),
    "proj": lambda m: ProjPSILoRA(m, lr=0.2, momentum=0.9, ridge=1e-2),
    "scaled": lambda m: ScaledPSILoRA(m, lr=0.2, seed=0, other_lr=1e-2),
    "svdlora": lambda m: SVDLoRA(m, lr=1e-2, optimizer="adam"),
    "rplora": lambda m: RPLoRA(m, lr=1e-2, optimizer="adam"),
}


class Net(nn.Module):
    """Two LoRA layers (the second called twice: weight sharing) and a trainable head."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        kw = {"generator": gen, "dtype": torch.float64}
        self.a = LoRALinear(IN, HID, 3, **kw)
        self.b = LoRALinear(HID, HID, 3, **kw)
        self.head = nn.Linear(HID, OUT, dtype=torch.float64)
        with torch.no_grad():
            for layer in (self.a, self.b):
                layer.lora_B.normal_(generator=gen)
            self.head.weight.normal_(std=0.3, generator=gen)
            self.head.bias.zero_()

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.b(h))
        return self.head(self.b(h))


def _batches():
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(N, IN, generator=gen, dtype=torch.float64),
             torch.randn(N, OUT, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def _train(make, in_backward, *, track=False, held=None):
    model = Net()
    opt = make(model)
    if in_backward:
        step_in_backward(opt)
    opt.track_grad_norm = track
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    norms = []
    for x, y in _batches():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if held is not None:
            held.append(sum(layer.capture.nbytes for layer in opt.layers))
        opt.step()
        sched.step()
        norms.append(opt.last_grad_norm)
    return model, norms


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_in_backward_equals_the_ordinary_step(name):
    ref, _ = _train(OPTIMIZERS[name], False)
    got, _ = _train(OPTIMIZERS[name], True)
    for (k, p), q in zip(ref.named_parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14, msg=k)
    assert not torch.equal(ref.a.lora_B, Net().a.lora_B)  # it trained


def test_rows_are_freed_in_backward_and_grad_norm_agrees():
    held_ref, held_sib = [], []
    make = OPTIMIZERS["psilora_momentum"]
    _, n_ref = _train(make, False, track=True, held=held_ref)
    _, n_sib = _train(make, True, track=True, held=held_sib)
    rows = N * (IN + HID) + 2 * N * (HID + HID)  # layer a once, layer b twice
    assert held_ref == [rows * 8] * STEPS  # ordinary: every layer's rows wait for step()
    assert held_sib == [0] * STEPS  # step in backward: freed in the hook
    assert n_ref == pytest.approx(n_sib, rel=1e-12)
    assert all(n > 0 for n in n_ref)


def test_last_grad_norm_is_the_captured_gradient_norm():
    model = Net()
    opt = PSILoRA(model, lr=0.1)
    opt.track_grad_norm = True
    x, y = _batches()[0]
    # autograd on the frozen base weights gives the same G = ∂L/∂W
    for layer in (model.a, model.b):
        layer.weight.requires_grad_(True)
    ((model(x) - y) ** 2).mean().backward()
    want = sum(float(p.grad.square().sum()) for p in (model.a.weight, model.b.weight,
                                                       model.head.weight, model.head.bias))
    opt.step()
    assert opt.last_grad_norm == pytest.approx(want**0.5, rel=1e-12)
    lora_grad = sum(float(p.grad.square().sum()) for p in (model.a.lora_A, model.a.lora_B))
    assert abs(opt.last_grad_norm - lora_grad**0.5) > 1e-3  # not the factors' .grad


def test_nan_skips_the_whole_step():
    model = Net()
    opt = step_in_backward(PSILoRA(model, lr=0.1, momentum=0.9, seed=0))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _batches()[0]
    x[0, 0] = float("nan")
    ((model(x) - y) ** 2).mean().backward()
    with pytest.warns(NonFiniteStepWarning):
        opt.step()
    assert opt.skipped_steps == 1
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_unsupported_uses_raise():
    model = Net()
    with pytest.raises(ValueError, match="max_grad_norm"):
        step_in_backward(PSILoRA(model, lr=0.1, max_grad_norm=1.0))
    opt = step_in_backward(PSILoRA(Net(), lr=0.1))
    from lowrank_prox.optim.distributed import data_parallel

    with pytest.raises(ValueError, match="step_in_backward"):
        data_parallel(opt)
    with pytest.raises(TypeError, match="LoRAOptimizer"):
        step_in_backward(torch.optim.SGD(Net().parameters(), lr=0.1))
    model = Net()
    opt = step_in_backward(PSILoRA(model, lr=0.1))
    x, y = _batches()[0]
    ((model(x) - y) ** 2).mean().backward()
    with pytest.raises(RuntimeError, match="gradient accumulation"):
        ((model(x) - y) ** 2).mean().backward()
    opt.zero_grad()  # drops the pending step: nothing is committed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = model.a.lora_B.detach().clone()
        opt.step()
    assert torch.equal(before, model.a.lora_B)

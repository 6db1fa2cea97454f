"""Issue 17 speed changes: wide-layout thin products, one-pass finite/scale checks, PEFT factor
``.grad`` skipped.  Every change is checked for results (bitwise where the arithmetic is the same,
to rounding where the BLAS summation order changes); nothing here is timed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowrank_prox import _xp, lorsum
from lowrank_prox.factored import LowRankSum
from lowrank_prox.optim import PSILoRA, ScaledPSILoRA

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


# -- thin products -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("m", "n", "k"), [(300, 50, 8), (64, 1024, 2), (40, 40, 39), (50, 7, 1)])
@pytest.mark.parametrize("transposed", [False, True])
def test_thin_matmul_equals_matmul_to_rounding(dtype, m, n, k, transposed):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, m, generator=g, dtype=dtype).mT if transposed else torch.randn(
        m, n, generator=g, dtype=dtype)
    B = torch.randn(n, k, generator=g, dtype=dtype)
    got = _xp.thin_matmul(A, B)
    want = A.double() @ B.double()
    eps = torch.finfo(dtype).eps
    bound = 4 * n * eps * (A.abs().double() @ B.abs().double())
    assert got.shape == (m, k) and got.dtype == dtype
    assert bool(((got.double() - want).abs() <= bound).all())


def test_thin_matmul_leaves_numpy_and_wide_products_alone():
    A, B = np.ones((5, 4)), np.ones((4, 3))
    assert isinstance(_xp.thin_matmul(A, B), np.ndarray)
    W = torch.ones(5, 4)
    assert _xp.thin_matmul(W, torch.ones(4, 200)).is_contiguous()  # k > 128: plain A @ B
    assert not _xp.thin_matmul(W, torch.ones(4, 3)).is_contiguous()  # the (Bᵀ Aᵀ)ᵀ view


def test_lorsum_with_captured_rows_matches_the_dense_target():
    g = torch.Generator().manual_seed(1)
    X, D = torch.randn(512, 60, generator=g), torch.randn(512, 90, generator=g)
    U0, V0 = torch.randn(90, 8, generator=g), torch.randn(60, 8, generator=g)
    target = LowRankSum([(1.0, U0, V0), (-0.1, D.mT, X.mT)])
    U, V = lorsum(target, U0, V0, iters=2, ridge=1e-3)
    Ud, Vd = lorsum(target.to_dense(), U0, V0, iters=2, ridge=1e-3)
    torch.testing.assert_close(U @ V.mT, Ud @ Vd.mT, rtol=1e-5, atol=1e-5)


# -- finite and scale checks -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_pass_checks_see_every_nonfinite_entry(dtype, bad):
    base = torch.randn(7, 33, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert _xp.all_finite(base) and _xp.all_finite(base.mT)
    assert _xp.max_abs(base) == float(base.abs().max())
    assert _xp.max_abs(base.mT) == float(base.abs().max())
    for i in range(base.numel()):
        x = base.clone().reshape(-1)
        x[i] = bad
        x = x.reshape(7, 33)
        assert not _xp.all_finite(x) and not _xp.all_finite(x.mT)
        top = _xp.max_abs(x.mT)
        assert (math.isnan(top) if bad != bad else top == math.inf)


@pytest.mark.parametrize("lib", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_max_abs_without_an_abs_copy_matches_max_abs(lib, bad):
    """NumPy / array-API ``max_abs`` is ``max(−min, max)``: equal to ``max|x|`` whichever sign
    holds the extreme, NaN wherever a NaN sits, ``inf`` for ±Inf; integers still work."""
    import numpy as np

    xp = np if lib == "numpy" else pytest.importorskip("array_api_strict")
    base = np.random.default_rng(4).standard_normal((5, 9))
    for arr in (base, -base, np.abs(base), -np.abs(base), base.T):
        assert _xp.max_abs(xp.asarray(arr)) == float(np.abs(arr).max())
    for i in range(base.size):
        x = base.copy().reshape(-1)
        x[i] = bad
        top = _xp.max_abs(xp.asarray(x.reshape(5, 9)))
        assert (math.isnan(top) if bad != bad else top == math.inf)
    assert _xp.max_abs(xp.asarray(np.array([[-7, 3]]))) == 7.0


def test_one_pass_checks_on_a_large_block_and_nonfloat():
    x = torch.randn(2048, 300, generator=torch.Generator().manual_seed(3))
    x[-1, -1] = math.nan
    assert not _xp.all_finite(x) and math.isnan(_xp.max_abs(x))
    assert _xp.all_finite(torch.arange(5)) and _xp.all_finite(torch.empty(0, 3))


# -- PEFT factor .grad not computed ------------------------------------------------------------


def _gpt2(dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=16, n_embd=32, n_layer=2,
                                       n_head=2, initializer_range=0.3, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0))
    pm = peft.get_peft_model(model, peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
        init_lora_weights=False, modules_to_save=["wte"]))
    return pm.to(dtype)


def _train(factor_grads, make, dtype, steps=3):
    pm = _gpt2(dtype)
    opt = make(pm)
    opt.factor_grads = factor_grads
    ids = torch.randint(0, 30, (3, 7), generator=torch.Generator().manual_seed(1))
    rows, grads, factor_grad = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        pm(input_ids=ids, labels=ids).loss.backward()
        rows.append([la.capture.rows() for la in opt.layers])
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters()
                      if p.requires_grad and "lora" not in n})
        factor_grad.append([(la.A.grad, la.B.grad) for la in opt.layers])
        opt.step()
    return rows, grads, factor_grad, {n: p.detach().clone() for n, p in pm.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("make", [
    lambda m: PSILoRA(m, 0.1, momentum=0.9, seed=0),
    lambda m: ScaledPSILoRA(m, 0.01, seed=0),
], ids=["psilora", "scaled"])
def test_skipping_factor_grads_changes_no_bit(dtype, make):
    rows1, grads1, fg1, params1 = _train(True, make, dtype)
    rows0, grads0, fg0, params0 = _train(False, make, dtype)
    assert all(a is not None and b is not None for step in fg1 for a, b in step)
    assert all(a is None and b is None for step in fg0 for a, b in step)
    for s1, s0 in zip(rows1, rows0, strict=True):
        for (x1, d1), (x0, d0) in zip(s1, s0, strict=True):
            assert torch.equal(x1, x0) and torch.equal(d1, d0)
    for g1, g0 in zip(grads1, grads0, strict=True):  # wte: gradients through the adapters
        assert g1.keys() == g0.keys() and g1
        assert all(torch.equal(g1[k], g0[k]) for k in g1)
    assert all(torch.equal(params1[k], params0[k]) for k in params1)


def test_factor_grads_come_back_when_capture_is_off_or_hooks_removed():
    pm = _gpt2(torch.float32)
    opt = PSILoRA(pm, 0.1)
    ids = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))
    layer = opt.layers[0]
    pm(input_ids=ids, labels=ids).loss.backward()
    assert layer.B.grad is None and layer.A.grad is None
    layer.capture.enabled = False  # e.g. another optimizer's turn in the benchmark
    pm(input_ids=ids, labels=ids).loss.backward()
    assert layer.B.grad is not None and layer.capture.rows() is not None  # rows: 1st pass only
    b_grad = layer.B.grad.clone()
    layer.capture.enabled = True
    opt.zero_grad()
    pm.zero_grad()
    opt.remove_hooks()
    pm(input_ids=ids, labels=ids).loss.backward()
    torch.testing.assert_close(layer.B.grad, b_grad)

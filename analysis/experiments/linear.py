"""The synthetic linear task of the paper's Figures 1 and 5 (SPEC §9, reference/paper.md §9.1–9.2).

``W* = randn(d_in, d_out)``, inputs ``X = I_{d_in}`` (one sample per row of ``W*``; or an
orthogonal ``X`` with ``input_type="random"``, targets ``X W*``), model
``y = W x`` with ``W = W0 + U Vᵀ`` (out × in), base ``W0 = 0``, rank ``r``; the adapter starts at
the top-``r`` SVD of a default-initialised ``nn.Linear(d_in, d_out)`` (``A = S½Vᵀ``,
``B = US½``).  The loss is the sum-reduced MSE; the reported metric after each epoch is the
*excess loss* ``‖W − W*ᵀ‖² − Σ_{i>r} σ_i(W*)²``, the gap to the best rank-r fit (computed in
float64).  With a full batch the gradient is ``2(W − W*ᵀ)``, so a full step with ``lr = 0.5``
lands on ``W*ᵀ`` and SVDLoRA reaches the optimum after one step (SPEC §2).

The run function is generic over an optimizer factory ``make_optimizer(model) -> optimizer``
(any ``torch.optim.Optimizer``: the LoRA optimizers of :mod:`lowrank_prox.optim`, or
``torch.optim.SGD`` on the LoRA parameters), and over the model (``make_model(config, seed)``
for adapters other than :class:`lowrank_prox.nn.LoRALinear`; the model must expose
``delta_weight()`` or ``lora_B``/``lora_A``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from lowrank_prox import _validate
from lowrank_prox.nn import LoRALinear
from lowrank_prox.optim import ProjPSILoRA, PSILoRA, RPLoRA, SVDLoRA
from lowrank_prox.optim.psilora import DEFAULT_BALANCE

__all__ = [
    "DIAGNOSTIC",
    "LinearTaskConfig",
    "LinearData",
    "LinearRun",
    "Method",
    "build_model",
    "excess_loss",
    "make_data",
    "paper_methods",
    "run_linear",
    "run_method",
    "VARIANTS",
]


@dataclass(frozen=True)
class LinearTaskConfig:
    """Settings of one linear-task run (defaults: the paper's, paper.md §9.1).

    ``batch_size=None`` is full batch (one step per epoch); otherwise each epoch is one pass
    over the ``d_in`` shuffled samples in batches of ``batch_size`` (the last one smaller).
    ``input_type`` is ``"eye"`` (``X = I``, the paper's runs) or ``"random"`` (the authors'
    ``LinearSyntheticDataset(input_type="random")``: ``X = Q`` from the QR factorisation of
    ``AAᵀ``, ``A = randn(d_in, d_in)``, an orthogonal matrix with dense rows; see
    :func:`make_data`).
    """

    d_in: int = 200
    d_out: int = 600
    rank: int = 8
    epochs: int = 100
    batch_size: int | None = None
    dtype: str = "float32"
    input_type: str = "eye"

    def __post_init__(self):
        _validate.check_int(self.d_in, "d_in", low=1)
        _validate.check_int(self.d_out, "d_out", low=1)
        _validate.check_rank(self.rank, (self.d_in, self.d_out))
        _validate.check_int(self.epochs, "epochs", low=0)
        if self.batch_size is not None:
            _validate.check_int(self.batch_size, "batch_size", low=1)
        _validate.check_choice(self.dtype, "dtype", ("float32", "float64"))
        _validate.check_choice(self.input_type, "input_type", ("eye", "random"))


@dataclass(frozen=True)
class Method:
    """A labelled optimizer factory ``make_optimizer(model)`` (and optional model builder)."""

    label: str
    make_optimizer: Callable
    make_model: Callable | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class LinearRun:
    """Per-epoch numbers of one run: ``excess[0]`` is at initialisation, ``excess[e]`` after
    epoch ``e``; ``f_opt = Σ_{i>r} σ_i(W*)²``; ``seconds`` is the wall time of the training.
    ``imbalance[e]`` is the momentum factors' ``‖M_U‖/‖M_V‖`` after epoch ``e`` (``None`` for
    an optimizer without low-rank momentum); ``adapter_imbalance`` is ``‖U‖/‖V‖``."""

    excess: np.ndarray
    f_opt: float
    seconds: float
    imbalance: np.ndarray | None = None
    adapter_imbalance: np.ndarray | None = None


@dataclass(frozen=True)
class LinearData:
    """One seed's data: inputs ``X`` (d_in × d_in, ``I`` or orthogonal), ``Y = X W*``
    (d_in × d_out) in the model dtype; the target ``W*ᵀ = Y_r + Y_tail`` split at rank r
    (float64) and ``f_opt = ‖Y_tail‖²``."""

    X: torch.Tensor
    Y: torch.Tensor
    Y_r: torch.Tensor
    Y_tail: torch.Tensor
    f_opt: float


def make_data(config, seed):
    """The :class:`LinearData` of ``seed`` (``W* = randn(d_in, d_out)`` after
    ``torch.manual_seed(seed)``, then for ``input_type="random"`` ``A = randn(d_in, d_in)`` and
    ``X = Q`` of ``qr(A Aᵀ)``, the authors' order of draws).

    Because the random ``X`` is orthogonal, the full loss ``‖X Wᵀ − X W*‖² = ‖W − W*ᵀ‖²`` is
    the one of ``X = I``, so ``f_opt`` and :func:`excess_loss` are unchanged; only the
    mini-batch gradients differ (every sample touches every input coordinate).  The
    authors' ``fopt`` for random inputs, ``‖W* − Y V_r V_rᵀ‖²`` with ``Y = X W*``, compares
    ``W*`` to a rotated matrix and is not the optimum (their code marks it "not yet sure").
    """
    dtype = getattr(torch, config.dtype)
    torch.manual_seed(seed)
    W_star = torch.randn(config.d_in, config.d_out, dtype=dtype)
    X = torch.eye(config.d_in, dtype=dtype)
    if config.input_type == "random":
        A = torch.randn(config.d_in, config.d_in, dtype=dtype).to(torch.float64)
        X = torch.linalg.qr(A @ A.T).Q.to(dtype)  # orthogonal to the model dtype's rounding
    T = W_star.T.to(torch.float64)
    U, s, Vh = torch.linalg.svd(T, full_matrices=False)
    r = config.rank
    Y_r = (U[:, :r] * s[:r]) @ Vh[:r]
    return LinearData(
        X=X,
        Y=W_star if config.input_type == "eye" else X @ W_star,
        Y_r=Y_r,
        Y_tail=T - Y_r,
        f_opt=float((s[r:] ** 2).sum()),
    )


def build_model(config, seed):
    """``LoRALinear(d_in, d_out, r, bias=False)`` with ``W0 = 0`` and the adapter at the top-r
    SVD of a default ``nn.Linear(d_in, d_out)`` drawn after ``torch.manual_seed(seed)``."""
    dtype = getattr(torch, config.dtype)
    torch.manual_seed(seed)
    ref = nn.Linear(config.d_in, config.d_out, bias=False)
    U, s, Vh = torch.linalg.svd(ref.weight.detach().to(torch.float64), full_matrices=False)
    root = s[: config.rank].sqrt()
    model = LoRALinear(config.d_in, config.d_out, config.rank, bias=False, init="zero",
                       dtype=dtype)
    with torch.no_grad():
        model.weight.zero_()
        model.set_factors((U[:, : config.rank] * root).to(dtype),
                          (Vh[: config.rank].mT * root).to(dtype))
    return model


def excess_loss(model, data):
    """``‖W − W*ᵀ‖² − f_opt`` for ``W = W0 + lora_B lora_A`` (SPEC §9).

    Evaluated as ``‖W − Y_r‖² − 2⟨W, Y_tail⟩`` in float64 (the two forms are equal because
    ``⟨Y_r, Y_tail⟩ = 0``), which avoids cancelling against ``f_opt ≈ 10⁵``: the value keeps
    its relative accuracy down to the rounding of the factors, and is ≥ 0 for rank-r ``W``.
    """
    with torch.no_grad():
        if hasattr(model, "lora_A"):
            W = model.lora_B.to(torch.float64) @ model.lora_A.to(torch.float64)
        else:
            W = model.delta_weight().to(torch.float64)
        W = W + model.weight.to(torch.float64)
        return float(((W - data.Y_r) ** 2).sum() - 2.0 * (W * data.Y_tail).sum())


def _momentum_imbalance(opt):
    """``‖M_U‖/‖M_V‖`` of the first LoRA layer's momentum, or None without one."""
    state = getattr(opt, "state", {})
    for st in state.values():
        if isinstance(st, dict) and "momentum_U" in st:
            return float(st["momentum_U"].norm() / st["momentum_V"].norm())
    return None


def _adapter_imbalance(model):
    if not hasattr(model, "lora_A"):
        return None
    return float(model.lora_B.detach().norm() / model.lora_A.detach().norm())


def run_linear(config, make_optimizer, seed=0, *, make_model=None, target_scale=1.0):
    """Train one model on the linear task; return a :class:`LinearRun` (per-epoch excess).

    ``make_optimizer(model)`` builds the optimizer; the loop is
    ``zero_grad(); loss.backward(); step()`` (``step(closure)`` for an optimizer with
    ``requires_closure``) with the sum-reduced MSE of each mini-batch.
    Batches are drawn by a generator seeded with ``seed`` (full batch: no shuffling).
    ``target_scale`` multiplies the targets ``W*`` and the initial adapter (so the problem is
    the same up to scale; the excess is reported divided by ``target_scale²``, so runs at
    different scales are directly comparable).
    """
    if not isinstance(config, LinearTaskConfig):
        raise TypeError(f"config must be a LinearTaskConfig; got {type(config).__name__}")
    seed = _validate.check_int(seed, "seed", low=0)
    c = _validate.check_real(target_scale, "target_scale", low=0.0, low_open=True)
    data = make_data(config, seed)
    if c != 1.0:
        data = LinearData(X=data.X, Y=c * data.Y, Y_r=c * data.Y_r, Y_tail=c * data.Y_tail,
                          f_opt=c * c * data.f_opt)
    X, Y = data.X, data.Y
    model = (make_model or build_model)(config, seed)
    if c != 1.0:
        with torch.no_grad():
            for p in (model.lora_A, model.lora_B):
                p.mul_(c ** 0.5)
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(seed)
    n = config.d_in
    bs = n if config.batch_size is None else min(config.batch_size, n)
    excess = [excess_loss(model, data) / c**2]
    imbalance = [_momentum_imbalance(opt)]
    adapter = [_adapter_imbalance(model)]
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.arange(n) if bs == n else torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i : i + bs]

            def closure(idx=idx):
                opt.zero_grad()
                loss = ((model(X[idx]) - Y[idx]) ** 2).sum()
                loss.backward()
                return loss

            if getattr(opt, "requires_closure", False):  # PSILoRAVR: two evaluations per step
                opt.step(closure)
            else:
                closure()
                opt.step()
        excess.append(excess_loss(model, data) / c**2)
        imbalance.append(_momentum_imbalance(opt))
        adapter.append(_adapter_imbalance(model))
    seconds = time.perf_counter() - start
    if hasattr(opt, "remove_hooks"):
        opt.remove_hooks()
    return LinearRun(
        excess=np.asarray(excess), f_opt=data.f_opt / c**2, seconds=seconds,
        imbalance=None if imbalance[-1] is None else np.asarray(imbalance, dtype=float),
        adapter_imbalance=None if adapter[-1] is None else np.asarray(adapter, dtype=float),
    )


def run_method(config, method, seeds=(0, 1, 2, 3, 4)):
    """Run ``method`` for each seed; return the ``(len(seeds), epochs + 1)`` excess array and
    the mean seconds per run."""
    runs = [run_linear(config, method.make_optimizer, s, make_model=method.make_model)
            for s in seeds]
    return np.stack([r.excess for r in runs]), float(np.mean([r.seconds for r in runs]))


def _lora_params(model):
    return [model.lora_A, model.lora_B]


#: The two PSI-LoRA variants of the mini-batch figures (issue 15): the authors' code (no
#: balancing, their 1e-6 jitter on every Gram solve) and this project's default (the momentum
#: pair balanced after each momentum LoRSum, no jitter).
VARIANTS = {
    "as published (unbalanced)": {"balance": "none", "gram_jitter": 1e-6},
    "balanced": {"balance": DEFAULT_BALANCE, "gram_jitter": 0.0},
}
#: The published algorithm without the authors' jitter (the late divergence of issue 15).
DIAGNOSTIC = ("unbalanced, no jitter", {"balance": "none", "gram_jitter": 0.0})


def paper_methods(setting, *, momentum_ranks=(1,), variants=tuple(VARIANTS), diagnostics=False):
    """The labelled methods of the paper's runs (paper.md §9.1 tables, §9.2).

    ``setting`` is ``"fullbatch"`` (lr 0.5, no momentum), ``"minibatch"`` (batch 64, momentum
    0.75) or ``"momentum_rank"`` (SVDLoRA and PSI-LoRA ×{1, 2, 8} with
    ``r_M = r × momentum_ranks``).  λ0 = 1e-3 for PSI-LoRA and RPLoRA; AdamW has
    betas (0.9, 0.999) and weight decay 1e-4.  With momentum, each PSI-LoRA ×K appears once
    per entry of ``variants`` (keys of :data:`VARIANTS`), labelled ``"PSI-LoRA x1, balanced"``
    etc.; ``diagnostics=True`` adds PSI-LoRA ×1 in the :data:`DIAGNOSTIC` setting.
    """
    _validate.check_choice(setting, "setting", ("fullbatch", "minibatch", "momentum_rank"))
    for v in variants:
        _validate.check_choice(v, "variants[i]", tuple(VARIANTS))
    wd = 1e-4

    def M(label, fn, **settings):
        return Method(label, fn, settings={"method": label, **settings})

    if setting == "fullbatch":
        methods = [
            M("SVDLoRA", lambda m: SVDLoRA(m, 0.5), lr=0.5),
            M("LoRA SGD", lambda m: torch.optim.SGD(_lora_params(m), lr=0.01), lr=0.01),
            M("LoRA AdamW", lambda m: torch.optim.AdamW(_lora_params(m), lr=0.5,
                                                       weight_decay=wd), lr=0.5),
            M("RPLoRA SGD", lambda m: RPLoRA(m, 0.48, ridge=1e-3), lr=0.48),
            M("RPLoRA AdamW", lambda m: RPLoRA(m, 0.5, ridge=1e-3, optimizer="adamw",
                                               weight_decay=wd), lr=0.5),
        ]
        for K in (1, 2, 8, 32, 128):
            methods.append(M(f"PSI-LoRA x{K}",
                             lambda m, K=K: PSILoRA(m, 0.5, iters=K, ridge=1e-3), lr=0.5, iters=K))
        return methods
    mu = 0.75
    runs = [(v, VARIANTS[v]) for v in variants]

    def psi(K, mult, name, kw):
        rank = "" if mult is None else f" rM={'' if mult == 1 else mult}r"
        label = f"PSI-LoRA x{K}{rank}, {name}"
        return Method(label, lambda m: PSILoRA(
            m, 0.1, iters=K, ridge=1e-3, momentum=mu, momentum_rank=(mult or 1) * m.rank, **kw),
            settings={"method": f"PSI-LoRA x{K}", "lr": 0.1, "iters": K,
                      "momentum_rank_mult": mult or 1, **kw})

    if setting == "minibatch":
        methods = [
            M("SVDLoRA", lambda m: SVDLoRA(m, 0.1, momentum=mu), lr=0.1),
            M("LoRA SGD", lambda m: torch.optim.SGD(_lora_params(m), lr=0.002, momentum=mu),
              lr=0.002),
            M("LoRA AdamW", lambda m: torch.optim.AdamW(_lora_params(m), lr=0.05,
                                                       weight_decay=wd), lr=0.05),
            M("RPLoRA SGD", lambda m: RPLoRA(m, 0.1, ridge=1e-3, momentum=mu), lr=0.1),
            M("RPLoRA AdamW", lambda m: RPLoRA(m, 0.05, ridge=1e-3, optimizer="adamw",
                                               weight_decay=wd), lr=0.05),
        ]
        methods += [psi(K, None, name, kw) for name, kw in runs for K in (1, 2, 8)]
        for K in (1, 2, 8):
            methods.append(M(f"Proj. PSI-LoRA x{K}", lambda m, K=K: ProjPSILoRA(
                m, 0.1, iters=K, ridge=1e-3, momentum=mu), lr=0.1, iters=K))
    else:
        methods = [M("SVDLoRA", lambda m: SVDLoRA(m, 0.1, momentum=mu), lr=0.1)]
        methods += [psi(K, mult, name, kw) for name, kw in runs for K in (1, 2, 8)
                    for mult in momentum_ranks]
    if diagnostics:
        methods.append(psi(1, None, *DIAGNOSTIC))
    return methods


def config_dict(config):
    """The config as a plain dict (for JSON sidecars)."""
    return asdict(config)

"""Base class of the LoRA optimizers that work on the captured layer gradient ``G = Δᵀ X``.

:class:`LoRAOptimizer` owns everything that is not the per-layer update rule (SPEC §6):

- discovery of the LoRA layers (modules with ``lora_A`` (r × in) and ``lora_B`` (out × r):
  :class:`lowrank_prox.nn.LoRALinear` or a PEFT ``lora.Linear``, see :mod:`._peft`) and hooks that
  capture ``X`` and ``Δ`` (:mod:`._capture`), so ``G`` is never formed;
- the optimizer of the *other* trainable parameters (SGD-momentum by default, or any torch
  optimizer built by a factory), whose learning rates follow the LoRA group's schedule;
- implicit global clipping, ``‖G‖² = ⟨XXᵀ, ΔΔᵀ⟩`` per layer (SPEC §6, paper.md §10.4);
- the NaN/Inf skip: if any captured gradient, any other gradient or any new factor is not
  finite, the whole step is skipped and parameters and state are left unchanged;
- float32 (at least) arithmetic for bf16/fp16 parameters, results written back in the
  parameters' dtype and device; per-layer state kept in the compute dtype;
- ``state_dict`` / ``load_state_dict`` that resume bit-identically (the state's dtypes are kept,
  unlike ``torch.optim.Optimizer.load_state_dict`` which casts them to the parameters' dtype).

How to subclass
---------------
Pass the per-group hyper-parameters as ``defaults`` and implement :meth:`_layer_step`::

    class MyLoRA(LoRAOptimizer):
        def __init__(self, model, lr, *, ridge=1e-3, **kwargs):
            ridge = _validate.check_real(ridge, "ridge", low=0.0)
            super().__init__(model, lr, defaults={"ridge": ridge}, **kwargs)

        def _init_layer_state(self, layer, group):      # optional, called once per layer
            return {"step": 0}

        def _layer_step(self, layer, grad, group, state):
            U, V = layer.factors()                      # W = W0 + U Vᵀ, compute dtype, copies
            lam = self._ridge(group)                    # λ = group["lr"] · group["ridge"]
            target = grad.as_sum(-group["lr"], extra=[(1.0, U, V)])   # U Vᵀ − η G
            U, V = lorsum(target, U, V, ridge=lam, check_finite=False)
            return (U, V), {**state, "step": state["step"] + 1}

``grad`` is a :class:`CapturedGradient` (clip factor included).  ``_layer_step`` must not modify
``state`` or its tensors in place: it returns the new factors and a new state dict, and the base
commits them only when every layer's result is finite.  A layer that received no gradient since
the last step is not stepped.
"""

from __future__ import annotations

import copy
import functools
import itertools
import warnings
import weakref

import torch
from torch import nn

from .. import _validate, _xp
from ..factored import LowRankSum
from ._capture import ACCUMULATION, GradientCapture

__all__ = [
    "CapturedGradient",
    "LoRALayer",
    "LoRAOptimizer",
    "NonFiniteStepWarning",
    "step_in_backward",
]


class NonFiniteStepWarning(UserWarning):
    """A step was skipped because a gradient or an update was not finite."""


class LoRALayer:
    """One adapted layer as the optimizers see it: ``W = W0 + U Vᵀ``, ``U = B``, ``Vᵀ = A``."""

    #: The scaling ``s`` of ``W = W0 + s·B A`` that the optimizer's factors leave out
    #: (``peft_scaling="ignore"``: ``U = B`` although the layer computes ``s·B A``); 1 otherwise.
    ignored_scaling = 1.0

    def __init__(self, name, module, A, B):
        self.name = name
        self.module = module
        self.A = A
        self.B = B
        self.rank, self.in_features = A.shape
        self.out_features = B.shape[0]
        self.dtype = compute_dtype(B.dtype)
        self.capture = None

    def hook_factors(self, owner):
        """Hooks that keep autograd from computing the factors' unused ``.grad``: none here.

        :class:`~lowrank_prox.optim._peft.PeftLoRALayer` has some (see ``factor_grads``).
        Returns the list of hook handles.
        """
        return []

    def factors(self):
        """Copies ``(U, V)`` = ``(B, Aᵀ)`` in the compute dtype (float32 at least)."""
        U = self.B.detach().to(self.dtype, copy=True)
        V = self.A.detach().mT.to(self.dtype, copy=True)
        return U, V

    @torch.no_grad()
    def write(self, U, V):
        """``B ← U``, ``A ← Vᵀ`` (cast to the parameters' dtype, in place)."""
        self.B.copy_(U)
        self.A.copy_(V.mT)

    def __repr__(self):
        return (
            f"LoRALayer({self.name!r}, in={self.in_features}, out={self.out_features}, "
            f"rank={self.rank})"
        )


class CapturedGradient:
    """The layer gradient ``G = scale · Δᵀ X`` (out × in), kept factored (SPEC §1).

    ``X`` is ``(N, in)``, ``Delta`` is ``(N, out)``, both in the compute dtype; ``scale`` is the
    global clipping factor (1 without clipping).
    """

    def __init__(self, X, Delta, scale=1.0):
        self.X = X
        self.Delta = Delta
        self.scale = scale

    @property
    def shape(self):
        return (self.Delta.shape[1], self.X.shape[1])

    def term(self, coef=1.0):
        """The ``LowRankSum`` term ``(coef·scale, Δᵀ, Xᵀ)`` of ``coef · G``."""
        return (coef * self.scale, self.Delta.mT, self.X.mT)

    def as_sum(self, coef=1.0, *, extra=()):
        """``LowRankSum(extra + [coef · G])``: the target of a LoRSum call."""
        return LowRankSum([*extra, self.term(coef)], check_finite=False)

    def to(self, dtype):
        """The same gradient with its rows in ``dtype`` (``self`` if they already are)."""
        if self.X.dtype == dtype and self.Delta.dtype == dtype:
            return self
        return CapturedGradient(self.X.to(dtype), self.Delta.to(dtype), self.scale)

    def isfinite(self):
        """Whether every captured row is finite (a Python bool; one read of each block)."""
        return _xp.all_finite(self.X) and _xp.all_finite(self.Delta)

    def norm_sq(self):
        """``‖G‖² = scale² ‖ΔᵀX‖²`` (a Python float), by the cheaper of two exact formulas.

        ``⟨XXᵀ, ΔΔᵀ⟩`` costs ``N²(m + n)`` and forms no m×n matrix; the dense ``‖ΔᵀX‖²`` costs
        ``N m n`` and holds one m×n matrix.  The Gram form is used when ``N (m + n) ≤ m n``
        (few rows), the dense one otherwise (many tokens: at N = 2048 rows of a 768 → 2304
        layer the Gram form is 3.6× the flops).
        """
        X, D = self.X, self.Delta
        N, n = X.shape
        m = D.shape[1]
        if N * (m + n) <= m * n:
            total = ((X @ X.mT) * (D @ D.mT)).sum()
        else:
            total = (D.mT @ X).square().sum()
        return float(total) * self.scale**2

    def dense(self):
        """``G`` as an (out × in) tensor (for the baselines that keep full matrices)."""
        return self.scale * (self.Delta.mT @ self.X)


def ridge_gram(F, lam):
    """``FᵀF + λI`` (the r×r system of the preconditioned / LoRSum steps, SPEC §3)."""
    G = F.mT @ F
    if lam > 0:
        G = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return G


def compute_dtype(dtype):
    """float32 for half-precision parameters, the parameters' dtype otherwise."""
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def find_lora_layers(model, peft_scaling="fold"):
    """Every module of ``model`` with ``lora_A`` and ``lora_B`` whose factors are trainable.

    ``peft_scaling="fold"`` maps a layer ``W0 + s·B A`` to ``U = s·B`` (PEFT layers; other
    layers must have ``s = 1``); ``"ignore"`` to ``U = B`` whatever ``s`` (the authors' code,
    :mod:`._published`).
    """
    from ._peft import is_peft_lora_layer, peft_lora_layer  # PEFT layers: U = s·B (see _peft)

    layers = []
    for name, module in model.named_modules():
        if is_peft_lora_layer(module):
            layer = peft_lora_layer(name, module)
            if layer is not None:
                layer.fold = peft_scaling == "fold"
                layers.append(layer)
            continue
        if not (hasattr(module, "lora_A") and hasattr(module, "lora_B")):
            continue
        A = _factor(module.lora_A, name, "lora_A")
        B = _factor(module.lora_B, name, "lora_B")
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(
                f"layer {name!r}: lora_A must be (rank, in) and lora_B (out, rank); got "
                f"{tuple(A.shape)} and {tuple(B.shape)}"
            )
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            scaling = next(iter(scaling.values()), None)
        if scaling is not None and float(scaling) != 1.0 and peft_scaling == "fold":
            raise ValueError(
                f"layer {name!r} scales its adapter by {float(scaling)}; these optimizers need "
                "W = W0 + lora_B @ lora_A (set lora_alpha = r, or peft_scaling='ignore')"
            )
        if A.requires_grad and B.requires_grad:
            layer = LoRALayer(name, module, A, B)
            if scaling is not None:
                layer.ignored_scaling = float(scaling)
            layers.append(layer)
    return layers


def _factor(obj, name, attr):
    if isinstance(obj, nn.ModuleDict):
        if len(obj) != 1:
            raise ValueError(
                f"layer {name!r}: {attr} holds {len(obj)} adapters; exactly one is supported"
            )
        obj = next(iter(obj.values()))
    if isinstance(obj, nn.Module):
        obj = getattr(obj, "weight", None)
    if not isinstance(obj, torch.Tensor):
        raise TypeError(f"layer {name!r}: {attr} must be a parameter or a module with a weight")
    return obj


class LoRAOptimizer(torch.optim.Optimizer):
    """Base of the optimizers that step LoRA factors from the captured ``G = Δᵀ X`` (SPEC §6).

    See the module docstring for what the base does and how to subclass.

    Parameters
    ----------
    model : torch.nn.Module
        Must contain at least one LoRA layer (a module with trainable ``lora_A``, ``lora_B``).
        The optimizer registers forward hooks on those layers; call :meth:`remove_hooks` to
        detach them (a discarded optimizer's hooks capture nothing).
    lr : float
        Step size η ≥ 0 of the LoRA group (``param_groups[0]["lr"]``, moved by LR schedulers).
    defaults : dict
        Extra hyper-parameters of the LoRA group.
    max_grad_norm : float or None
        Global clipping threshold ``c > 0`` over all LoRA layers and other parameters:
        gradients are scaled by ``min(1, c / (‖g‖ + 1e-6))`` (paper.md §10.4).
    other_optimizer : callable or None
        ``params -> torch.optim.Optimizer`` for the other trainable parameters (biases, heads),
        e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``.  Default: SGD with ``lr``,
        ``other_momentum`` and ``other_dampening``.  Its learning rates are multiplied by the
        LoRA group's ``lr / lr_initial`` at each step, so one scheduler drives both.
    other_momentum, other_dampening : float
        Momentum of the default SGD for the other parameters.
    peft_scaling : {"fold", "ignore"}, default "fold"
        How a layer ``W0 + s·B A`` with PEFT scaling ``s = α/r`` maps to ``(U, V)``: ``"fold"``
        takes ``U = s·B`` (the step is the method's step on the adapter actually used,
        :mod:`._peft`); ``"ignore"`` takes ``U = B`` as the authors' code does, so the adapter
        moves by ``s`` times the method's step (RPLoRA, which uses the autograd factor
        gradients there, then sees ``s·G``).  The two agree at ``s = 1`` (``lora_alpha = r``,
        the authors' runs).

    Attributes
    ----------
    track_grad_norm : bool
        Compute ``last_grad_norm`` at every step even without clipping (about one ``N m n``
        product per layer); default False.  :class:`~lowrank_prox.optim.CapturedGradNormCallback`
        sets it on the Trainer's logging steps.
    last_grad_norm : float or None
        ``‖g‖`` of the last step before clipping: the captured ``G`` of every LoRA layer and the
        ``.grad`` of the other parameters (what ``max_grad_norm`` clips).  Set by steps that
        clip or that run with ``track_grad_norm``; ``None`` before.
    skipped_steps : int
        Steps skipped because a gradient or an update was not finite.
    factor_grads : bool
        Whether autograd also computes the ``.grad`` of PEFT layers' ``lora_A``/``lora_B``,
        which the step does not use (default False: they stay ``None`` and their backward
        products are skipped, see :mod:`lowrank_prox.optim._peft`).  Layers of
        :class:`lowrank_prox.nn.LoRALinear` always get their ``.grad``.
    """

    def __init__(
        self,
        model,
        lr,
        *,
        defaults=None,
        max_grad_norm=None,
        other_optimizer=None,
        other_momentum=0.0,
        other_dampening=0.0,
        peft_scaling="fold",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        lr = _validate.check_real(lr, "lr", low=0.0)
        if max_grad_norm is not None:
            max_grad_norm = _validate.check_real(
                max_grad_norm, "max_grad_norm", low=0.0, low_open=True
            )
        other_momentum = _validate.check_real(
            other_momentum, "other_momentum", low=0.0, high=1.0, high_open=True
        )
        other_dampening = _validate.check_real(
            other_dampening, "other_dampening", low=0.0, high=1.0
        )
        if other_optimizer is not None and not callable(other_optimizer):
            raise TypeError(
                "other_optimizer must be a callable params -> torch.optim.Optimizer (e.g. "
                "functools.partial(torch.optim.AdamW, lr=1e-3)); got "
                f"{type(other_optimizer).__name__}"
            )
        from ._published import check_peft_scaling

        peft_scaling = check_peft_scaling(peft_scaling)
        layers = find_lora_layers(model, peft_scaling)
        if not layers:
            raise ValueError(
                "model must contain at least one LoRA layer (a module with trainable lora_A and "
                "lora_B, e.g. lowrank_prox.nn.LoRALinear via add_lora); got none"
            )
        params = [p for layer in layers for p in (layer.A, layer.B)]
        seen = {id(p) for p in params}
        others = []
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                others.append(p)
        group_defaults = {"lr": lr, "max_grad_norm": max_grad_norm, "peft_scaling": peft_scaling,
                          **(defaults or {})}
        super().__init__([{"params": params, "kind": "lora"}], group_defaults)

        self._layers = layers
        self._layer_of = {id(layer.B): layer for layer in layers}
        self._lr0 = lr
        self._other = None
        self._other_lr0 = []
        if others:
            if other_optimizer is None:
                self._other = torch.optim.SGD(
                    others, lr=lr, momentum=other_momentum, dampening=other_dampening
                )
            else:
                self._other = other_optimizer(others)
                if not isinstance(self._other, torch.optim.Optimizer):
                    raise TypeError(
                        "other_optimizer must return a torch.optim.Optimizer; got "
                        f"{type(self._other).__name__}"
                    )
            self._other_lr0 = [g["lr"] for g in self._other.param_groups]
        self.skipped_steps = 0
        self.track_grad_norm = False
        self.last_grad_norm = None
        self._step_in_backward = False
        self._ready = {}  # id(layer) -> _LayerResult computed in backward (step_in_backward)
        self.factor_grads = False
        self._factor_hooks = []
        for layer in layers:
            layer.capture = GradientCapture(
                layer.module, layer.in_features, layer.out_features, self
            )
            self._factor_hooks += layer.hook_factors(self)
            self.state[layer.B].update(self._init_layer_state(layer, self.param_groups[0]))

    # -- subclass interface ---------------------------------------------------------------
    def _init_layer_state(self, layer, group):
        """Initial state of one layer (a dict); default empty."""
        return {}

    def _layer_step(self, layer, grad, group, state):
        """Return ``((U_new, V_new), new_state)`` for one layer; see the module docstring."""
        raise NotImplementedError

    #: Per-layer convergence recorder (:class:`lowrank_prox.optim.SubspaceDiagnostics`) or
    #: ``None`` (off: :meth:`_diagnose` is one attribute test).
    diagnostics = None

    def _attach_diagnostics(self, diagnostics):
        """Constructor helper of the ``diagnostics`` option: ``False`` leaves it off, ``True`` or
        a :class:`~lowrank_prox.optim.SubspaceDiagnostics` sets :attr:`diagnostics`."""
        if diagnostics is not False:
            from ._diagnostics import SubspaceDiagnostics

            SubspaceDiagnostics.attach_to(self, diagnostics)

    def _diagnose(self, layer, call, target, start, result, **info):
        """Hand one LoRSum call (target, warm start, result) to :attr:`diagnostics`, if set."""
        if self.diagnostics is not None:
            self.diagnostics.record(layer, call, target, start, result, **info)

    def _ridge(self, group):
        """The proximal weight λ = η·λ0 of this step (SPEC §3), following the scheduled lr."""
        return group["lr"] * group["ridge"]

    # -- public ---------------------------------------------------------------------------
    @property
    def layers(self):
        """The adapted layers, in ``model.named_modules()`` order."""
        return list(self._layers)

    @property
    def other_optimizer(self):
        """The optimizer of the non-LoRA trainable parameters, or ``None``."""
        return self._other

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every LoRA layer that received a gradient and of the other parameters.

        Returns the closure's loss.  If any gradient or any new factor is not finite the whole
        step is skipped (a :class:`NonFiniteStepWarning` is issued, ``skipped_steps`` counts
        it): parameters and state stay as they were.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            self._step()
        finally:
            self._ready = {}
            for layer in self._layers:
                layer.capture.clear()
        return loss

    def zero_grad(self, set_to_none=True):
        """Zero ``.grad`` of all parameters and free the captured rows that have a gradient.

        With ``step_in_backward`` the steps computed in backward and not yet committed are
        dropped too (like ``.grad``).
        """
        super().zero_grad(set_to_none=set_to_none)
        if self._other is not None:
            self._other.zero_grad(set_to_none=set_to_none)
        self._ready = {}
        for layer in self._layers:
            layer.capture.clear(completed_only=True)

    #: The gradient-accumulation mode (see :meth:`set_accumulation`).
    accumulation = "concat"
    accumulation_rank = None

    def set_accumulation(self, method="concat", rank=None, *, iters=2, seed=None):
        """Choose how the captured rows of several backward passes are accumulated; returns self.

        ``"concat"`` (default) keeps every row: the captured ``G = Σ_passes ΔᵀX`` is exact, as
        ``.grad``.  The compressions keep at most ``rank`` rows per layer between backward
        passes (the authors' ``grad_compression_method``; formulas and guarantees in
        :mod:`lowrank_prox.optim._capture`): ``"lorsum"`` (rank-k LoRSum of ``G``, λ = 0,
        deterministic, error ≥ the SVD tail), ``"sample"`` (importance-sampled, reweighted
        rows), ``"sketch"`` (Rademacher sketch), ``"centred_sketch"`` (sketch of the centred
        rows plus the mean row); the last three are unbiased, ``E[G'] = G``.

        Parameters
        ----------
        method : {"concat", "lorsum", "sample", "sketch", "centred_sketch"}
        rank : int or None
            k ≥ 1 (≥ 2 for ``"centred_sketch"``); default the row count of the first pass
            after each ``step``/``zero_grad`` (the authors' budget: one batch).  With
            ``k ≥ min(in, out)`` a layer's ``G`` is stored exactly.
        iters : int, default 2
            LoRSum iterations K of ``"lorsum"``.
        seed : int or None
            Seed of the random compressions (default torch's global generator).  The
            generator's state is not part of ``state_dict``.
        """
        _validate.check_choice(method, "method", ACCUMULATION)
        if rank is not None:
            rank = _validate.check_int(rank, "rank", low=2 if method == "centred_sketch" else 1)
        iters = _validate.check_int(iters, "iters", low=0)
        if seed is not None:
            seed = _validate.check_int(seed, "seed")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        for layer in self._layers:
            cap = layer.capture
            cap.accumulation, cap.accumulation_rank = method, rank
            cap.accumulation_iters, cap.generator = iters, generator
        self.accumulation, self.accumulation_rank = method, rank
        return self

    def remove_hooks(self):
        """Detach the capture hooks from the model (the optimizer cannot step afterwards)."""
        for layer in self._layers:
            layer.capture.remove()
        for handle in self._factor_hooks:
            handle.remove()
        self._factor_hooks = []

    def state_dict(self):
        sd = super().state_dict()
        if self._other is not None:
            sd["other_optimizer"] = self._other.state_dict()
        sd["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        other = state_dict.pop("other_optimizer", None)
        self.skipped_steps = state_dict.pop("skipped_steps", 0)
        if (other is None) != (self._other is None):
            raise ValueError(
                "state_dict does not match this optimizer: other_optimizer state "
                f"{'missing' if other is None else 'present'} but this model has "
                f"{'some' if self._other is not None else 'no'} other trainable parameters"
            )
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameters' dtype; restore the saved dtypes exactly.
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        current = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        by_id = dict(zip(saved_ids, current, strict=True))
        for pid, st in state_dict["state"].items():
            p = by_id[pid]
            self.state[p] = {
                k: (v.to(device=p.device, copy=True) if isinstance(v, torch.Tensor)
                    else copy.deepcopy(v))
                for k, v in st.items()
            }
        if other is not None:
            self._other.load_state_dict(other)

    # -- private --------------------------------------------------------------------------
    def _captured_work(self):
        """``[(layer, CapturedGradient, group)]`` of the layers with rows, rows in their dtype."""
        work = []
        for group in self.param_groups:
            if group.get("kind") != "lora":
                continue
            for B in group["params"][1::2]:
                layer = self._layer_of[id(B)]
                rows = layer.capture.rows()
                if rows is not None:
                    work.append((layer, CapturedGradient(*rows), group))
        return work

    def _group_of(self, layer):
        for group in self.param_groups:
            if any(p is layer.B for p in group["params"]):
                return group
        raise KeyError(layer.name)  # pragma: no cover - every layer's B is in a group

    def _compute(self, layer, grad, group):
        """One layer's step in the compute dtype (the rows are cast here, one layer at a time)."""
        (U, V), new_state = self._layer_step(layer, grad.to(layer.dtype), group,
                                             self.state[layer.B])
        return _LayerResult(layer, U, V, new_state)

    def _backward_step(self, layer):
        """``step_in_backward``: the step of ``layer`` as soon as its ``Δ`` is known.

        Runs in the autograd hook that received the last pending ``Δ`` of the layer (after
        every live forward call of it got its gradient: weight sharing is handled).  The rows
        are taken from the capture and freed; the new factors and state are kept aside (they
        are ``r (m + n)`` numbers) and written by ``step()``, because autograd still needs the
        current ``lora_A``/``lora_B`` to propagate ``Δ`` through this layer.  The learning rate
        is the group's at that moment, as in ``step()``.
        """
        if id(layer) in self._ready:
            raise RuntimeError(
                f"step_in_backward: layer {layer.name!r} received a second backward pass before "
                "step(); gradient accumulation over several backward passes needs "
                "step_in_backward=False (or call step() after every backward)"
            )
        rows = layer.capture.take()
        if rows is None:  # pragma: no cover - on_ready fires after a gradient arrived
            return
        with torch.no_grad():
            grad = CapturedGradient(*rows)
            del rows
            if grad.isfinite():
                result = self._compute(layer, grad, self._group_of(layer))
                if self.track_grad_norm:
                    result.norm_sq = grad.to(layer.dtype).norm_sq()
            else:
                result = _LayerResult(layer, None, None, None)
                result.finite = False
        self._ready[id(layer)] = result

    def _step(self):
        work = self._captured_work()
        ready = list(self._ready.values())
        others = [] if self._other is None else [
            p for g in self._other.param_groups for p in g["params"] if p.grad is not None
        ]
        sync = getattr(self, "_data_parallel", None)  # set by optim.distributed.data_parallel
        if sync is not None:  # the global batch's gradients and one finiteness verdict
            work, finite = sync.synchronize(self, work, others)
        else:
            finite = all(g.isfinite() for _, g, _ in work)
            finite = finite and all(_xp.all_finite(p.grad) for p in others)
        finite = finite and all(r.finite for r in ready)
        if not finite:
            return self._skip("a captured or other gradient contains NaN/Inf")

        coef = self._clip(work, [p.grad for p in others], ready)
        results = ready
        for layer, grad, group in work:
            results.append(self._compute(layer, grad, group))
        del work
        if not all(r.update_is_finite() for r in results):
            return self._skip("an update is not finite")
        self._commit(results, others, coef)

    def _clip(self, work, other_grads, ready=()):
        """Global clipping factor of one gradient (sets ``last_grad_norm`` and each ``g.scale``).

        ``‖g‖² = Σ_layers ‖G‖² + Σ ‖other grad‖²``; the factor is ``min(1, c/(‖g‖ + 1e-6))``
        without clipping 1.  ``work`` as :meth:`_captured_work`, ``other_grads`` tensors.
        """
        clip = self.param_groups[0]["max_grad_norm"]
        coef = 1.0
        if clip is not None or self.track_grad_norm:
            total = sum(g.to(layer.dtype).norm_sq() for layer, g, _ in work)
            total += sum(r.norm_sq or 0.0 for r in ready)
            total += sum(float(t.double().pow(2).sum()) for t in other_grads)
            self.last_grad_norm = total**0.5
            if clip is not None:
                coef = min(1.0, clip / (total**0.5 + 1e-6))
                for _, g, _ in work:
                    g.scale = coef
        return coef

    def _commit(self, results, others, coef):
        """Write finite ``results`` and step the other parameters (their ``.grad`` times coef)."""
        for r in results:
            r.layer.write(r.U, r.V)
            self.state[r.layer.B] = r.state
        if others:
            if coef < 1.0:
                for p in others:
                    p.grad.mul_(coef)
            ratio = self.param_groups[0]["lr"] / self._lr0 if self._lr0 > 0 else 1.0
            for g, lr0 in zip(self._other.param_groups, self._other_lr0, strict=True):
                g["lr"] = lr0 * ratio
            self._other.step()

    def _skip(self, why):
        self.skipped_steps += 1
        warnings.warn(
            f"{type(self).__name__}: step skipped, {why}; parameters and state unchanged",
            NonFiniteStepWarning,
            stacklevel=3,
        )


class _LayerResult:
    """One layer's new factors and state, committed by ``step()`` if every layer's is finite."""

    __slots__ = ("U", "V", "finite", "layer", "norm_sq", "state")

    def __init__(self, layer, U, V, state):
        self.layer, self.U, self.V, self.state = layer, U, V, state
        self.finite = True
        self.norm_sq = None

    def update_is_finite(self):
        tensors = [self.U, self.V, *(v for v in self.state.values() if isinstance(v, torch.Tensor))]
        return all(_xp.all_finite(t) for t in tensors)


def step_in_backward(optimizer, enable=True):
    """Make ``optimizer`` compute each layer's step in the backward pass; returns it.

    Each LoRA layer's step (:meth:`LoRAOptimizer._layer_step`, the same computation as in
    ``step()``) runs in the autograd hook that receives the layer's ``Δ``, once every live
    forward call of the layer has its gradient; the layer's rows ``X``, ``Δ`` are freed there,
    so the optimizer holds at most one layer's rows at a time instead of every layer's from
    backward to ``step()``.  The new factors and state (``r (m + n)`` numbers per layer) are
    kept aside and ``step()`` commits them after one NaN/Inf verdict over all layers (a
    non-finite gradient or update anywhere skips the whole step, as usual), then steps the other
    parameters.  The result equals the ordinary step (same arithmetic on the same rows).

    Supported: every :class:`LoRAOptimizer` (PSI-LoRA with momentum, Proj. PSI-LoRA, Scaled
    PSI-LoRA, SVDLoRA, RPLoRA), weight sharing (several calls of a layer in one backward), LR
    schedulers, ``track_grad_norm`` (per-layer norms summed at ``step()``), bf16 models.
    Not supported (a clear error): global clipping (``max_grad_norm``: every layer's norm is
    needed before the first layer steps; ``ValueError`` here), gradient accumulation over
    several backward passes per ``step()`` (``RuntimeError`` in the second backward: the first
    one already consumed the rows), :func:`~lowrank_prox.optim.distributed.data_parallel` (the
    step needs the global rows; ``ValueError``).  ``enable=False`` restores the ordinary mode.
    """
    if not isinstance(optimizer, LoRAOptimizer):
        raise TypeError(
            "optimizer must be a lowrank_prox.optim.LoRAOptimizer (PSILoRA, ScaledPSILoRA, ...); "
            f"got {type(optimizer).__name__}"
        )
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool; got {type(enable).__name__}")
    if enable:
        clip = optimizer.param_groups[0]["max_grad_norm"]
        if clip is not None:
            raise ValueError(
                "step_in_backward cannot clip globally (every layer's norm is needed before the "
                f"first layer steps); got an optimizer with max_grad_norm={clip}"
            )
        if getattr(optimizer, "_data_parallel", None) is not None:
            raise ValueError(
                "step_in_backward does not combine with data_parallel (the step needs the "
                "global batch's rows); got a data-parallel optimizer"
            )
    optimizer._ready = {}
    optimizer._step_in_backward = enable
    ref = weakref.ref(optimizer)
    for layer in optimizer._layers:
        layer.capture.on_ready = functools.partial(_on_ready, ref, layer) if enable else None
    return optimizer


def _on_ready(optimizer_ref, layer):
    """``GradientCapture.on_ready`` of ``step_in_backward`` (holds the optimizer weakly)."""
    optimizer = optimizer_ref()
    if optimizer is not None:
        optimizer._backward_step(layer)

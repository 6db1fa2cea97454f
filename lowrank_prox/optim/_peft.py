"""PEFT LoRA layers as the optimizers see them: ``W = W0 + s·B A`` with ``U = s·B``, ``V = Aᵀ``.

A PEFT ``lora.Linear`` (``peft.tuners.lora.layer.Linear``) computes, for its active adapter,

    y = base_layer(x) + s · lora_B(lora_A(dropout(x))),    s = scaling[adapter] = α / r

(``α/√r`` with rsLoRA).  ``lora_A[adapter].weight`` is ``(r, in)`` and ``lora_B[adapter].weight``
is ``(out, r)`` whatever the base layer: with ``fan_in_fan_out=True`` (GPT-2's ``Conv1D``, whose
weight is stored ``(in, out)``) only the *base* weight is transposed, the adapter branch is two
ordinary ``nn.Linear`` layers, so ``y`` is still ``x (W0 + s B A)ᵀ + b`` in the usual orientation.

Mapping to SPEC notation (SPEC §1, §6).  The adapter is ``U Vᵀ = s · B A`` with

    U = s · lora_B    (out × r),        V = lora_Aᵀ    (in × r).

:meth:`PeftLoRALayer.factors` returns these (compute dtype, copies) and
:meth:`PeftLoRALayer.write` stores ``lora_B ← U / s``, ``lora_A ← Vᵀ`` (parameters' dtype), so
after a step ``s · lora_B @ lora_A`` is exactly the method's new adapter ``U Vᵀ``.  The scaling is
read at every call, so ``set_scale`` between steps is honoured.  Folding ``s`` into the U side is a
convention: the adapter product — all that PSI-LoRA, SVDLoRA and the ``G`` of every method see —
does not depend on it, but the ridge ``λ(‖U − U_a‖² + ‖V − V_a‖²)`` and factor-wise rules
(RPLoRA's Adam, Proj. PSI-LoRA's buffers) are defined in these ``(U, V)`` coordinates.  A PEFT
layer with scaling ``s`` then takes exactly the step of a :class:`lowrank_prox.nn.LoRALinear`
holding ``lora_B = s·B``, ``lora_A = A``.  ``peft_scaling="ignore"`` (an optimizer option, the
authors' convention) maps instead ``U = lora_B``: the step is then computed as if the adapter were
``B A`` and the layer's ``s·B A`` moves by ``s`` times it (the two agree at ``s = 1``).

Captured gradient and dropout.  The capture hooks sit on the PEFT layer itself
(:mod:`._capture`): ``X`` is the layer input *before* ``lora_dropout`` and ``Δ`` the gradient of
the layer output, so ``G = Δᵀ X`` is the gradient of the loss with respect to the whole weight
``W`` (what ``W0.grad`` would be).  Without dropout (``lora_dropout=0`` or ``model.eval()``) this
is also the gradient of the adapter product ``s·B A``.  With ``lora_dropout = p > 0`` the autograd
gradient of the adapter product would be ``Δᵀ D(X)`` (``D`` the scaled dropout mask, applied to the
adapter branch only); since ``E[D(X)] = X`` the captured ``G`` is that gradient with the mask on
``X`` averaged out, while the mask still acts on the forward pass (hence on ``Δ``).  This is the
reference implementation's choice (a hook on the layer input, paper.md §10.1).  The autograd
``.grad`` of ``lora_A``/``lora_B`` is not used.

Factor gradients not computed.  Autograd would spend ``N r (m + n)`` multiply-adds per layer
on ``lora_B.grad = s Δᵀ h`` and ``lora_A.grad = (s Δ B)ᵀ x`` (``h = A x``), in torch's slow thin
product layout (``Δᵀ h`` alone is about 1 % of a GPT-2-small step on CPU).  So while the
optimizer's capture is on (:attr:`GradientCapture.enabled`) and ``optimizer.factor_grads`` is
False (the default), forward hooks on ``lora_A``/``lora_B`` give each branch's output a backward
that propagates the gradient to the branch input only (:class:`_InputGradOnly`: ``∂x = ∂y W``,
nothing for ``W``): ``Δ`` and the gradients of earlier layers are unchanged (to rounding),
``lora_A.grad``/``lora_B.grad`` stay ``None`` and the Trainer's ``grad_norm`` leaves them out.
Set ``optimizer.factor_grads = True`` to have autograd compute them again.  Layers with a LoRA
bias (``lora_bias=True``) keep the ordinary backward.

Not supported (a clear ``ValueError``): merged adapters, disabled adapters, more than one active
adapter in a layer, LoRA variants (DoRA, ...) and PEFT conv layers.  PEFT embedding adapters
(``lora_embedding_A/B``) are not LoRA layers here: their parameters, like the ``modules_to_save``
heads and classifier, go to the secondary optimizer with the other trainable parameters.

With ``transformers.Trainer``.  Pass the optimizer as ``Trainer(..., optimizers=(opt, None))``
(built after ``model.to(device)``) or as ``optimizer_cls_and_kwargs=(PSILoRA, {"model": model,
"lr": ...})``; the Trainer wraps its LR scheduler around it, so ``λ = lr·λ0`` and the secondary
optimizer's lr follow the schedule.  Clip once: either the optimizer's ``max_grad_norm`` (which
sees the captured ``G``) with ``TrainingArguments(max_grad_norm=0)``, or nothing.  The Trainer's
own clipping acts on ``.grad``, which these optimizers ignore for the adapters: it would clip only
the head, by a norm that includes the unused adapter ``.grad``.  Gradient checkpointing,
reentrant or not, captures the same ``G`` (a recomputed forward whose output gets no gradient
is ignored; tests/test_hf.py).

Logged gradient norm.  The Trainer logs ``grad_norm`` from ``clip_grad_norm_`` over the
parameters' ``.grad``, i.e. from the unused autograd gradients of the adapter factors.  Pass
``callbacks=[grad_norm_callback(opt)]``: on the Trainer's logging steps it has the optimizer
compute ``last_grad_norm`` (``‖g‖`` of the captured ``G`` of every LoRA layer and the other
parameters' ``.grad``, what ``max_grad_norm`` clips; free when the optimizer clips) and puts it in
the logs and ``trainer.state.log_history`` in place of the Trainer's value.

Nothing here imports ``peft``: layers are recognised by their attributes (``lora_A``/``lora_B``
``nn.ModuleDict``, ``scaling`` dict, ``active_adapters``).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ._base import LoRALayer

__all__ = ["PeftLoRALayer", "grad_norm_callback", "is_peft_lora_layer", "peft_lora_layer"]


def is_peft_lora_layer(module):
    """Whether ``module`` looks like a PEFT LoRA layer (``lora_A``/``lora_B`` module dicts)."""
    return (
        isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)
        and isinstance(getattr(module, "scaling", None), dict)
        and hasattr(module, "active_adapters")
    )


class _InputGradOnly(torch.autograd.Function):
    """``y = x Wᵀ`` (computed already) with a backward that gives ``x`` its gradient, ``W`` none.

    ``forward(x, weight, y)`` returns ``y`` (the detached output of ``lora_A``/``lora_B``);
    ``weight`` is an input only so that ``y`` requires grad whenever the factor does (the first
    adapted layer of a model with frozen embeddings has an input without grad).  ``backward``
    returns ``∂x = ∂y W`` in the dtype the forward product ran in (``y``'s; autocast) cast to
    ``x``'s, and ``None`` for ``weight``.  ``∂x`` is the very product autograd's linear
    backward makes (same operands, same layout), so the gradients reaching earlier layers are
    bitwise those of the ordinary backward.
    """

    @staticmethod
    def forward(ctx, x, weight, y):
        ctx.save_for_backward(weight)
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        return (grad_y @ weight.to(grad_y.dtype)).to(ctx.x_dtype), None, None


class PeftLoRALayer(LoRALayer):
    """One PEFT LoRA layer, adapter ``adapter``, as ``W = W0 + U Vᵀ`` with ``U = s·B`` (above)."""

    def __init__(self, name, module, adapter):
        A = module.lora_A[adapter].weight
        B = module.lora_B[adapter].weight
        super().__init__(name, module, A, B)
        self.adapter = adapter
        self.fan_in_fan_out = bool(getattr(module, "fan_in_fan_out", False))
        #: ``True``: ``U = s·B`` (``peft_scaling="fold"``); ``False``: ``U = B`` (``"ignore"``).
        self.fold = True

    @property
    def ignored_scaling(self):
        """``s`` when the factors leave it out (``peft_scaling="ignore"``), else 1."""
        return 1.0 if self.fold else self.scaling

    def hook_factors(self, owner):
        """Hooks on ``lora_A``/``lora_B`` that skip their autograd ``.grad`` (module docstring).

        Active while ``self.capture.enabled`` and ``owner.factor_grads`` is False; ``owner`` and
        the layer are held weakly.  Returns the hook handles.
        """
        owner_ref, layer_ref = weakref.ref(owner), weakref.ref(self)

        def hook(mod, args, output):
            layer, opt = layer_ref(), owner_ref()
            if (layer is None or opt is None or opt.factor_grads or layer.capture is None
                    or not layer.capture.enabled or not torch.is_grad_enabled() or not args
                    or not isinstance(output, torch.Tensor) or not output.requires_grad
                    or getattr(mod, "bias", None) is not None):
                return None
            return _InputGradOnly.apply(args[0], mod.weight, output.detach())

        return [self.module.lora_A[self.adapter].register_forward_hook(hook),
                self.module.lora_B[self.adapter].register_forward_hook(hook)]

    @property
    def scaling(self):
        """The PEFT scaling ``s`` of the adapter (read from the module at every call)."""
        s = float(self.module.scaling[self.adapter])
        if not s or s != s or abs(s) == float("inf"):
            raise ValueError(
                f"layer {self.name!r}: adapter {self.adapter!r} has scaling {s}; need a finite, "
                "nonzero scaling"
            )
        return s

    def factors(self):
        """Copies ``(U, V) = (s·B, Aᵀ)`` in the compute dtype (``(B, Aᵀ)`` unless ``fold``)."""
        U, V = super().factors()
        return (U * self.scaling if self.fold else U), V

    @torch.no_grad()
    def write(self, U, V):
        """``B ← U / s`` (``B ← U`` unless ``fold``), ``A ← Vᵀ`` (parameters' dtype, in place)."""
        super().write((U / self.scaling if self.fold else U), V)

    def __repr__(self):
        return (
            f"PeftLoRALayer({self.name!r}, adapter={self.adapter!r}, in={self.in_features}, "
            f"out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}, "
            f"fan_in_fan_out={self.fan_in_fan_out})"
        )


def peft_lora_layer(name, module):
    """The :class:`PeftLoRALayer` of ``module``'s active adapter, or ``None`` if there is none.

    ``None`` also when the adapter's factors are not trainable.  Raises ``ValueError`` for the
    unsupported configurations listed in the module docstring.
    """
    active = [a for a in module.active_adapters if a in module.lora_A]
    if not active:
        return None
    if len(active) > 1:
        raise ValueError(
            f"layer {name!r} has {len(active)} active adapters {active}; exactly one is supported "
            "(call model.set_adapter(name))"
        )
    adapter = active[0]
    if adapter not in module.lora_B:
        raise ValueError(f"layer {name!r}: adapter {adapter!r} has lora_A but no lora_B")
    A_mod, B_mod = module.lora_A[adapter], module.lora_B[adapter]
    if not (A_mod.weight.requires_grad and B_mod.weight.requires_grad):
        return None
    if getattr(module, "merged", False):
        raise ValueError(
            f"layer {name!r}: adapter is merged into the base weight; unmerge it before training"
        )
    if getattr(module, "disable_adapters", False):
        raise ValueError(f"layer {name!r}: adapters are disabled; enable them before training")
    if adapter in getattr(module, "lora_variant", {}):
        variant = type(module.lora_variant[adapter]).__name__
        raise ValueError(
            f"layer {name!r}: LoRA variant {variant} (e.g. DoRA) is not supported; these "
            "optimizers need y = base(x) + s·B A x"
        )
    if not (isinstance(A_mod, nn.Linear) and isinstance(B_mod, nn.Linear)):
        raise ValueError(
            f"layer {name!r}: only PEFT LoRA layers on Linear / Conv1D bases are supported; got "
            f"lora_A of type {type(A_mod).__name__}"
        )
    layer = PeftLoRALayer(name, module, adapter)
    layer.scaling  # validate now  # noqa: B018
    return layer


def grad_norm_callback(optimizer):
    """A ``transformers.TrainerCallback`` logging the captured ``‖g‖`` as ``grad_norm``.

    Use ``Trainer(..., optimizers=(opt, None), callbacks=[grad_norm_callback(opt)])``.  Before
    each step the Trainer will log (``logging_strategy="steps"``: every ``logging_steps``-th
    global step, and the first with ``logging_first_step``; otherwise every step), it sets
    ``optimizer.track_grad_norm``; when the Trainer logs, it replaces ``grad_norm`` by
    ``optimizer.last_grad_norm`` (see the module docstring).  Works with ``step_in_backward``.
    ``callbacks=[...]`` runs it after the Trainer's printer and reporters (they would show the
    old value; ``log_history`` is corrected); to have them show it, insert it first:
    ``trainer.callback_handler.callbacks.insert(0, grad_norm_callback(opt))``.
    """
    from ._base import LoRAOptimizer

    if not isinstance(optimizer, LoRAOptimizer):
        raise TypeError(
            "optimizer must be a lowrank_prox.optim.LoRAOptimizer (PSILoRA, ScaledPSILoRA, ...); "
            f"got {type(optimizer).__name__}"
        )
    from transformers import TrainerCallback

    class CapturedGradNormCallback(TrainerCallback):
        """Logs ``optimizer.last_grad_norm`` as ``grad_norm`` (see :func:`grad_norm_callback`)."""

        def __init__(self, opt):
            self.optimizer = opt

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1  # the global step this update will become
            every = args.logging_steps
            if getattr(args.logging_strategy, "value", args.logging_strategy) != "steps":
                logged = True
            elif every < 1:  # a ratio of the total steps: computed by the Trainer
                logged = True
            else:
                logged = step % int(every) == 0 or (step == 1 and args.logging_first_step)
            self.optimizer.track_grad_norm = bool(logged)

        def on_log(self, args, state, control, logs=None, **kwargs):
            value = self.optimizer.last_grad_norm
            if logs is None or "grad_norm" not in logs or value is None:
                return
            logs["grad_norm"] = value
            if state.log_history and "grad_norm" in state.log_history[-1]:
                state.log_history[-1]["grad_norm"] = value

    return CapturedGradNormCallback(optimizer)

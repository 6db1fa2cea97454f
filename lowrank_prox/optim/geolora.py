"""``GeoLoRA``: the rank-adaptive geometric integrator as a torch optimizer (SPEC §8)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from ..geolora import geolora_step, geolora_tangent
from ..nn.geolora import GeoLoRALinear
from ._published import resolve

__all__ = ["GeoLoRA"]


class GeoLoRA(torch.optim.Optimizer):
    """GeoLoRA (Schotthöfer et al., ICLR 2025) for every :class:`GeoLoRALinear` of ``model``.

    One backward pass per step.  For each adapter ``W = U S Vᵀ`` the autograd gradients
    ``∇_U, ∇_S, ∇_V`` give the tangent gradient ``P_T(G)`` (``G V = ∇_U S⁻ᵀ``,
    ``Gᵀ U = ∇_V S⁻¹``, :func:`lowrank_prox.geolora_tangent`); the core
    :func:`lowrank_prox.geolora_step` then augments the bases, takes the step
    ``W − lr·P_T(G)`` in the 2r-dimensional basis and truncates with the relative-tail rule
    ``‖σ_tail‖ < τ‖σ‖`` (SPEC §8).  The layer's rank changes by resizing its parameters in place
    (:meth:`GeoLoRALinear.set_factors`), so the next forward pass works and ``state_dict``
    round trips of model and optimizer resume the run.

    This is GeoLoRA's per-step algorithm (its reference trainers' ``coefficient_steps = 0``):
    plain SGD in the augmented basis, truncation every step.

    Parameters
    ----------
    model : torch.nn.Module
        Must contain at least one :class:`GeoLoRALinear`.
    lr : float
        Step size η ≥ 0 (``group["lr"]``, so LR schedulers apply).
    tau : float, default 0.15
        Relative truncation tolerance in ``[0, 1]`` (the reference GLUE/ViT value).
    min_rank : int, default 2
        Smallest rank kept (capped at ``min(in, out)`` of each layer).
    max_rank : int or None
        Largest rank kept, default ``min(in, out)`` of each layer (with
        ``preset="published"``: 32, the reference layers' default, capped at ``min(in, out)``).
    momentum : float, default 0
        SGD momentum for the *other* trainable parameters (biases, heads), which get plain
        SGD(-momentum) with the same ``lr``.
    cap_augmentation : bool or None
        Default False: the bases are augmented to ``2r`` columns and the SVD of the ``2r × 2r``
        coefficient matrix picks the kept directions (the paper's step).  True: augment only
        to ``min(2r, max_rank)`` columns before the SVD, as the reference trainers do (they
        preallocate ``max_rank`` columns; ``geolora_step(max_augmented_rank=...)``).  The two
        differ only when ``2r > max_rank``: then the capped step drops some new directions
        before the SVD can rank them.
    preset : {None, "published"}
        ``"published"``: ``cap_augmentation=True`` and ``max_rank=32`` unless given.  The
        reference layers' ``α/r`` scaling is a layer option,
        :class:`~lowrank_prox.nn.GeoLoRALinear` ``(alpha=...)``.

    Notes
    -----
    A layer whose gradients contain NaN/Inf is skipped for that step (its factors unchanged);
    a layer with no gradient at all is skipped too.  At ``S = 0`` (``init="zero"``) ``∇_U`` and
    ``∇_V`` vanish, so the first step updates ``S`` only, as in the reference code.
    """

    def __init__(self, model, lr, *, tau=0.15, min_rank=2, max_rank=None, momentum=0.0,
                 cap_augmentation=None, preset=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        lr = _validate.check_real(lr, "lr", low=0.0)
        tau = _validate.check_real(tau, "tau", low=0.0, high=1.0)
        min_rank = _validate.check_int(min_rank, "min_rank", low=1)
        pub = resolve(preset, {"cap_augmentation": cap_augmentation, "max_rank": max_rank},
                      {"cap_augmentation": False, "max_rank": None},
                      {"cap_augmentation": True, "max_rank": 32})
        cap_augmentation = _validate.check_bool(pub["cap_augmentation"], "cap_augmentation")
        max_rank = pub["max_rank"]
        if max_rank is not None:
            max_rank = _validate.check_int(max_rank, "max_rank", low=min_rank)
        momentum = _validate.check_real(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        layers = [mod for mod in model.modules() if isinstance(mod, GeoLoRALinear)]
        if not layers:
            raise ValueError(
                "model must contain at least one GeoLoRALinear layer; got none "
                "(wrap linear layers with GeoLoRALinear.from_linear)"
            )
        adapter = [p for layer in layers for p in (layer.U, layer.S, layer.V)]
        seen = {id(p) for p in adapter}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
        groups = [{"params": adapter, "kind": "geolora"}]
        if others:
            groups.append({"params": others, "kind": "other"})
        defaults = {
            "lr": lr,
            "tau": tau,
            "min_rank": min_rank,
            "max_rank": max_rank,
            "momentum": momentum,
            "cap_augmentation": cap_augmentation,
        }
        super().__init__(groups, defaults)
        self._layers = layers

    @property
    def ranks(self):
        """Current rank of each adapted layer, in ``model.modules()`` order."""
        return [layer.rank for layer in self._layers]

    @torch.no_grad()
    def step(self, closure=None):
        """One GeoLoRA step on every adapter, SGD on the other parameters; returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("kind") == "geolora":
                self._step_adapters(group)
            else:
                self._step_others(group)
        return loss

    def _step_adapters(self, group):
        params = group["params"]
        for i, layer in enumerate(self._layers):
            U, S, V = params[3 * i : 3 * i + 3]
            if U is not layer.U:  # param_groups must follow the layer order
                raise RuntimeError("GeoLoRA param_groups no longer match the model's layers")
            grads = [p.grad for p in (U, S, V)]
            if all(g is None for g in grads):
                continue
            grads = [torch.zeros_like(p) if g is None else g
                     for p, g in zip((U, S, V), grads, strict=True)]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                continue
            m, n = layer.out_features, layer.in_features
            cap = min(m, n)
            max_rank = cap if group["max_rank"] is None else min(group["max_rank"], cap)
            min_rank = min(group["min_rank"], max_rank)
            tangent = geolora_tangent(U, S, V, *grads)
            U1, S1, V1 = geolora_step(
                U, S, V, tangent, group["lr"], tau=group["tau"], min_rank=min_rank,
                max_rank=max_rank, check_finite=False,
                max_augmented_rank=max_rank if group.get("cap_augmentation") else None,
            )
            layer.set_factors(U1, S1, V1)
            for p in (U, S, V):
                p.grad = None
            state = self.state[S]
            state["step"] = state.get("step", 0) + 1

    def _step_others(self, group):
        lr, mu = group["lr"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad
            if mu != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.detach().clone()
                else:
                    buf.mul_(mu).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-lr)

"""Baselines on the same API: SVDLoRA (SPEC §2) and RPLoRA (SPEC §5, reference/paper.md §10.6).

Plain LoRA (SGD/AdamW on ``lora_A``, ``lora_B``) and full fine-tuning need no class here: use
``torch.optim`` on the trainable parameters.
"""

from __future__ import annotations

from functools import partial

import torch

from .. import _validate, _xp
from ..factored import LowRankSum
from ..svd import truncated_svd
from ._base import LoRAOptimizer
from ._base import ridge_gram as _gram
from ._published import check_eps_mode, resolve

__all__ = ["RPLoRA", "RuleOptimizer", "SVDLoRA"]

_RULES = ("sgd", "adam", "adamw")


def _check_rule(optimizer, momentum, dampening, betas, eps, weight_decay):
    _validate.check_choice(optimizer, "optimizer", _RULES)
    momentum = _validate.check_real(momentum, "momentum", low=0.0, high=1.0, high_open=True)
    dampening = _validate.check_real(dampening, "dampening", low=0.0, high=1.0)
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
    betas = tuple(
        _validate.check_real(b, f"betas[{i}]", low=0.0, high=1.0, high_open=True)
        for i, b in enumerate(betas)
    )
    eps = _validate.check_real(eps, "eps", low=0.0, low_open=True)
    weight_decay = _validate.check_real(weight_decay, "weight_decay", low=0.0)
    return {
        "optimizer": optimizer,
        "momentum": momentum,
        "dampening": dampening,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
    }


def _rule_step(W, g, state, key, group, step):
    """One SGD(-momentum) or Adam(W) update of ``W`` with gradient ``g``, torch.optim's rules.

    Returns ``(W_new, entries)`` where ``entries`` are the new state tensors under ``key``-
    prefixed names; nothing is modified in place.  Weight decay δ is L2 (``g + δW``) for "sgd"
    and "adam" and decoupled (``W ← (1 − ηδ)W`` before the step) for "adamw" or when
    ``group["decoupled_weight_decay"]``.  Adam's denominator is ``√(v/(1−β2ᵗ)) + ε``, or with
    ``group["eps_mode"] == "raw"`` ``√v + ε`` with the step ``η√(1−β2ᵗ)/(1−β1ᵗ)``.
    """
    lr, wd = group["lr"], group["weight_decay"]
    decoupled = group["optimizer"] == "adamw" or group.get("decoupled_weight_decay", False)
    if wd and not decoupled:
        g = g + wd * W
    if wd and decoupled:
        W = W * (1.0 - lr * wd)
    if group["optimizer"] == "sgd":
        mu, d = group["momentum"], group["dampening"]
        if mu == 0:
            return W - lr * g, {}
        buf = state.get(key + "momentum_buffer")
        buf = g.clone() if buf is None else mu * buf + (1.0 - d) * g
        return W - lr * buf, {key + "momentum_buffer": buf}
    b1, b2 = group["betas"]
    m = state.get(key + "exp_avg")
    v = state.get(key + "exp_avg_sq")
    m = (1.0 - b1) * g if m is None else b1 * m + (1.0 - b1) * g
    v = (1.0 - b2) * g * g if v is None else b2 * v + (1.0 - b2) * g * g
    t = step + 1
    bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
    if group.get("eps_mode", "corrected") == "raw":
        W = W - (lr * bc2**0.5 / bc1) * m / (v.sqrt() + group["eps"])
    else:
        W = W - (lr / bc1) * m / ((v / bc2).sqrt() + group["eps"])
    return W, {key + "exp_avg": m, key + "exp_avg_sq": v}


class RuleOptimizer(torch.optim.Optimizer):
    """``torch.optim`` wrapper of the factor rule :func:`_rule_step` (SGD-momentum or Adam(W)).

    The authors' ``sgd_step_`` / ``adam_step_`` for the non-LoRA parameters (``other_rule="same"``
    of :class:`RPLoRA`, ``other_eps_mode="raw"`` of :class:`ScaledPSILoRA`).  Keywords: ``lr``,
    ``optimizer`` ("sgd", "adam", "adamw"), ``momentum``, ``dampening``, ``betas``, ``eps``,
    ``weight_decay``, ``decoupled_weight_decay``, ``eps_mode``; state per parameter ``step``
    and ``momentum_buffer`` or ``exp_avg``/``exp_avg_sq``.
    """

    def __init__(self, params, *, lr, optimizer="sgd", momentum=0.0, dampening=0.0,
                 betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                 eps_mode="corrected"):
        rule = _check_rule(optimizer, momentum, dampening, betas, eps, weight_decay)
        rule["decoupled_weight_decay"] = _validate.check_bool(
            decoupled_weight_decay, "decoupled_weight_decay"
        )
        rule["eps_mode"] = check_eps_mode(eps_mode)
        super().__init__(params, {"lr": _validate.check_real(lr, "lr", low=0.0), **rule})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                t = state.get("step", 0)
                W, entries = _rule_step(p, p.grad, state, "", group, t)
                p.copy_(W)
                state.update(entries, step=t + 1)
        return loss


class SVDLoRA(LoRAOptimizer):
    """Full step then rank-r projection, ``W ← Π_r(W − η·step(G))`` (SPEC §2, Proposition 1).

    Options (off by default): singular-value soft-thresholding (``threshold``) and FISTA
    extrapolation after the projection (``extrapolation``).

    Each layer keeps its full adapter ``Ŵ = B A`` (out × in); the step applies SGD(-momentum)
    or Adam(W) to ``Ŵ`` with the dense gradient ``G = Δᵀ X`` and its own full-size state
    (``momentum_buffer`` or ``exp_avg``/``exp_avg_sq``, out × in), then projects by the exact
    :func:`lowrank_prox.truncated_svd` and writes ``B = U_r S_r½``, ``A = S_r½ V_rᵀ``.  After
    every step ``lora_B @ lora_A`` is the projected adapter.  This is the reference baseline:
    one SVD per layer per step and O(mn) memory.

    Parameters
    ----------
    model, lr
        As :class:`PSILoRA`.
    momentum, dampening : float
        SGD momentum (torch.optim.SGD's rule; the first step sets the buffer to G).
    optimizer : {"sgd", "adam", "adamw"}, default "sgd"
    betas, eps, weight_decay
        Adam(W) settings; ``weight_decay`` is L2 for "sgd"/"adam", decoupled for "adamw".
    threshold : float, default 0
        τ ≥ 0: singular-value soft-thresholding in the projection, ``σ_i ← max(σ_i − τ, 0)``
        for the top r (the prox of ``τ‖·‖_*`` restricted to rank ≤ r; the authors'
        ``SVDLoRALinear.project(threshold=τ)``).  τ is absolute: LR schedules do not move it
        (set ``τ = η β`` for the proximal gradient step of ``β‖W‖_*``).  The authors' dense layer
        keeps every singular value above τ; a rank-r layer keeps at most r.
    extrapolation : float, default 0
        μ ∈ [0, 1): FISTA extrapolation after the projection (the authors' ``SVDFISTACallback``
        with ``reproject_back=True``).  With ``x_k`` the projected point of step k
        (``x_0`` = the adapter at the first step)::

            x_{k+1} = Π_r^τ(y_k − η·step(G)),    y_{k+1} = Π_r((1 + μ) x_{k+1} − μ x_k)

        and the layer holds ``y``.  The extrapolation has rank ≤ 2r and is projected back to r
        by the exact factored SVD (no m×n matrix); the authors' default keeps the rank-2r
        dense matrix in their dense ``lora_W``, which a rank-r layer cannot hold.  Their
        callback also skips the first extrapolation (``x_0 = x_1``); here ``x_0`` is the
        starting adapter, as in their ``OPLoraOptimizerFISTA``.  State: ``prev_U``,
        ``prev_V`` (the factors of ``x_k``).
    max_grad_norm, other_optimizer, other_momentum, other_dampening
        As :class:`LoRAOptimizer` (default SGD for other parameters uses ``momentum``).
    """

    def __init__(
        self,
        model,
        lr,
        *,
        momentum=0.0,
        dampening=0.0,
        optimizer="sgd",
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        threshold=0.0,
        extrapolation=0.0,
        max_grad_norm=None,
        other_optimizer=None,
        other_momentum=None,
        other_dampening=None,
    ):
        defaults = _check_rule(optimizer, momentum, dampening, betas, eps, weight_decay)
        defaults["threshold"] = _validate.check_real(threshold, "threshold", low=0.0)
        defaults["extrapolation"] = _validate.check_real(
            extrapolation, "extrapolation", low=0.0, high=1.0, high_open=True
        )
        super().__init__(
            model,
            lr,
            defaults=defaults,
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=defaults["momentum"] if other_momentum is None else other_momentum,
            other_dampening=defaults["dampening"] if other_dampening is None else other_dampening,
        )

    def _init_layer_state(self, layer, group):
        return {"step": 0}

    def _layer_step(self, layer, grad, group, state):
        U, V = layer.factors()
        W, entries = _rule_step(U @ V.mT, grad.dense(), state, "", group, state["step"])
        Ur, s, Vh = truncated_svd(W, layer.rank, check_finite=False)
        if group["threshold"] > 0:
            s = (s - group["threshold"]).clamp_min(0.0)
        root = s.sqrt()
        U1, V1 = Ur * root, Vh.mT * root
        new_state = {**state, **entries, "step": state["step"] + 1}
        mu = group["extrapolation"]
        if mu > 0:
            Up, Vp = state.get("prev_U", U), state.get("prev_V", V)
            y = LowRankSum([(1.0 + mu, U1, V1), (-mu, Up, Vp)], check_finite=False)
            Uy, sy, Vhy = truncated_svd(y, layer.rank, check_finite=False)
            new_state.update(prev_U=U1, prev_V=V1)
            root = sy.sqrt()
            U1, V1 = Uy * root, Vhy.mT * root
        return (U1, V1), new_state


class RPLoRA(LoRAOptimizer):
    """Riemannian-preconditioned LoRA (Zhang & Pilanci 2024; SPEC §5, paper.md §10.6).

    Preconditioned factor gradients (``U = lora_B``, ``V = lora_Aᵀ``)::

        ∇_U ← G V (VᵀV + λI)⁻¹,    ∇_V ← Gᵀ U (UᵀU + λI)⁻¹      (G = Δᵀ X, captured)

    then SGD(-momentum) or Adam(W) on the factors.  With SGD, no momentum and ``λ = lr·λ0`` this
    equals the Jacobi LoRSum step (``PSILoRA(iters=0)``); here, as in the reference code,
    ``λ = ridge`` is *not* scaled by the learning rate.

    Parameters
    ----------
    model, lr
        As :class:`PSILoRA`.
    ridge : float, default 1e-3
        λ ≥ 0 of the preconditioner (the linear task's value).
    momentum, dampening, optimizer, betas, eps, weight_decay
        As :class:`SVDLoRA` (state ``U_*``/``V_*`` of factor size).
    max_grad_norm, other_optimizer, other_momentum, other_dampening
        As :class:`LoRAOptimizer`.
    decoupled_weight_decay : bool or None
        Default False: weight decay δ is L2 for "sgd" and "adam" (torch.optim's SGD and Adam),
        decoupled for "adamw".  True decouples it for every rule, ``W ← (1 − ηδ)W − η·step``
        (the authors' ``sgd_step_``/``adam_step_``; "adam" then equals "adamw").
    eps_mode : {"corrected", "raw"} or None
        Adam's ε placement.  Default "corrected": ``η m̂/(√v̂ + ε)`` with both moments
        bias-corrected (torch.optim.Adam).  "raw": ``η√(1−β2ᵗ)/(1−β1ᵗ) · m/(√v + ε)``
        (Kingma & Ba's efficient form, the authors' ``adam_step_``), i.e. ε is effectively
        ``ε/√(1−β2ᵗ)``, larger in the first ~1/(1−β2) steps.
    gram_jitter : float or None
        ε' ≥ 0 added to both ``r × r`` Grams, ``(VᵀV + (λ + ε')I)⁻¹`` (default 0; the authors'
        Cholesky solves add 1e-6).
    other_rule : {"sgd", "same"} or None
        Default optimizer of the other trainable parameters when ``other_optimizer`` is None:
        "sgd" (default) is torch.optim.SGD with ``lr``, ``other_momentum``, ``other_dampening``;
        "same" applies this optimizer's own rule (``optimizer``, ``momentum``, ``betas``,
        ``eps``, ``weight_decay`` and the two options above) to them, as the authors do
        (:class:`RuleOptimizer`).
    peft_scaling : {"fold", "ignore"} or None
        As :class:`LoRAOptimizer`; default "fold".
    preset : {None, "published"}
        ``"published"`` sets every option above that is left at None to the authors' value
        (``decoupled_weight_decay=True``, ``eps_mode="raw"``, ``gram_jitter=1e-6``,
        ``other_rule="same"``, ``peft_scaling="ignore"``); an explicit keyword wins.
    """

    _PROJECT = {"decoupled_weight_decay": False, "eps_mode": "corrected", "gram_jitter": 0.0,
                "other_rule": "sgd", "peft_scaling": "fold"}
    _PUBLISHED = {"decoupled_weight_decay": True, "eps_mode": "raw", "gram_jitter": 1e-6,
                  "other_rule": "same", "peft_scaling": "ignore"}

    def __init__(
        self,
        model,
        lr,
        *,
        ridge=1e-3,
        momentum=0.0,
        dampening=0.0,
        optimizer="sgd",
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        max_grad_norm=None,
        other_optimizer=None,
        other_momentum=None,
        other_dampening=None,
        decoupled_weight_decay=None,
        eps_mode=None,
        gram_jitter=None,
        other_rule=None,
        peft_scaling=None,
        preset=None,
    ):
        ridge = _validate.check_real(ridge, "ridge", low=0.0)
        defaults = _check_rule(optimizer, momentum, dampening, betas, eps, weight_decay)
        opts = resolve(preset, {
            "decoupled_weight_decay": decoupled_weight_decay, "eps_mode": eps_mode,
            "gram_jitter": gram_jitter, "other_rule": other_rule, "peft_scaling": peft_scaling,
        }, self._PROJECT, self._PUBLISHED)
        defaults["decoupled_weight_decay"] = _validate.check_bool(
            opts["decoupled_weight_decay"], "decoupled_weight_decay"
        )
        defaults["eps_mode"] = check_eps_mode(opts["eps_mode"])
        defaults["gram_jitter"] = _validate.check_real(opts["gram_jitter"], "gram_jitter", low=0.0)
        _validate.check_choice(opts["other_rule"], "other_rule", ("sgd", "same"))
        if other_optimizer is None and opts["other_rule"] == "same":
            rule = {k: v for k, v in defaults.items() if k != "gram_jitter"}
            other_optimizer = partial(RuleOptimizer, lr=lr, **rule)
        super().__init__(
            model,
            lr,
            defaults={"ridge": ridge, **defaults},
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=defaults["momentum"] if other_momentum is None else other_momentum,
            other_dampening=defaults["dampening"] if other_dampening is None else other_dampening,
            peft_scaling=opts["peft_scaling"],
        )

    def _ridge(self, group):
        return group["ridge"]

    def _init_layer_state(self, layer, group):
        return {"step": 0}

    def _layer_step(self, layer, grad, group, state):
        lam = self._ridge(group) + group.get("gram_jitter", 0.0)
        U, V = layer.factors()
        G = grad.as_sum(layer.ignored_scaling)  # the autograd gradients of (B, Aᵀ): s·G V, s·GᵀU
        g_U = _xp.spd_solve_right(G @ V, _gram(V, lam))
        g_V = _xp.spd_solve_right(G.T @ U, _gram(U, lam))
        step = state["step"]
        U1, eU = _rule_step(U, g_U, state, "U_", group, step)
        V1, eV = _rule_step(V, g_V, state, "V_", group, step)
        return (U1, V1), {**state, **eU, **eV, "step": step + 1}


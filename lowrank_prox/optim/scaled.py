"""Scaled PSI-LoRA: PSI-LoRA in a diagonal fractional K-FAC / Shampoo metric (SPEC §7)."""

from __future__ import annotations

from functools import partial

import torch

from .. import _validate
from ..factored import LowRankSum
from ..lorsum import lorsum
from ..metrics import KINDS, REDUCTIONS, diagonal_statistics, ema_update, fractional_power
from ..scaled import scaled_lorsum
from ._base import LoRAOptimizer
from .psilora import DEFAULT_BALANCE, balanced, check_balance

__all__ = ["ScaledPSILoRA"]


class ScaledPSILoRA(LoRAOptimizer):
    """Scaled PSI-LoRA with diagonal fractional K-FAC or Shampoo metrics (SPEC §7).

    Per LoRA layer ``W = W0 + U Vᵀ`` (``U = lora_B``, ``Vᵀ = lora_A``) with the captured
    gradient ``G = Δᵀ X`` kept factored, each step

    1. updates the metric state (EMA with β2) from the batch,
       ``a ← β2 a + (1−β2) a_batch``, ``g ← β2 g + (1−β2) g_batch``
       (:func:`lowrank_prox.metrics.diagonal_statistics`), and forms
       ``P_in = (â + ε)^p``, ``P_out = (ĝ + ε)^p`` with Adam's bias correction
       ``â = a / (1 − β2^t)`` (the EMA starts at 0); with ``bias_correction=False`` the EMA starts
       at ``init_metric_scale`` and is used as is (the reference code's convention);
    2. takes the weight step by the core :func:`lowrank_prox.scaled_lorsum` with
       ``λ = max(η·λ0, min_ridge)`` on the target

           T = U Vᵀ − η P_out⁻¹ [(1−β1) G + β1 M] P_in⁻¹,

       built by row-scaling the factors (``P_out⁻¹Δᵀ``, ``P_in⁻¹Xᵀ``, ``P_out⁻¹M_U``,
       ``P_in⁻¹M_V``), so no m×n matrix is formed;
    3. updates the low-rank momentum, *unscaled*, by the core :func:`lowrank_prox.lorsum`:
       ``M ← LoRSum(β1 M + (1−β1) G)`` with the same λ.

    ``M = M_U M_Vᵀ`` starts at ``M_V ~ N(0, 1)``, ``M_U = 0`` (so the first momentum call is a
    randomised range finder of G).  State per layer (compute dtype, float32 at least):
    ``metric_in`` (a), ``metric_out`` (g), ``momentum_U``, ``momentum_V``, ``step``.

    Parameters
    ----------
    model : torch.nn.Module
        Contains the LoRA layers (:class:`lowrank_prox.nn.LoRALinear` or PEFT with scaling 1).
    lr : float, default 0.2
        Step size η ≥ 0 (the paper's transformer default).
    iters : int, default 1
        Iterations K of the weight step.  ``iters=0`` is the Jacobi step (the reference's
        K = 0, a K-FAC-preconditioned RPLoRA-type step).  The momentum call always runs
        ``max(iters, 1)`` iterations: the reference's K = 0 momentum call is a no-op that keeps
        M at zero forever, which is not copied here.
    ridge : float, default 1e-2
        λ0 ≥ 0.
    betas : (float, float), default (0.9, 0.99)
        β1 ∈ [0, 1) weights momentum vs gradient; β2 ∈ [0, 1) is the metric EMA factor.
        β1 = 0 keeps no momentum.
    damping : float, default 1e-5
        ε ≥ 0 added to the statistics before the power.
    metric : {"kfac", "shampoo"}, default "kfac"
        Diagonal K-FAC or diagonal Shampoo statistics (SPEC §7).
    power : float, default 0.5
        p ∈ [0, 1]; p = 0 gives identity metrics (PSI-LoRA with EMA momentum).
    momentum_rank : int or None
        r_M ≥ 1, default the layer's rank (capped at ``min(in, out)``).
    min_ridge : float, default 1e-5
        Lower bound of λ (the reference's ``max(η λ0, 1e-5)``).
    reduction : {"mean", "sum"}, default "mean"
        How the loss is reduced over rows (scales the statistics, SPEC §7).
    init_metric_scale : float, default 1.0
        Initial value of ``a`` and ``g`` when ``bias_correction=False``.
    bias_correction : bool, default True
        Start the metric EMAs at 0 and divide by ``1 − β2^t`` (Adam's rule), so the metric is the
        running mean of the batch statistics from the first step.  ``False`` is the reference
        code's convention (EMA started at ``init_metric_scale``, no correction).  Why the default
        differs: the true K-FAC statistics are far from 1 (output-gradient second moments
        ``g`` ≈ 1e-4 on a tiny GPT-2, ≈ 7e-3 on the digits MLP), so an EMA started at 1 keeps
        the metric ≈ 1 for ~1/(1−β2) = 100 steps and then lets the step grow as the start is
        forgotten: with β2 = 0.99 the tiny GPT-2's adapter barely moves in 30 steps
        (‖s·BA‖ 0.034 at lr 0.2, 1.9 with the correction) and the digits MLP at lr 2 speeds up
        ~12× over its first 400 steps and degrades (README, "Scaled PSI-LoRA's scale").
    max_grad_norm : float or None
        Implicit global clipping (see :class:`LoRAOptimizer`); the metrics see the clipped G.
    seed : int or None
        Seed of the momentum sketches.
    balance : {"momentum", "none", "adapter", "both"}, default "momentum"
        Which pairs are replaced by their balanced pair after their LoRSum, as in
        :class:`lowrank_prox.optim.PSILoRA`.  The adapter is balanced in the metric's own
        geometry (``UᵀP_outU = VᵀP_inV``, the representative that minimises the scaled
        proximal norm ``‖P_out^½U‖² + ‖P_in^½V‖²``; :func:`lowrank_prox.gauge.balance`), the
        momentum, whose LoRSum is unscaled, in the plain one.  ``"none"`` is the published
        algorithm.
    gram_jitter : float, default 0
        ε ≥ 0 added to every Gram solve of both calls (the authors' code: 1e-6).
    other_lr : float, default 1e-4
        Learning rate of Adam(W) for the other trainable parameters (betas (0.9, 0.999),
        eps 1e-8, ``other_weight_decay``); it follows the LoRA group's schedule.
    other_weight_decay : float, default 0
    other_optimizer : callable or None
        Replaces that Adam (``params -> torch.optim.Optimizer``).

    Notes
    -----
    A step whose captured gradient holds NaN/Inf is skipped with parameters and state
    unchanged (:class:`LoRAOptimizer`).  With ``damping=0`` a statistic that reaches exactly
    zero (an input feature that is always zero, after the EMA underflows) makes the metric
    singular and the step raises ``ValueError``; keep ``damping > 0`` for such data.
    """

    def __init__(
        self,
        model,
        lr=0.2,
        *,
        iters=1,
        ridge=1e-2,
        betas=(0.9, 0.99),
        damping=1e-5,
        metric="kfac",
        power=0.5,
        momentum_rank=None,
        min_ridge=1e-5,
        reduction="mean",
        init_metric_scale=1.0,
        bias_correction=True,
        max_grad_norm=None,
        seed=None,
        balance=DEFAULT_BALANCE,
        gram_jitter=0.0,
        other_lr=1e-4,
        other_weight_decay=0.0,
        other_optimizer=None,
    ):
        iters = _validate.check_int(iters, "iters", low=0)
        balance, gram_jitter = check_balance(balance, gram_jitter)
        ridge = _validate.check_real(ridge, "ridge", low=0.0)
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        beta1 = _validate.check_real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
        beta2 = _validate.check_real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
        damping = _validate.check_real(damping, "damping", low=0.0)
        _validate.check_choice(metric, "metric", KINDS)
        power = _validate.check_real(power, "power", low=0.0, high=1.0)
        if momentum_rank is not None:
            momentum_rank = _validate.check_int(momentum_rank, "momentum_rank", low=1)
        min_ridge = _validate.check_real(min_ridge, "min_ridge", low=0.0)
        _validate.check_choice(reduction, "reduction", REDUCTIONS)
        init_metric_scale = _validate.check_real(
            init_metric_scale, "init_metric_scale", low=0.0, low_open=True
        )
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        if seed is not None:
            seed = _validate.check_int(seed, "seed")
        other_lr = _validate.check_real(other_lr, "other_lr", low=0.0)
        other_weight_decay = _validate.check_real(other_weight_decay, "other_weight_decay", low=0.0)
        if other_optimizer is None:
            other_optimizer = partial(
                torch.optim.AdamW,
                lr=other_lr,
                betas=(0.9, 0.999),
                eps=1e-8,
                weight_decay=other_weight_decay,
            )
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)
        super().__init__(
            model,
            lr,
            defaults={
                "iters": iters,
                "ridge": ridge,
                "betas": (beta1, beta2),
                "damping": damping,
                "metric": metric,
                "power": power,
                "momentum_rank": momentum_rank,
                "min_ridge": min_ridge,
                "reduction": reduction,
                "init_metric_scale": init_metric_scale,
                "balance": balance,
                "gram_jitter": gram_jitter,
                "bias_correction": bias_correction,
            },
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
        )

    def _ridge(self, group):
        """λ = max(η·λ0, min_ridge) with the scheduled η (SPEC §7)."""
        return max(group["lr"] * group["ridge"], group["min_ridge"])

    def _init_layer_state(self, layer, group):
        kw = {"dtype": layer.dtype, "device": layer.B.device}
        scale = 0.0 if group["bias_correction"] else group["init_metric_scale"]
        state = {
            "step": 0,
            "metric_in": torch.full((layer.in_features,), scale, **kw),
            "metric_out": torch.full((layer.out_features,), scale, **kw),
        }
        if group["betas"][0] > 0:
            r_M = min(group["momentum_rank"] or layer.rank, layer.in_features, layer.out_features)
            M_V = torch.randn(
                layer.in_features, r_M, generator=self._generator, dtype=torch.float64
            )
            state["momentum_U"] = torch.zeros(layer.out_features, r_M, **kw)
            state["momentum_V"] = M_V.to(**kw)
        return state

    def preconditioners(self, layer):
        """``(P_in, P_out)`` of ``layer`` (a :class:`LoRALayer`) from its current metric state."""
        group = self.param_groups[0]
        state = self.state[layer.B]
        a, g = self._corrected(state["metric_in"], state["metric_out"], state["step"], group)
        return (
            fractional_power(a, damping=group["damping"], power=group["power"]),
            fractional_power(g, damping=group["damping"], power=group["power"]),
        )

    @staticmethod
    def _corrected(a, g, step, group):
        """The EMA statistics divided by ``1 − β2^t`` when ``bias_correction`` (Adam's rule)."""
        if not group["bias_correction"] or step == 0:
            return a, g
        c = 1.0 - group["betas"][1] ** step
        return a / c, g / c

    def _layer_step(self, layer, grad, group, state):
        lr, K = group["lr"], group["iters"]
        beta1, beta2 = group["betas"]
        lam = self._ridge(group)
        # 1. metrics from the (clipped) batch, then P = (stat + ε)^p
        a_batch, g_batch = diagonal_statistics(
            grad.X, grad.Delta if grad.scale == 1.0 else grad.scale * grad.Delta,
            kind=group["metric"], reduction=group["reduction"],
        )
        a = ema_update(state["metric_in"], a_batch, beta2)
        g = ema_update(state["metric_out"], g_batch, beta2)
        a_hat, g_hat = self._corrected(a, g, state["step"] + 1, group)
        P_in = fractional_power(a_hat, damping=group["damping"], power=group["power"])
        P_out = fractional_power(g_hat, damping=group["damping"], power=group["power"])
        inv_in, inv_out = (1.0 / P_in)[:, None], (1.0 / P_out)[:, None]

        # 2. weight step: T = UVᵀ − η P_out⁻¹[(1−β1)G + β1 M]P_in⁻¹, by row scaling
        U, V = layer.factors()
        terms = [
            (1.0, U, V),
            (-lr * (1.0 - beta1) * grad.scale, inv_out * grad.Delta.mT, inv_in * grad.X.mT),
        ]
        has_momentum = beta1 > 0 and "momentum_U" in state
        if has_momentum:
            M_U, M_V = state["momentum_U"], state["momentum_V"]
            terms.append((-lr * beta1, inv_out * M_U, inv_in * M_V))
        target = LowRankSum(terms, check_finite=False)
        where, eps = group.get("balance", "none"), group.get("gram_jitter", 0.0)
        U1, V1 = scaled_lorsum(
            target,
            U,
            V,
            metric_in=P_in,
            metric_out=P_out,
            iters=K,
            ridge=lam,
            gram_jitter=eps,
            check_finite=False,
        )
        if where in ("adapter", "both"):
            U1, V1 = balanced(U1, V1, metric_in=P_in, metric_out=P_out)
        new_state = {**state, "step": state["step"] + 1, "metric_in": a, "metric_out": g}

        # 3. momentum, unscaled: M ← LoRSum(β1 M + (1−β1) G)
        if has_momentum:
            start = "u" if lam == 0 and not bool(M_U.any()) else "v"
            M_U, M_V = lorsum(
                grad.as_sum(1.0 - beta1, extra=[(beta1, M_U, M_V)]),
                M_U,
                M_V,
                iters=max(K, 1),
                ridge=lam,
                start=start,
                gram_jitter=eps,
                check_finite=False,
            )
            if where in ("momentum", "both"):
                M_U, M_V = balanced(M_U, M_V)
            new_state["momentum_U"], new_state["momentum_V"] = M_U, M_V
        return (U1, V1), new_state

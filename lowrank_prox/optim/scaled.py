"""Scaled PSI-LoRA: PSI-LoRA in a diagonal fractional K-FAC / Shampoo metric (SPEC §7)."""

from __future__ import annotations

from functools import partial

import torch

from .. import _validate
from ..factored import LowRankSum
from ..metrics import KINDS, REDUCTIONS
from ..scaled import scaled_lorsum
from . import _scaled_options as _opt
from ._base import LoRAOptimizer
from ._published import check_eps_mode, resolve
from .baselines import RuleOptimizer
from .fista import extrapolate
from .psilora import PROJECT, PUBLISHED, balanced, check_balance, momentum_call

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
    bias_correction : bool or None, default None (True)
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
    momentum_min_ridge : float or None
        Lower bound of the momentum call's λ, default ``min_ridge``; the authors' momentum
        call has none (``λ = η·λ0``, their value 0).
    clip_side : {"output", "input"} or None
        Which rows carry the clipping factor c in the metric statistics (the step's ``G`` is
        ``c·ΔᵀX`` either way).  Default "output": ``Δ ← cΔ``, the output gradients of the
        clipped loss; the input statistic ``a`` is the activations', independent of the
        gradient's norm.  "input": ``X ← cX`` (the authors' ``clip_grads_``), so the K-FAC
        ``a`` gets ``c²`` and ``g`` does not.  Shampoo statistics get ``c²`` on both sides
        either way.
    other_eps_mode : {"corrected", "raw"} or None
        ε placement of the default Adam of the other parameters: "corrected" (default,
        torch.optim.AdamW) or "raw" (the authors' ``adam_step_``,
        :class:`~lowrank_prox.optim.baselines.RuleOptimizer`; see RPLoRA's ``eps_mode``).
    peft_scaling : {"fold", "ignore"} or None
        As :class:`~lowrank_prox.optim.LoRAOptimizer`; default "fold".
    preset : {None, "published"}
        ``"published"`` sets the options left at None to the authors' values:
        ``bias_correction=False``, ``balance="none"``, ``gram_jitter=1e-6``,
        ``momentum_min_ridge=0``, ``clip_side="input"``, ``other_eps_mode="raw"``,
        ``peft_scaling="ignore"``; an explicit keyword wins.  ``bias_correction``,
        ``balance`` and ``gram_jitter`` default to None for this reason (project values
        True, "momentum", 0).
    other_lr : float, default 1e-4
        Learning rate of Adam(W) for the other trainable parameters (betas (0.9, 0.999),
        eps 1e-8, ``other_weight_decay``); it follows the LoRA group's schedule.
    other_weight_decay : float, default 0
    other_optimizer : callable or None
        Replaces that Adam (``params -> torch.optim.Optimizer``).
    metric_type : {"diagonal", "dense", "lowrank"}, default "diagonal"
        ``"dense"``: full n×n and m×m statistics and matrix powers
        (:func:`lowrank_prox.metrics.matrix_fractional_power`); state ``O(n² + m²)`` per layer.
        ``"lowrank"``: the statistics' EMA kept at rank ``metric_rank`` by LoRSum, plus the
        damping (and the EMA's decayed start) times I
        (:func:`lowrank_prox.metrics.lowrank_fractional_power`).
    metric_rank : int or None
        k ≥ 1 of ``metric_type="lowrank"``, default the layer's rank (capped at each side).
    matrix_power_method : {"eigh", "newton_schulz"}, default "eigh"
        How a dense metric's power and inverse are computed (Newton–Schulz: p ∈ {0, ¼, ½, 1}).
    newton_schulz_iters : int, default 25
        Newton–Schulz iterations per square root (the authors': 6).
    start_precondition_step : int, default 0
        Steps ``t < start_precondition_step`` (1-based) are Adam steps on the factors (metric
        EMAs updated, momentum not); 0 or 1: none.
    beta2_warmup : bool, default False
        Metric EMA factor ``min(β2, 1 − 1/(t+1))`` at step t.
    momentum_mode : {"normal", "fista", "naive"}, default "normal"
        The low-rank momentum M (SPEC §7), the authors' FISTA extrapolation with μ = β1, or
        heavy-ball momentum on the factors; formulas in :mod:`lowrank_prox.optim._scaled_options`.
    diagnostics : bool or SubspaceDiagnostics, default False
        Record both LoRSum calls per layer and step, as in :class:`PSILoRA`
        (:class:`lowrank_prox.optim.SubspaceDiagnostics`).  The ``"step"`` call is measured in
        the step's metric (:func:`lowrank_prox.subspace_diagnostics` with ``metric_in=P_in``,
        ``metric_out=P_out``: Π_r of ``P_out^{1/2}TP_in^{1/2}``, where scaled LoRSum is
        subspace iteration, SPEC §7); the unscaled ``"momentum"`` call in the plain norm.  The
        theorem's ``theory_applies`` needs ``λ ≤ ridge_tol``, and λ ≥ ``min_ridge`` here.

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
        bias_correction=None,
        max_grad_norm=None,
        seed=None,
        balance=None,
        gram_jitter=None,
        other_lr=1e-4,
        other_weight_decay=0.0,
        other_optimizer=None,
        metric_type="diagonal",
        matrix_power_method="eigh",
        newton_schulz_iters=25,
        metric_rank=None,
        start_precondition_step=0,
        beta2_warmup=False,
        momentum_mode="normal",
        diagnostics=False,
        momentum_min_ridge=None,
        clip_side=None,
        other_eps_mode=None,
        peft_scaling=None,
        preset=None,
    ):
        iters = _validate.check_int(iters, "iters", low=0)
        pub = resolve(preset, {
            "balance": balance, "gram_jitter": gram_jitter, "peft_scaling": peft_scaling,
            "bias_correction": bias_correction, "momentum_min_ridge": momentum_min_ridge,
            "clip_side": clip_side, "other_eps_mode": other_eps_mode,
        }, self._PROJECT, self._PUBLISHED)
        balance, gram_jitter = check_balance(pub["balance"], pub["gram_jitter"])
        bias_correction = pub["bias_correction"]
        clip_side = _validate.check_choice(pub["clip_side"], "clip_side", ("output", "input"))
        other_eps_mode = check_eps_mode(pub["other_eps_mode"], "other_eps_mode")
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
        momentum_min_ridge = min_ridge if pub["momentum_min_ridge"] is None else (
            _validate.check_real(pub["momentum_min_ridge"], "momentum_min_ridge", low=0.0))
        _validate.check_choice(reduction, "reduction", REDUCTIONS)
        init_metric_scale = _validate.check_real(
            init_metric_scale, "init_metric_scale", low=0.0, low_open=True
        )
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        if seed is not None:
            seed = _validate.check_int(seed, "seed")
        options = _opt.check_options(metric_type, matrix_power_method, newton_schulz_iters,
                                     metric_rank, start_precondition_step, beta2_warmup,
                                     momentum_mode, power, balance)
        other_lr = _validate.check_real(other_lr, "other_lr", low=0.0)
        other_weight_decay = _validate.check_real(other_weight_decay, "other_weight_decay", low=0.0)
        if other_optimizer is None and other_eps_mode == "raw":
            other_optimizer = partial(RuleOptimizer, optimizer="adamw", lr=other_lr,
                                      betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=other_weight_decay, eps_mode="raw")
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
                **options,
                "momentum_min_ridge": momentum_min_ridge,
                "clip_side": clip_side,
            },
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            peft_scaling=pub["peft_scaling"],
        )
        self._attach_diagnostics(diagnostics)

    _PROJECT = {**PROJECT, "bias_correction": True, "momentum_min_ridge": None,
                "clip_side": "output", "other_eps_mode": "corrected"}
    _PUBLISHED = {**PUBLISHED, "bias_correction": False, "momentum_min_ridge": 0.0,
                  "clip_side": "input", "other_eps_mode": "raw"}

    def _ridge(self, group):
        """λ = max(η·λ0, min_ridge) with the scheduled η (SPEC §7)."""
        return max(group["lr"] * group["ridge"], group["min_ridge"])

    def _init_layer_state(self, layer, group):
        kw = {"dtype": layer.dtype, "device": layer.B.device}
        scale = 0.0 if group["bias_correction"] else group["init_metric_scale"]
        state = {"step": 0, **_opt.initial_metrics(layer, scale, group, self._generator, **kw)}
        if group["betas"][0] > 0 and group.get("momentum_mode", "normal") == "normal":
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
        if group.get("metric_type") == "lowrank":
            pairs = _opt.lowrank_metric_pairs(state, state["step"], group)
            return pairs[0][0], pairs[1][0]
        a, g = self._corrected(state["metric_in"], state["metric_out"], state["step"], group)
        return _opt.metric_pair(a, group)[0], _opt.metric_pair(g, group)[0]

    @staticmethod
    def _corrected(a, g, step, group):
        """The EMA statistics divided by ``1 − β2^t`` when ``bias_correction`` (Adam's rule)."""
        if not group["bias_correction"] or step == 0:
            return a, g
        c = 1.0 - _opt.beta2_decay(step, group["betas"][1], group.get("beta2_warmup", False))
        return a / c, g / c

    def _layer_step(self, layer, grad, group, state):
        lr, K = group["lr"], group["iters"]
        beta1 = group["betas"][0]
        lam = self._ridge(group)
        t, mode = state["step"] + 1, group.get("momentum_mode", "normal")
        # 1. metrics from the (clipped) batch, then P = (stat + ε)^p
        entries, ((P_in, inv_in), (P_out, inv_out)) = _opt.update_metrics(
            grad, group, state, t, lam, self._corrected
        )
        new_state = {**state, "step": t, **entries}
        U, V = layer.factors()
        if t < group.get("start_precondition_step", 0):  # Adam warm-up
            U1, V1, entries = _opt.adam_warmup_step(U, V, grad, group, state)
            return (U1, V1), {**new_state, **entries}
        new_state = _opt.drop_warmup_state(new_state)

        # 2. weight step: T = UVᵀ − η P_out⁻¹[(1−β1)G + β1 M]P_in⁻¹, by row scaling
        pre = _opt.precondition
        g_coef = -lr * (1.0 if mode != "normal" else 1.0 - beta1) * grad.scale
        terms = [(1.0, U, V), (g_coef, pre(inv_out, grad.Delta.mT), pre(inv_in, grad.X.mT))]
        has_momentum = beta1 > 0 and "momentum_U" in state
        if has_momentum:
            M_U, M_V = state["momentum_U"], state["momentum_V"]
            terms.append((-lr * beta1, pre(inv_out, M_U), pre(inv_in, M_V)))
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
        self._diagnose(layer, "step", target, (U, V), (U1, V1), iters=K, ridge=lam, step=t,
                       metric_in=P_in, metric_out=P_out)
        if mode == "naive":
            U1, V1, entries = _opt.naive_momentum_step(U, V, U1, V1, state, lr, beta1)
            return (U1, V1), {**new_state, **entries}
        if where in ("adapter", "both"):
            U1, V1 = balanced(U1, V1, metric_in=P_in, metric_out=P_out)
        if mode == "fista" and beta1 > 0:
            Up, Vp = state.get("prev_U", U), state.get("prev_V", V)
            new_state.update(prev_U=U1, prev_V=V1)
            U1, V1 = extrapolate(U1, V1, Up, Vp, beta1, iters=K, ridge=lam, gram_jitter=eps)

        # 3. momentum, unscaled: M ← LoRSum(β1 M + (1−β1) G)
        if has_momentum:
            lam_m = max(lr * group["ridge"], group.get("momentum_min_ridge", group["min_ridge"]))
            M_U, M_V = momentum_call(self, layer,
                                     grad.as_sum(1.0 - beta1, extra=[(beta1, M_U, M_V)]),
                                     M_U, M_V, iters=K, ridge=lam_m, gram_jitter=eps, step=t)
            if where in ("momentum", "both"):
                M_U, M_V = balanced(M_U, M_V)
            new_state["momentum_U"], new_state["momentum_V"] = M_U, M_V
        return (U1, V1), new_state

"""PSI-LoRA with low-rank momentum and Proj. PSI-LoRA (SPEC §6, reference/paper.md §6, §6.1)."""

from __future__ import annotations

import torch

from .. import _validate, _xp
from ..gauge import balance as _balance_pair
from ..lorsum import lorsum
from ._base import LoRAOptimizer
from ._base import ridge_gram as _gram
from ._options import check_options, init_residual, quartic_shrink, residual_update
from ._published import resolve

__all__ = ["BALANCE", "PSILoRA", "ProjPSILoRA"]

#: Where PSI-LoRA may re-balance the factors after each LoRSum (see :class:`PSILoRA`).
BALANCE = ("none", "momentum", "adapter", "both")
DEFAULT_BALANCE = "momentum"


def check_balance(balance, gram_jitter):
    """Validate the ``balance`` choice and ``gram_jitter``; return ``(balance, jitter)``."""
    _validate.check_choice(balance, "balance", BALANCE)
    return balance, _validate.check_real(gram_jitter, "gram_jitter", low=0.0)


#: This project's choices and the authors' (``preset="published"``) for the PSI-LoRA family.
PROJECT = {"balance": DEFAULT_BALANCE, "gram_jitter": 0.0, "peft_scaling": "fold"}
PUBLISHED = {"balance": "none", "gram_jitter": 1e-6, "peft_scaling": "ignore"}


def published_options(preset, **given):
    """``given`` (options left at None) filled from :data:`PUBLISHED` or :data:`PROJECT`."""
    return resolve(preset, given, PROJECT, PUBLISHED)


def balanced(U, V, *, metric_in=None, metric_out=None):
    """``(U, V)`` replaced by its balanced pair (:func:`lowrank_prox.gauge.balance`), same UVᵀ.

    A numerically rank-deficient product (``s_r ≤ eps·s_1``, e.g. the zero momentum before
    the first gradient) is returned unchanged: balancing would zero those columns in both
    factors, and a zero pair stays zero under every later ridge step.
    """
    Ub, Vb, s = _balance_pair(U, V, metric_in=metric_in, metric_out=metric_out,
                              check_finite=False)
    if not bool(s[-1] > torch.finfo(s.dtype).eps * s[0]):
        return U, V
    return Ub, Vb


def first_side(ridge, U):
    """The side a LoRSum call from ``(U, V)`` starts with: ``"v"``, or ``"u"`` when λ = 0 and
    ``U = 0`` (the V-step's Gram ``UᵀU`` is then zero and its minimum-norm solution ``V = 0``
    would end the iteration at 0 for good; the U-step first is the range finder)."""
    return "u" if ridge == 0 and not bool(U.any()) else "v"


def adapter_call(target, U, V, lr, *, iters, ridge, gram_jitter, start=None):
    """The adapter's LoRSum step ``LoRSum_K(UVᵀ − lr·(…))`` from the current factors (SPEC §6).

    At ``lr == 0`` (the first step of a linear warm-up) the target is ``UVᵀ`` itself, of rank
    ≤ r, so its proximal step is the current adapter and the factors are returned as they are.
    LoRSum would return an equal product but not these factors: from PEFT's ``B = 0`` start,
    with λ = lr·λ0 = 0, the V-step's Gram ``BᵀB`` is zero and its minimum-norm solution sets
    ``A = 0`` as well, after which no later step can leave ``U = V = 0``.  ``start`` as in
    :func:`lowrank_prox.lorsum`; by default :func:`first_side`.
    """
    if lr == 0:
        return U, V
    if start is None:
        start = first_side(ridge, U)
    return lorsum(target, U, V, iters=iters, ridge=ridge, start=start, gram_jitter=gram_jitter,
                  check_finite=False)


def momentum_call(opt, layer, target, M_U, M_V, *, iters, ridge, gram_jitter, step):
    """The low-rank momentum update ``M ← LoRSum_{max(K,1)}(target)`` of PSI-LoRA and Scaled
    PSI-LoRA (SPEC §6, §7), recorded as the ``"momentum"`` call by ``opt``'s diagnostics.

    With λ = 0 a V-step from ``M_U = 0`` has no information (pinv of a zero Gram gives
    ``M_V = 0`` for good), so that call starts with the U-step, the range finder.
    """
    K = max(iters, 1)
    start = first_side(ridge, M_U)
    out = lorsum(target, M_U, M_V, iters=K, ridge=ridge, start=start, gram_jitter=gram_jitter,
                 check_finite=False)
    opt._diagnose(layer, "momentum", target, (M_U, M_V), out, iters=K, ridge=ridge, side=start,
                  step=step)
    return out

def check_momentum_rank_seed(momentum_rank, seed):
    """Validate ``momentum_rank`` (None or ≥ 1) and ``seed``; return ``(rank, generator)``."""
    if momentum_rank is not None:
        momentum_rank = _validate.check_int(momentum_rank, "momentum_rank", low=1)
    if seed is not None:
        seed = _validate.check_int(seed, "seed")
    return momentum_rank, (None if seed is None else torch.Generator().manual_seed(seed))


def init_momentum(layer, momentum_rank, generator):
    """The zero momentum ``M = M_U M_Vᵀ``: ``M_U = 0`` (out × r_M), ``M_V ~ N(0, 1)`` (in × r_M).

    ``r_M = momentum_rank`` (default the layer's rank), capped at ``min(in, out)``; ``M_V`` is
    drawn in float64 from ``generator`` and stored in the layer's compute dtype.
    """
    r_M = min(momentum_rank or layer.rank, layer.in_features, layer.out_features)
    M_V = torch.randn(layer.in_features, r_M, generator=generator, dtype=torch.float64)
    return {
        "momentum_U": torch.zeros(layer.out_features, r_M, dtype=layer.dtype,
                                  device=layer.B.device),
        "momentum_V": M_V.to(dtype=layer.dtype, device=layer.B.device),
    }


def _check_common(lr, iters, ridge, momentum, dampening):
    iters = _validate.check_int(iters, "iters", low=0)
    ridge = _validate.check_real(ridge, "ridge", low=0.0)
    momentum = _validate.check_real(momentum, "momentum", low=0.0, high=1.0, high_open=True)
    dampening = _validate.check_real(dampening, "dampening", low=0.0, high=1.0)
    return iters, ridge, momentum, dampening


class PSILoRA(LoRAOptimizer):
    """Proximal Subspace Iteration LoRA with low-rank momentum (SPEC §6).

    Per LoRA layer ``W = W0 + U Vᵀ`` (``U = lora_B``, ``Vᵀ = lora_A``), with the captured
    gradient ``G = Δᵀ X`` kept factored, each step makes two calls of the core
    :func:`lowrank_prox.lorsum` on a :class:`lowrank_prox.LowRankSum`, both with
    ``λ = lr · ridge`` (so LR schedulers move λ)::

        (U, V) ← LoRSum_K([(U, V), (Δᵀ, X), (M_U, M_V)], [1, −η(1−d), −ημ])
               ≈ Π_r(U Vᵀ − η[(1−d) G + μ M])
        M      ← LoRSum_K([(M_U, M_V), (Δᵀ, X)], [μ, 1−d])   ≈ Π_{r_M}(μ M + (1−d) G)

    The momentum ``M = M_U M_Vᵀ`` starts at ``M_V ~ N(0, 1)``, ``M_U = 0``, so the first
    momentum call is a randomised range finder of ``G``.  State per layer:
    ``momentum_U`` (out × r_M), ``momentum_V`` (in × r_M) in float32 (at least) and ``step``;
    memory ≈ 3× the LoRA parameters with ``r_M = r``.

    Parameters
    ----------
    model : torch.nn.Module
        Contains the LoRA layers (:class:`lowrank_prox.nn.LoRALinear` or PEFT with scaling 1).
    lr : float
        Step size η ≥ 0.
    iters : int, default 1
        LoRSum iterations K (V-step then U-step).  ``iters=0`` is the Jacobi step of SPEC §3
        (with λ > 0 and μ = 0 this is Riemannian-preconditioned LoRA, SPEC §5).
    ridge : float, default 1e-3
        λ0 ≥ 0; the proximal weight is ``λ = lr · ridge``.  With ``ridge = 0`` and a zero
        ``lora_B`` (PEFT's initialisation) the V-step has no information, so that step starts
        with the U-step (the range finder; see :func:`first_side`).
    momentum : float, default 0
        μ in ``[0, 1)``.  With ``μ = 0`` no momentum state is kept.
    dampening : float, default 0
        d in ``[0, 1]`` (torch.optim.SGD's convention).
    momentum_rank : int or None
        r_M ≥ 1, default the layer's rank r (capped at ``min(in, out)``).
    momentum_ridge : float or None
        λ0 of the momentum call, default ``ridge``.
    max_grad_norm : float or None
        Implicit global clipping (see :class:`LoRAOptimizer`).
    seed : int or None
        Seed of the momentum sketches ``M_V`` (default: torch's global generator).
    use_momentum_residual : bool, default False
        Error feedback for the momentum: a rank-``residual_rank`` residual ``E`` of what the
        momentum compression dropped is added back into the next momentum call (the authors'
        option; formulas in :mod:`lowrank_prox.optim._options`).  Needs ``momentum > 0``.
    residual_rank : int or None
        r_E, default ``min(in, out)``.
    quartic_kernel : {"none", "scalar", "gram"}, default "none"
        Bregman quartic rescaling of each step (the authors' ``scalar_quartic_shrinkage_``,
        ``gram_quartic_shrinkage_``), see :mod:`lowrank_prox.optim._options`.
    quartic_sigma, quartic_alpha : float, default 1e-3, 1e-2
        σ, α ≥ 0 of the scalar kernel ``(σ/2)‖X‖² + (α/4)‖X‖⁴``.
    quartic_gamma : float, default 1e-2
        γ ≥ 0 of the Gram kernel ``(γ/4)‖UᵀU + VVᵀ‖²``.
    balance : {"momentum", "none", "adapter", "both"}, default "momentum"
        Which factor pairs are replaced by their balanced pair (:func:`lowrank_prox.gauge.balance`,
        ``UᵀU = VᵀV = Σ``, same product) after their LoRSum.  The ridge
        ``λ(‖U − U_a‖² + ‖V − V_a‖²)`` is not invariant under the gauge ``(U, V) → (UD, VD⁻ᵀ)``;
        without balancing the momentum pair drifts to ``‖M_U‖ ≫ ‖M_V‖`` (it starts at
        ``M_U = 0``, ``M_V ~ N(0, 1)``) and the fixed λ then dominates the momentum U-step.
        ``"none"`` is the published algorithm.  The default was chosen from measurements
        (README, "Gauge"): on the linear task it removes PSI-LoRA ×1's late divergence and
        it is independent of the problem's scale, unlike a jitter.  None: "momentum" (or
        the preset's "none").
    gram_jitter : float or None
        ε ≥ 0 added to every Gram solve of both LoRSum calls (:func:`lowrank_prox.lorsum`),
        default 0.  The authors' code uses ε = 1e-6: with ``preset="published"`` (or
        ``balance="none", gram_jitter=1e-6``) this optimizer reproduces their runs.  On an
        unbalanced momentum pair (``M_VᵀM_V ≪ λ``) the jitter shrinks ``M_U`` by
        ``λ/(λ + ε)`` per step, an accidental stabiliser whose effect depends on the
        problem's scale.
    peft_scaling : {"fold", "ignore"} or None
        As :class:`~lowrank_prox.optim.LoRAOptimizer`; default "fold" (the preset: "ignore").
    preset : {None, "published"}
        ``"published"`` sets the options above that are left at None to the authors' values
        (``balance="none"``, ``gram_jitter=1e-6``, ``peft_scaling="ignore"``;
        :mod:`lowrank_prox.optim._published`); an explicit keyword wins.
    other_optimizer, other_momentum, other_dampening
        Optimizer of the other trainable parameters; by default SGD with ``lr``, ``momentum``
        and ``dampening``.
    diagnostics : bool or SubspaceDiagnostics, default False
        Record, per layer and step, how close each LoRSum call (step and momentum) came to
        Π_r of its target next to Theorem 3.1's prediction
        (:class:`lowrank_prox.optim.SubspaceDiagnostics`, then ``optimizer.diagnostics``).
        Off by default and then free.

    Notes
    -----
    The autograd gradients of ``lora_A``/``lora_B`` are not used.  Gradient accumulation: the
    rows of all backward passes since the last step are concatenated (their gradients add up,
    as in ``.grad``; see :mod:`lowrank_prox.optim._capture`).  A step whose captured gradient
    holds NaN/Inf is skipped with parameters and state unchanged.
    """

    def __init__(
        self,
        model,
        lr,
        *,
        iters=1,
        ridge=1e-3,
        momentum=0.0,
        dampening=0.0,
        momentum_rank=None,
        momentum_ridge=None,
        max_grad_norm=None,
        seed=None,
        use_momentum_residual=False,
        residual_rank=None,
        quartic_kernel="none",
        quartic_sigma=1e-3,
        quartic_alpha=1e-2,
        quartic_gamma=1e-2,
        balance=None,
        gram_jitter=None,
        other_optimizer=None,
        other_momentum=None,
        other_dampening=None,
        diagnostics=False,
        peft_scaling=None,
        preset=None,
    ):
        iters, ridge, momentum, dampening = _check_common(lr, iters, ridge, momentum, dampening)
        options = check_options(use_momentum_residual, residual_rank, momentum, quartic_kernel,
                                quartic_sigma, quartic_alpha, quartic_gamma)
        pub = published_options(preset, balance=balance, gram_jitter=gram_jitter,
                                peft_scaling=peft_scaling)
        balance, gram_jitter = check_balance(pub["balance"], pub["gram_jitter"])
        momentum_rank, self._generator = check_momentum_rank_seed(momentum_rank, seed)
        momentum_ridge = ridge if momentum_ridge is None else _validate.check_real(
            momentum_ridge, "momentum_ridge", low=0.0
        )
        super().__init__(
            model,
            lr,
            defaults={
                "iters": iters,
                "ridge": ridge,
                "momentum": momentum,
                "dampening": dampening,
                "momentum_rank": momentum_rank,
                "momentum_ridge": momentum_ridge,
                **options,
                "balance": balance,
                "gram_jitter": gram_jitter,
            },
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=momentum if other_momentum is None else other_momentum,
            other_dampening=dampening if other_dampening is None else other_dampening,
            peft_scaling=pub["peft_scaling"],
        )
        self._attach_diagnostics(diagnostics)

    def _init_layer_state(self, layer, group):
        state = {"step": 0}
        if group["momentum"] > 0:
            state.update(init_momentum(layer, group["momentum_rank"], self._generator))
            if group["use_momentum_residual"]:
                state.update(init_residual(layer, group, self._generator))
        return state

    def _layer_step(self, layer, grad, group, state):
        lr, mu, d, K = group["lr"], group["momentum"], group["dampening"], group["iters"]
        U, V = layer.factors()
        terms = [(1.0, U, V)]
        has_momentum = mu > 0 and "momentum_U" in state
        if has_momentum:
            M_U, M_V = state["momentum_U"], state["momentum_V"]
            terms.append((-lr * mu, M_U, M_V))
        target = grad.as_sum(-lr * (1.0 - d), extra=terms)
        where, eps = group.get("balance", "none"), group.get("gram_jitter", 0.0)
        lam = self._ridge(group)
        side = first_side(lam, U)
        U1, V1 = adapter_call(target, U, V, lr, iters=K, ridge=lam, gram_jitter=eps, start=side)
        U1, V1 = quartic_shrink(group, U, V, U1, V1)  # identity unless quartic_kernel is set
        step = state["step"] + 1
        self._diagnose(layer, "step", target, (U, V), (U1, V1), iters=K, ridge=lam, side=side,
                       step=step)
        if where in ("adapter", "both"):
            U1, V1 = balanced(U1, V1)
        new_state = {**state, "step": step}
        if has_momentum:
            lam_M = lr * group["momentum_ridge"]
            residual = "residual_U" in state  # use_momentum_residual
            extra = [(mu, M_U, M_V)]
            if residual:
                extra.append((1.0, state["residual_U"], state["residual_V"]))
            M_U, M_V = momentum_call(self, layer, grad.as_sum(1.0 - d, extra=extra), M_U, M_V,
                                     iters=K, ridge=lam_M, gram_jitter=eps, step=step)
            if residual:
                new_state.update(residual_update(grad, state, mu, d, (M_U, M_V), K, lam_M))
            if where in ("momentum", "both"):
                M_U, M_V = balanced(M_U, M_V)
            new_state["momentum_U"], new_state["momentum_V"] = M_U, M_V
        return (U1, V1), new_state


class ProjPSILoRA(LoRAOptimizer):
    """Proj. PSI-LoRA: LoRSum gradient step plus factor-space momentum (paper.md §6.1, SPEC §6).

    Per layer, with ``λ = lr · ridge``:

    1. ``(U', V') = LoRSum_K(U Vᵀ − η(1−d) G)`` (no momentum inside LoRSum);
    2. preconditioned factor gradients at ``(U', V')``:
       ``g_U = G V'(V'ᵀV' + λI)⁻¹`` (out × r), ``g_V = Gᵀ U'(U'ᵀU' + λI)⁻¹`` (in × r);
    3. first step: buffers ``b ← g``, previous factors ``← (U', V')``, and ``(U, V) ← (U', V')``;
    4. later steps: transport the buffers to the new bases,
       ``b̃_U = b_U V_prevᵀ V'(V'ᵀV' + λI)⁻¹``, ``b̃_V = b_V U_prevᵀ U'(U'ᵀU' + λI)⁻¹``;
       then ``b ← μ b̃ + (1−d) g``, previous ← ``(U', V')`` and
       ``U ← U' − ημ b̃_U``, ``V ← V' − ημ b̃_V``.

    Memory: two buffers and two previous factors (≈ 5× the LoRA parameters).  Parameters as
    :class:`PSILoRA` (no ``momentum_rank``, ``balance``); ``gram_jitter`` also enters the
    preconditioner and transport Grams (``+ (λ + ε)I``, as the authors' solves).  ``iters=0``
    makes step 1 the Jacobi step (not a no-op as in the reference code, paper.md §6.1).
    ``diagnostics`` as in :class:`PSILoRA`; only step 1 is a LoRSum call (``"step"``): the
    momentum lives in factor space.
    """

    def __init__(
        self,
        model,
        lr,
        *,
        iters=1,
        ridge=1e-3,
        momentum=0.0,
        dampening=0.0,
        max_grad_norm=None,
        other_optimizer=None,
        other_momentum=None,
        other_dampening=None,
        diagnostics=False,
        gram_jitter=None,
        peft_scaling=None,
        preset=None,
    ):
        iters, ridge, momentum, dampening = _check_common(lr, iters, ridge, momentum, dampening)
        pub = published_options(preset, gram_jitter=gram_jitter, peft_scaling=peft_scaling)
        jitter = _validate.check_real(pub["gram_jitter"], "gram_jitter", low=0.0)
        super().__init__(
            model,
            lr,
            defaults={"iters": iters, "ridge": ridge, "momentum": momentum, "dampening": dampening,
                      "gram_jitter": jitter},
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=momentum if other_momentum is None else other_momentum,
            other_dampening=dampening if other_dampening is None else other_dampening,
            peft_scaling=pub["peft_scaling"],
        )
        self._attach_diagnostics(diagnostics)

    def _init_layer_state(self, layer, group):
        return {"step": 0}

    def _layer_step(self, layer, grad, group, state):
        lr, mu, d, K = group["lr"], group["momentum"], group["dampening"], group["iters"]
        lam, eps = self._ridge(group), group.get("gram_jitter", 0.0)
        U, V = layer.factors()
        target = grad.as_sum(-lr * (1.0 - d), extra=[(1.0, U, V)])
        side = first_side(lam, U)
        Up, Vp = adapter_call(target, U, V, lr, iters=K, ridge=lam, gram_jitter=eps, start=side)
        new_state = {**state, "step": state["step"] + 1}
        self._diagnose(layer, "step", target, (U, V), (Up, Vp), iters=K, ridge=lam, side=side,
                       step=new_state["step"])
        if mu == 0:
            return (Up, Vp), new_state
        G = grad.as_sum()
        gram_V, gram_U = _gram(Vp, lam + eps), _gram(Up, lam + eps)
        g_U = _xp.spd_solve_right(G @ Vp, gram_V)
        g_V = _xp.spd_solve_right(G.T @ Up, gram_U)
        if "buffer_U" not in state:
            bU, bV, U1, V1 = g_U, g_V, Up, Vp
        else:
            tU = _xp.spd_solve_right(state["buffer_U"] @ (state["prev_V"].mT @ Vp), gram_V)
            tV = _xp.spd_solve_right(state["buffer_V"] @ (state["prev_U"].mT @ Up), gram_U)
            bU, bV = mu * tU + (1.0 - d) * g_U, mu * tV + (1.0 - d) * g_V
            U1, V1 = Up - lr * mu * tU, Vp - lr * mu * tV
        new_state.update(buffer_U=bU, buffer_V=bV, prev_U=Up, prev_V=Vp)
        return (U1, V1), new_state


"""FISTA PSI-LoRA: a LoRSum step, then a LoRSum extrapolation kept low-rank (SPEC §3, §6).

The authors' ``OPLoraOptimizerFISTA`` (zeligism/PSI-LoRA, ``src/oplora/optimizer.py``).
"""

from __future__ import annotations

from .. import _validate
from ..factored import LowRankSum
from ..lorsum import lorsum
from ._base import LoRAOptimizer
from .psilora import _check_common, adapter_call, published_options

__all__ = ["PSILoRAFISTA"]


def extrapolate(Ux, Vx, Up, Vp, mu, *, iters, ridge, gram_jitter=0.0):
    """``LoRSum_K((1 + μ) x − μ x_prev)``, warm start and anchor ``x = Ux Vxᵀ`` (SPEC §3).

    The FISTA extrapolation kept at rank r, shared by :class:`PSILoRAFISTA` and Scaled
    PSI-LoRA's ``momentum_mode="fista"``; inner dimension 2r.
    """
    extrapolated = LowRankSum([(1.0 + mu, Ux, Vx), (-mu, Up, Vp)], check_finite=False)
    return lorsum(extrapolated, Ux, Vx, iters=iters, ridge=ridge, gram_jitter=gram_jitter,
                  check_finite=False)


class PSILoRAFISTA(LoRAOptimizer):
    """PSI-LoRA with FISTA-style extrapolation instead of a momentum buffer (SPEC §6).

    Per layer, with ``λ = lr · ridge`` and ``x_k = U_k' V_k'ᵀ`` the LoRSum point of step k
    (``x_0`` = the adapter before the first step)::

        x_{k+1} = LoRSum_K(y_k − η G)                       warm start and anchor y_k
        y_{k+1} = LoRSum_K((1 + μ) x_{k+1} − μ x_k)         warm start and anchor x_{k+1}

    and the layer holds ``y = U Vᵀ`` (rank r).  Both calls are the core :func:`lorsum` on a
    factored target (inner dimensions ``r + N`` and ``2r``): no m×n matrix, no SVD.  With
    ``K → ∞`` and λ = 0 the two calls are exact projections and the step is FISTA with a
    constant extrapolation weight μ on the rank-r set, ``y_{k+1} = Π_r(x_{k+1} + μ(x_{k+1} −
    x_k))``.  With ``μ = 0`` the second call is skipped (``x_{k+1}`` is its fixed point), and
    the optimizer equals :class:`PSILoRA` without momentum.

    Parameters
    ----------
    model, lr, iters, ridge
        As :class:`PSILoRA`.  ``iters=0`` makes both calls Jacobi steps (the authors' code makes
        K = 0 a no-op; SPEC §3).
    momentum : float, default 0
        The extrapolation weight μ in ``[0, 1)`` (the authors' ``momentum``; constant, not the
        ``(t_k − 1)/t_{k+1}`` sequence of Beck & Teboulle).
    max_grad_norm, other_optimizer
        As :class:`LoRAOptimizer`.
    gram_jitter, peft_scaling, preset
        As :class:`PSILoRA` (``gram_jitter`` in both calls).
    other_momentum, other_dampening
        SGD settings of the other parameters; by default ``momentum`` and 0 (as the authors).

    State per layer: ``step`` and, when ``μ > 0``, ``prev_U`` (out × r), ``prev_V`` (in × r),
    the factors of ``x_k``; memory ≈ 2× the LoRA parameters.
    """

    def __init__(
        self,
        model,
        lr,
        *,
        iters=1,
        ridge=1e-3,
        momentum=0.0,
        max_grad_norm=None,
        other_optimizer=None,
        other_momentum=None,
        other_dampening=None,
        gram_jitter=None,
        peft_scaling=None,
        preset=None,
    ):
        iters, ridge, momentum, _ = _check_common(lr, iters, ridge, momentum, 0.0)
        pub = published_options(preset, gram_jitter=gram_jitter, peft_scaling=peft_scaling)
        jitter = _validate.check_real(pub["gram_jitter"], "gram_jitter", low=0.0)
        super().__init__(
            model,
            lr,
            defaults={"iters": iters, "ridge": ridge, "momentum": momentum,
                      "gram_jitter": jitter},
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=momentum if other_momentum is None else other_momentum,
            other_dampening=0.0 if other_dampening is None else other_dampening,
            peft_scaling=pub["peft_scaling"],
        )

    def _init_layer_state(self, layer, group):
        return {"step": 0}

    def _layer_step(self, layer, grad, group, state):
        lr, mu, K = group["lr"], group["momentum"], group["iters"]
        lam, eps = self._ridge(group), group.get("gram_jitter", 0.0)
        U, V = layer.factors()
        target = grad.as_sum(-lr, extra=[(1.0, U, V)])
        Ux, Vx = adapter_call(target, U, V, lr, iters=K, ridge=lam, gram_jitter=eps)
        new_state = {**state, "step": state["step"] + 1}
        if mu == 0:
            return (Ux, Vx), new_state
        Up, Vp = state.get("prev_U", U), state.get("prev_V", V)
        U1, V1 = extrapolate(Ux, Vx, Up, Vp, mu, iters=K, ridge=lam, gram_jitter=eps)
        new_state.update(prev_U=Ux, prev_V=Vx)
        return (U1, V1), new_state

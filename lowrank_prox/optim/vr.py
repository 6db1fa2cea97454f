"""Variance-reduced PSI-LoRA: STORM and MARS estimators kept low-rank (SPEC §3, §6).

The authors' ``OPLoraOptimizerVR`` (zeligism/PSI-LoRA, ``src/oplora/optimizer.py``).
"""

from __future__ import annotations

import torch

from .. import _validate
from ..factored import LowRankSum
from ..lorsum import lorsum
from ._base import LoRAOptimizer
from .psilora import (
    DEFAULT_BALANCE,
    _check_common,
    adapter_call,
    balanced,
    check_balance,
    check_momentum_rank_seed,
    first_side,
    init_momentum,
)

__all__ = ["VARIANTS", "PSILoRAVR"]

#: The variance-reduced estimators of :class:`PSILoRAVR`.
VARIANTS = ("storm", "mars")


def vr_coefficients(variant, mu, gamma, kappa=1.0):
    """``(c_d, c_g, c_p)`` of ``d_t = c_d d_{t−1} + c_g g(x_t) + c_p g(x_{t−1})``.

    STORM: ``(μ, 1, −μ)``.  MARS: ``(β, κ(1 − β + γβ), −κγβ)`` with ``β = μ`` and κ the
    clipping factor of ``c_t`` (1 without clipping).
    """
    if variant == "storm":
        return mu, 1.0, -mu
    return mu, kappa * (1.0 - mu + gamma * mu), -kappa * gamma * mu


def group_coefficients(group, c_norm):
    """``(c_d, c_g, c_p)`` of a param group; ``c_norm(w)`` returns ``‖(1 + w) g_t − w g_p‖``.

    MARS with ``mars_clip`` c: ``κ = min(1, c/‖c_t‖)``, ``c_t = g_t + w (g_t − g_p)``,
    ``w = γβ/(1−β)``; otherwise κ = 1 (and ``c_norm`` is not called).
    """
    mu, gamma, clip = group["momentum"], group["correction_strength"], group["mars_clip"]
    kappa = 1.0
    if group["variant"] == "mars" and clip is not None:
        norm = c_norm(gamma * mu / (1.0 - mu))
        kappa = 1.0 if norm <= clip else clip / norm
    return vr_coefficients(group["variant"], mu, gamma, kappa)


class _GradPair:
    """The captured gradients at ``x_t`` and at ``x_{t−1}`` on the same batch (one layer)."""

    def __init__(self, current, previous):
        self.current, self.previous = current, previous

    def to(self, dtype):
        current = self.current.to(dtype)
        previous = current if self.previous is self.current else self.previous.to(dtype)
        return _GradPair(current, previous)


class PSILoRAVR(LoRAOptimizer):
    """PSI-LoRA with a STORM or MARS variance-reduced, low-rank gradient estimator (SPEC §6).

    Each step evaluates the closure twice on the same mini-batch ξ_t: at the current point
    ``x_t`` (gradient ``G_t = g(x_t; ξ_t)``) and at the previous one ``x_{t−1}``
    (``G_p = g(x_{t−1}; ξ_t)``; the optimizer moves every trainable parameter there and back).
    Per LoRA layer, with ``λ = lr · ridge`` and the stored rank-r_M estimate
    ``D = M_U M_Vᵀ ≈ d_{t−1}``::

        d_t     = c_d D + c_g G_t + c_p G_p                      (a LowRankSum, never formed)
        x_{t+1} = LoRSum_K(x_t − η d_t)                         warm start and anchor x_t
        D       ← LoRSum_K'(d_t)                                warm start and anchor D

    with ``K' = max(K, 1)`` and the coefficients

    * STORM (Cutkosky & Orabona 2019), ``d_t = G_t + μ(d_{t−1} − G_p)``:
      ``(c_d, c_g, c_p) = (μ, 1, −μ)`` (μ = 1 − a in STORM's notation);
    * MARS (Yuan et al. 2024), ``c_t = G_t + γ β/(1−β) (G_t − G_p)``,
      ``d_t = β d_{t−1} + (1−β) κ c_t``: ``(β, κ(1−β+γβ), −κγβ)`` with β = μ, γ =
      ``correction_strength`` and ``κ = min(1, mars_clip/‖c_t‖_F)`` (κ = 1 without
      ``mars_clip``; ‖c_t‖ is the norm of a factored sum, :meth:`LowRankSum.norm`).

    The update uses the exact factored ``d_t``; only the stored ``D`` is compressed to rank
    r_M.  The first step has no previous point: ``G_p = G_t`` and ``d_0 = 0`` (the authors'
    convention), so the closure is called once; later steps call it twice (once when
    ``c_p = 0``: STORM with μ = 0, MARS with γβ = 0).  The other trainable parameters get the
    same estimator, dense (``d ← c_d d + c_g g_t + c_p g_p``), as their ``.grad`` for the other
    optimizer (default SGD without momentum: ``p ← p − η d``, as the authors).

    Parameters
    ----------
    model, lr, iters, ridge
        As :class:`PSILoRA`.
    variant : {"storm", "mars"}, default "storm"
        The estimator (the authors' ``which_vr``).
    momentum : float, default 0
        μ in ``[0, 1)``: STORM's ``1 − a``, MARS's β.  With μ = 0 both are plain PSI-LoRA
        (:class:`PSILoRA` without momentum) and no state but ``step`` is kept.
    correction_strength : float, default 0.5
        MARS's γ ≥ 0 (ignored by STORM).
    mars_clip : float or None, default None
        MARS's clipping threshold of ``‖c_t‖`` per layer (MARS uses 1; the authors' code has
        none).
    momentum_rank : int or None
        r_M ≥ 1 of ``D``, default the layer's rank (the authors support only r_M = r).
    balance, gram_jitter, seed
        As :class:`PSILoRA` (``balance="none", gram_jitter=1e-6`` is the authors' setting).
    max_grad_norm : float or None
        Global clipping, applied to each of the two gradients with its own factor (as the
        authors' ``clip_grads_`` after each closure).
    other_optimizer, other_momentum, other_dampening
        As :class:`LoRAOptimizer` (default SGD with ``lr`` and no momentum).

    State per layer: ``step``; with μ > 0 ``momentum_U`` (out × r_M), ``momentum_V`` (in × r_M)
    and, when ``c_p ≠ 0``, ``prev_U``, ``prev_V`` (the factors of ``x_{t−1}``): ≈ 4× the LoRA
    parameters.  The other parameters' previous values and estimates are in ``state_dict()``
    under ``"vr_other"``.

    Notes
    -----
    ``step(closure)`` needs the closure (``TypeError`` without it): it must zero the gradients,
    evaluate the loss of the *same* mini-batch and call ``backward()``, e.g.
    ``def closure(): opt.zero_grad(); loss = f(model(x), y); loss.backward(); return loss``.
    Random layers (dropout) should draw the same mask in both calls for the estimator to be
    the one above.  The rows of both evaluations are held until the step (2× PSI-LoRA's
    capture).  Not supported: ``step_in_backward``, ``data_parallel``, gradient accumulation
    outside the closure.  A NaN/Inf in either gradient or in the update skips the step with
    parameters and state unchanged.
    """

    #: ``step`` must be given a closure (read by training loops such as the linear task's).
    requires_closure = True

    def __init__(
        self,
        model,
        lr,
        *,
        variant="storm",
        iters=1,
        ridge=1e-3,
        momentum=0.0,
        correction_strength=0.5,
        mars_clip=None,
        momentum_rank=None,
        balance=DEFAULT_BALANCE,
        gram_jitter=0.0,
        max_grad_norm=None,
        seed=None,
        other_optimizer=None,
        other_momentum=0.0,
        other_dampening=0.0,
    ):
        _validate.check_choice(variant, "variant", VARIANTS)
        iters, ridge, momentum, _ = _check_common(lr, iters, ridge, momentum, 0.0)
        gamma = _validate.check_real(correction_strength, "correction_strength", low=0.0)
        if mars_clip is not None:
            mars_clip = _validate.check_real(mars_clip, "mars_clip", low=0.0, low_open=True)
        momentum_rank, self._generator = check_momentum_rank_seed(momentum_rank, seed)
        balance, gram_jitter = check_balance(balance, gram_jitter)
        self._vr_other = {}  # id(param) -> {"prev": x_{t−1}, "buffer": d_{t−1}} (dense)
        super().__init__(
            model,
            lr,
            defaults={
                "variant": variant,
                "iters": iters,
                "ridge": ridge,
                "momentum": momentum,
                "correction_strength": gamma,
                "mars_clip": mars_clip,
                "momentum_rank": momentum_rank,
                "balance": balance,
                "gram_jitter": gram_jitter,
            },
            max_grad_norm=max_grad_norm,
            other_optimizer=other_optimizer,
            other_momentum=other_momentum,
            other_dampening=other_dampening,
        )

    # -- state ----------------------------------------------------------------------------
    def _init_layer_state(self, layer, group):
        state = {"step": 0}
        if group["momentum"] > 0:
            state.update(init_momentum(layer, group["momentum_rank"], self._generator))
        return state

    def _needs_previous(self):
        g = self.param_groups[0]
        return vr_coefficients(g["variant"], g["momentum"], g["correction_strength"])[2] != 0

    def _other_params(self):
        if self._other is None:
            return []
        return [p for g in self._other.param_groups for p in g["params"]]

    def state_dict(self):
        sd = super().state_dict()
        sd["vr_other"] = [
            None if id(p) not in self._vr_other
            else {k: v.clone() for k, v in self._vr_other[id(p)].items()}
            for p in self._other_params()
        ]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("vr_other", [])
        params = self._other_params()
        if len(saved) != len(params):
            raise ValueError(
                f"state_dict does not match this optimizer: vr_other holds {len(saved)} "
                f"parameters, this model has {len(params)} other trainable parameters"
            )
        super().load_state_dict(state_dict)
        self._vr_other = {
            id(p): {k: v.to(device=p.device, copy=True) for k, v in st.items()}
            for p, st in zip(params, saved, strict=True) if st is not None
        }

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One variance-reduced step; ``closure`` (required) re-evaluates the same batch.

        Returns the loss of the closure's first call (at the current point).
        """
        if closure is None or not callable(closure):
            raise TypeError(
                "PSILoRAVR.step needs a closure that zeroes the gradients, evaluates the loss "
                "of the current mini-batch and calls backward() (it is called at the current "
                f"and at the previous parameters); got {type(closure).__name__}"
            )
        if self._step_in_backward or getattr(self, "_data_parallel", None) is not None:
            raise ValueError(
                "PSILoRAVR does not combine with step_in_backward or data_parallel (each step "
                "evaluates the closure twice); got an optimizer with one of them enabled"
            )
        try:
            return self._vr_step(closure)
        finally:
            for layer in self._layers:
                layer.capture.clear()

    def _evaluate(self, closure):
        """Call the closure; return its loss, the LoRA gradients and the other gradients."""
        for p in self._other_params():
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        work = self._captured_work()
        for layer in self._layers:
            layer.capture.clear()
        others = {id(p): p.grad.clone() for p in self._other_params() if p.grad is not None}
        finite = all(g.isfinite() for _, g, _ in work)
        finite = finite and all(bool(g.isfinite().all()) for g in others.values())
        coef = self._clip(work, list(others.values()))
        by_layer = {id(layer): (layer, g, group) for layer, g, group in work}
        return loss, by_layer, others, coef, finite

    def _previous_gradients(self, closure):
        """The gradients at ``x_{t−1}`` on the same batch (parameters restored afterwards)."""
        layers = [layer for layer in self._layers if "prev_U" in self.state[layer.B]]
        params = [p for p in self._other_params() if id(p) in self._vr_other]
        saved = [(layer.A.clone(), layer.B.clone()) for layer in layers]
        saved_other = [p.clone() for p in params]
        norm = self.last_grad_norm  # the current point's (the clipping below overwrites it)
        try:
            for layer in layers:
                st = self.state[layer.B]
                layer.write(st["prev_U"], st["prev_V"])
            for p in params:
                p.copy_(self._vr_other[id(p)]["prev"])
            _, work, others, coef, finite = self._evaluate(closure)
        finally:
            for layer, (A, B) in zip(layers, saved, strict=True):
                layer.A.copy_(A)
                layer.B.copy_(B)
            for p, v in zip(params, saved_other, strict=True):
                p.copy_(v)
            self.last_grad_norm = norm
        for layer in layers:
            if id(layer) not in work:
                raise RuntimeError(
                    f"PSILoRAVR: layer {layer.name!r} received no gradient at the previous "
                    "parameters; the closure must evaluate the same batch at every call"
                )
        for g in others.values():
            g.mul_(coef)
        return work, others, finite

    def _vr_step(self, closure):
        loss, work, others, coef, finite = self._evaluate(closure)
        for g in others.values():
            g.mul_(coef)
        has_prev = any("prev_U" in self.state[layer.B] for layer in self._layers)
        prev_work, prev_others = {}, {}
        if self._needs_previous() and (has_prev or self._vr_other) and finite:
            prev_work, prev_others, finite = self._previous_gradients(closure)
        if not finite:
            self._skip("a gradient at the current or previous point contains NaN/Inf")
            return loss

        results = []
        for key, (layer, g, group) in work.items():
            previous = prev_work[key][1] if key in prev_work else g
            results.append(self._compute(layer, _GradPair(g, previous), group))
        if not all(r.update_is_finite() for r in results):
            self._skip("an update is not finite")
            return loss
        params = [p for p in self._other_params() if id(p) in others]
        new_other = {}
        for p in params:
            g = others[id(p)]
            new_other[id(p)] = self._dense_estimate(p, g, prev_others.get(id(p), g))
            p.grad = new_other[id(p)]["buffer"].clone()
        self._commit(results, params, 1.0)  # both gradients are already clipped
        if self._needs_previous() or self.param_groups[0]["momentum"] > 0:
            for p in params:
                self._vr_other[id(p)] = new_other[id(p)]
        return loss

    def _dense_estimate(self, p, g, g_prev):
        """``d ← c_d d + c_g g_t + c_p g_p`` of one other parameter, and its ``x_{t−1} = p``."""
        c_d, c_g, c_p = group_coefficients(
            self.param_groups[0], lambda w: float(((1.0 + w) * g - w * g_prev).norm())
        )
        st = self._vr_other.get(id(p))
        d = c_g * g + c_p * g_prev
        if st is not None:
            d = d + c_d * st["buffer"]
        return {"prev": p.detach().clone(), "buffer": d}

    def _layer_step(self, layer, grad, group, state):
        lr, K, mu = group["lr"], group["iters"], group["momentum"]
        lam, eps = self._ridge(group), group["gram_jitter"]
        c_d, c_g, c_p = group_coefficients(group, lambda w: LowRankSum(
            [grad.current.term(1.0 + w), grad.previous.term(-w)], check_finite=False).norm())
        if grad.previous is grad.current:  # first step: G_p = G_t
            d_terms = [grad.current.term(c_g + c_p)]
        else:
            d_terms = [grad.current.term(c_g), grad.previous.term(c_p)]
        has_momentum = mu > 0
        if has_momentum:
            M_U, M_V = state["momentum_U"], state["momentum_V"]
            d_terms.append((c_d, M_U, M_V))
        d_terms = [t for t in d_terms if t[0] != 0]
        U, V = layer.factors()
        target = LowRankSum([(1.0, U, V), *((-lr * c, A, B) for c, A, B in d_terms)],
                            check_finite=False)
        U1, V1 = adapter_call(target, U, V, lr, iters=K, ridge=lam, gram_jitter=eps)
        if group["balance"] in ("adapter", "both"):
            U1, V1 = balanced(U1, V1)
        new_state = {**state, "step": state["step"] + 1}
        if c_p != 0:
            new_state["prev_U"], new_state["prev_V"] = U, V
        if has_momentum:
            start = first_side(lam, M_U)  # range finder from 0
            M_U, M_V = lorsum(LowRankSum(d_terms, check_finite=False), M_U, M_V,
                              iters=max(K, 1), ridge=lam, start=start, gram_jitter=eps,
                              check_finite=False)
            if group["balance"] in ("momentum", "both"):
                M_U, M_V = balanced(M_U, M_V)
            new_state["momentum_U"], new_state["momentum_V"] = M_U, M_V
        return (U1, V1), new_state

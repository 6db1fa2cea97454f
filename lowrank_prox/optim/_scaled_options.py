"""Scaled PSI-LoRA options of the authors' ``ScaledOPLoraOptimizer`` (SPEC §7, issue 18).

Used by :class:`lowrank_prox.optim.ScaledPSILoRA`; all off by default.

- **Dense metrics** (``metric_type="dense"``): the EMA statistics are the full matrices
  ``A = EMA of (1/N) XᵀX`` (n×n) and ``S = EMA of s ΔᵀΔ`` (m×m) for K-FAC, or ``s GᵀG`` and
  ``s GGᵀ`` for Shampoo (:func:`lowrank_prox.metrics.dense_statistics`), and the metrics are
  the matrix powers ``P_in = (Â + εI)^p``, ``P_out = (Ŝ + εI)^p`` with their inverses
  (:func:`lowrank_prox.metrics.matrix_fractional_power`, by ``eigh`` or Newton–Schulz).  The
  target's gradient and momentum factors are preconditioned by matrix products
  (``P_out⁻¹Δᵀ``, ``P_in⁻¹Xᵀ``) instead of row scalings.  State ``O(n² + m²)`` per layer.
- **Low-rank metrics** (``metric_type="lowrank"``): the EMA of the same statistics is kept at
  rank ``k = metric_rank`` by the core :func:`lowrank_prox.lorsum`,
  ``K ← LoRSum_{max(K,1)}(β2_t K + (1−β2_t) S_batch)`` (S_batch factored: ``(1/N)XᵀX`` is
  ``Xᵀ·X/N``, ``s·Xᵀ(ΔΔᵀX)`` for Shampoo, inner dimension N), warm-started at the previous
  factors with the step's λ, and ``P = (K̂ + (c + ε)I)^p`` exactly
  (:func:`lowrank_prox.metrics.lowrank_fractional_power`).  ``K̂ = K/(1 − Π β2)`` with
  ``bias_correction``; without it ``c = init·Π β2`` is the decayed start ``init·I`` of the
  EMA (``E_t = c·I + K_t`` exactly, since the EMA is linear).  The factors start at
  ``K_U = 0``, ``K_V ~ N(0, 1)`` (a range finder, like the momentum).  The authors'
  ``"lowrank"`` is this with K-FAC, p = 1 and a rank fixed at 1 by a ``min(1, …)`` (their
  ``rank_multiplier`` is never used); here any p, both kinds and ``metric_rank``.  State
  ``O(k(n + m))``; P itself is formed (n×n) for the solver, as in the authors' code.
- **Adam warm-up** (``start_precondition_step = S``): step ``t`` (1-based) with ``t < S`` is an
  Adam step on the factors with the LoRA factor gradients ``∇_U = G V``, ``∇_V = GᵀU``
  (betas ``(β1, β2)``, eps 1e-8, the group's lr, torch.optim's formula); the metric EMAs are
  updated during these steps (as the authors'), the low-rank momentum is not.  The Adam moments
  are dropped when preconditioning starts.
- **β2 warm-up** (``beta2_warmup=True``): the metric EMA uses ``β2_t = min(β2, 1 − 1/(t+1))``
  at step t (the authors' formula), so for ``t < β2/(1−β2)`` the EMA is the running mean of
  the statistics seen so far (with the initial value counted as one sample when
  ``bias_correction=False``).  With ``bias_correction=True`` the correction is
  ``1 − Π_{s≤t} β2_s``.
- **Momentum modes** (``momentum_mode``): ``"normal"`` (SPEC §7, the low-rank momentum M);
  ``"fista"``, the authors' FISTA mode with ``μ = β1``::

      x_{k+1} = ScaledLoRSum_K(y_k − η P_out⁻¹ G P_in⁻¹)       warm start and anchor y_k
      y_{k+1} = LoRSum_K((1 + μ) x_{k+1} − μ x_k)              unscaled, warm start x_{k+1}

  (``x_0`` = the adapter at the first preconditioned step; the layer holds ``y``); and
  ``"naive"``, heavy-ball momentum on the factors' displacement of the scaled step::

      (U₊, V₊) = ScaledLoRSum_K(U Vᵀ − η P_out⁻¹ G P_in⁻¹)
      D_U = (U − U₊)/η,  D_V = (V − V₊)/η,
      B_U ← β1 B_U + D_U,  B_V ← β1 B_V + D_V,  U ← U − η B_U,  V ← V − η B_V.

  With ``iters=0`` and identity metrics ``D_U = G V (VᵀV + λI)⁻¹``, ``D_V = GᵀU (UᵀU + λI)⁻¹``
  and ``"naive"`` is RPLoRA with SGD heavy-ball momentum.  The authors' branch of this mode
  is unreachable in their code (it passes arguments their ``scaled_low_rank_sum`` does not
  take), uses identity metrics (here: ``power=0``) and applies the buffer update twice
  (``B ← β1(β1 B + D) + D``); none of that is copied.
"""

from __future__ import annotations

import torch

from .. import _validate
from ..factored import LowRankSum
from ..lorsum import lorsum
from ..metrics import (
    dense_statistics,
    diagonal_statistics,
    ema_update,
    fractional_power,
    lowrank_fractional_power,
    matrix_fractional_power,
)
from .baselines import _rule_step

METRIC_TYPES = ("diagonal", "dense", "lowrank")
MOMENTUM_MODES = ("normal", "fista", "naive")
POWER_METHODS = ("eigh", "newton_schulz")
ADAM_EPS = 1e-8


def check_options(metric_type, matrix_power_method, newton_schulz_iters, metric_rank,
                  start_precondition_step, beta2_warmup, momentum_mode, power, balance):
    """Validate the options; return them as a dict of group defaults."""
    _validate.check_choice(metric_type, "metric_type", METRIC_TYPES)
    if metric_rank is not None:
        metric_rank = _validate.check_int(metric_rank, "metric_rank", low=1)
    _validate.check_choice(matrix_power_method, "matrix_power_method", POWER_METHODS)
    newton_schulz_iters = _validate.check_int(newton_schulz_iters, "newton_schulz_iters", low=1)
    if metric_type == "dense" and matrix_power_method == "newton_schulz" and power not in (
        0.0, 0.25, 0.5, 1.0
    ):
        raise ValueError(
            "power must be one of [0.0, 0.25, 0.5, 1.0] with matrix_power_method="
            f"'newton_schulz'; got {power} (use matrix_power_method='eigh')"
        )
    start_precondition_step = _validate.check_int(
        start_precondition_step, "start_precondition_step", low=0
    )
    beta2_warmup = _validate.check_bool(beta2_warmup, "beta2_warmup")
    _validate.check_choice(momentum_mode, "momentum_mode", MOMENTUM_MODES)
    if momentum_mode == "naive" and balance in ("adapter", "both"):
        raise ValueError(
            "balance must be 'none' or 'momentum' with momentum_mode='naive' (a gauge change "
            f"of the scaled step would enter the factor displacement); got {balance!r}"
        )
    return {
        "metric_type": metric_type,
        "matrix_power_method": matrix_power_method,
        "newton_schulz_iters": newton_schulz_iters,
        "metric_rank": metric_rank,
        "start_precondition_step": start_precondition_step,
        "beta2_warmup": beta2_warmup,
        "momentum_mode": momentum_mode,
    }


def beta2_at(step, beta2, warmup):
    """The metric EMA factor of step ``step`` (1-based): ``min(β2, 1 − 1/(t+1))`` or β2."""
    return min(beta2, 1.0 - 1.0 / (step + 1)) if warmup else beta2


def beta2_decay(step, beta2, warmup):
    """``Π_{s ≤ t} β2_s``, the weight left on the EMA's start after ``t = step`` steps.

    Without warm-up ``β2^t``.  With it, the first ``k`` factors are ``s/(s+1)`` (those below
    β2), whose product telescopes to ``1/(k+1)``, and the rest are β2.
    """
    if not warmup:
        return beta2**step
    k = 0
    while k < step and 1.0 - 1.0 / (k + 2) < beta2:
        k += 1
    return beta2 ** (step - k) / (k + 1)


def initial_metrics(layer, scale, group, generator, **kw):
    """The EMAs' start: ``scale·1`` (diagonal), ``scale·I`` (dense) or ``K = 0`` (low-rank)."""
    kind = group.get("metric_type", "diagonal")
    state = {}
    for side, size in (("in", layer.in_features), ("out", layer.out_features)):
        if kind == "lowrank":
            k = min(group["metric_rank"] or layer.rank, size)
            K_V = torch.randn(size, k, generator=generator, dtype=torch.float64)
            state[f"metric_{side}_U"] = torch.zeros(size, k, **kw)
            state[f"metric_{side}_V"] = K_V.to(**kw)
        elif kind == "dense":
            state[f"metric_{side}"] = scale * torch.eye(size, **kw)
        else:
            state[f"metric_{side}"] = torch.full((size,), scale, **kw)
    return state


def update_metrics(grad, group, state, step, ridge, corrected):
    """The metric EMAs after the batch, and ``((P_in, P_in⁻¹), (P_out, P_out⁻¹))``.

    ``step`` is this step's 1-based index; ``corrected(a, g, step, group)`` applies the bias
    correction to vector/matrix statistics.  Returns ``(entries, pairs)``: the new state
    entries and the metric pairs of :func:`metric_pair`.
    """
    beta2_t = beta2_at(step, group["betas"][1], group.get("beta2_warmup", False))
    if group.get("metric_type", "diagonal") == "lowrank":
        entries = {}
        for side, (c, A, B) in zip(("in", "out"), _lowrank_batch_terms(grad, group),
                                   strict=True):
            K_U, K_V = state[f"metric_{side}_U"], state[f"metric_{side}_V"]
            target = LowRankSum([(beta2_t, K_U, K_V), ((1.0 - beta2_t) * c, A, B)],
                                check_finite=False)
            start = "u" if ridge == 0 and not bool(K_U.any()) else "v"
            K_U, K_V = lorsum(target, K_U, K_V, iters=max(group["iters"], 1), ridge=ridge,
                              start=start, gram_jitter=group.get("gram_jitter", 0.0),
                              check_finite=False)
            entries.update({f"metric_{side}_U": K_U, f"metric_{side}_V": K_V})
        return entries, lowrank_metric_pairs(entries, step, group)
    a_batch, g_batch = batch_statistics(grad, group)
    a = ema_update(state["metric_in"], a_batch, beta2_t)
    g = ema_update(state["metric_out"], g_batch, beta2_t)
    a_hat, g_hat = corrected(a, g, step, group)
    return {"metric_in": a, "metric_out": g}, (metric_pair(a_hat, group), metric_pair(g_hat, group))


def lowrank_metric_pairs(state, step, group):
    """``(P, P⁻¹)`` of both sides of a low-rank metric state after ``step`` steps."""
    decay = beta2_decay(step, group["betas"][1], group.get("beta2_warmup", False))
    if group["bias_correction"]:
        c, shift = (1.0 - decay) if step > 0 else 1.0, 0.0
    else:
        c, shift = 1.0, group["init_metric_scale"] * decay
    return tuple(
        lowrank_fractional_power(state[f"metric_{side}_U"] / c, state[f"metric_{side}_V"],
                                 shift=shift, damping=group["damping"], power=group["power"],
                                 return_inverse=True)
        for side in ("in", "out")
    )


def clipped_rows(grad, group):
    """``(X, Δ)`` with the clip factor c on Δ (the project's choice) or on X
    (``clip_side="input"``, the authors'), for the metric statistics."""
    if grad.scale == 1.0:  # no clipping: no copy of the rows
        return grad.X, grad.Delta
    if group.get("clip_side", "output") == "input":
        return grad.scale * grad.X, grad.Delta
    return grad.X, grad.scale * grad.Delta


def _lowrank_batch_terms(grad, group):
    """``(c, A, B)`` with ``c·ABᵀ`` the batch statistic of each side (inner dimension N)."""
    X, D = clipped_rows(grad, group)
    N = X.shape[0]
    s = float(N) if group["reduction"] == "mean" else 1.0 / N
    if group["metric"] == "kfac":
        return (1.0 / N, X.mT, X.mT), (s, D.mT, D.mT)
    return (s, X.mT, X.mT @ (D @ D.mT)), (s, D.mT, D.mT @ (X @ X.mT))


def batch_statistics(grad, group):  # diagonal and dense metrics
    """The statistics of this batch (clip factor included): vectors or matrices."""
    fn = dense_statistics if group.get("metric_type", "diagonal") == "dense" else (
        diagonal_statistics
    )
    return fn(*clipped_rows(grad, group), kind=group["metric"], reduction=group["reduction"])


def metric_pair(stat, group):
    """``(P, P⁻¹)``: diagonal ``P`` as a vector and ``P⁻¹`` as a column, or two matrices."""
    if group.get("metric_type", "diagonal") == "dense":
        return matrix_fractional_power(
            stat, damping=group["damping"], power=group["power"],
            method=group["matrix_power_method"], iters=group["newton_schulz_iters"],
            return_inverse=True,
        )
    P = fractional_power(stat, damping=group["damping"], power=group["power"])
    return P, (1.0 / P)[:, None]


def precondition(P_inv, F):
    """``P⁻¹ F`` for ``P⁻¹`` as a column (diagonal metric, a row scaling) or a matrix."""
    return P_inv * F if P_inv.shape[1] == 1 else P_inv @ F


def adam_warmup_step(U, V, grad, group, state):
    """One Adam step on the factors with ``∇_U = G V``, ``∇_V = GᵀU`` (torch.optim's rule).

    Returns ``(U₊, V₊, entries)``, the new moments under ``adam_U_*`` / ``adam_V_*``.
    """
    G = grad.as_sum()
    adam = {"optimizer": "adam", "lr": group["lr"], "weight_decay": 0.0,
            "betas": group["betas"], "eps": ADAM_EPS}
    t = state.get("adam_step", 0)
    U1, eU = _rule_step(U, G @ V, state, "adam_U_", adam, t)
    V1, eV = _rule_step(V, G.T @ U, state, "adam_V_", adam, t)
    return U1, V1, {**eU, **eV, "adam_step": t + 1}


def drop_warmup_state(state):
    """``state`` without the Adam warm-up entries (a new dict)."""
    return {k: v for k, v in state.items() if not k.startswith("adam_")}


def naive_momentum_step(U, V, U_step, V_step, state, lr, beta1):
    """Heavy-ball momentum on the displacement ``D = (W − W₊)/η`` of the scaled step.

    Returns ``(U₁, V₁, entries)`` with ``B ← β1 B + D`` and ``W₁ = W − η B`` (``D = 0`` at
    ``η = 0``, where the step is the identity).
    """
    out, entries = [], {}
    for name, W, W_step in (("U", U, U_step), ("V", V, V_step)):
        D = (W - W_step) / lr if lr > 0 else torch.zeros_like(W)
        B = state.get(f"buffer_{name}")
        B = D if B is None else beta1 * B + D
        out.append(W - lr * B)
        entries[f"buffer_{name}"] = B
    return out[0], out[1], entries

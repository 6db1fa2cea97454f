"""PSI-LoRA options of the authors' ``OPLoraOptimizer``: momentum residual and quartic kernels.

Both are off by default and used by :class:`lowrank_prox.optim.PSILoRA` (SPEC §6); they are
kept here so that the main update reads as in the paper.

- **Momentum residual** (``use_momentum_residual=True``), error feedback for the rank-r_M
  momentum: with ``E = E_U E_Vᵀ`` (rank r_E) the part of the momentum input that the last
  compression dropped::

      M⁺ = LoRSum_K'(μ M + (1−d) G + E)              (instead of μ M + (1−d) G)
      E⁺ = LoRSum_K'(E + μ M + (1−d) G − M⁺)          warm start and anchor E

  both with ``K' = max(K, 1)`` and the momentum ridge.  The authors put the coefficient 1 on
  ``G`` in ``E⁺`` (not ``1 − d``); the two agree at their default d = 0.  ``E_U`` starts at 0
  and ``E_V ~ N(0, 1)`` (as the momentum); the authors' rank is ``out_features``, here
  ``residual_rank`` (default ``min(in, out)``, the most a matrix has).

- **Quartic kernels** (``quartic_kernel``), a Bregman-style rescaling of the update
  ``ΔX = X₊ − X`` of the stacked factors ``X = [U; V]`` (the authors' ``utils.py``):

  ``"scalar"``: ``X₊ ← X + s ΔX`` with ``s`` the positive root of
  ``s³ − σ s² − α ‖X‖² = 0`` (``‖X‖² = ‖U‖² + ‖V‖²`` at the old point), clipped to
  ``[0.1, 10]``; the kernel is ``h(X) = (σ/2)‖X‖² + (α/4)‖X‖⁴``.

  ``"gram"``: ``X₊ ← X + ΔX B`` with ``B = (I + γ ΔXᵀΔX)^{-1/2}`` (``ΔXᵀΔX = ΔUᵀΔU + ΔVᵀΔV``,
  r × r, eigenvalues clipped at 0); the kernel is ``h = (γ/4)‖UᵀU + VVᵀ‖²``.  It shrinks
  each direction of the step by ``1/√(1 + γ δ²)``.

  In the authors' ``OPLoraOptimizer`` the kernel is passed in the place of a metric argument,
  so it is never applied there (only their Scaled optimizer applies it); here it is applied to
  the PSI-LoRA step.
"""

from __future__ import annotations

import torch

from .. import _validate
from ..lorsum import lorsum

QUARTIC_KERNELS = ("none", "scalar", "gram")
SCALAR_CLIP = (0.1, 10.0)


def check_options(use_momentum_residual, residual_rank, momentum, quartic_kernel, sigma, alpha,
                  gamma):
    """Validate the options; return them as a dict of group defaults."""
    if not isinstance(use_momentum_residual, bool):
        raise TypeError(
            f"use_momentum_residual must be a bool; got {type(use_momentum_residual).__name__}"
        )
    if use_momentum_residual and momentum == 0:
        raise ValueError(
            "use_momentum_residual needs a momentum buffer: momentum must be > 0; got 0.0"
        )
    if residual_rank is not None:
        residual_rank = _validate.check_int(residual_rank, "residual_rank", low=1)
    _validate.check_choice(quartic_kernel, "quartic_kernel", QUARTIC_KERNELS)
    return {
        "use_momentum_residual": use_momentum_residual,
        "residual_rank": residual_rank,
        "quartic_kernel": quartic_kernel,
        "quartic_sigma": _validate.check_real(sigma, "quartic_sigma", low=0.0),
        "quartic_alpha": _validate.check_real(alpha, "quartic_alpha", low=0.0),
        "quartic_gamma": _validate.check_real(gamma, "quartic_gamma", low=0.0),
    }


def init_residual(layer, group, generator):
    """``residual_U = 0`` (out × r_E), ``residual_V ~ N(0, 1)`` (in × r_E)."""
    r_E = min(group["residual_rank"] or min(layer.in_features, layer.out_features),
              layer.in_features, layer.out_features)
    E_V = torch.randn(layer.in_features, r_E, generator=generator, dtype=torch.float64)
    return {
        "residual_U": torch.zeros(layer.out_features, r_E, dtype=layer.dtype,
                                  device=layer.B.device),
        "residual_V": E_V.to(dtype=layer.dtype, device=layer.B.device),
    }


def residual_update(grad, state, mu, d, M_new, iters, ridge):
    """``E⁺ = LoRSum_K'(E + μ M + (1−d) G − M⁺)`` from ``E`` (see the module docstring)."""
    E_U, E_V = state["residual_U"], state["residual_V"]
    target = grad.as_sum(1.0 - d, extra=[
        (1.0, E_U, E_V), (mu, state["momentum_U"], state["momentum_V"]),
        (-1.0, M_new[0], M_new[1]),
    ])
    start = "u" if ridge == 0 and not bool(E_U.any()) else "v"
    E_U, E_V = lorsum(target, E_U, E_V, iters=max(iters, 1), ridge=ridge, start=start,
                      check_finite=False)
    return {"residual_U": E_U, "residual_V": E_V}


def scalar_quartic_factor(norm_sq, sigma, alpha):
    """The positive root of ``s³ − σ s² − α n = 0`` (n = ``norm_sq``), clipped to [0.1, 10].

    ``f(s) = s³ − σs² − αn`` has ``f(σ) = −αn ≤ 0 ≤ f(σ + (αn)^{1/3})`` and one root in that
    bracket (the positive root); bisection to float64 resolution.
    """
    c = alpha * norm_sq
    lo, hi = sigma, sigma + c ** (1.0 / 3.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if mid * mid * (mid - sigma) < c:
            lo = mid
        else:
            hi = mid
    return min(max(0.5 * (lo + hi), SCALAR_CLIP[0]), SCALAR_CLIP[1])


def quartic_shrink(group, U, V, U1, V1):
    """Rescale the step ``(U, V) → (U1, V1)`` by the group's quartic kernel."""
    kind = group["quartic_kernel"]
    if kind == "none":
        return U1, V1
    dU, dV = U1 - U, V1 - V
    if kind == "scalar":
        norm_sq = float((U * U).sum() + (V * V).sum())
        s = scalar_quartic_factor(norm_sq, group["quartic_sigma"], group["quartic_alpha"])
        return U + s * dU, V + s * dV
    core = dU.mT @ dU + dV.mT @ dV
    eigs, P = torch.linalg.eigh(0.5 * (core + core.mT))
    B = (P * torch.rsqrt(1.0 + group["quartic_gamma"] * eigs.clamp_min(0.0))) @ P.mT
    return U + dU @ B, V + dV @ B

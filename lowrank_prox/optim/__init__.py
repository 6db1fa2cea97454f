"""Torch optimizers for LoRA layers (SPEC §6, §8): PSI-LoRA and the baselines.

All take the *model* (they hook its LoRA layers to capture ``G = Δᵀ X``), follow torch.optim's
conventions (``param_groups``, ``step(closure)``, ``zero_grad``, ``state_dict``) and share the
base :class:`LoRAOptimizer` (``lowrank_prox/optim/_base.py`` says how to subclass it).  Plain
LoRA and full fine-tuning use ``torch.optim`` directly.
"""

from .._optional import require_torch

require_torch("lowrank_prox.optim")

from ._base import (
    CapturedGradient,
    LoRALayer,
    LoRAOptimizer,
    NonFiniteStepWarning,
    step_in_backward,
)
from ._diagnostics import SubspaceDiagnostics, trainer_callback
from ._peft import grad_norm_callback
from .baselines import RPLoRA, SVDLoRA
from .fista import PSILoRAFISTA
from .geolora import GeoLoRA
from .psilora import ProjPSILoRA, PSILoRA
from .scaled import ScaledPSILoRA
from .vr import PSILoRAVR

__all__ = [
    "CapturedGradient",
    "GeoLoRA",
    "LoRALayer",
    "LoRAOptimizer",
    "NonFiniteStepWarning",
    "PSILoRA",
    "PSILoRAFISTA",
    "PSILoRAVR",
    "ProjPSILoRA",
    "RPLoRA",
    "SVDLoRA",
    "ScaledPSILoRA",
    "SubspaceDiagnostics",
    "grad_norm_callback",
    "step_in_backward",
    "trainer_callback",
]

"""The authors' small implementation choices as options, and the ``preset="published"`` switch.

The optimizers of this package agree with the authors' code (zeligism/PSI-LoRA) to rounding once a
few deliberate differences are undone (issue 18).  Each difference is a keyword option whose
default is this project's choice; ``preset="published"`` sets every one of them to the authors'
value, and a keyword given explicitly wins over the preset.  A keyword left at ``None`` means
"the preset's value, else the project's default".

===========================  =====================  ==========================  ==================
option                       optimizers             project default             published
===========================  =====================  ==========================  ==================
``balance``                  PSILoRA, Scaled        ``"momentum"``              ``"none"``
``gram_jitter``              PSILoRA, Proj., FISTA, ``0``                       ``1e-6``
                             Scaled, RPLoRA
``peft_scaling``             every LoRAOptimizer    ``"fold"`` (U = s·B)        ``"ignore"`` (U = B)
``bias_correction``          Scaled                 ``True``                    ``False``
``momentum_min_ridge``       Scaled                 ``min_ridge`` (1e-5)        ``0``
``clip_side``                Scaled                 ``"output"`` (c·Δ)          ``"input"`` (c·X)
``other_eps_mode``           Scaled                 ``"corrected"``             ``"raw"``
``decoupled_weight_decay``   RPLoRA                 ``False``                   ``True``
``eps_mode``                 RPLoRA                 ``"corrected"``             ``"raw"``
``other_rule``               RPLoRA                 ``"sgd"``                   ``"same"``
``cap_augmentation``         GeoLoRA                ``False``                   ``True``
``max_rank``                 GeoLoRA                ``min(in, out)``            ``32``
===========================  =====================  ==========================  ==================

The authors' bugs are not reproduced by any setting: K = 0 stays the Jacobi step (their unscaled
LoRSum returns its input), the Scaled momentum is updated with ``max(K, 1)`` iterations (their
K = 0 leaves it at zero for good).
"""

from __future__ import annotations

from .. import _validate

__all__ = ["EPS_MODES", "PEFT_SCALINGS", "PRESETS", "check_preset", "resolve"]

#: Accepted ``preset`` values (``None``: this project's choices).
PRESETS = (None, "published")
#: ``peft_scaling``: fold the PEFT scaling s into U (``U = s·B``) or ignore it (``U = B``).
PEFT_SCALINGS = ("fold", "ignore")
#: Adam's eps placement: ``√(v/(1−β2ᵗ)) + ε`` ("corrected", torch.optim) or ``√v + ε`` with the
#: step ``η√(1−β2ᵗ)/(1−β1ᵗ)`` ("raw", Kingma & Ba's efficient form, the authors' ``adam_step_``).
EPS_MODES = ("corrected", "raw")


def check_preset(preset):
    """Validate ``preset`` (``None`` or ``"published"``); return it."""
    return _validate.check_choice(preset, "preset", PRESETS)


def resolve(preset, given, project, published):
    """Fill the options left at ``None``: the preset's value, else the project's default.

    ``given`` maps option names to the values passed by the caller; ``project`` and
    ``published`` map the same names to the two settings.  Returns a new dict.
    """
    table = published if check_preset(preset) == "published" else project
    return {k: (table[k] if v is None else v) for k, v in given.items()}


def check_peft_scaling(peft_scaling):
    """Validate ``peft_scaling``; return it."""
    return _validate.check_choice(peft_scaling, "peft_scaling", PEFT_SCALINGS)


def check_eps_mode(eps_mode, name="eps_mode"):
    """Validate an Adam eps placement; return it."""
    return _validate.check_choice(eps_mode, name, EPS_MODES)


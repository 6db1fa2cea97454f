"""Torch modules: LoRA-adapted linear layers (SPEC §6, §8)."""

from .._optional import require_torch

require_torch("lowrank_prox.nn")

from .geolora import GeoLoRALinear
from .lora import LoRALinear, add_lora

__all__ = ["GeoLoRALinear", "LoRALinear", "add_lora"]

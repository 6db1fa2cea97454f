"""Torch modules: LoRA-adapted linear layers (SPEC §6, §8)."""

from .geolora import GeoLoRALinear
from .lora import LoRALinear, add_lora

__all__ = ["GeoLoRALinear", "LoRALinear", "add_lora"]

"""Torch modules: LoRA-adapted linear layers (SPEC §6, §8)."""

try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:  # tested in tests/test_packaging.py
    if exc.name != "torch":
        raise
    raise ImportError(
        "lowrank_prox.nn needs PyTorch, which is not installed: "
        "pip install 'lowrank_prox[torch]' (or install torch yourself)"
    ) from exc

from .geolora import GeoLoRALinear
from .lora import LoRALinear, add_lora

__all__ = ["GeoLoRALinear", "LoRALinear", "add_lora"]

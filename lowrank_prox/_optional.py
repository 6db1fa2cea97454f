"""Optional dependencies: a clear ImportError naming the extra to install."""

from __future__ import annotations

import importlib


def require_torch(subpackage):
    """Import torch or raise an ImportError saying that ``subpackage`` needs it and how to
    install it (a missing *dependency of* torch is re-raised as is)."""
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError as exc:  # tested in tests/test_packaging.py
        if exc.name != "torch":
            raise
        raise ImportError(
            f"{subpackage} needs PyTorch, which is not installed: "
            "pip install 'lowrank_prox[torch]' (or install torch yourself)"
        ) from exc

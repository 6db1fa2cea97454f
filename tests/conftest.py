"""Shared fixtures: the array backends, dtype-aware tolerances and hypothesis profiles."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class Backend:
    """One array library + dtype under test, with conversion helpers and tolerances."""

    def __init__(self, name, dtype_name):
        self.name = name
        self.dtype_name = dtype_name
        if name == "numpy":
            import numpy as mod

            self.xp = mod
        elif name == "array_api_strict":
            import array_api_strict as mod

            self.xp = mod
        elif name == "torch":
            import torch as mod

            self.xp = mod
        self.dtype = getattr(self.xp, dtype_name)
        self.eps = float(np.finfo(dtype_name).eps)

    def asarray(self, a):
        a = np.asarray(a, dtype=self.dtype_name)
        if self.name == "torch":
            import torch

            return torch.as_tensor(a.copy())
        return self.xp.asarray(a)

    @staticmethod
    def to_numpy(a):
        from lowrank_prox._xp import to_numpy

        return np.asarray(to_numpy(a), dtype=np.float64)

    def tol(self, scale=1.0, factor=100.0):
        """Absolute tolerance ``factor · eps · scale`` for this dtype."""
        return factor * self.eps * scale

    def __repr__(self):
        return f"{self.name}-{self.dtype_name}"


BACKENDS = [
    ("numpy", "float64"),
    ("array_api_strict", "float64"),
    ("torch", "float64"),
    ("numpy", "float32"),
    ("torch", "float32"),
]


@pytest.fixture(params=BACKENDS, ids=[f"{n}-{d}" for n, d in BACKENDS])
def xp(request):
    """A :class:`Backend`: numpy, array_api_strict and torch in float64; float32 too."""
    return Backend(*request.param)


@pytest.fixture(
    params=[b for b in BACKENDS if b[1] == "float64"],
    ids=[f"{n}-{d}" for n, d in BACKENDS if d == "float64"],
)
def xp64(request):
    """Float64 backends only (for tight identities)."""
    return Backend(*request.param)


def spectrum_matrix(rng, m, n, s):
    """An m×n matrix with singular values ``s`` (len ≤ min(m, n)) and random singular vectors."""
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (U * np.asarray(s)) @ V.T

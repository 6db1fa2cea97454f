"""lowrank_prox: low-rank proximal training (LoRSum, PSI-LoRA), array-API core.

The core imports only NumPy, SciPy and array-api-compat; torch-only parts live in
``lowrank_prox.nn`` and ``lowrank_prox.optim``.  The mathematics is in SPEC.md, cited by section
in each docstring.
"""

from .diagnostics import subspace_diagnostics
from .factored import LowRankSum
from .geolora import geolora_step, geolora_tangent
from .geometry import principal_angles, tangent_project
from .lorsum import LorsumHistory, lorsum, lorsum_history, lorsum_objective
from .scaled import scaled_lorsum, scaled_lorsum_objective
from .svd import svd_flip, truncated_svd

__version__ = "0.1.0"

__all__ = [
    "LorsumHistory",
    "LowRankSum",
    "geolora_step",
    "geolora_tangent",
    "lorsum",
    "lorsum_history",
    "lorsum_objective",
    "principal_angles",
    "scaled_lorsum",
    "scaled_lorsum_objective",
    "subspace_diagnostics",
    "svd_flip",
    "tangent_project",
    "truncated_svd",
]

"""Fixed thread counts for the experiments, so a figure's numbers do not depend on the machine.

A BLAS product summed by two threads adds its partial sums in another order than one thread
does, so the last digits of a result depend on the thread count: the linear task's SVDLoRA
final excess is 5.862136213705682e-08 with one torch thread and 6.647703056829705e-08 with two
(mean over seeds 0-4, float32 model; issue 16).  Every figure builder therefore runs inside
:func:`fixed_threads`, which sets torch's intra-op pool and the BLAS/OpenMP pools that
``threadpoolctl`` sees (NumPy's OpenBLAS, MKL) to ``n`` threads and restores them afterwards.
The user's environment is left alone.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

__all__ = ["fixed_threads"]


@contextmanager
def fixed_threads(n=1):
    """Run the body with ``n`` torch intra-op and BLAS threads; restore the settings after.

    torch is only touched if it is already imported (NumPy-only users never import it).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        limits = None
    else:
        limits = threadpool_limits(limits=n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)
        if limits is not None:
            limits.restore_original_limits()

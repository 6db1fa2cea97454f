"""Namespace helpers for what the array API standard leaves out.

Everything here works on any array-API library through :mod:`array_api_compat`; NumPy and Torch
get a faster path for the SPD solve (Cholesky with a triangular back-substitution), which the
standard has no function for.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array, is_torch_array

__all__ = [
    "all_finite",
    "compute_dtype",
    "device",
    "get_namespace",
    "is_positive_definite",
    "is_real_floating",
    "normal",
    "spd_solve_right",
    "to_numpy",
]


def get_namespace(*arrays, names=None):
    """The array namespace shared by ``arrays``; ``TypeError`` naming them when libraries mix."""
    arrays = [a for a in arrays if a is not None]
    try:
        return array_namespace(*arrays)
    except TypeError as exc:
        what = f" ({', '.join(names)})" if names else ""
        raise TypeError(
            f"all arrays{what} must come from one array library; got "
            f"{sorted({type(a).__module__ + '.' + type(a).__name__ for a in arrays})}: {exc}"
        ) from None


def is_real_floating(x):
    try:
        xp = array_namespace(x)
    except TypeError:
        return False
    try:
        return bool(xp.isdtype(x.dtype, "real floating"))
    except (TypeError, ValueError):  # dtypes some wrappers do not classify (e.g. float8)
        return False


def compute_dtype(xp, *dtypes):
    """The promoted dtype of ``dtypes``, raised to at least float32 (float16/bfloat16 inputs)."""
    dt = xp.result_type(*dtypes) if len(dtypes) > 1 else dtypes[0]
    if xp.finfo(dt).bits < 32:
        return xp.float32
    return dt


def all_finite(x):
    xp = array_namespace(x)
    if is_torch_array(x):
        return bool(x.isfinite().all())
    return bool(xp.all(xp.isfinite(x)))


def is_positive_definite(A):
    """Whether the symmetric ``A`` has a Cholesky factor with a positive, finite diagonal."""
    xp = array_namespace(A)
    try:
        L = xp.linalg.cholesky(A)
        return all_finite(L) and bool(xp.all(xp.linalg.diagonal(L) > 0))
    except Exception:  # noqa: BLE001 -- each library raises its own LinAlgError
        return False


def to_numpy(x):
    """A NumPy copy-or-view of an array from any supported library (host memory)."""
    if is_numpy_array(x):
        return x
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(x)


def normal(xp, shape, *, rng, dtype, like):
    """Standard-normal array drawn from a NumPy ``Generator`` and placed like ``like``.

    Drawing on the host keeps results identical across backends for a given seed.
    """
    sample = rng.standard_normal(shape)
    return from_numpy(xp, sample, dtype=dtype, like=like)


def from_numpy(xp, a, *, dtype, like):
    dev = device(like)
    if is_torch_array(like):
        import torch

        return torch.as_tensor(a, device=dev).to(dtype)
    return xp.asarray(a, dtype=dtype, device=dev)


def _rel_pivot_ok(L, A, xp):
    """True when Cholesky pivots are far enough from zero for a stable solve."""
    dL = xp.linalg.diagonal(L)
    dA = xp.linalg.diagonal(A)
    scale = xp.max(xp.abs(dA))
    if not bool(scale > 0):
        return False
    return bool(xp.min(dL) ** 2 > _singular_rtol(A, xp) * scale)


def _singular_rtol(A, xp):
    """Relative size below which an eigenvalue of the r×r Gram counts as zero: ``eps^(3/4)``.

    Solving with pivots just above rounding (``r·eps``) amplifies the rounding of a
    rank-deficient Gram into the solution (seen with r = min(m, n) and a lower-rank target);
    below this threshold the minimum-norm solution with the same cut is used instead.
    """
    return max(float(xp.finfo(A.dtype).eps) ** 0.75, 10 * A.shape[0] * float(xp.finfo(A.dtype).eps))


def spd_solve_right(R, A):
    """Return ``R @ A^{-1}`` for a symmetric positive (semi)definite ``A`` (SPEC §3).

    Cholesky on the small r×r system.  For a tall ``R`` (more rows than ``A``, the LoRSum case
    m ≫ r) the r×r inverse is taken from the Cholesky factor (a solve against ``I``, r
    right-hand sides) and applied with one matrix product: a triangular solve with m right-hand
    sides runs at about a tenth of GEMM speed on CPU BLAS (measured in ``analysis/bench.py``),
    and after the pivot check below the two agree to the solve's own ``κ(A)·eps`` accuracy, since
    every column of the inverse is a backward-stable Cholesky solve.  When ``A`` is singular or too
    close to it for Cholesky (for example the Gram of a zero factor with ridge 0) the
    minimum-norm least-squares solution ``R @ pinv(A)`` is returned instead, so the result is
    always finite.  For an exact block minimiser that is still a minimiser: any solution of the
    normal equations is, and pinv picks the one of least norm.
    """
    xp = array_namespace(R, A)
    if is_torch_array(A):
        import torch

        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0 and _rel_pivot_ok(L, A, xp):
            if R.shape[0] > A.shape[0]:
                return R @ torch.cholesky_inverse(L)
            return torch.cholesky_solve(R.mT, L).mT
    elif is_numpy_array(A):
        from scipy.linalg import cho_solve

        try:
            L = np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            L = None
        if L is not None and _rel_pivot_ok(L, A, np):
            if R.shape[0] > A.shape[0]:
                eye = np.eye(A.shape[0], dtype=A.dtype)
                return R @ cho_solve((L, True), eye, check_finite=False)
            return cho_solve((L, True), R.T, check_finite=False).T
    else:
        try:
            L = xp.linalg.cholesky(A)
            ok = all_finite(L) and _rel_pivot_ok(L, A, xp)
        except Exception:  # noqa: BLE001 -- libraries raise their own LinAlgError types
            ok = False
        if ok:
            return xp.linalg.solve(A, R.mT).mT
    return R @ xp.linalg.pinv(A, rtol=_singular_rtol(A, xp))

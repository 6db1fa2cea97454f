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
    "max_abs",
    "spd_solve_right",
    "thin_matmul",
    "matmul_like",
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
    """Whether every entry of ``x`` is finite (a Python bool).

    Torch floating tensors use one ``aminmax`` pass (``min`` and ``max`` are finite exactly when
    every entry is: both propagate NaN, and ±Inf is an extreme), which reads ``x`` once and
    allocates nothing; ``isfinite().all()`` makes three passes and a boolean copy (about 12×
    slower on a 2048 × 2304 float32 block of captured rows).
    """
    xp = array_namespace(x)
    if is_torch_array(x):
        if x.is_floating_point() and x.numel() > 0:
            lo, hi = _dense_order(x).aminmax()
            return bool(lo.isfinite() & hi.isfinite())
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

def max_abs(x):
    """``max |x|`` as a Python float (NaN if ``x`` holds NaN, ``inf`` if it holds ±Inf).

    ``max(−min x, max x)``: one ``aminmax`` pass for torch floating tensors, two reductions
    elsewhere, never an ``|x|`` copy (NumPy: 25 µs vs 54 µs for ``max(abs(x))`` on a
    2048 × 64 float64 factor, the scale check of every LoRSum call).  ``x`` must not be empty.
    """
    if type(x) is np.ndarray and x.dtype.kind == "f":  # the common case, without dispatch
        lo, hi = x.min(), x.max()
    elif is_torch_array(x) and x.is_floating_point():
        lo, hi = _dense_order(x).aminmax()
    else:
        xp = array_namespace(x)
        if not is_real_floating(x):
            return float(xp.max(xp.abs(x)))
        lo, hi = xp.min(x), xp.max(x)
    lo, hi = float(lo), float(hi)
    if lo != lo or hi != hi:
        return float("nan")
    return max(-lo, hi)


def _dense_order(x):
    """``x`` or its transpose, whichever is contiguous (a full reduction ignores the order;
    torch reduces a transposed view, e.g. the captured ``Δᵀ``, about 4× slower)."""
    if x.ndim == 2 and not x.is_contiguous() and x.mT.is_contiguous():
        return x.mT
    return x


def thin_matmul(A, B):
    """``A @ B`` for a thin ``B`` (``1 < k ≤ 128`` columns, fewer than ``A``'s rows), wide layout.

    For torch tensors the product is evaluated as ``(Bᵀ Aᵀ)ᵀ`` (the same GEMM with the
    operands' roles swapped; the result is a transposed view).  Torch's CPU BLAS (MKL) runs the
    ``(M × K) @ (K × k)`` form with ``k`` ≈ 2 … 16 several times slower than the ``(k × K) @
    (K × M)`` form: measured on one thread, ``Δᵀ @ P`` with ``Δ`` 2048 × 2304 and ``P``
    2048 × 8 takes 8.8 ms, ``(Pᵀ Δ)ᵀ`` 2.1 ms.  These are the products of LoRSum with the
    captured rows (SPEC §3, §6).  Equal to ``A @ B`` to rounding (a different summation order
    inside the BLAS).  Other libraries (NumPy's OpenBLAS shows no such gap) get ``A @ B``.
    """
    if (is_torch_array(A) and is_torch_array(B) and A.ndim == 2 and B.ndim == 2
            and 1 < B.shape[1] <= 128 and B.shape[1] < A.shape[0]):
        return (B.mT @ A.mT).mT
    return A @ B


def matmul_like(A, B):
    """``A @ B`` for a square ``A``, laid out in memory as ``B`` is (row- or column-major).

    LoRSum's iterates come out of :func:`thin_matmul` and :func:`spd_solve_right` as transposed
    (column-major) views on torch.  The scaled half-step multiplies them by a dense metric and
    then forms the same Gram and target products as the plain half-step; keeping the layout
    keeps those products on the same BLAS kernels, so an identity metric reproduces
    :func:`lowrank_prox.lorsum` bit for bit (SPEC §7).  Elsewhere ``A @ B``.
    """
    if (is_torch_array(A) and is_torch_array(B) and B.ndim == 2 and not B.is_contiguous()
            and B.mT.is_contiguous()):
        return (B.mT @ A.mT).mT
    return A @ B


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
                return thin_matmul(R, torch.cholesky_inverse(L))
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

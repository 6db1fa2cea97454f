"""Argument checks shared by every public function.

One place for the messages, so that every error names the argument and the value it expected.
The checks never copy or modify the arrays they are given.
"""

from __future__ import annotations

import math
import numbers

from . import _xp

__all__ = [
    "check_array",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_int",
    "check_rank",
    "check_real",
]


def check_int(value, name, *, low=None, high=None):
    """Return ``value`` as ``int``; reject bools, floats and values outside ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def check_bool(value, name):
    """Return ``value`` if it is a ``bool`` (NumPy's ``bool_`` too); ``TypeError`` otherwise.

    Strings such as ``"no"`` are truthy, so accepting them would silently mean ``True``.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False; got {value!r} of type {type(value).__name__}")


def check_real(value, name, *, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a finite ``float`` inside the given (open or closed) bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # 0-d arrays (numpy scalars, 0-d tensors) are accepted through float().
        try:
            if getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == ():
                value = float(value)
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a real number; got {value!r} of type {type(value).__name__}"
            ) from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}; got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}; got {value}")
    return value


def check_choice(value, name, choices):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")
    return value


def check_array(x, name, *, ndim=None, shape=None, finite=True):
    """Check a floating array's rank, shape and finiteness; return it unchanged.

    ``shape`` may hold ``None`` for a free dimension.  Non-floating dtypes are refused with a
    ``TypeError``: converting integers silently would hide mistakes such as passing index arrays.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array; got {type(x).__name__}")
    _check_plain_numpy(x, name)
    if ndim is not None and len(x.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional; got shape {tuple(x.shape)}")
    if shape is not None:
        for got, want in zip(x.shape, shape, strict=True):
            if want is not None and got != want:
                raise ValueError(
                    f"{name} must have shape {_fmt_shape(shape)}; got {tuple(x.shape)}"
                )
    if not _xp.is_real_floating(x):
        raise TypeError(f"{name} must have a real floating dtype; got {x.dtype}")
    if finite:
        check_finite(x, name)
    return x


def _check_plain_numpy(x, name):
    """Refuse NumPy array subclasses and dtypes whose semantics the core cannot honour.

    ``np.matrix`` changes what ``*`` and indexing mean, a masked array's mask would be silently
    ignored by every product, and ``longdouble`` is not supported by ``numpy.linalg``.
    """
    import numpy as np

    if isinstance(x, np.ndarray):
        if isinstance(x, np.matrix):
            raise TypeError(f"{name} must be a 2-D ndarray, not np.matrix; use np.asarray({name})")
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(
                f"{name} is a masked array; its mask cannot be honoured: fill the masked "
                f"entries ({name}.filled(value)) or pass np.asarray({name}) to ignore the mask"
            )
        if type(x) is not np.ndarray:
            raise TypeError(f"{name} must be a plain ndarray; got the subclass {type(x).__name__}")
        if x.dtype.kind == "f" and x.dtype.itemsize > 8:
            raise TypeError(
                f"{name} has dtype {x.dtype}, which numpy.linalg does not support; use float64 "
                "(or float32)"
            )


def check_finite(x, name):
    if not _xp.all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_rank(rank, shape, name="rank"):
    """``rank`` must be an integer in ``[1, min(shape)]``."""
    return check_int(rank, name, low=1, high=min(shape))


def _fmt_shape(shape):
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"

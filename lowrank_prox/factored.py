"""Factored targets ``Y = Σ_i c_i U_i V_iᵀ`` that are never formed as m×n matrices (SPEC §1)."""

from __future__ import annotations

import math
import numbers

from . import _validate, _xp

__all__ = ["LowRankSum", "as_operator"]


class LowRankSum:
    """A weighted sum of factored matrices, ``Y = Σ_i c_i U_i V_iᵀ`` (SPEC §1).

    Parameters
    ----------
    terms : sequence of ``(coef, U_i, V_i)``
        ``U_i`` has shape ``(m, r_i)`` and ``V_i`` shape ``(n, r_i)``; the inner dimensions
        ``r_i`` may differ between terms: ``r`` for weights, ``N`` for a mini-batch gradient
        ``G = Δᵀ X``, which is the term ``(c, Δᵀ, Xᵀ)``.
        All arrays come from one array library; the dtype is their promoted dtype.
    check_finite : bool, default True
        Refuse NaN/Inf in the factors (one pass over each factor).  Callers that checked already
        can switch it off.

    Every product is taken small side first: ``Y @ B = Σ c_i U_i (V_iᵀ B)`` costs
    ``O(k (m + n) Σ r_i)`` for ``B`` of width ``k``, and ``norm()`` uses only the
    ``r_i × r_j`` Gram products: ``‖Y‖² = Σ_ij c_i c_j tr((U_iᵀU_j)(V_jᵀV_i))``.
    """

    __array_ufunc__ = None  # so that ``ndarray @ LowRankSum`` defers to __rmatmul__

    def __init__(self, terms, *, check_finite=True):
        if isinstance(terms, LowRankSum):
            terms = terms.terms
        try:
            terms = tuple(terms)
        except TypeError:
            raise TypeError(
                f"terms must be a sequence of (coef, U, V) triples; got {type(terms).__name__}"
            ) from None
        if not terms:
            raise ValueError("terms must hold at least one (coef, U, V) triple; got none")
        checked = []
        shape = None
        for i, term in enumerate(terms):
            if not isinstance(term, tuple | list) or len(term) != 3:
                raise TypeError(f"terms[{i}] must be a (coef, U, V) triple; got {term!r:.80}")
            coef, U, V = term
            coef = _validate.check_real(coef, f"terms[{i}] coefficient")
            _validate.check_array(U, f"terms[{i}] U", ndim=2, finite=check_finite)
            _validate.check_array(V, f"terms[{i}] V", ndim=2, finite=check_finite)
            if U.shape[1] != V.shape[1]:
                raise ValueError(
                    f"terms[{i}]: U and V must have the same number of columns; got U "
                    f"{tuple(U.shape)} and V {tuple(V.shape)}"
                )
            if shape is None:
                shape = (U.shape[0], V.shape[0])
            elif (U.shape[0], V.shape[0]) != shape:
                raise ValueError(
                    f"terms[{i}] has shape ({U.shape[0]}, {V.shape[0]}) but terms[0] has "
                    f"shape {shape}: U_i must be (m, r_i) and V_i (n, r_i) for one (m, n)"
                )
            checked.append((coef, U, V))
        arrays = [a for _, U, V in checked for a in (U, V)]
        self._xp = _xp.get_namespace(*arrays, names=["terms"])
        self._terms = tuple(checked)
        self._shape = shape
        self._dtype = self._xp.result_type(*arrays) if len(arrays) > 1 else arrays[0].dtype

    @classmethod
    def _trusted(cls, terms, xp, dtype):
        """Build without checks from terms already validated (internal use)."""
        self = object.__new__(cls)
        self._terms = tuple(terms)
        self._xp = xp
        self._dtype = dtype
        self._shape = (terms[0][1].shape[0], terms[0][2].shape[0])
        return self

    # -- attributes -------------------------------------------------------------------------
    @property
    def terms(self):
        """The ``(coef, U_i, V_i)`` triples, coefficients as Python floats."""
        return self._terms

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return _xp.device(self._terms[0][1])

    @property
    def xp(self):
        """The array namespace of the factors."""
        return self._xp

    @property
    def inner_dim(self):
        """``Σ r_i``: an upper bound on the rank of ``Y``."""
        return sum(U.shape[1] for _, U, _ in self._terms)

    @property
    def T(self):
        """``Yᵀ = Σ c_i V_i U_iᵀ``, itself a :class:`LowRankSum`."""
        return LowRankSum._trusted([(c, V, U) for c, U, V in self._terms], self._xp, self._dtype)

    def __repr__(self):
        ranks = ", ".join(str(U.shape[1]) for _, U, _ in self._terms)
        return f"LowRankSum(shape={self._shape}, inner dims=[{ranks}], dtype={self._dtype})"

    # -- algebra ----------------------------------------------------------------------------
    def astype(self, dtype):
        xp = self._xp
        if dtype == self._dtype and all(U.dtype == dtype for _, U, _ in self._terms):
            return self
        terms = [(c, xp.astype(U, dtype), xp.astype(V, dtype)) for c, U, V in self._terms]
        return LowRankSum._trusted(terms, xp, dtype)

    def __mul__(self, scalar):
        if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):
            return NotImplemented
        scalar = _validate.check_real(scalar, "scalar")
        terms = [(scalar * c, U, V) for c, U, V in self._terms]
        return LowRankSum._trusted(terms, self._xp, self._dtype)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __add__(self, other):
        if not isinstance(other, LowRankSum):
            return NotImplemented
        return LowRankSum(self._terms + other._terms, check_finite=False)

    def __sub__(self, other):
        if not isinstance(other, LowRankSum):
            return NotImplemented
        return self + (-other)

    def __matmul__(self, B):
        """``Y @ B = Σ c_i U_i (V_iᵀ B)`` for ``B`` of shape ``(n, k)`` or ``(n,)``."""
        n = self._shape[1]
        if not hasattr(B, "shape") or len(B.shape) not in (1, 2) or B.shape[0] != n:
            got = tuple(B.shape) if hasattr(B, "shape") else type(B).__name__
            raise ValueError(f"B must have shape ({n}, k) or ({n},) to multiply Y; got {got}")
        _xp.get_namespace(self._terms[0][1], B, names=["Y", "B"])
        return _sum_products(self._terms, B)

    def __rmatmul__(self, A):
        """``A @ Y = Σ c_i (A U_i) V_iᵀ`` for ``A`` of shape ``(k, m)``."""
        m = self._shape[0]
        if not hasattr(A, "shape") or len(A.shape) != 2 or A.shape[1] != m:
            got = tuple(A.shape) if hasattr(A, "shape") else type(A).__name__
            raise ValueError(f"A must have shape (k, {m}) to multiply Y from the left; got {got}")
        _xp.get_namespace(self._terms[0][1], A, names=["A", "Y"])
        return _sum_products([(c, V, U) for c, U, V in self._terms], A.mT).mT

    def to_dense(self):
        """The m×n matrix ``Σ c_i U_i V_iᵀ`` (O(mn) memory: for checks and small problems)."""
        out = None
        for c, U, V in self._terms:
            part = c * (U @ V.mT)
            out = part if out is None else out + part
        return out

    def norm(self):
        """Frobenius norm from the r_i×r_j Gram products (SPEC §1); a Python float."""
        xp = self._xp
        total = 0.0
        terms = self._terms
        for i, (ci, Ui, Vi) in enumerate(terms):
            for j in range(i, len(terms)):
                cj, Uj, Vj = terms[j]
                g = float(xp.sum((Ui.mT @ Uj) * (Vi.mT @ Vj)))
                total += ci * cj * g * (1.0 if i == j else 2.0)
        return math.sqrt(max(total, 0.0))


def _sum_products(terms, B):
    """``Σ c U (Vᵀ B)``, the small product first."""
    out = None
    for c, U, V in terms:
        part = U @ (c * (V.mT @ B))
        out = part if out is None else out + part
    return out


class _Dense:
    """Adapter giving a dense m×n array the product interface of :class:`LowRankSum`."""

    def __init__(self, A):
        self._A = A
        self.shape = tuple(A.shape)
        self.dtype = A.dtype

    @property
    def T(self):
        return _Dense(self._A.mT)

    def __matmul__(self, B):
        return self._A @ B

    def norm(self):
        xp = _xp.get_namespace(self._A)
        return float(xp.linalg.vector_norm(self._A))

    def astype(self, dtype):
        xp = _xp.get_namespace(self._A)
        return self if self._A.dtype == dtype else _Dense(xp.astype(self._A, dtype))

    def to_dense(self):
        return self._A


def as_operator(target, name="target", *, check_finite=True):
    """Validate ``target`` (dense 2-D array or :class:`LowRankSum`) and give it ``@``/``.T``.

    Operator protocol: an object with ``__lowrank_operator__ = True`` is passed through as is.
    It must provide ``shape``, ``dtype``, ``T``, ``@`` with an (n, k) array, ``astype(dtype)``,
    ``norm()`` and ``like`` (an array of its namespace and device), e.g.
    :class:`lowrank_prox.optim.distributed.DistributedLowRankSum`, whose products are summed
    over data-parallel workers.  :func:`lowrank_prox.lorsum` needs nothing else.
    """
    if isinstance(target, LowRankSum) or getattr(target, "__lowrank_operator__", False):
        return target
    if isinstance(target, _Dense):
        return target
    _validate.check_array(target, name, ndim=2, finite=check_finite)
    return _Dense(target)

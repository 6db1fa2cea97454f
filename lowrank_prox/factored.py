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

    Notes
    -----
    Every product is taken small side first: ``Y @ B = Σ c_i U_i (V_iᵀ B)`` costs
    ``O(k (m + n) Σ r_i)`` for ``B`` of width ``k``.  ``norm()`` takes thin QR factorisations of
    the stacked factors, ``[U_1 … U_k] = Q_L R_L`` and ``[V_1 … V_k] = Q_R R_R``, and the
    Frobenius norm of the small core ``R_L C R_Rᵀ`` (``C`` block-diagonal of the coefficients),
    ``O((m + n) R²)`` for ``R = Σ r_i``; see :meth:`norm` for its accuracy.  Terms of mixed
    dtypes (torch float32 and float64) are promoted in every product, as NumPy does.
    """

    __array_ufunc__ = None  # so that ``ndarray @ LowRankSum`` defers to __rmatmul__

    def __new__(cls, terms=(), *args, **kwargs):
        return object.__new__(_class_for(terms))

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
        check_finite = _validate.check_bool(check_finite, "check_finite")
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
        self = object.__new__(_class_for(terms))
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
        return _sum_products(self._promoted(B), B)

    def __rmatmul__(self, A):
        """``A @ Y = Σ c_i (A U_i) V_iᵀ`` for ``A`` of shape ``(k, m)``."""
        m = self._shape[0]
        if not hasattr(A, "shape") or len(A.shape) != 2 or A.shape[1] != m:
            got = tuple(A.shape) if hasattr(A, "shape") else type(A).__name__
            raise ValueError(f"A must have shape (k, {m}) to multiply Y from the left; got {got}")
        _xp.get_namespace(self._terms[0][1], A, names=["A", "Y"])
        return _sum_products([(c, V, U) for c, U, V in self._promoted(A)], A.mT).mT

    def _promoted(self, B):
        """The terms in the dtype promoted with ``B`` (a no-op unless dtypes are mixed)."""
        dt = self._xp.result_type(self._dtype, B.dtype)
        if all(U.dtype == dt and V.dtype == dt for _, U, V in self._terms):
            return self._terms
        return self.astype(dt)._terms

    def to_dense(self):
        """The m×n matrix ``Σ c_i U_i V_iᵀ`` (O(mn) memory: for checks and small problems)."""
        out = None
        for c, U, V in self.astype(self._dtype)._terms:
            part = c * (U @ V.mT)
            out = part if out is None else out + part
        return out

    def norm(self):
        """Frobenius norm ``‖Σ c_i U_i V_iᵀ‖`` as a Python float, from the QR core (SPEC §1).

        Each factor is first scaled by a power of two (exact) so that its largest entry is
        near 1, the coefficients carry the exponents, and ``‖R_L C R_Rᵀ‖`` is evaluated with
        the largest coefficient and the core's largest entry scaled out, as LAPACK's ``nrm2``
        does.  So nothing overflows or underflows unless the norm itself does (then ``inf``),
        from the smallest normal number to the overflow threshold.  Accuracy: Householder QR
        is backward stable, so the result is the exact norm of a sum whose factors carry
        relative perturbations of order ``R·eps``: the absolute error is
        ``O(R·eps·Σ_i |c_i| ‖U_i‖₂‖V_i‖₂)`` (a few ``eps`` times the size of the terms), never
        the ``√eps``·size of the Gram formula ``‖Y‖² = Σ c_i c_j tr(U_iᵀU_j V_jᵀV_i)``, which
        cancels catastrophically when the terms nearly cancel (a residual near an exact fit).
        """
        mant, expo = _scaled_norm(self)
        return _ldexp_float(mant, expo)


def _class_for(terms):
    """:class:`LowRankSum`, or its array_api_strict twin when the factors are strict arrays.

    ``array_api_strict.Array.__matmul__`` raises ``TypeError`` for any operand that is not one of
    its arrays instead of returning ``NotImplemented``, so ``L @ Y`` would never reach
    :meth:`LowRankSum.__rmatmul__`.  Python calls the reflected method first when the right
    operand's type is a subclass of the left one's, so for strict factors ``Y`` is an instance
    of a subclass of both :class:`LowRankSum` and ``array_api_strict.Array`` that is still not
    an array: it refuses ``__array_namespace__`` and every other ``Array`` method resolves to
    :class:`LowRankSum` first or fails.
    """
    try:
        first = terms[0][1] if not isinstance(terms, LowRankSum) else terms.terms[0][1]
    except (TypeError, IndexError, KeyError):
        return LowRankSum
    mod = type(first).__module__
    if not mod.startswith("array_api_strict"):
        return LowRankSum
    return _strict_class(type(first))


_STRICT = {}


def _strict_class(array_type):
    if array_type not in _STRICT:

        def __array_namespace__(self, api_version=None):  # noqa: N807
            raise TypeError("a LowRankSum is not an array; use its products or to_dense()")

        _STRICT[array_type] = type(
            "LowRankSum",
            (LowRankSum, array_type),
            {
                "__module__": LowRankSum.__module__,
                "__qualname__": "LowRankSum",
                "__array_namespace__": __array_namespace__,
                "__doc__": LowRankSum.__doc__,
                "__init__": LowRankSum.__init__,
                "__repr__": LowRankSum.__repr__,
                "__bool__": lambda self: True,
                "__iter__": None,
                "__float__": None,
                "__getitem__": None,
                "__array__": None,
            },
        )
    return _STRICT[array_type]


def _exponent(x, xp):
    """``e`` with ``max|x| ∈ [2^(e-1), 2^e)``, or ``None`` for an all-zero (or empty) array."""
    if any(d == 0 for d in x.shape):
        return None
    top = _xp.max_abs(x)
    if top == 0.0:
        return None
    if not math.isfinite(top):
        raise ValueError("the factors contain NaN or Inf")
    return math.frexp(top)[1]


def _exponent_of(x, xp, seen):
    """:func:`_exponent` of ``x``, remembered in ``seen`` by object (one pass per array)."""
    key = id(x)
    if key not in seen:
        seen[key] = _exponent(x, xp)
    return seen[key]


def _ldexp(x, e):
    """``x · 2^e`` for an array, in two exact steps (``2^e`` alone may not be representable)."""
    if e == 0:
        return x
    h = e // 2
    return (x * (2.0**h)) * (2.0 ** (e - h))


def _ldexp_float(m, e):
    try:
        return math.ldexp(m, e)
    except OverflowError:
        return math.inf


def _fro(x, xp):
    """``(mantissa, exponent)`` with ``‖x‖_F = mantissa·2^exponent``, without over/underflow."""
    e = _exponent(x, xp)
    if e is None:
        return 0.0, 0
    return float(xp.linalg.vector_norm(_ldexp(x, -e))), e


def _normalised_sum(Y, window=0, exponents=None):
    """``(Y', e, moved)``: ``Y = 2^e·Y'`` with every term of ``Y'`` of largest entry near 1.

    Exact (powers of two).  A factor whose largest entry lies within ``2^±window`` is kept as
    is (no copy); the coefficients carry the other exponents, relative to the largest term, so
    they stay representable.  Exactly zero terms get coefficient 0.  ``moved`` tells whether
    any factor had to be rescaled (copied).  ``e`` is 0 for the zero sum.  ``exponents``, a
    dict, receives each factor's :func:`_exponent` keyed by ``id`` (for a caller whose other
    arrays may be the same objects, e.g. LoRSum's warm start and the target's ``U₀V₀ᵀ``).
    """
    xp = Y.xp
    parts = []
    moved = False
    seen = {} if exponents is None else exponents
    for c, U, V in Y.terms:
        eu, ev = _exponent_of(U, xp, seen), _exponent_of(V, xp, seen)
        if c == 0.0 or eu is None or ev is None:
            parts.append((0.0, None, U, V))
            continue
        eu = 0 if abs(eu) <= window else eu
        ev = 0 if abs(ev) <= window else ev
        moved = moved or eu != 0 or ev != 0
        mc, ec = math.frexp(c)
        parts.append((mc, ec + eu + ev, _ldexp(U, -eu), _ldexp(V, -ev)))
    exps = [e for _, e, _, _ in parts if e is not None]
    top = max(exps) if exps else 0
    terms = [(0.0 if e is None else math.ldexp(mc, e - top), U, V) for mc, e, U, V in parts]
    return LowRankSum._trusted(terms, xp, Y.dtype), top, moved


def _stacked_core(terms, xp, dtype):
    """``(core, e, Q_L, Q_R)`` with ``Σ c_i U_i V_iᵀ = 2^e · Q_L core Q_Rᵀ``, Q's orthonormal.

    The factors are scaled to unit largest entry by powers of two and the coefficients absorb
    the exponents (relative to the largest term, so that they stay representable); exactly zero
    terms are dropped, and terms that share a factor *object* are merged first
    (``c_1 U V_1ᵀ + c_2 U V_2ᵀ = U (c_1 V_1 + c_2 V_2)ᵀ``), so that a residual such as
    ``U V_1ᵀ − U V_2ᵀ`` is evaluated from the exact difference of its factors.  Returns
    ``(None, 0, None, None)`` for the zero sum.
    """
    parts = []
    for c, U, V in terms:
        eu, ev = _exponent(U, xp), _exponent(V, xp)
        if c == 0.0 or eu is None or ev is None:
            continue
        mc, ec = math.frexp(c)
        Un = _ldexp(U if U.dtype == dtype else xp.astype(U, dtype), -eu)
        Vn = _ldexp(V if V.dtype == dtype else xp.astype(V, dtype), -ev)
        parts.append([mc, ec + eu + ev, Un, Vn, id(U), id(V)])
    parts = _merge_shared(_merge_shared(parts, 4, 3, xp), 5, 2, xp)
    if not parts:
        return None, 0, None, None
    top = max(p[1] for p in parts)
    L = xp.concat([p[2] for p in parts], axis=1)
    R = xp.concat([p[3] for p in parts], axis=1)
    QL, RL = xp.linalg.qr(L)
    QR, RR = xp.linalg.qr(R)
    cols = xp.concat(
        [
            xp.full((p[2].shape[1],), math.ldexp(p[0], p[1] - top), dtype=dtype,
                    device=_xp.device(p[2]))
            for p in parts
        ]
    )
    return (RL * cols) @ RR.mT, top, QL, QR


def _merge_shared(parts, key, other, xp):
    """Merge parts whose factor ``parts[i][key]`` is one object: sum their other factors."""
    groups = {}
    for p in parts:
        groups.setdefault(p[key], []).append(p)
    if all(len(g) == 1 for g in groups.values()):
        return parts
    out = []
    for g in groups.values():
        if len(g) == 1 or g[0][other].shape != g[1][other].shape:
            out.extend(g)
            continue
        top = max(p[1] for p in g)
        acc = None
        for p in g:
            part = math.ldexp(p[0], p[1] - top) * p[other]
            acc = part if acc is None else acc + part
        e = _exponent(acc, xp)
        if e is None:
            continue  # the terms cancel exactly
        merged = list(g[0])
        merged[0], merged[1], merged[other] = 1.0, top + e, _ldexp(acc, -e)
        merged[4 if other == 2 else 5] = object()  # a new factor: no longer shared
        out.append(merged)
    return out


def _scaled_norm(Y):
    """``(mantissa, exponent)`` of ``‖Y‖_F`` for a :class:`LowRankSum` (see its ``norm``)."""
    xp = Y.xp
    core, top, _, _ = _stacked_core(Y.terms, xp, Y.dtype)
    if core is None:
        return 0.0, 0
    mant, e = _fro(core, xp)
    return mant, e + top


def _sum_products(terms, B):
    """``Σ c U (Vᵀ B)``, the small product first, both in the wide layout (``thin_matmul``)."""
    out = None
    for c, U, V in terms:
        part = _xp.thin_matmul(U, c * _xp.thin_matmul(V.mT, B))
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
        """Frobenius norm, scaled by a power of two so that it cannot overflow or underflow."""
        mant, e = _fro(self._A, _xp.get_namespace(self._A))
        return _ldexp_float(mant, e)

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
    check_finite = _validate.check_bool(check_finite, "check_finite")
    _validate.check_array(target, name, ndim=2, finite=check_finite)
    return _Dense(target)

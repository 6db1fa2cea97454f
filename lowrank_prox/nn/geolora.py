"""``GeoLoRALinear``: a frozen linear layer plus a ``U S Vᵀ`` adapter of changing rank (SPEC §8)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import _validate
from .lora import wrap_linear

__all__ = ["GeoLoRALinear"]


class GeoLoRALinear(nn.Module):
    """``y = x W0ᵀ + b + s·x (U S Vᵀ)ᵀ`` with orthonormal ``U, V`` and a rank that may change.

    The GeoLoRA parametrisation (SPEC §8, peers.md §1.2): frozen base ``weight`` (out × in) and
    ``bias``; trainable ``U`` (out × r), ``S`` (r × r) and ``V`` (in × r).  Train it with
    :class:`lowrank_prox.optim.GeoLoRA`, which keeps ``U, V`` orthonormal, ``S`` diagonal, and
    changes ``r`` by resizing the three parameters in place (:meth:`set_factors`), so the next
    forward pass and any optimizer holding the parameters keep working.

    Parameters
    ----------
    in_features, out_features : int
    rank : int
        Initial rank, ``1 <= rank <= min(in_features, out_features)``.
    bias : bool, default True
        Whether the frozen base layer has a bias.
    init : {"zero", "random"}, default "zero"
        ``"zero"``: ``S = 0`` so the adapter starts at ``ΔW = 0`` (GeoLoRA's reference
        initialisation; the first optimizer step then updates ``S`` only).  ``"random"``:
        ``S = diag(init_scale)``.  ``U`` and ``V`` are the Q factors of Gaussian matrices.
    init_scale : float, default 1e-2
        Diagonal of ``S`` for ``init="random"``.
    alpha : float or None
        Default None: no scaling, ``s = 1``, so a rank change leaves ``ΔW`` as the truncation
        made it (the paper's step).  A float α > 0: ``s = α / r`` with the *current* rank, as
        in GeoLoRA's reference layers (their default α = 16 with ``max_rank = 32``): every rank
        change ``r → r'`` then rescales ``ΔW`` by ``r / r'`` on top of the step, and the
        optimizer's gradients carry the factor s.
    generator : torch.Generator, optional
        Source of the random bases (and of the base weight's default initialisation).
    device, dtype : optional
        Placement of all parameters.
    """

    def __init__(
        self,
        in_features,
        out_features,
        rank,
        *,
        bias=True,
        init="zero",
        init_scale=1e-2,
        alpha=None,
        generator=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.alpha = None if alpha is None else _validate.check_real(
            alpha, "alpha", low=0.0, low_open=True
        )
        self.in_features = _validate.check_int(in_features, "in_features", low=1)
        self.out_features = _validate.check_int(out_features, "out_features", low=1)
        rank = _validate.check_rank(rank, (self.out_features, self.in_features))
        _validate.check_choice(init, "init", ("zero", "random"))
        init_scale = _validate.check_real(init_scale, "init_scale", low=0.0)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw),
                                   requires_grad=False)
        self.bias = (
            nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None
        )
        self._reset_base(generator)
        U = _orthonormal(out_features, rank, generator, self.weight)
        V = _orthonormal(in_features, rank, generator, self.weight)
        S = torch.eye(rank, **kw) * (init_scale if init == "random" else 0.0)
        self.U = nn.Parameter(U)
        self.S = nn.Parameter(S)
        self.V = nn.Parameter(V)

    @classmethod
    def from_linear(cls, linear, rank, **kwargs):
        """Wrap an ``nn.Linear``: its weight and bias become the frozen base (copied)."""
        return wrap_linear(cls, linear, rank, **kwargs)

    @property
    def rank(self):
        """The current rank ``r`` (columns of ``U``)."""
        return self.U.shape[1]

    @property
    def scaling(self):
        """``s = α / r`` with the current rank (1 when ``alpha`` is None)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def forward(self, x):
        base = F.linear(x, self.weight, self.bias)
        adapter = ((x @ self.V) @ self.S.mT) @ self.U.mT
        return base + (adapter if self.alpha is None else self.scaling * adapter)

    def delta_weight(self):
        """The adapter ``s · U S Vᵀ`` (out × in), detached."""
        with torch.no_grad():
            return self.scaling * (self.U @ self.S @ self.V.mT)

    @torch.no_grad()
    def set_factors(self, U, S, V):
        """Write new factors, resizing ``U``, ``S``, ``V`` in place when the rank changed.

        The ``nn.Parameter`` objects stay the same Python objects (their contents are swapped with
        :func:`torch.utils.swap_tensors`), so optimizers holding them stay valid; gradients of
        resized parameters are cleared because their shape no longer fits.
        """
        r = U.shape[1]
        shapes = {"U": (self.out_features, r), "S": (r, r), "V": (self.in_features, r)}
        for name, new in (("U", U), ("S", S), ("V", V)):
            if tuple(new.shape) != shapes[name]:
                raise ValueError(
                    f"{name} must have shape {shapes[name]} for rank {r}; got {tuple(new.shape)}"
                )
        _validate.check_rank(r, (self.out_features, self.in_features), name="new rank")
        for name, new in (("U", U), ("S", S), ("V", V)):
            param = getattr(self, name)
            new = new.detach().to(device=param.device, dtype=param.dtype)
            if param.shape == new.shape:
                param.copy_(new)
            else:
                # ``param.data = new`` would leave autograd's cached shape of the leaf behind;
                # swapping the tensor contents gives the same Python object a fresh leaf.
                fresh = nn.Parameter(new.clone(), requires_grad=param.requires_grad)
                torch.utils.swap_tensors(param, fresh)
                param.grad = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint may hold another rank than this freshly built layer: resize first.
        incoming = [state_dict.get(prefix + name) for name in ("U", "S", "V")]
        if all(t is not None for t in incoming):
            U, S, V = incoming
            if U.shape[1] != self.rank:
                with torch.no_grad():
                    self.set_factors(
                        torch.empty(U.shape, dtype=self.U.dtype, device=self.U.device),
                        torch.empty(S.shape, dtype=self.S.dtype, device=self.S.device),
                        torch.empty(V.shape, dtype=self.V.dtype, device=self.V.device),
                    )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
            + ("" if self.alpha is None else f", alpha={self.alpha:g}")
        )

    def _reset_base(self, generator):
        # nn.Linear's default initialisation, drawn from ``generator`` when given.
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound, generator=generator)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound, generator=generator)


def _orthonormal(rows, cols, generator, like):
    A = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R))  # unique QR: positive diagonal of R
    return Q.to(device=like.device, dtype=like.dtype)

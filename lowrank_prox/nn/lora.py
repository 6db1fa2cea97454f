"""``LoRALinear`` and ``add_lora``: frozen linear layer plus trainable ``B A`` adapter (SPEC §6).

Orientation (SPEC notation, reference/paper.md §1): the adapted weight is ``W = W0 + U Vᵀ`` with
``U = lora_B`` (out × r) and ``Vᵀ = lora_A`` (r × in).  There is no ``alpha / r`` scaling: the
adapter is exactly ``lora_B @ lora_A``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import _validate

__all__ = ["LoRALinear", "add_lora"]


class LoRALinear(nn.Module):
    """``y = x W0ᵀ + b + x Aᵀ Bᵀ`` with frozen ``W0, b`` and trainable ``A``, ``B`` (SPEC §6).

    Parameters
    ----------
    in_features, out_features : int
    rank : int
        Adapter rank ``r``, ``1 <= r <= min(in_features, out_features)``.
    bias : bool, default True
        Whether the frozen base layer has a bias.
    init : {"lora", "zero", "svd"}, default "lora"
        ``"lora"``: ``A`` Kaiming-uniform, ``B = 0`` (PEFT's default, adapter starts at 0).
        ``"zero"``: both factors 0 (only useful with a ridge > 0 or as a placeholder).
        ``"svd"``: the top-``r`` SVD of the freshly initialised base weight,
        ``A = S½ Vᵀ``, ``B = U S½`` (the linear task of SPEC §9 then zeroes the base).
    generator : torch.Generator, optional
        Source of the random initialisation.
    device, dtype : optional
        Placement of all parameters.

    Attributes
    ----------
    weight : nn.Parameter (out × in), frozen
    bias : nn.Parameter (out,) or None, frozen
    lora_A : nn.Parameter (r × in), trainable, ``= Vᵀ``
    lora_B : nn.Parameter (out × r), trainable, ``= U``
    """

    def __init__(
        self,
        in_features,
        out_features,
        rank,
        *,
        bias=True,
        init="lora",
        generator=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = _validate.check_int(in_features, "in_features", low=1)
        self.out_features = _validate.check_int(out_features, "out_features", low=1)
        self.rank = _validate.check_rank(rank, (self.out_features, self.in_features))
        _validate.check_choice(init, "init", ("lora", "zero", "svd"))
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, **kw), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None
        )
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **kw))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
            self.weight.uniform_(-bound, bound, generator=generator)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound, generator=generator)
            if init == "lora":
                # kaiming_uniform_(a=sqrt(5)) as in nn.Linear / PEFT: bound = 1/sqrt(fan_in).
                self.lora_A.uniform_(-bound, bound, generator=generator)
            elif init == "svd":
                self.set_factors(*_top_svd_factors(self.weight, rank))

    @classmethod
    def from_linear(cls, linear, rank, **kwargs):
        """Wrap an ``nn.Linear``: its weight and bias become the frozen base (copied).

        The new layer has the linear's device and dtype unless ``kwargs`` say otherwise; with
        the default ``init="lora"`` its output equals the linear's at initialisation.
        """
        return wrap_linear(cls, linear, rank, **kwargs)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B)

    def delta_weight(self):
        """The adapter ``B A = U Vᵀ`` (out × in), detached."""
        with torch.no_grad():
            return self.lora_B @ self.lora_A

    @torch.no_grad()
    def set_factors(self, U, V):
        """Write ``lora_B = U`` (out × r) and ``lora_A = Vᵀ`` (V: in × r), in place."""
        if tuple(U.shape) != tuple(self.lora_B.shape):
            raise ValueError(f"U must have shape {tuple(self.lora_B.shape)}; got {tuple(U.shape)}")
        if tuple(V.shape) != (self.in_features, self.rank):
            raise ValueError(
                f"V must have shape {(self.in_features, self.rank)}; got {tuple(V.shape)}"
            )
        self.lora_B.copy_(U)
        self.lora_A.copy_(V.mT)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


def add_lora(model, rank, target_modules, **kwargs):
    """Replace the named ``nn.Linear`` submodules of ``model`` by :class:`LoRALinear`, in place.

    Parameters
    ----------
    model : nn.Module
    rank : int
        Adapter rank of every new layer.
    target_modules : str or iterable of str
        Module names; a name matches a submodule whose qualified name equals it or ends with
        ``"." + name`` (so ``"q_proj"`` matches every ``...attn.q_proj``).
    **kwargs
        Passed to :meth:`LoRALinear.from_linear` (``init``, ``generator``, ...).

    Returns
    -------
    model : nn.Module
        The same object.  Each swapped layer keeps the linear's weight and bias as its frozen
        base; no other parameter is frozen or changed.

    Raises
    ------
    ValueError
        If a target matches no submodule, or matches a module that is not an ``nn.Linear``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be non-empty module names; got {targets!r}")
    found = {t: [] for t in targets}
    for name, module in model.named_modules():
        for t in targets:
            if name == t or name.endswith("." + t):
                found[t].append((name, module))
    for t, hits in found.items():
        if not hits:
            raise ValueError(f"target_modules entry {t!r} matches no submodule of the model")
        for name, module in hits:
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"target_modules entry {t!r} matches {name!r}, a {type(module).__name__}; "
                    "only torch.nn.Linear can be adapted"
                )
    swapped = {name for hits in found.values() for name, _ in hits}
    for name in sorted(swapped):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear.from_linear(getattr(parent, child), rank, **kwargs))
    return model


def _top_svd_factors(W, rank):
    """``(U S½, V S½)`` from the top-``rank`` SVD of ``W`` (float64 SVD, cast back)."""
    U, s, Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    return (U[:, :rank] * root).to(W.dtype), (Vh[:rank].mT * root).to(W.dtype)


def wrap_linear(cls, linear, rank, **kwargs):
    """Build ``cls(in, out, rank, bias=..., **kwargs)`` around an ``nn.Linear``, copying its
    weight and bias into the frozen base; device and dtype default to the linear's.

    The one implementation behind :meth:`LoRALinear.from_linear` and
    :meth:`lowrank_prox.nn.GeoLoRALinear.from_linear`.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be a torch.nn.Linear; got {type(linear).__name__}")
    kwargs.setdefault("device", linear.weight.device)
    kwargs.setdefault("dtype", linear.weight.dtype)
    layer = cls(
        linear.in_features, linear.out_features, rank, bias=linear.bias is not None, **kwargs
    )
    with torch.no_grad():
        layer.weight.copy_(linear.weight)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
    return layer

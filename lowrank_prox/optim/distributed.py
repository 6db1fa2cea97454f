"""Data-parallel LoRA optimizers on ``torch.distributed`` with factored communication (SPEC §6, §7).

A LoRSum step needs the gradient of the *global* batch, ``G = Σ_w Δ_wᵀ X_w`` over workers ``w``,
and every worker must end with the same factors and state.  :func:`data_parallel` turns any
:class:`~lowrank_prox.optim.LoRAOptimizer` (PSI-LoRA, Proj. PSI-LoRA, Scaled PSI-LoRA, SVDLoRA,
RPLoRA) into a data-parallel one; each worker captures ``(X_w, Δ_w)`` from its own mini-batch as
usual, and ``step()`` combines them with one of two strategies:

``comm="allgather"``
    All-gather the rows ``[X_w | Δ_w]`` of every layer: ``N (m + n)`` numbers per layer per step
    (``N`` the global batch rows).  Every worker then holds the global ``(X, Δ)`` and runs the
    single-process step on it, so *every* optimizer works unchanged (Scaled PSI-LoRA's diagonal
    K-FAC / Shampoo statistics and clipping norms included).
``comm="allreduce"``
    Keep the rows local.  The target of each LoRSum call is a :class:`DistributedLowRankSum`
    whose product sums the gradient term's small products over workers: the V-step's
    ``Yᵀ U`` all-reduces ``X_wᵀ (Δ_w U)`` (n × r), the U-step's ``Y V`` all-reduces
    ``Δ_wᵀ (X_w V)`` (m × r), the replicated weight and momentum terms are added locally:
    ``r (m + n)`` numbers per half-step, activations never move.  Anything that needs the rows
    themselves (a clipping norm ``‖G‖² = ⟨XXᵀ, ΔΔᵀ⟩``, Scaled PSI-LoRA's statistics and its
    row-scaled target, a dense ``G`` for SVDLoRA) gathers them lazily, once per layer and step, at
    the cost of ``"allgather"``; the later products of that step are then local.

Which is cheaper: per layer and step ``"allreduce"`` moves ``Σ_calls r_call (m + n)`` numbers
(2 half-steps per iteration, for each LoRSum call: ``2K·r(m + n)`` for PSI-LoRA without momentum,
``2K(r + r_M)(m + n)`` with it), ``"allgather"`` moves ``N (m + n)``.  So ``"allreduce"`` wins
when ``2K (r + r_M) < N`` (large batches, small ranks, few iterations) and when the rows are many
tokens (``N`` = batch × sequence length); ``"allgather"`` wins for small batches, for ``K`` or
``r_M`` large, and always with clipping or Scaled PSI-LoRA (which read the rows).  Neither ever
communicates an m×n matrix.  :func:`measure_comm_bytes` counts the bytes.

Conventions
-----------
* Loss scaling: with ``average=True`` (default, DDP's convention) the step uses the *mean* of the
  workers' gradients, ``G = (1/W) Σ_w Δ_wᵀX_w``; each worker's ``Δ_w`` is multiplied by ``1/W``.
  For a mean-reduced loss over equal local batches of ``N_w = N/W`` rows this is the gradient of
  the mean loss over the global batch (``Δ_w`` carries ``1/N_w``, so ``Δ_w/W`` carries ``1/N``),
  and the data-parallel run equals the single-process run on the whole batch to rounding.  For
  unequal local batches use a sum-reduced loss (or scale each local loss by ``W N_w / N``); with
  ``average=False`` the gradients are summed.
* Identical workers: collectives give every worker the same reduced bits, and each worker then
  runs the same deterministic computation, so parameters and states stay bit-identical (checked
  in ``tests/test_distributed.py``).  The result equals the single-process run on the whole batch
  to rounding, not bitwise: all-reduce sums in a worker-count-dependent order.
* NaN/Inf skip: one verdict for all workers (a non-finite gradient anywhere skips the step
  everywhere).  A layer that has rows on some worker only is stepped everywhere (zero rows
  elsewhere).
* Other trainable parameters (biases, heads): their ``.grad`` is averaged over workers unless
  ``sync_other_grads=False`` (use that when the model is wrapped in DDP, which averages them).
* ``DistributedDataParallel``: the LoRA parameters' autograd ``.grad`` is not what the step uses
  (it uses the captured rows), so DDP's all-reduce of it is wasted.  Call
  :func:`exclude_lora_from_ddp` on the model before wrapping it, or do the backward passes under
  ``ddp_model.no_sync()`` and pass ``sync_other_grads=True``; if the LoRA factors are the only
  trainable parameters, do not wrap the model at all.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from .. import _validate, _xp
from ..factored import LowRankSum, _sum_products
from ._base import CapturedGradient, LoRAOptimizer

__all__ = [
    "DistributedCapturedGradient",
    "DistributedLowRankSum",
    "comm_stats",
    "data_parallel",
    "exclude_lora_from_ddp",
    "measure_comm_bytes",
]

STRATEGIES = ("allgather", "allreduce")


# -- transport: torch.distributed collectives that count what they move ---------------------


class _Comm:
    """The process group and a byte count of every tensor passed to a collective.

    Bytes are the payload of the tensors handed to the collectives on one worker: the reduced
    buffer for ``all_reduce``, the gathered output (all workers' shards, padding included) for
    ``all_gather``, the buffer for ``broadcast``; the small integer exchange that agrees on row
    counts and finiteness is counted apart as ``"control"``.
    """

    def __init__(self, group):
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.src = 0 if group is None else dist.get_global_rank(group, 0)
        self.reset()

    def reset(self):
        self.stats = {k: {"calls": 0, "bytes": 0}
                      for k in ("all_reduce", "all_gather", "broadcast", "control")}

    def _count(self, kind, numel, element_size):
        self.stats[kind]["calls"] += 1
        self.stats[kind]["bytes"] += int(numel) * int(element_size)

    def all_reduce(self, t):
        """Sum of ``t`` over workers (a new contiguous tensor, reduced in place)."""
        t = t.contiguous()
        self._count("all_reduce", t.numel(), t.element_size())
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast(self, t):
        """Copy rank 0's ``t`` into ``t`` on every worker, in place."""
        self._count("broadcast", t.numel(), t.element_size())
        buf = t.detach().contiguous()
        dist.broadcast(buf, src=self.src, group=self.group)
        if buf.data_ptr() != t.data_ptr():
            with torch.no_grad():
                t.copy_(buf)

    def gather_ints(self, values, device):
        """All workers' integer lists as a (W, len) int64 tensor (counted as control)."""
        t = torch.tensor(values, dtype=torch.int64, device=device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._count("control", t.numel() * self.world_size, t.element_size())
        dist.all_gather(out, t, group=self.group)
        return torch.stack(out).cpu()

    def gather_rows(self, t, sizes=None):
        """Rows of ``t`` (N_w × k) concatenated over workers in rank order; sizes may differ."""
        if sizes is None:
            sizes = self.gather_ints([t.shape[0]], t.device)[:, 0].tolist()
        top = max(sizes)
        if t.shape[0] < top:
            t = torch.cat([t, t.new_zeros(top - t.shape[0], t.shape[1])])
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._count("all_gather", t.numel() * self.world_size, t.element_size())
        dist.all_gather(out, t, group=self.group)
        return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)])


# -- the factored target whose gradient term lives on all workers --------------------------


class DistributedLowRankSum:
    """``Y = Σ_i c_i U_i V_iᵀ + Σ_w Σ_j c_j U_{j,w} V_{j,w}ᵀ``: local terms plus sharded terms.

    ``terms`` are replicated on every worker (weights ``U Vᵀ``, momentum ``M_U M_Vᵀ``);
    ``shards`` hold this worker's part of a term summed over workers (the gradient term
    ``(c, Δ_wᵀ, X_wᵀ)``).  ``Y @ B`` all-reduces ``Σ_j c_j U_{j,w} (V_{j,w}ᵀ B)`` (m × k) and adds
    the local terms' product, so every worker gets the same ``m × k`` result; no m×n matrix and
    no row is communicated.  Implements the operator protocol of
    :func:`lowrank_prox.factored.as_operator`, so :func:`lowrank_prox.lorsum` and
    :func:`lowrank_prox.scaled_lorsum` take it as a target.  ``norm()`` and ``to_dense()``
    gather the shards' rows (O(N(m + n)) bytes).
    """

    __array_ufunc__ = None
    __lowrank_operator__ = True

    def __init__(self, terms, shards, comm):
        self._terms = tuple(terms)
        self._shards = tuple(shards)
        self._comm = comm
        every = self._terms + self._shards
        if not every:
            raise ValueError("DistributedLowRankSum needs at least one term; got none")
        self.like = every[0][1]
        self.shape = (every[0][1].shape[0], every[0][2].shape[0])
        self.dtype = functools.reduce(
            torch.promote_types, [a.dtype for _, U, V in every for a in (U, V)]
        )

    @property
    def terms(self):
        """The replicated ``(coef, U, V)`` terms."""
        return self._terms

    @property
    def shards(self):
        """This worker's ``(coef, U_w, V_w)`` parts of the terms summed over workers."""
        return self._shards

    @property
    def T(self):
        swap = lambda ts: [(c, V, U) for c, U, V in ts]  # noqa: E731
        return DistributedLowRankSum(swap(self._terms), swap(self._shards), self._comm)

    def astype(self, dtype):
        cast = lambda ts: [(c, U.to(dtype), V.to(dtype)) for c, U, V in ts]  # noqa: E731
        return DistributedLowRankSum(cast(self._terms), cast(self._shards), self._comm)

    def __repr__(self):
        return (
            f"DistributedLowRankSum(shape={self.shape}, local={len(self._terms)}, "
            f"sharded={len(self._shards)}, world_size={self._comm.world_size})"
        )

    def __matmul__(self, B):
        n = self.shape[1]
        if not isinstance(B, torch.Tensor) or B.ndim != 2 or B.shape[0] != n:
            got = tuple(B.shape) if hasattr(B, "shape") else type(B).__name__
            raise ValueError(f"B must be a tensor of shape ({n}, k) to multiply Y; got {got}")
        out = self._comm.all_reduce(_sum_products(self._shards, B)) if self._shards else None
        if self._terms:
            local = _sum_products(self._terms, B)
            out = local if out is None else local + out
        return out

    def gathered(self):
        """The same matrix as a plain :class:`LowRankSum` with every worker's rows (collective)."""
        terms = list(self._terms)
        for c, U, V in self._shards:
            rows = self._comm.gather_rows(torch.cat([U.mT, V.mT], dim=1))
            terms.append((c, rows[:, : U.shape[0]].mT, rows[:, U.shape[0]:].mT))
        return LowRankSum(terms, check_finite=False)

    def norm(self):
        """Frobenius norm of the global ``Y`` (gathers the shards' rows)."""
        return self.gathered().norm()

    def to_dense(self):
        return self.gathered().to_dense()


class DistributedCapturedGradient(CapturedGradient):
    """``G = scale · Σ_w Δ_wᵀ X_w`` with this worker's rows ``(X_w, Δ_w)`` (``comm="allreduce"``).

    :meth:`as_sum` gives a :class:`DistributedLowRankSum` (the factored path of PSI-LoRA's
    LoRSum calls).  The attributes ``X`` and ``Delta`` are the *global* rows, all-gathered on
    first access (collective: all workers access them in the same order because they run the
    same code), so every row-level use (clipping norm, Scaled PSI-LoRA's statistics, ``dense()``)
    is the global one.
    """

    def __init__(self, X, Delta, comm, sizes, scale=1.0):
        self.X_local = X
        self.Delta_local = Delta
        self.scale = scale
        self._comm = comm
        self._sizes = list(sizes)
        self._rows = None

    def _gather(self):
        if self._rows is None:
            n = self.X_local.shape[1]
            rows = self._comm.gather_rows(torch.cat([self.X_local, self.Delta_local], 1),
                                          self._sizes)
            self._rows = (rows[:, :n], rows[:, n:])
        return self._rows

    @property
    def X(self):
        return self._gather()[0]

    @property
    def Delta(self):
        return self._gather()[1]

    @property
    def shape(self):
        return (self.Delta_local.shape[1], self.X_local.shape[1])

    def to(self, dtype):
        """The same gradient with the local rows in ``dtype`` (no communication)."""
        if self.X_local.dtype == dtype and self.Delta_local.dtype == dtype:
            return self
        out = DistributedCapturedGradient(self.X_local.to(dtype), self.Delta_local.to(dtype),
                                          self._comm, self._sizes, self.scale)
        if self._rows is not None:
            out._rows = tuple(t.to(dtype) for t in self._rows)
        return out

    def isfinite(self):
        """Whether this worker's rows are finite (the workers agree in ``synchronize``)."""
        return _xp.all_finite(self.X_local) and _xp.all_finite(self.Delta_local)

    def as_sum(self, coef=1.0, *, extra=()):
        """``extra + coef·G`` as a :class:`DistributedLowRankSum` (rows stay local).

        Once the rows were gathered (clipping, Scaled PSI-LoRA's statistics) the products are
        local: a plain :class:`LowRankSum` of the global rows, no further communication.
        """
        if self._rows is not None:
            return CapturedGradient(*self._rows, self.scale).as_sum(coef, extra=extra)
        shard = (coef * self.scale, self.Delta_local.mT, self.X_local.mT)
        return DistributedLowRankSum(extra, [shard], self._comm)

    def norm_sq(self):
        """``‖G‖²`` of the global gradient (gathers the rows once)."""
        return CapturedGradient(self.X, self.Delta, self.scale).norm_sq()


# -- the hook that LoRAOptimizer._step calls -----------------------------------------------


class _DataParallel:
    def __init__(self, comm, strategy, average, sync_other_grads):
        self.comm = comm
        self.strategy = strategy
        self.average = average
        self.sync_other_grads = sync_other_grads

    def synchronize(self, optimizer, work, others):
        """``(work, finite)`` of the global batch; called by ``LoRAOptimizer._step``.

        ``others`` (the other parameters with a gradient) is extended in place by parameters
        that received a gradient on another worker only (their local ``.grad`` is set to 0).
        """
        comm = self.comm
        layers = optimizer._layers
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        local = {id(layer): grad for layer, grad, _ in work}
        all_others = [] if optimizer._other is None else [
            p for g in optimizer._other.param_groups for p in g["params"]
        ]
        finite = all(
            _xp.all_finite(g.X) and _xp.all_finite(g.Delta) for g in local.values()
        )
        finite = finite and all(_xp.all_finite(p.grad) for p in others)
        counts = [0 if finite else 1]
        counts += [local[id(L)].X.shape[0] + 1 if id(L) in local else 0 for L in layers]
        counts += [int(p.grad is not None) for p in all_others]
        device = layers[0].B.device
        table = comm.gather_ints(counts, device)
        if int(table[:, 0].sum()) > 0:
            return work, False
        weight = 1.0 / comm.world_size if self.average else 1.0

        new_work = []
        for i, layer in enumerate(layers):
            col = table[:, 1 + i]
            if int(col.max()) == 0:
                continue
            sizes = [max(int(c) - 1, 0) for c in col]
            if id(layer) in local:  # in the compute dtype: every worker sends the same dtype
                X, D = (t.to(layer.dtype) for t in (local[id(layer)].X, local[id(layer)].Delta))
            else:
                kw = {"dtype": layer.dtype, "device": layer.B.device}
                X = torch.zeros(0, layer.in_features, **kw)
                D = torch.zeros(0, layer.out_features, **kw)
            if weight != 1.0:
                D = D * weight
            if self.strategy == "allgather":
                rows = comm.gather_rows(torch.cat([X, D], 1), sizes)
                grad = CapturedGradient(rows[:, : layer.in_features], rows[:, layer.in_features:])
            else:
                grad = DistributedCapturedGradient(X, D, comm, sizes)
            new_work.append((layer, grad, groups[id(layer.B)]))

        has = table[:, 1 + len(layers):].sum(dim=0)
        for p, h in zip(all_others, has.tolist(), strict=True):
            if h > 0 and p.grad is None:
                p.grad = torch.zeros_like(p)
                others.append(p)
        if self.sync_other_grads:
            synced = [p for p, h in zip(all_others, has.tolist(), strict=True) if h > 0]
            if synced:
                flat = comm.all_reduce(torch.cat([p.grad.reshape(-1) for p in synced]))
                if self.average:
                    flat = flat / comm.world_size
                offset = 0
                for p in synced:
                    k = p.grad.numel()
                    p.grad.copy_(flat[offset: offset + k].view_as(p.grad))
                    offset += k
        return new_work, True


def data_parallel(
    optimizer,
    *,
    process_group=None,
    comm="allgather",
    average=True,
    sync_other_grads=True,
    broadcast=True,
):
    """Make a LoRA optimizer step on the global batch of a ``torch.distributed`` group.

    Parameters
    ----------
    optimizer : LoRAOptimizer
        Built as usual on this worker's model replica (PSILoRA, ProjPSILoRA, ScaledPSILoRA,
        SVDLoRA, RPLoRA).  Modified in place and returned.
    process_group : ProcessGroup or None
        The workers (default: the default group, which must be initialised by
        ``torch.distributed.init_process_group``).
    comm : {"allgather", "allreduce"}
        Communication strategy (module docstring): gather the rows ``[X | Δ]`` of every layer,
        or all-reduce the ``r × (m + n)`` products of each LoRSum half-step.
    average : bool, default True
        Step on the mean ``(1/W) Σ_w G_w`` of the workers' gradients (DDP's convention; equals
        the global-batch gradient of a mean-reduced loss over equal local batches).  ``False``
        sums them (sum-reduced losses, unequal local batches).
    sync_other_grads : bool, default True
        All-reduce (average/sum like ``average``) the ``.grad`` of the other trainable
        parameters before their optimizer steps.  Set ``False`` when DDP already did.
    broadcast : bool, default True
        Copy rank 0's LoRA factors, other trainable parameters (when ``sync_other_grads``) and
        optimizer state to all workers now, so they start identical (e.g. momentum sketches
        drawn without a seed).

    Returns
    -------
    optimizer
        The same object; its ``step()`` now synchronises.  :func:`comm_stats` reports the bytes.
    """
    if not isinstance(optimizer, LoRAOptimizer):
        raise TypeError(
            "optimizer must be a lowrank_prox.optim.LoRAOptimizer (PSILoRA, ScaledPSILoRA, ...); "
            f"got {type(optimizer).__name__}"
        )
    _validate.check_choice(comm, "comm", STRATEGIES)
    for name, flag in (("average", average), ("sync_other_grads", sync_other_grads),
                       ("broadcast", broadcast)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {type(flag).__name__}")
    if getattr(optimizer, "_step_in_backward", False):
        raise ValueError(
            "data_parallel does not combine with step_in_backward (the step needs the global "
            "batch's rows); got an optimizer stepping in backward"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "data_parallel needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group(...) first (e.g. under torchrun)"
        )
    transport = _Comm(process_group)
    if broadcast:
        with torch.no_grad():
            for layer in optimizer._layers:
                transport.broadcast(layer.A)
                transport.broadcast(layer.B)
                for value in optimizer.state[layer.B].values():
                    if isinstance(value, torch.Tensor):
                        transport.broadcast(value)
            if sync_other_grads and optimizer._other is not None:
                for g in optimizer._other.param_groups:
                    for p in g["params"]:
                        transport.broadcast(p)
        transport.reset()
    optimizer._data_parallel = _DataParallel(transport, comm, average, sync_other_grads)
    return optimizer


def comm_stats(optimizer, *, reset=False):
    """Calls and bytes per collective kind since :func:`data_parallel` (or the last reset).

    ``{"all_reduce": {"calls", "bytes"}, "all_gather": ..., "broadcast": ..., "control": ...}``
    (see :class:`_Comm` for what is counted).
    """
    dp = getattr(optimizer, "_data_parallel", None)
    if dp is None:
        raise ValueError("optimizer is not data-parallel; wrap it with data_parallel() first")
    stats = {k: dict(v) for k, v in dp.comm.stats.items()}
    if reset:
        dp.comm.reset()
    return stats


def exclude_lora_from_ddp(model):
    """Tell ``DistributedDataParallel`` not to all-reduce the LoRA factors' ``.grad``.

    Call on the model *before* wrapping it in DDP.  The data-parallel LoRA step uses the
    captured rows, never ``lora_A.grad``/``lora_B.grad``, so DDP's reduction of them is wasted
    (``2·r(m + n)`` numbers per layer per step).  Uses
    ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``.  Returns ``model``.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = [
        name for name, _ in model.named_parameters()
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B") or ".lora_A." in name
        or ".lora_B." in name
    ]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return model


# -- measurement ----------------------------------------------------------------------------


def measure_comm_bytes(m, n, r, *, N=64, comm="allreduce", optimizer="psilora", iters=1,
                       momentum=0.9, steps=2, dtype=torch.float32, seed=0):
    """Bytes passed to the collectives in one step of one m×n LoRA layer (measured).

    Runs ``steps`` steps of ``optimizer`` (``"psilora"``: :class:`PSILoRA` with ``momentum``
    and ``iters``; ``"scaled"``: :class:`ScaledPSILoRA` with ``betas=(momentum, 0.99)``) on a
    ``LoRALinear(n, m, r)`` with a mean-squared loss over ``N`` rows, data-parallel with
    ``comm``, counting the tensors handed to ``torch.distributed`` in the last step.  Uses the
    current process group if one is initialised, else a one-worker gloo group for the call
    (the payload sizes do not depend on the worker count; ``N`` is the global row count).

    Returns
    -------
    dict
        ``{"m", "n", "r", "N", "comm", "optimizer", "iters", "bytes", "control_bytes",
        "by_collective"}`` where ``bytes`` is the payload per step (all_reduce + all_gather)
        and ``control_bytes`` the row-count/finiteness exchange.
    """
    from ..nn import LoRALinear
    from .psilora import PSILoRA

    m = _validate.check_int(m, "m", low=1)
    n = _validate.check_int(n, "n", low=1)
    r = _validate.check_int(r, "r", low=1)
    N = _validate.check_int(N, "N", low=1)
    steps = _validate.check_int(steps, "steps", low=1)
    _validate.check_choice(comm, "comm", STRATEGIES)
    _validate.check_choice(optimizer, "optimizer", ("psilora", "scaled"))
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = dist.get_world_size()
        gen = torch.Generator().manual_seed(seed)
        layer = LoRALinear(n, m, r, bias=False, generator=gen, dtype=dtype)
        with torch.no_grad():
            layer.lora_B.normal_(generator=gen)
        if optimizer == "psilora":
            opt = PSILoRA(layer, lr=0.1, iters=iters, momentum=momentum, seed=seed)
        else:
            from .scaled import ScaledPSILoRA

            opt = ScaledPSILoRA(layer, lr=0.1, iters=iters, betas=(momentum, 0.99), seed=seed)
        data_parallel(opt, comm=comm)
        rows = N // world if N % world == 0 else -(-N // world)
        X = torch.randn(rows, n, generator=gen, dtype=dtype)
        Y = torch.randn(rows, m, generator=gen, dtype=dtype)
        for _ in range(steps):
            comm_stats(opt, reset=True)
            opt.zero_grad()
            loss = ((layer(X) - Y) ** 2).mean()
            loss.backward()
            opt.step()
        stats = comm_stats(opt)
        opt.remove_hooks()
    finally:
        if own_group:
            dist.destroy_process_group()
    return {
        "m": m, "n": n, "r": r, "N": N, "comm": comm, "optimizer": optimizer, "iters": iters,
        "momentum": momentum,
        "bytes": stats["all_reduce"]["bytes"] + stats["all_gather"]["bytes"],
        "control_bytes": stats["control"]["bytes"],
        "by_collective": stats,
    }

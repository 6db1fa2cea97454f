"""Capture of the factored layer gradient ``G = Δᵀ X`` of a LoRA layer (SPEC §1, §6).

For every forward call of an adapted layer that builds a graph, a forward hook keeps the layer
input ``X`` as ``(N, in)`` rows and registers a hook on the output tensor that receives the output
gradient ``Δ`` as ``(N, out)`` rows.  Pairing each ``Δ`` with the ``X`` of *its own* forward call
(instead of a module backward hook, which fires in the reverse order) keeps the pairs right when
a layer is called several times per forward pass (weight sharing) or over several passes.

Gradient accumulation.  Calls made before ``step()`` are concatenated row-wise, so the captured
gradient is ``Σ_calls Δ_cᵀ X_c`` — exactly the sum that autograd accumulates in ``.grad``.  A
mean-reduced loss already carries ``1/N_pass`` in each ``Δ``; to average over ``k`` accumulation
passes divide each pass's loss by ``k``, as for any torch optimizer.  Backward passes through the
same graph (``retain_graph=True``) add their ``Δ`` into the same rows.

Compressed accumulation (``LoRAOptimizer.set_accumulation``; the authors'
``grad_compression_method``).  Instead of concatenating, the completed rows can be compressed to
``k`` rows whenever they exceed ``k`` (checked each time a call receives its gradient), so that
at most ``k`` rows are held between backward passes (``k +`` one pass's rows transiently).
With ``X`` (N × in), ``Δ`` (N × out) and ``G = ΔᵀX`` (:func:`compress_rows`):

- ``"concat"`` (default): no compression, the exact sum;
- ``"lorsum"``: ``(Δ'ᵀ, X'ᵀ) = LoRSum_K(G)`` at rank k, λ = 0, warm start the first k rows (the
  rows kept so far); deterministic, error ``≥`` the SVD tail ``‖G − Π_k G‖`` and, after K
  iterations, ``≤ tail + ‖Σ_k‖ (σ_{k+1}/σ_k)^{2K−1} tan θ_0`` (Theorem 3.1, SPEC §4);
- ``"sample"``: k rows drawn with replacement with ``p_i ∝ ‖x_i‖‖δ_i‖`` and weighted by
  ``1/√(k p_i)`` on both sides: ``E[Δ'ᵀX'] = G`` (the authors' ``sample_idx`` draws without
  replacement and does not reweight, which is biased);
- ``"sketch"``: ``X' = S X``, ``Δ' = S Δ`` with a Rademacher ``S`` (k × N) / √k, ``E[SᵀS] = I``;
- ``"centred_sketch"``: the centred rows sketched to k − 1 rows plus the mean row scaled by
  √N, from ``G = Δ_cᵀX_c + N μ_δ μ_xᵀ``: unbiased, and exact on the mean part.

When ``k ≥ min(in, out)`` every method stores ``G`` exactly in ``min(in, out)`` rows
(``X' = I, Δ' = XᵀΔ`` or ``Δ' = I, X' = ΔᵀX``): no loss and no more memory.  Compressed calls
are merged: a second backward through one of them (``retain_graph``) raises ``RuntimeError``.

Memory.  The rows are kept in the activations' dtype (a bf16 model's ``X`` and ``Δ`` stay bf16;
the optimizers cast one layer at a time to float32 for the solves) and ``X`` shares its storage
with the input that autograd saves for ``lora_A``'s gradient anyway.  Until its gradient arrives
a call's ``X`` is referenced *only* from the hook on its output, i.e. from the autograd graph:
forward calls that never receive a gradient (an evaluation loop with grad enabled) hold nothing
once their graph is freed, so they never accumulate.  ``step()`` consumes and frees all rows;
``zero_grad()`` frees the rows that already have their gradient (the captured gradient mirrors
``.grad``; a ``zero_grad()`` between forward and backward keeps that forward's ``X``).  Held
between backward and step: ``N (in + out)`` numbers per layer and call (:attr:`nbytes`).
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["ACCUMULATION", "GradientCapture", "compress_rows"]

#: Accumulation modes (see the module docstring): the exact concatenation, then the compressions.
ACCUMULATION = ("concat", "lorsum", "sample", "sketch", "centred_sketch")


def compress_rows(X, Delta, method, k, *, iters=2, generator=None):
    """``(X', Δ')`` with at most ``k`` rows and ``Δ'ᵀX' ≈ ΔᵀX`` (see the module docstring).

    ``X`` (N × in), ``Delta`` (N × out); computed in float32 at least, returned in the rows'
    dtype and device.  ``iters`` is K of ``"lorsum"``; ``generator`` (CPU) draws the random
    methods.  Rows that already fit (N ≤ k) are returned unchanged.
    """
    N, n = X.shape
    m = Delta.shape[1]
    if method == "concat" or N <= k:
        return X, Delta
    dtype, device = X.dtype, X.device
    work = torch.float32 if torch.finfo(dtype).bits < 32 else dtype
    X, D = X.to(work), Delta.to(work)
    if k >= min(n, m):  # G itself in min(in, out) rows: exact
        if n <= m:
            Xc, Dc = torch.eye(n, dtype=work, device=device), X.mT @ D
        else:
            Xc, Dc = D.mT @ X, torch.eye(m, dtype=work, device=device)
    elif method == "lorsum":
        from ..factored import LowRankSum
        from ..lorsum import lorsum

        target = LowRankSum([(1.0, D.mT, X.mT)], check_finite=False)
        U, V = lorsum(target, D[:k].mT, X[:k].mT, iters=iters, ridge=0.0, check_finite=False)
        Xc, Dc = V.mT, U.mT
    elif method == "sample":
        p = X.norm(dim=1) * D.norm(dim=1)
        total = p.sum()
        if not bool(total > 0):  # G = 0 (every row has x = 0 or δ = 0)
            return X[:k].to(dtype), Delta[:k]
        p = p / total
        idx = torch.multinomial(p.cpu(), k, replacement=True, generator=generator).to(device)
        w = (k * p[idx]).rsqrt().unsqueeze(1)
        Xc, Dc = w * X[idx], w * D[idx]
    else:
        centred = method == "centred_sketch"
        rows = k - 1 if centred else k
        S = torch.randint(0, 2, (rows, N), generator=generator).to(work) * 2 - 1
        S = S.to(device) / rows**0.5
        if centred:
            mx, md = X.mean(dim=0, keepdim=True), D.mean(dim=0, keepdim=True)
            Xc = torch.cat([S @ (X - mx), N**0.5 * mx])
            Dc = torch.cat([S @ (D - md), N**0.5 * md])
        else:
            Xc, Dc = S @ X, S @ D
    return Xc.to(dtype), Dc.to(Delta.dtype)


class _Call:
    """One forward call: its input rows ``x`` and, once back-propagated, its ``delta`` rows."""

    __slots__ = ("__weakref__", "delta", "merged", "x")

    def __init__(self, x):
        self.x = x
        self.delta = None
        self.merged = False


class GradientCapture:
    """Hooks on one adapted module that record ``(X, Δ)`` row blocks (see the module docstring).

    Parameters
    ----------
    module : nn.Module
        The adapted layer; its first positional input is ``x`` (``(..., in)``) and its output is
        ``(..., out)``.
    in_features, out_features : int
    owner : object
        The optimizer; hooks hold only a weak reference, so a discarded optimizer captures
        nothing (and :meth:`remove` detaches the hooks for good).

    Attributes
    ----------
    enabled : bool
        When False, forward calls are not captured (default True; the benchmark switches
        between optimizers sharing one model with it).
    on_ready : callable or None
        Called with no argument after a gradient arrived when no live forward call of this
        layer still waits for one (used by ``step_in_backward``).
    """

    def __init__(self, module, in_features, out_features, owner):
        self.in_features = in_features
        self.out_features = out_features
        self.on_ready = None
        self.enabled = True
        self.accumulation = "concat"  # set by LoRAOptimizer.set_accumulation
        self.accumulation_rank = None
        self.accumulation_iters = 2
        self.generator = None
        self._budget = None  # k of this accumulation window
        self._done = {}  # call id -> _Call with its Δ (strong: held until step / zero_grad)
        self._live = weakref.WeakValueDictionary()  # call id -> _Call whose graph is alive
        self._next_id = 0
        owner_ref = weakref.ref(owner)
        self_ref = weakref.ref(self)

        def hook(mod, args, output):
            cap = self_ref()
            if cap is None or owner_ref() is None:
                return
            cap._on_forward(self_ref, args, output)

        self._handle = module.register_forward_hook(hook)

    def _on_forward(self, self_ref, args, output):
        if not (self.enabled and torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
            return
        if not output.requires_grad or not args:
            return
        call_id = self._next_id
        self._next_id += 1
        call = _Call(args[0].detach().reshape(-1, self.in_features))
        self._live[call_id] = call

        def on_grad(grad):  # owns ``call`` (and its X): lives exactly as long as the graph
            cap = self_ref()
            if cap is not None:
                cap._on_grad(call_id, call, grad)

        output.register_hook(on_grad)

    def _on_grad(self, call_id, call, grad):
        if call.merged:
            raise RuntimeError(
                f"accumulation={self.accumulation!r}: a second backward pass reached a forward "
                "call whose rows were already compressed; use accumulation='concat' with "
                "retain_graph"
            )
        if call.x is None:  # freed by step() / zero_grad(): a graph from before them
            return
        d = grad.detach().reshape(-1, self.out_features)
        if call.delta is None:
            call.delta = d
            self._done[call_id] = call
            if self.accumulation != "concat":
                self._compress(call)
        else:
            call.delta = call.delta + d
        if self.on_ready is not None and not self.num_waiting:
            self.on_ready()

    def _compress(self, call):
        """Compress the completed rows to ``k`` rows if they exceed it (module docstring)."""
        if self._budget is None:
            self._budget = self.accumulation_rank or max(
                call.x.shape[0], 2 if self.accumulation == "centred_sketch" else 1
            )
        if self.num_rows <= self._budget:
            return
        X, D = self.rows()
        X, D = compress_rows(X, D, self.accumulation, self._budget,
                             iters=self.accumulation_iters, generator=self.generator)
        for c in self._done.values():
            c.x = c.delta = None
            c.merged = True
        merged = _Call(X)
        merged.delta = D
        self._done = {-1: merged}  # ids of real calls are ≥ 0

    @property
    def num_rows(self):
        """Rows with a gradient captured so far."""
        return sum(c.x.shape[0] for c in self._done.values())

    @property
    def num_waiting(self):
        """Live forward calls (graph not freed) that have not received their gradient yet."""
        return sum(1 for c in list(self._live.values()) if c.x is not None and c.delta is None)

    @property
    def nbytes(self):
        """Bytes of the rows held by the capture itself (calls with a gradient, X and Δ)."""
        return sum(c.x.nbytes + c.delta.nbytes for c in self._done.values())

    def rows(self):
        """``(X, Δ)`` concatenated over the calls that received a gradient, or ``None``."""
        pairs = [(c.x, c.delta) for c in self._done.values()]
        if not pairs:
            return None
        if len(pairs) == 1:
            return pairs[0]
        return torch.cat([x for x, _ in pairs]), torch.cat([d for _, d in pairs])

    def take(self):
        """:meth:`rows`, then free them (``clear(completed_only=True)``)."""
        rows = self.rows()
        self.clear(completed_only=True)
        return rows

    def clear(self, *, completed_only=False):
        """Free the rows; with ``completed_only`` keep calls still waiting for their gradient.

        ``zero_grad()`` uses ``completed_only`` so that the captured gradient mirrors ``.grad``
        (a ``zero_grad()`` between forward and backward keeps that forward's inputs).  A freed
        call ignores any later gradient.
        """
        calls = list(self._done.values())
        if not completed_only:
            calls += list(self._live.values())
        for c in calls:
            c.x = c.delta = None
        self._done = {}
        self._budget = None

    def remove(self):
        """Detach the hooks and drop the rows."""
        self._handle.remove()
        self.on_ready = None
        self.clear()

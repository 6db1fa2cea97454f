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

__all__ = ["GradientCapture"]


class _Call:
    """One forward call: its input rows ``x`` and, once back-propagated, its ``delta`` rows."""

    __slots__ = ("__weakref__", "delta", "x")

    def __init__(self, x):
        self.x = x
        self.delta = None


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
        if call.x is None:  # freed by step() / zero_grad(): a graph from before them
            return
        d = grad.detach().reshape(-1, self.out_features)
        if call.delta is None:
            call.delta = d
            self._done[call_id] = call
        else:
            call.delta = call.delta + d
        if self.on_ready is not None and not self.num_waiting:
            self.on_ready()

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

    def remove(self):
        """Detach the hooks and drop the rows."""
        self._handle.remove()
        self.on_ready = None
        self.clear()

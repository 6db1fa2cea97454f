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
same graph (``retain_graph=True``) add their ``Δ`` into the same rows.  Forward calls whose output
never received a gradient (evaluation with grad enabled) are ignored.  ``step()`` consumes and
drops all rows; ``zero_grad()`` drops the rows that already have their gradient (the captured
gradient mirrors ``.grad``).  Memory is ``O(N (in + out))`` per layer per call.
"""

from __future__ import annotations

import weakref
from functools import partial

import torch

__all__ = ["GradientCapture"]


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
    """

    def __init__(self, module, in_features, out_features, owner):
        self.in_features = in_features
        self.out_features = out_features
        self._calls = {}  # call id -> [X rows, Δ rows or None]; ids are never reused
        self._next_id = 0
        owner_ref = weakref.ref(owner)
        self_ref = weakref.ref(self)

        def hook(mod, args, output):
            cap = self_ref()
            if cap is None or owner_ref() is None:
                return
            cap._on_forward(args, output)

        self._handle = module.register_forward_hook(hook)

    def _on_forward(self, args, output):
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
            return
        if not output.requires_grad or not args:
            return
        call = self._next_id
        self._next_id += 1
        self._calls[call] = [args[0].detach().reshape(-1, self.in_features), None]
        output.register_hook(partial(self._on_grad, call))

    def _on_grad(self, call, grad):
        entry = self._calls.get(call)
        if entry is None:  # dropped by clear(): a graph from before the last step()
            return
        d = grad.detach().reshape(-1, self.out_features)
        entry[1] = d if entry[1] is None else entry[1] + d

    @property
    def num_rows(self):
        """Rows with a gradient captured so far."""
        return sum(x.shape[0] for x, d in self._calls.values() if d is not None)

    def rows(self):
        """``(X, Δ)`` concatenated over the calls that received a gradient, or ``None``."""
        pairs = [(x, d) for x, d in self._calls.values() if d is not None]
        if not pairs:
            return None
        if len(pairs) == 1:
            return pairs[0]
        return torch.cat([x for x, _ in pairs]), torch.cat([d for _, d in pairs])

    def clear(self, *, completed_only=False):
        """Drop the rows; with ``completed_only`` keep calls still waiting for their gradient.

        ``zero_grad()`` uses ``completed_only`` so that the captured gradient mirrors ``.grad``
        (a ``zero_grad()`` between forward and backward keeps that forward's inputs).
        """
        if completed_only:
            self._calls = {k: v for k, v in self._calls.items() if v[1] is None}
        else:
            self._calls = {}

    def remove(self):
        """Detach the hooks and drop the rows."""
        self._handle.remove()
        self.clear()

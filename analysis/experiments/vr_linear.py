"""Variance-reduced PSI-LoRA (STORM, MARS) on the mini-batch linear task (issue 18).

``python -m analysis.experiments.vr_linear [--epochs 100] [--seeds 0 1 2] [--out FILE.json]``
prints, per method, the final excess loss (mean [min–max] over seeds) of the paper's mini-batch
setting (batch 64, μ = 0.75, λ0 = 1e-3) and writes the numbers as JSON.  VR with μ = 0.75 moves
by ``η d_t`` with ``d_t ≈ g`` (an average, not heavy-ball's ``g/(1−μ)``), so it is run at the
heavy-ball lr 0.1 and at ``0.1/(1 − μ) = 0.4`` (the same effective step).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lowrank_prox.optim import PSILoRA, PSILoRAVR

from .linear import LinearTaskConfig, run_linear

MU = 0.75


def methods():
    """``{label: make_optimizer}`` of the comparison."""
    out = {}
    for K in (1, 2):
        out[f"PSI-LoRA x{K} (heavy ball), lr 0.1"] = (
            lambda m, K=K: PSILoRA(m, 0.1, iters=K, ridge=1e-3, momentum=MU))
        for variant in ("storm", "mars"):
            for lr in (0.1, 0.4):
                out[f"{variant.upper()} x{K}, lr {lr}"] = (
                    lambda m, K=K, v=variant, lr=lr: PSILoRAVR(
                        m, lr, variant=v, iters=K, ridge=1e-3, momentum=MU))
    out["MARS x2, lr 0.4, clip 1"] = lambda m: PSILoRAVR(
        m, 0.4, variant="mars", iters=2, ridge=1e-3, momentum=MU, mars_clip=1.0)
    out["STORM x2, lr 0.4, as published"] = lambda m: PSILoRAVR(
        m, 0.4, variant="storm", iters=2, ridge=1e-3, momentum=MU, balance="none",
        gram_jitter=1e-6)
    return out


def vr_table(epochs=100, seeds=(0, 1, 2)):
    """``{label: {"final": [per seed], "mean", "min", "max"}}`` of the final excess loss."""
    config = LinearTaskConfig(batch_size=64, epochs=epochs)
    table = {}
    for label, make in methods().items():
        final = [float(run_linear(config, make, s).excess[-1]) for s in seeds]
        table[label] = {"final": final, "mean": float(np.mean(final)),
                        "min": float(np.min(final)), "max": float(np.max(final))}
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="JSON file for the table")
    args = parser.parse_args(argv)
    table = vr_table(args.epochs, tuple(args.seeds))
    for label, row in table.items():
        print(f"{label:40s} {row['mean']:.4g} [{row['min']:.3g}-{row['max']:.3g}]")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"epochs": args.epochs, "seeds": args.seeds, "table": table}, f, indent=1)
    return table


if __name__ == "__main__":
    main()

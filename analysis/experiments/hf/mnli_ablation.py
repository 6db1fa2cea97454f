"""Scaled PSI-LoRA ablations on MNLI (paper Fig 3, reference/paper.md §9.6).

Shared base: RoBERTa-base on MNLI, 3 epochs, batch 32, linear decay, clip 1.0, r = α = 8,
K = 0, λ0 = 1e-2, β = (0.9, 0.99), non-LoRA Adam lr 1e-4, seed 0.  Two grids:

* ``--grid metric``: lr ∈ {0.1, 1, 10} × metric ∈ {K-FAC, Shampoo} × power ∈ {0.25, 0.5} ×
  damping ∈ {1e-3, 1e-1, 10};
* ``--grid damping``: lr ∈ {0.01, 0.1, 1, 10} × K-FAC, power 0.5 × damping ∈ {1e-8, 1e-5,
  1e-3, 1e-1}.

Every configuration is one :func:`analysis.experiments.hf.glue.run` with its own JSON-lines log
``OUT/mnli_<metric>_p<power>_d<damping>_lr<lr>.jsonl`` (``--dry-run`` lists them).  All
:mod:`~analysis.experiments.hf.glue` options are accepted (``--model``, ``--data-dir``,
``--max-steps``, ...); ``--lrs``, ``--metrics``, ``--powers``, ``--dampings`` override a grid.
"""

from __future__ import annotations

import itertools
import os
import sys

from . import glue

__all__ = ["GRIDS", "configurations", "main"]

GRIDS = {
    "metric": {"lrs": (0.1, 1.0, 10.0), "metrics": ("kfac", "shampoo"), "powers": (0.25, 0.5),
               "dampings": (1e-3, 1e-1, 10.0)},
    "damping": {"lrs": (0.01, 0.1, 1.0, 10.0), "metrics": ("kfac",), "powers": (0.5,),
                "dampings": (1e-8, 1e-5, 1e-3, 1e-1)},
}


def configurations(grid, *, lrs=None, metrics=None, powers=None, dampings=None):
    """``[(lr, metric, power, damping)]`` of a grid (paper.md §9.6), overrides applied."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}; got {grid!r}")
    g = GRIDS[grid]
    return list(itertools.product(lrs or g["lrs"], metrics or g["metrics"],
                                  powers or g["powers"], dampings or g["dampings"]))


def parser():
    p = glue.parser()
    p.description = __doc__.splitlines()[0]
    p.add_argument("--grid", default="damping", choices=sorted(GRIDS))
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--metrics", nargs="+", default=None, choices=("kfac", "shampoo"))
    p.add_argument("--powers", type=float, nargs="+", default=None)
    p.add_argument("--dampings", type=float, nargs="+", default=None)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(task="mnli", method="scaled-psilora", iters=0)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.method != "scaled-psilora":
        raise SystemExit("the MNLI ablation is a Scaled PSI-LoRA study: --method scaled-psilora")
    runs = configurations(args.grid, lrs=args.lrs, metrics=args.metrics, powers=args.powers,
                          dampings=args.dampings)
    paths = []
    for lr, metric, power, damping in runs:
        name = f"{args.task}_{metric}_p{power:g}_d{damping:g}_lr{lr:g}.jsonl"
        path = os.path.join(args.out, name)
        paths.append(path)
        if args.dry_run:
            continue
        run_args = parser().parse_args(argv)
        run_args.lr, run_args.log = lr, path
        glue.run(run_args, optimizer_kwargs={"metric": metric, "power": power,
                                             "damping": damping})
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

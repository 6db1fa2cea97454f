"""Figures 1 and 5 of the paper: the synthetic linear task (SPEC §9, reference/paper.md §9.1–9.2).

- ``fig1_linear_fullbatch``: full batch, no momentum, lr 0.5 (LoRA SGD 0.01, RPLoRA SGD 0.48).
- ``fig1_linear_minibatch``: batch 64, momentum 0.75, lr 0.1 (the paper's per-method lrs).
- ``fig5_momentum_rank``: the mini-batch task, SVDLoRA vs PSI-LoRA ×{1, 8} (×2 in the JSON)
  with momentum rank r_M ∈ {r, 2r, 4r}.

Each curve is the mean over seeds 0–4 of the excess loss ``‖W − W*ᵀ‖² − Σ_{i>r}σ_i²`` after
each epoch (epoch 0 = initialisation), with the min–max band over seeds.  Runs shared by two
figures (same settings, same seed) are computed once per process; the (method, seed) runs are
spread over ``min(2, cpu_count)`` worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import re

import numpy as np

from analysis.experiments.linear import LinearTaskConfig, config_dict, paper_methods, run_linear
from analysis.registry import FigureResult, figure, progress

SEEDS = (0, 1, 2, 3, 4)
FAST_SEEDS = (0, 1)
_CACHE: dict = {}


def _config(setting, fast):
    batch = None if setting == "fullbatch" else 64
    if fast:
        return LinearTaskConfig(d_in=40, d_out=120, rank=4, epochs=12,
                                batch_size=None if batch is None else 16)
    return LinearTaskConfig(batch_size=batch)


def metric_key(label):
    """``final_excess_<label>`` with the label reduced to ``[A-Za-z0-9_]``."""
    return "final_excess_" + re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def _job(args):
    setting, momentum_ranks, label, config, seed = args
    import torch

    torch.set_num_threads(1)
    method = {m.label: m for m in paper_methods(setting, momentum_ranks=momentum_ranks)}[label]
    run = run_linear(config, method.make_optimizer, seed, make_model=method.make_model)
    return run.excess, run.seconds


def run_setting(setting, config, seeds, *, momentum_ranks=(1,), workers=None):
    """``{label: (excess (seeds × epochs+1), mean seconds, settings)}`` for the paper's methods
    of ``setting`` (cached per process)."""
    methods = paper_methods(setting, momentum_ranks=momentum_ranks)
    jobs, keys = [], []
    for m in methods:
        for s in seeds:
            key = (config, tuple(sorted(m.settings.items())), s)
            keys.append(key)
            if key not in _CACHE:
                jobs.append(((setting, momentum_ranks, m.label, config, s), key))
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if jobs:
        args = [a for a, _ in jobs]
        if workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                outs = list(progress(pool.imap(_job, args), desc=setting, total=len(args)))
        else:
            outs = [_job(a) for a in progress(args, desc=setting)]
        for (_, key), out in zip(jobs, outs, strict=True):
            _CACHE[key] = out
    results = {}
    for i, m in enumerate(methods):
        runs = [_CACHE[k] for k in keys[i * len(seeds) : (i + 1) * len(seeds)]]
        results[m.label] = (
            np.stack([r[0] for r in runs]),
            float(np.mean([r[1] for r in runs])),
            m.settings,
        )
    return results


def _style(label):
    colors = {"SVDLoRA": "k", "LoRA": "tab:blue", "RPLoRA": "tab:orange",
              "PSI-LoRA": "tab:green", "Proj. PSI-LoRA": "tab:purple"}
    family = next(f for f in ("Proj. PSI-LoRA", "PSI-LoRA", "RPLoRA", "SVDLoRA", "LoRA")
                  if label.startswith(f))
    color = colors[family]
    style = "--" if "AdamW" in label else "-"
    match = re.search(r"x(\d+)", label)
    if match and family in ("PSI-LoRA", "Proj. PSI-LoRA"):
        K = int(match.group(1))
        shades = {1: 0.45, 2: 0.6, 8: 0.75, 32: 0.88, 128: 1.0}
        alpha = shades.get(K, 1.0)
        cmap = {"PSI-LoRA": "Greens", "Proj. PSI-LoRA": "Purples"}[family]
        import matplotlib

        color = matplotlib.colormaps[cmap](alpha)
    if "rM=" in label:
        style = {"rM=r": "-", "rM=2r": "--", "rM=4r": ":"}[label.split()[-1]]
    return color, style


def _plot(results, title, labels=None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, (ex, _, _) in results.items():
        if labels is not None and label not in labels:
            continue
        ex = np.maximum(ex, 1e-12)  # log axis; values are ≥ 0 up to float64 rounding
        epochs = np.arange(ex.shape[1])
        color, style = _style(label)
        ax.plot(epochs, ex.mean(0), style, color=color, label=label, lw=1.4)
        ax.fill_between(epochs, ex.min(0), ex.max(0), color=color, alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"excess loss $\|W - W_*^T\|^2 - \sum_{i>r}\sigma_i^2$")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _series_and_metrics(results):
    series, metrics = {}, {}
    for label, (ex, seconds, settings) in results.items():
        series[label] = {
            "mean": ex.mean(0),
            "min": ex.min(0),
            "max": ex.max(0),
            "final_per_seed": ex[:, -1],
            "seconds_per_run": seconds,
            "settings": settings,
        }
        metrics[metric_key(label)] = float(ex[:, -1].mean())
    return series, metrics


def _fmt(x):
    return f"{x:.3g}"


def _rises(results):
    """A sentence on every curve whose final mean is > 3× its minimum (late instability)."""
    out = []
    for label, (ex, _, _) in results.items():
        mean = ex.mean(0)
        e = int(np.argmin(mean))
        if mean[-1] > 3 * mean[e]:
            out.append(f"{label} reaches {_fmt(mean[e])} at epoch {e} then rises to "
                       f"{_fmt(mean[-1])}")
    if not out:
        return ""
    why = ""
    if any(item.startswith("PSI-LoRA x1") for item in out):
        why = (" (diagnosed for PSI-LoRA x1: the momentum factors lose balance, ‖M_U‖ ≫ ‖M_V‖, "
               "so the fixed ridge λ = lr·λ0 dominates the momentum U-step; with ridge 0 the "
               "same run keeps decreasing)")
    return " Late rise: " + "; ".join(out) + why + "."


@figure("fig1_linear_fullbatch",
        "Linear task, full batch, no momentum: excess loss vs epoch (paper Fig 1a, SPEC §9)")
def fig1_linear_fullbatch(*, fast=False):
    config = _config("fullbatch", fast)
    seeds = FAST_SEEDS if fast else SEEDS
    results = run_setting("fullbatch", config, seeds)
    series, metrics = _series_and_metrics(results)
    svd = results["SVDLoRA"][0]
    metrics["svdlora_excess_after_one_step"] = float(svd[:, 1].mean())
    metrics["initial_excess"] = float(svd[:, 0].mean())
    Ks = [1, 2, 8, 32, 128]
    finals = [metrics[metric_key(f"PSI-LoRA x{K}")] for K in Ks]
    # below ~1e-10 of the initial excess the values are the float32 rounding floor of the
    # factors, where the order between K's is noise
    floor = 1e-10 * metrics["initial_excess"]
    monotone = all(a >= b or b <= floor for a, b in zip(finals, finals[1:], strict=False))
    notes = (
        f"SVDLoRA (lr 0.5) excess after one step {_fmt(metrics['svdlora_excess_after_one_step'])} "
        f"(initial {_fmt(metrics['initial_excess'])}): the full step lands on W*ᵀ and the "
        "projection on the optimum. PSI-LoRA final excess by K="
        + ", ".join(f"{K}: {_fmt(v)}" for K, v in zip(Ks, finals, strict=True))
        + f" ({'non-increasing' if monotone else 'NOT monotone'} in K down to the float32 "
        f"floor of the factors, below {_fmt(floor)}). Baselines at the last epoch: "
        + ", ".join(f"{lab} {_fmt(metrics[metric_key(lab)])}"
                    for lab in ("LoRA SGD", "LoRA AdamW", "RPLoRA SGD", "RPLoRA AdamW"))
        + "."
    )
    fig = _plot(results, "Linear task (full batch)")
    settings = {"config": config_dict(config), "seeds": list(seeds), "ridge_lambda0": 1e-3,
                "band": "min-max over seeds", "fast": fast}
    return FigureResult(fig, settings, series, metrics, notes)


@figure("fig1_linear_minibatch",
        "Linear task, batch 64, momentum 0.75: excess loss vs epoch (paper Fig 1b, SPEC §9)")
def fig1_linear_minibatch(*, fast=False):
    config = _config("minibatch", fast)
    seeds = FAST_SEEDS if fast else SEEDS
    results = run_setting("minibatch", config, seeds)
    series, metrics = _series_and_metrics(results)
    order = sorted(results, key=lambda lab: metrics[metric_key(lab)])
    notes = (
        f"Final mean excess (epoch {config.epochs}), best first: "
        + ", ".join(f"{lab} {_fmt(metrics[metric_key(lab)])}" for lab in order)
        + ". Mini-batch noise sets a floor for every method; LoRA SGD/AdamW and RPLoRA use the "
        "paper's per-method learning rates." + _rises(results)
    )
    fig = _plot(results, "Linear task (mini-batch, momentum 0.75)")
    settings = {"config": config_dict(config), "seeds": list(seeds), "momentum": 0.75,
                "ridge_lambda0": 1e-3, "band": "min-max over seeds", "fast": fast}
    return FigureResult(fig, settings, series, metrics, notes)


@figure("fig5_momentum_rank",
        "Momentum rank r, 2r, 4r for PSI-LoRA vs SVDLoRA, mini-batch linear task (paper Fig 5)")
def fig5_momentum_rank(*, fast=False):
    config = _config("minibatch", fast)
    seeds = FAST_SEEDS if fast else SEEDS
    results = run_setting("momentum_rank", config, seeds, momentum_ranks=(1, 2, 4))
    series, metrics = _series_and_metrics(results)
    svd = metrics[metric_key("SVDLoRA")]
    lines = []
    for K in (1, 2, 8):
        vals = [metrics[metric_key(f"PSI-LoRA x{K} rM={p}r")] for p in ("", "2", "4")]
        lines.append(f"x{K}: r {_fmt(vals[0])}, 2r {_fmt(vals[1])}, 4r {_fmt(vals[2])}")
        metrics[f"gap_to_svdlora_x{K}_rM_r"] = vals[0] - svd
        metrics[f"gap_to_svdlora_x{K}_rM_4r"] = vals[2] - svd
    notes = (
        f"Final mean excess: SVDLoRA {_fmt(svd)}; PSI-LoRA " + "; ".join(lines)
        + ". The figure shows x1 and x8 (x2 only in the JSON)." + _rises(results)
    )
    shown = [lab for lab in results if "x2 " not in lab]
    fig = _plot(results, "Linear task (mini-batch): momentum rank", labels=shown)
    settings = {"config": config_dict(config), "seeds": list(seeds), "momentum": 0.75,
                "momentum_ranks": ["r", "2r", "4r"], "ridge_lambda0": 1e-3,
                "band": "min-max over seeds", "fast": fast}
    return FigureResult(fig, settings, series, metrics, notes)

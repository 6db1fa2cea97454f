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

from analysis.experiments.linear import (
    DIAGNOSTIC,
    VARIANTS,
    LinearTaskConfig,
    config_dict,
    paper_methods,
    run_linear,
)
from analysis.registry import FigureResult, figure, progress
from analysis.style import BAND_MINMAX, integer_ticks

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
    setting, momentum_ranks, diagnostics, label, config, seed = args
    import torch

    torch.set_num_threads(1)
    methods = paper_methods(setting, momentum_ranks=momentum_ranks, diagnostics=diagnostics)
    method = {m.label: m for m in methods}[label]
    run = run_linear(config, method.make_optimizer, seed, make_model=method.make_model)
    return run.excess, run.seconds, run.imbalance


def run_setting(setting, config, seeds, *, momentum_ranks=(1,), diagnostics=False,
                workers=None):
    """``{label: (excess (seeds × epochs+1), mean seconds, settings, imbalance)}`` for the
    paper's methods of ``setting`` (cached per process); ``imbalance`` is the
    (seeds × epochs+1) array of the momentum's ‖M_U‖/‖M_V‖, or None."""
    methods = paper_methods(setting, momentum_ranks=momentum_ranks, diagnostics=diagnostics)
    jobs, keys = [], []
    for m in methods:
        for s in seeds:
            key = (config, tuple(sorted(m.settings.items())), s)
            keys.append(key)
            if key not in _CACHE:
                jobs.append(((setting, momentum_ranks, diagnostics, m.label, config, s), key))
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
            None if runs[0][2] is None else np.stack([r[2] for r in runs]),
        )
    return results


#: Epochs at which the mini-batch figures report the mean excess (those ≤ the run's epochs).
CHECKPOINTS = (10, 25, 50, 100)


#: The y label of every linear-task figure (the excess over the Eckart–Young floor).
EXCESS_LABEL = ("excess loss over the best rank-r fit\n"
                r"$\|W - W_*^T\|^2 - \sum_{i>r}\sigma_i^2$ (log scale)")


def _draw_excess(ax, series, labels, style=None, name=str):
    """Mean excess per epoch (line) and its min–max band over seeds, one curve per label."""
    from analysis.style import method_style

    for label in labels:
        s = series[label]
        mean, lo, hi = (np.maximum(np.asarray(s[k], dtype=float), 1e-12)
                        for k in ("mean", "min", "max"))  # log axis: ≥ 0 up to rounding
        epochs = np.arange(len(mean))
        st = style(label) if style is not None else method_style(label)
        ax.plot(epochs, mean, st["ls"], color=st["color"], label=name(label), lw=1.4)
        ax.fill_between(epochs, lo, hi, color=st["color"], alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(EXCESS_LABEL)
    integer_ticks(ax.xaxis)


def _band_text(data):
    return BAND_MINMAX + f" ({len(data['settings']['seeds'])} seeds)"


def _drawer(title):
    """The drawing of fig1: every method of the JSON, one panel."""

    def draw(data):
        import matplotlib.pyplot as plt

        from analysis.style import add_band_note, method_order, use

        use()
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        _draw_excess(ax, data["series"], method_order(data["series"]))
        ax.set_title(title)
        ax.legend(fontsize=6, ncol=2)
        add_band_note(ax, _band_text(data))
        fig.tight_layout()
        return fig

    return draw


def _draw_momentum_rank(data):
    """fig5: one panel per variant (as published, balanced); colour = K, line style = r_M."""
    import matplotlib.pyplot as plt

    from analysis.style import add_band_note, method_style, use

    use()
    series = data["series"]
    dashes = {"rM=r": "-", "rM=2r": "--", "rM=4r": "-."}

    def style(label):
        if label == "SVDLoRA":
            return method_style(label)
        rm = next(k for k in dashes if f" {k}," in label)
        return {"color": method_style(label.split(" rM")[0])["color"], "ls": dashes[rm]}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True, layout="constrained")
    for ax, (tag, title) in zip(axes, ((PUB, "(a) PSI-LoRA as published (no balancing)"),
                                       (BAL, "(b) PSI-LoRA balanced (this project's default)")),
                                strict=True):
        shown = sorted((lab for lab in series
                        if lab == "SVDLoRA" or (lab.endswith(tag) and "x2 " not in lab)),
                       key=lambda lab: (0, 0, 0) if lab == "SVDLoRA" else (
                           1, int(re.search(r"x(\d+)", lab).group(1)),
                           [f" {k}," in lab for k in dashes].index(True)))
        _draw_excess(ax, series, shown, style,
                     name=lambda lab: lab.split(",")[0].replace("rM=", "rM = "))
        ax.set_title(title)
        ax.legend(fontsize=6.5, ncol=2, title="momentum rank rM: solid r, dashed 2r, "
                  "dash-dot 4r", title_fontsize=6.5, loc="upper right")
        add_band_note(ax, _band_text(data))
    axes[1].set_ylabel("")
    fig.suptitle("Linear task (mini-batch, momentum 0.75): rank rM of the momentum, "
                 "PSI-LoRA x1 and x8 vs SVDLoRA")
    return fig


def _slug(label):
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def rise_factor(mean):
    """``max_{t ≥ t_min} mean[t] / mean[t_min]`` with ``t_min = argmin mean``: how far a curve
    rises after its minimum (1 for a curve that never rises)."""
    mean = np.asarray(mean, dtype=float)
    e = int(np.argmin(mean))
    return float(mean[e:].max() / mean[e])


def auc_log_excess(mean):
    """Area under the log10 mean-excess curve per epoch: ``mean_{t=1..E} log10 mean[t]``."""
    return float(np.mean(np.log10(np.maximum(np.asarray(mean, dtype=float)[1:], 1e-12))))


def _series_and_metrics(results):
    series, metrics = {}, {}
    for label, (ex, seconds, settings, imb) in results.items():
        mean = ex.mean(0)
        series[label] = {
            "mean": mean,
            "min": ex.min(0),
            "max": ex.max(0),
            "final_per_seed": ex[:, -1],
            "seconds_per_run": seconds,
            "settings": settings,
        }
        key = _slug(label)
        metrics[metric_key(label)] = float(ex[:, -1].mean())
        for e in CHECKPOINTS:
            if e < ex.shape[1]:
                metrics[f"excess_e{e}_{key}"] = float(mean[e])
        metrics[f"auc_log_excess_{key}"] = auc_log_excess(mean)
        metrics[f"rise_factor_{key}"] = rise_factor(mean)
        if imb is not None:
            logs = np.log10(imb[:, 1:])  # epoch 0 has M_U = 0
            series[label]["momentum_imbalance"] = {
                "what": "||M_U||_F / ||M_V||_F after each epoch 1..E, geometric mean over "
                        "seeds (min, max over seeds)",
                "geomean": 10 ** logs.mean(0),
                "min": 10 ** logs.min(0),
                "max": 10 ** logs.max(0),
            }
            metrics[f"momentum_imbalance_final_{key}"] = float(10 ** logs[:, -1].mean())
    return series, metrics


def _fmt(x):
    return f"{x:.3g}"


def _rises(results):
    """A sentence on every curve whose final mean is > 2× its minimum (late instability)."""
    out = []
    for label, (ex, *_) in results.items():
        mean = ex.mean(0)
        e = int(np.argmin(mean))
        if rise_factor(mean) > 2:
            out.append(f"{label} reaches {_fmt(mean[e])} at epoch {e} then rises to "
                       f"{_fmt(mean[e:].max())}")
    return (" Late rise (> 2x its minimum): " + "; ".join(out) + ".") if out else (
        " No curve rises by more than 2x from its minimum.")


def _checkpoints(metrics, label, epochs):
    key = _slug(label)
    return "/".join(_fmt(metrics[f"excess_e{e}_{key}"]) for e in CHECKPOINTS if e <= epochs)


@figure("fig1_linear_fullbatch",
        "Linear task, full batch, no momentum: excess loss vs epoch (paper Fig 1a, SPEC §9)",
        draw=_drawer("Linear task (full batch, no momentum)"))
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
    settings = {"config": config_dict(config), "seeds": list(seeds), "ridge_lambda0": 1e-3,
                "band": BAND_MINMAX, "fast": fast}
    return FigureResult(None, settings, series, metrics, notes)


PUB, BAL = "as published (unbalanced)", "balanced"


def _diagnostic(results, metrics):
    """Pop the no-jitter run from ``results``; its numbers go to ``metrics`` and a sentence."""
    label = f"PSI-LoRA x1, {DIAGNOSTIC[0]}"
    ex, _, _, imb = results.pop(label)
    mean = ex.mean(0)
    e = int(np.argmin(mean))
    key = "diagnostic_x1_unbalanced_no_jitter"
    metrics[f"{key}_final_excess"] = float(mean[-1])
    metrics[f"{key}_min_excess"] = float(mean[e])
    metrics[f"{key}_argmin_epoch"] = e
    metrics[f"{key}_rise_factor"] = rise_factor(mean)
    metrics[f"{key}_momentum_imbalance_final"] = float(10 ** np.log10(imb[:, -1]).mean())
    return (f" Diagnosis (not plotted): the published algorithm without the authors' 1e-6 Gram "
            f"jitter (PSI-LoRA x1, balance='none', gram_jitter=0) reaches {_fmt(mean[e])} at "
            f"epoch {e} and ends at {_fmt(mean[-1])} with ||M_U||/||M_V|| = "
            f"{_fmt(metrics[f'{key}_momentum_imbalance_final'])}: the ridge lr*lambda0 is not "
            "gauge invariant and dominates the momentum U-step of the unbalanced pair; the "
            "jitter's lambda/(lambda + 1e-6) shrink per step is what keeps the published runs "
            "stable.")


@figure("fig1_linear_minibatch",
        "Linear task, batch 64, momentum 0.75: excess loss vs epoch (paper Fig 1b, SPEC §9)",
        draw=_drawer("Linear task (mini-batch 64, momentum 0.75)"))
def fig1_linear_minibatch(*, fast=False):
    config = _config("minibatch", fast)
    seeds = FAST_SEEDS if fast else SEEDS
    results = run_setting("minibatch", config, seeds, diagnostics=True)
    extra = {}
    diag = _diagnostic(results, extra)
    series, metrics = _series_and_metrics(results)
    metrics.update(extra)
    E = config.epochs
    svd = metrics[metric_key("SVDLoRA")]
    cps = "/".join(str(e) for e in CHECKPOINTS if e <= E)
    lines = []
    for K in (1, 2, 8):
        pub, bal = f"PSI-LoRA x{K}, {PUB}", f"PSI-LoRA x{K}, {BAL}"
        lines.append(f"x{K}: as published {_checkpoints(metrics, pub, E)} (AUC "
                     f"{metrics['auc_log_excess_' + _slug(pub)]:.2f}), balanced "
                     f"{_checkpoints(metrics, bal, E)} (AUC "
                     f"{metrics['auc_log_excess_' + _slug(bal)]:.2f})")
    bal1 = metrics[metric_key(f"PSI-LoRA x1, {BAL}")]
    e10 = [metrics.get(f"excess_e10_{_slug(f'PSI-LoRA x{K}, {BAL}')}") for K in (1, 2, 8)]
    faster = None if e10[0] is None else e10[0] > e10[1] > e10[2]
    order = sorted(series, key=lambda lab: metrics[metric_key(lab)])
    notes = (
        f"Mean over {len(seeds)} seeds of the excess at epochs {cps}, and the area under the "
        f"log10 mean-excess curve per epoch (AUC): SVDLoRA "
        f"{_checkpoints(metrics, 'SVDLoRA', E)} (AUC "
        f"{metrics['auc_log_excess_SVDLoRA']:.2f}); PSI-LoRA " + "; ".join(lines)
        + f". 'as published' is the authors' code (no balancing, 1e-6 added to every Gram); "
        "'balanced' is this project's default (the momentum pair balanced after each momentum "
        "LoRSum, no jitter). ||M_U||/||M_V|| at the last epoch: as published x1 "
        f"{_fmt(metrics['momentum_imbalance_final_' + _slug(f'PSI-LoRA x1, {PUB}')])}, "
        f"balanced x1 {_fmt(metrics['momentum_imbalance_final_' + _slug(f'PSI-LoRA x1, {BAL}')])}"
        f". Claim 'PSI-LoRA with momentum ends at or below SVDLoRA': balanced x1 "
        f"{_fmt(bal1)} vs SVDLoRA {_fmt(svd)}: {'holds' if bal1 < svd else 'does NOT hold'}. "
        "Claim 'more alternating iterations approach SVDLoRA faster' (epoch 10, balanced, "
        f"x1/x2/x8 {'/'.join(_fmt(v) for v in e10 if v is not None)}): "
        f"{'holds' if faster else 'does NOT hold' if faster is not None else 'n/a'}. "
        f"Final mean excess, best first: "
        + ", ".join(f"{lab} {_fmt(metrics[metric_key(lab)])}" for lab in order)
        + ". Mini-batch noise sets a floor for every method; LoRA SGD/AdamW and RPLoRA use the "
        "paper's per-method learning rates." + _rises(results) + diag
    )
    settings = {"config": config_dict(config), "seeds": list(seeds), "momentum": 0.75,
                "ridge_lambda0": 1e-3, "band": BAND_MINMAX, "fast": fast,
                "variants": VARIANTS, "diagnostic": {DIAGNOSTIC[0]: DIAGNOSTIC[1]},
                "checkpoints": [e for e in CHECKPOINTS if e <= E],
                "auc": "mean over epochs 1..E of log10(mean excess)"}
    return FigureResult(None, settings, series, metrics, notes)


@figure("fig5_momentum_rank",
        "Momentum rank r, 2r, 4r for PSI-LoRA vs SVDLoRA, mini-batch linear task (paper Fig 5)",
        draw=_draw_momentum_rank)
def fig5_momentum_rank(*, fast=False):
    config = _config("minibatch", fast)
    seeds = FAST_SEEDS if fast else SEEDS
    results = run_setting("momentum_rank", config, seeds, momentum_ranks=(1, 2, 4))
    series, metrics = _series_and_metrics(results)
    E = config.epochs
    early = 25 if E >= 25 else E // 2
    if f"excess_e{early}_SVDLoRA" not in metrics:
        for lab, (ex, *_) in results.items():
            metrics[f"excess_e{early}_{_slug(lab)}"] = float(ex.mean(0)[early])
    svd = metrics[metric_key("SVDLoRA")]
    lines, helps = [], []
    for name in (PUB, BAL):
        for K in (1, 2, 8):
            labs = [f"PSI-LoRA x{K} rM={p}r, {name}" for p in ("", "2", "4")]
            e_early = [metrics[f"excess_e{early}_{_slug(lab)}"] for lab in labs]
            finals = [metrics[metric_key(lab)] for lab in labs]
            helps.append(e_early[2] < e_early[0])
            tag = "pub" if name == PUB else "bal"
            metrics[f"gap_to_svdlora_x{K}_rM_r_{tag}"] = finals[0] - svd
            metrics[f"gap_to_svdlora_x{K}_rM_4r_{tag}"] = finals[2] - svd
            lines.append(f"{name} x{K}: epoch {early} r/2r/4r "
                         + "/".join(_fmt(v) for v in e_early) + ", final "
                         + "/".join(_fmt(v) for v in finals))
    metrics["claim_larger_momentum_rank_helps_early"] = bool(all(helps))
    notes = (
        f"Mean over {len(seeds)} seeds; SVDLoRA final {_fmt(svd)}. " + "; ".join(lines)
        + f". Claim 'a larger momentum rank helps' (epoch {early}, 4r below r for every K and "
        f"both variants): {'holds' if all(helps) else 'does NOT hold'} "
        f"({sum(helps)}/{len(helps)}); at the last epoch every run sits near the mini-batch "
        "noise floor, where the rank matters little. 'as published' = authors' code (no "
        "balancing, 1e-6 Gram jitter), 'balanced' = this project's default. The figure shows "
        "x1 and x8 (x2 only in the JSON)." + _rises(results)
    )
    settings = {"config": config_dict(config), "seeds": list(seeds), "momentum": 0.75,
                "momentum_ranks": ["r", "2r", "4r"], "ridge_lambda0": 1e-3,
                "band": BAND_MINMAX, "fast": fast, "variants": VARIANTS,
                "checkpoints": [e for e in CHECKPOINTS if e <= E]}
    return FigureResult(None, settings, series, metrics, notes)

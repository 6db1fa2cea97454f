"""The linear task (SPEC §9) at small size: the paper's qualitative claims, and the figure JSON."""

import numpy as np
import pytest
import torch

from analysis.experiments.linear import (
    LinearTaskConfig,
    build_model,
    excess_loss,
    make_data,
    paper_methods,
    run_linear,
    run_method,
)
from lowrank_prox.optim import PSILoRA, SVDLoRA

SMALL = {"d_in": 40, "d_out": 120, "rank": 4}


def test_excess_loss_is_zero_at_the_best_rank_r_fit_and_matches_definition():
    cfg = LinearTaskConfig(**SMALL, dtype="float64")
    data = make_data(cfg, 0)
    model = build_model(cfg, 0)
    W = (model.lora_B @ model.lora_A).detach()
    direct = float(((W - data.Y.T) ** 2).sum()) - data.f_opt
    assert excess_loss(model, data) == pytest.approx(direct, rel=1e-9)
    U, s, Vh = torch.linalg.svd(data.Y.T)
    with torch.no_grad():
        model.set_factors(U[:, :4] * s[:4].sqrt(), Vh[:4].T * s[:4].sqrt())
    assert abs(excess_loss(model, data)) < 1e-9 * data.f_opt
    # the initial adapter is the top-r SVD of a default nn.Linear and the base is zero
    assert float(model.weight.abs().max()) == 0.0
    assert int(torch.linalg.matrix_rank(W)) == 4


def test_svdlora_lr_half_full_batch_is_optimal_after_one_step():
    cfg = LinearTaskConfig(**SMALL, epochs=2)
    run = run_linear(cfg, lambda m: SVDLoRA(m, 0.5), seed=0)
    assert run.excess[0] > 100.0
    assert run.excess[1] < 1e-8 * run.excess[0]
    assert run.excess[2] < 1e-8 * run.excess[0]


def test_psilora_final_excess_decreases_with_K_towards_svdlora():
    cfg = LinearTaskConfig(**SMALL, epochs=15)
    finals = {}
    for K in (1, 2, 8, 32):
        run = run_linear(cfg, lambda m, K=K: PSILoRA(m, 0.5, iters=K, ridge=1e-3), seed=0)
        finals[K] = run.excess[-1]
    svd = run_linear(cfg, lambda m: SVDLoRA(m, 0.5), seed=0).excess[-1]
    assert finals[1] > finals[2] > finals[8]
    assert finals[8] < 1e-3 * finals[1]
    # K -> ∞ approaches SVDLoRA (the optimum): both at the float32 floor of the factors
    assert finals[32] < 1e-6 * finals[1] and svd < 1e-6 * finals[1]


def test_larger_momentum_rank_moves_psilora_towards_svdlora_minibatch():
    """Mini-batch task (batch 16, momentum 0.75, lr 0.1), 4 seeds, 12 epochs: the gap of the
    mean log-excess curve to SVDLoRA's shrinks from r_M = r to r_M = 4r, for K = 1 and 8."""
    cfg = LinearTaskConfig(**SMALL, epochs=12, batch_size=16)
    methods = {m.label: m for m in paper_methods("momentum_rank", momentum_ranks=(1, 4))}
    seeds = (0, 1, 2, 3)

    def curve(label):
        ex, _ = run_method(cfg, methods[label], seeds)
        return np.log(ex[:, 1:]).mean(0)

    svd = curve("SVDLoRA")
    for K in (1, 8):
        gap_r = np.abs(curve(f"PSI-LoRA x{K} rM=r") - svd).mean()
        gap_4r = np.abs(curve(f"PSI-LoRA x{K} rM=4r") - svd).mean()
        assert gap_4r < gap_r, (K, gap_r, gap_4r)


def test_fullbatch_figure_json_fast():
    import json

    import matplotlib

    matplotlib.use("Agg")
    from analysis.figures.linear import fig1_linear_fullbatch, metric_key
    from analysis.registry import to_jsonable

    result = fig1_linear_fullbatch(fast=True)
    sidecar = json.loads(json.dumps(to_jsonable(
        {"metrics": result.metrics, "series": result.series, "notes": result.notes})))
    metrics, series = sidecar["metrics"], sidecar["series"]
    labels = ["SVDLoRA", "LoRA SGD", "LoRA AdamW", "RPLoRA SGD", "RPLoRA AdamW"] + [
        f"PSI-LoRA x{K}" for K in (1, 2, 8, 32, 128)]
    assert sorted(series) == sorted(labels)
    for lab in labels:
        assert metric_key(lab) in metrics
        assert metrics[metric_key(lab)] == pytest.approx(np.mean(series[lab]["final_per_seed"]))
        assert len(series[lab]["mean"]) == result.settings["config"]["epochs"] + 1
    assert metrics["svdlora_excess_after_one_step"] < 1e-8 * metrics["initial_excess"]
    finals = [metrics[metric_key(f"PSI-LoRA x{K}")] for K in (1, 2, 8)]
    assert finals[0] > finals[1] > finals[2]
    assert "non-increasing" in sidecar["notes"]
    import matplotlib.pyplot as plt

    plt.close(result.fig)

"""The linear task with the authors' random inputs (``input_type="random"``, SPEC §9)."""

import pytest
import torch

from analysis.experiments.linear import (
    LinearTaskConfig,
    build_model,
    excess_loss,
    make_data,
    run_linear,
)
from lowrank_prox.optim import SVDLoRA

SMALL = {"d_in": 40, "d_out": 120, "rank": 4}


def test_random_inputs_are_orthogonal_and_keep_the_excess_loss():
    cfg = LinearTaskConfig(**SMALL, dtype="float64", input_type="random")
    data, eye = make_data(cfg, 0), make_data(LinearTaskConfig(**SMALL, dtype="float64"), 0)
    X = data.X
    torch.testing.assert_close(X.T @ X, torch.eye(40, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(X.abs().min()) > 0.0 and float((X.abs() > 0.05).float().mean()) > 0.5  # dense
    # the same W* (drawn first, as the authors), Y = X W*
    torch.testing.assert_close(data.Y, X @ eye.Y, rtol=1e-12, atol=1e-12)
    assert data.f_opt == eye.f_opt
    # full loss ‖X Wᵀ − Y‖² = ‖W − W*ᵀ‖², so the excess loss is the eye task's
    model = build_model(cfg, 0)
    with torch.no_grad():
        loss = float(((model(X) - data.Y) ** 2).sum())
    assert loss - data.f_opt == pytest.approx(excess_loss(model, data), rel=1e-10)
    assert excess_loss(model, data) == excess_loss(model, eye)


def test_random_inputs_full_batch_svdlora_is_optimal_after_one_step():
    """XᵀX = I: the full-batch gradient is still 2(W − W*ᵀ) and lr = 0.5 lands on W*ᵀ."""
    cfg = LinearTaskConfig(**SMALL, epochs=2, input_type="random")
    run = run_linear(cfg, lambda m: SVDLoRA(m, 0.5), seed=0)
    assert run.excess[0] > 100.0
    assert run.excess[1] < 1e-8 * run.excess[0]


def test_random_inputs_change_the_minibatch_path_only():
    base = {**SMALL, "epochs": 3, "batch_size": 8}
    eye = run_linear(LinearTaskConfig(**base), lambda m: SVDLoRA(m, 0.1), seed=0)
    rnd = run_linear(LinearTaskConfig(**base, input_type="random"),
                     lambda m: SVDLoRA(m, 0.1), seed=0)
    assert eye.excess[0] == rnd.excess[0] and eye.f_opt == rnd.f_opt
    assert abs(eye.excess[-1] - rnd.excess[-1]) > 1e-3 * eye.excess[-1]


def test_bad_input_type():
    with pytest.raises(ValueError, match="input_type"):
        LinearTaskConfig(**SMALL, input_type="gaussian")

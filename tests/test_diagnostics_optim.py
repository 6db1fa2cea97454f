"""Issue 20: per-layer diagnostics in every LoRSum optimizer (PSILoRA, ScaledPSILoRA,
ProjPSILoRA), measured in the metric for scaled LoRSum, checked against dense SVDs; the
``Trainer`` log entries of :func:`lowrank_prox.optim.trainer_callback`."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import lowrank_prox as lp

torch = pytest.importorskip("torch")

from lowrank_prox.nn import LoRALinear  # noqa: E402
from lowrank_prox.optim import (  # noqa: E402
    ProjPSILoRA,
    PSILoRA,
    ScaledPSILoRA,
    SubspaceDiagnostics,
    trainer_callback,
)


def _sqrtm(P):
    """Symmetric square root (a vector: a diagonal metric)."""
    if P.ndim == 1:
        return np.diag(np.sqrt(P))
    w, Q = np.linalg.eigh(P)
    return (Q * np.sqrt(w)) @ Q.T


def _dense_distance(Y, U, V, r, S_out=None, S_in=None):
    """‖S_out(UVᵀ − Π̃)S_in‖/‖Π̃‖ with Π̃ = Π_r(S_out Y S_in) by a dense SVD; and the gap."""
    S_out = np.eye(Y.shape[0]) if S_out is None else S_out
    S_in = np.eye(Y.shape[1]) if S_in is None else S_in
    u, s, vh = np.linalg.svd(S_out @ Y @ S_in)
    P = (u[:, :r] * s[:r]) @ vh[:r]
    return np.linalg.norm(S_out @ U @ V.T @ S_in - P) / np.linalg.norm(P), s[r] / s[r - 1]


def _spd(k, rng, cond=30.0):
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return (Q * np.geomspace(1.0, cond, k)) @ Q.T


@pytest.mark.parametrize("dense", [False, True])
def test_metric_diagnostics_match_dense_svd_and_bound(dense):
    """Scaled LoRSum measured in its metric: distance and gap of P_out^½ T P_in^½ (dense
    SVD), and Theorem 3.1's bound holds there (λ = 0), for diagonal and dense SPD metrics."""
    rng = np.random.default_rng(4)
    m, n, r = 40, 30, 3
    T = lp.LowRankSum([(1.0, rng.standard_normal((m, 8)) * np.geomspace(3, 0.3, 8),
                        rng.standard_normal((n, 8)))])
    if dense:
        P_in, P_out = _spd(n, rng), _spd(m, rng)
    else:
        P_in, P_out = np.exp(rng.uniform(-1.5, 1.5, n)), np.exp(rng.uniform(-1.5, 1.5, m))
    U0, V0 = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    dists = []
    for K in (1, 2, 4):
        U, V = lp.scaled_lorsum(T, U0, V0, metric_in=P_in, metric_out=P_out, iters=K)
        d = lp.subspace_diagnostics(T, U0, V0, U, V, iters=K, metric_in=P_in,
                                    metric_out=P_out)
        ref, gap = _dense_distance(T.to_dense(), U, V, r, _sqrtm(P_out), _sqrtm(P_in))
        assert d["distance"] == pytest.approx(ref, rel=1e-8)
        assert d["gap"] == pytest.approx(gap, rel=1e-10)
        assert d["theory_applies"] and d["holds"]
        assert d["distance"] <= d["distance_pred"]
        dists.append(d["distance"])
    assert dists[2] < dists[1] < dists[0]
    # converged scaled LoRSum reaches the metric's Π_r, not the plain one (a different yardstick)
    U, V = lp.scaled_lorsum(T, U0, V0, metric_in=P_in, metric_out=P_out, iters=200)
    kw = {"metric_in": P_in, "metric_out": P_out}
    assert lp.subspace_diagnostics(T, U0, V0, U, V, iters=200, **kw)["distance"] < 1e-8
    assert lp.subspace_diagnostics(T, U0, V0, U, V, iters=200)["distance"] > 1e-2
    with pytest.raises(ValueError, match="metric_in"):
        lp.subspace_diagnostics(T, U0, V0, U, V, iters=1, metric_in=-np.ones(n))


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = LoRALinear(12, 9, 2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.normal_()
        layer.lora_B.normal_()
    return layer


def _batches(k, n=10):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 12, generator=g, dtype=torch.float64),
             torch.randn(n, 9, generator=g, dtype=torch.float64)) for _ in range(k)]


def _train(layer, opt, batches):
    for X, Y in batches:
        ((layer(X) - Y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()


OPTIMIZERS = {
    "psilora": lambda model, diag: PSILoRA(model, 0.1, ridge=0.0, momentum=0.5, seed=0,
                                           diagnostics=diag),
    "scaled": lambda model, diag: ScaledPSILoRA(model, 0.05, seed=0, diagnostics=diag),
    "proj": lambda model, diag: ProjPSILoRA(model, 0.1, ridge=0.0, momentum=0.5,
                                            diagnostics=diag),
}
CALLS = {"psilora": {"step", "momentum"}, "scaled": {"step", "momentum"}, "proj": {"step"}}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_diagnostics_leave_training_bitwise_unchanged(name, monkeypatch):
    import lowrank_prox.optim._diagnostics as D

    calls = []
    measure = D.subspace_diagnostics
    monkeypatch.setattr(D, "subspace_diagnostics", lambda *a, **k: calls.append(1) or
                        measure(*a, **k))
    out = []
    for diag in (False, True):
        layer = _layer()
        opt = OPTIMIZERS[name](layer, diag)
        _train(layer, opt, _batches(3))
        if diag is False:
            assert calls == []  # off: nothing is measured

        out.append((layer.lora_A.detach().clone(), layer.lora_B.detach().clone(), opt))
    (A0, B0, off), (A1, B1, on) = out
    assert off.diagnostics is None and isinstance(on.diagnostics, SubspaceDiagnostics)
    assert torch.equal(A0, A1) and torch.equal(B0, B1)
    for key in off.state[off.layers[0].B]:
        a, b = off.state[off.layers[0].B][key], on.state[on.layers[0].B][key]
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b
    t = on.diagnostics.table()
    assert set(t["call"]) == CALLS[name]
    assert len(t["step"]) == 3 * len(CALLS[name])
    assert sorted(t["step"][t["call"] == "step"]) == [1.0, 2.0, 3.0]
    assert np.isfinite(t["distance"]).all() and (t["distance"] >= 0).all()


def _dense_grad(layer, X, Y):
    """G = ∂L/∂W for L = mean((layer(X) − Y)²), W = W0 + BA (dense, NumPy)."""
    with torch.no_grad():
        R = (layer(X) - Y).numpy()
    return 2.0 * R.T @ X.numpy() / R.size


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_recorded_first_step_matches_dense_svd(name):
    """Step 1's rows against the dense target: T = UVᵀ − ηc·P_out⁻¹GP_in⁻¹ (P = I except for
    Scaled PSI-LoRA, whose step is measured in its metric) and the momentum target c'·G
    (M_U = 0 before the first step)."""
    layer = _layer()
    opt = OPTIMIZERS[name](layer, True)
    (X, Y), = _batches(1)
    G = _dense_grad(layer, X, Y)
    U0, V0 = layer.lora_B.detach().numpy().copy(), layer.lora_A.detach().numpy().T.copy()
    _train(layer, opt, [(X, Y)])
    t = opt.diagnostics.table()
    U1, V1 = layer.lora_B.detach().numpy(), layer.lora_A.detach().numpy().T
    lr = opt.param_groups[0]["lr"]
    if name == "scaled":
        P_in, P_out = (p.numpy() for p in opt.preconditioners(opt.layers[0]))
        beta1 = opt.param_groups[0]["betas"][0]
        T = U0 @ V0.T - lr * (1 - beta1) * (G / P_out[:, None]) / P_in[None, :]
        S_out, S_in, c_M = _sqrtm(P_out), _sqrtm(P_in), 1 - beta1
    else:
        T, S_out, S_in, c_M = U0 @ V0.T - lr * G, None, None, 1.0
    ref, gap = _dense_distance(T, U1, V1, 2, S_out, S_in)
    row = {k: v[t["call"] == "step"][0] for k, v in t.items()}
    assert row["distance"] == pytest.approx(ref, rel=1e-7)
    assert row["gap"] == pytest.approx(gap, rel=1e-9)
    assert row["ridge"] == pytest.approx(opt._ridge(opt.param_groups[0]))
    if name == "psilora" or name == "proj":  # λ = 0: the theorem applies and holds
        assert row["theory_applies"] and row["holds"]
        assert row["distance"] <= row["distance_pred"]
    if "momentum" in CALLS[name]:
        st = opt.state[opt.layers[0].B]
        M = (st["momentum_U"] @ st["momentum_V"].mT).numpy()
        ref_M, gap_M = _dense_distance(c_M * G, M, np.eye(M.shape[1]), 2)
        row_M = {k: v[t["call"] == "momentum"][0] for k, v in t.items()}
        assert row_M["distance"] == pytest.approx(ref_M, rel=1e-7, abs=1e-12)
        assert row_M["gap"] == pytest.approx(gap_M, rel=1e-9)


def test_trainer_log_history_carries_the_table(tmp_path):
    """``trainer_callback``: each log entry of a tiny PEFT GPT-2's Trainer run holds the
    latest per-layer numbers, equal to the table's rows of that step."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    peft = pytest.importorskip("peft")
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    from analysis.experiments.hf import common

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=30, n_positions=16, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        bos_token_id=0, eos_token_id=0))
    pm = peft.get_peft_model(model, peft.LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
        init_lora_weights=False))
    diag = SubspaceDiagnostics(ridge_tol=1e-6)
    opt = PSILoRA(pm, 0.05, ridge=1e-6, momentum=0.9, seed=0, diagnostics=diag)
    ids = torch.randint(3, 30, (24, 8), generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    steps = 3
    args = common.training_arguments("psilora", tmp_path, max_steps=steps, batch_size=8,
                                     logging_steps=1, eval_steps=100, device="cpu")
    trainer = transformers.Trainer(model=pm, args=args, train_dataset=data,
                                   eval_dataset=data.select(range(8)), optimizers=(opt, None),
                                   callbacks=[trainer_callback(diag)])
    trainer.train()
    t = diag.table()
    layers = sorted(set(t["layer"]))
    assert len(layers) == 2 and len(t["step"]) == 2 * 2 * steps
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == list(range(1, steps + 1))
    for entry in logged:
        for lay in layers:
            for call in ("step", "momentum"):
                sel = (t["layer"] == lay) & (t["call"] == call) & (t["step"] == entry["step"])
                assert sel.sum() == 1
                for col in ("distance", "distance_pred", "gap", "angle"):
                    v = entry[f"subspace/{lay}/{call}/{col}"]
                    assert math.isfinite(v) and v == t[col][sel][0]
                assert entry[f"subspace/{lay}/{call}/holds"] == bool(t["holds"][sel][0])
    # λ = lr·1e-6 ≤ ridge_tol: the theorem is checked on every step call, and holds
    assert t["theory_applies"][t["call"] == "step"].all()
    assert t["holds"].all()
    with pytest.raises(TypeError, match="SubspaceDiagnostics"):
        trainer_callback(opt)


def test_auto_iterations_vs_fixed_K_on_the_linear_task():
    """``iters="auto"`` on the linear task (analysis.theory.run_auto_linear, as the verify row,
    smaller): tol = 0 is K = max_iters exactly; tol 1e-4 reaches K = 8's excess (0.1 %) with
    half its iterations; a looser tol spends fewer iterations and reaches a larger excess."""
    from analysis import theory as T

    cfg = T.AutoLinearConfig(d_in=50, d_out=150, rank=4, epochs=10, fixed=(1, 8),
                             tols=(1e-2, 1e-4, 0.0), max_iters=8)
    by = {r["variant"]: r for r in T.run_auto_linear(cfg)["rows"]}
    k1, k8 = by["K=1"], by["K=8"]
    a0, a4, a2 = by["auto tol=0"], by["auto tol=0.0001"], by["auto tol=0.01"]
    assert a0["iterations"] == k8["iterations"] == 80 and a0["excess"] == k8["excess"]
    assert a4["iterations"] <= 40 and a4["excess"] == pytest.approx(k8["excess"], rel=1e-3)
    assert k1["iterations"] < a2["iterations"] < a4["iterations"]
    assert k8["excess"] < a4["excess"] < a2["excess"] < k1["excess"]

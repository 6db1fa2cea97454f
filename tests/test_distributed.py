"""Data-parallel LoRA optimizers (lowrank_prox.optim.distributed, issue 11).

Two gloo workers on localhost run each case on a split batch; the parent runs the same case in
one process on the whole batch.  Checks: workers bit-identical, data-parallel = single process
to float64 rounding, NaN skip agreed, DDP-wrapped models, bytes counted per strategy.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lowrank_prox.nn import LoRALinear
from lowrank_prox.optim import ProjPSILoRA, PSILoRA
from lowrank_prox.optim.distributed import (
    comm_stats,
    data_parallel,
    exclude_lora_from_ddp,
    measure_comm_bytes,
)

try:
    from lowrank_prox.optim.scaled import ScaledPSILoRA
except ImportError:  # pragma: no cover - lands with issue 6
    ScaledPSILoRA = None

WORLD = 2
N = 16  # global rows per step
STEPS = 4
IN, HID, OUT = 6, 5, 4

CASES = {
    "psi_mom_allgather": {"opt": "psi", "comm": "allgather"},
    "psi_mom_allreduce": {"opt": "psi", "comm": "allreduce"},
    "psi_clip_allreduce": {"opt": "psi", "comm": "allreduce", "clip": 0.05, "iters": 2},
    "psi_uneven_sum_allreduce": {"opt": "psi", "comm": "allreduce", "uneven": True},
    "psi_uneven_sum_allgather": {"opt": "psi", "comm": "allgather", "uneven": True},
    "psi_nan_allreduce": {"opt": "psi", "comm": "allreduce", "nan_step": 1},
    "proj_allreduce": {"opt": "proj", "comm": "allreduce"},
    "scaled_kfac_allgather": {"opt": "scaled", "comm": "allgather"},
    "scaled_kfac_allreduce": {"opt": "scaled", "comm": "allreduce"},
    "scaled_shampoo_allreduce": {"opt": "scaled", "comm": "allreduce", "metric": "shampoo"},
    "psi_ddp_excluded": {"opt": "psi", "comm": "allreduce", "ddp": "exclude"},
    "psi_ddp_plain": {"opt": "psi", "comm": "allgather", "ddp": "plain"},
}


def _model():
    gen = torch.Generator().manual_seed(1)
    kw = {"generator": gen, "dtype": torch.float64}
    model = nn.Sequential(
        LoRALinear(IN, HID, 2, **kw), nn.Tanh(), LoRALinear(HID, OUT, 2, **kw),
        nn.Linear(OUT, 3, dtype=torch.float64),
    )
    with torch.no_grad():
        model[0].lora_B.normal_(generator=gen)
        model[3].weight.normal_(generator=gen)
        model[3].bias.zero_()
    return model


def _optimizer(case, model):
    if case["opt"] == "psi":
        lr = 0.3 / N if case.get("uneven") else 0.3  # a sum-reduced loss is N times larger
        return PSILoRA(model, lr=lr, iters=case.get("iters", 1), ridge=1e-2, momentum=0.9,
                       seed=0, max_grad_norm=case.get("clip"))
    if case["opt"] == "proj":
        return ProjPSILoRA(model, lr=0.3, ridge=1e-2, momentum=0.9)
    return ScaledPSILoRA(model, lr=0.2, metric=case.get("metric", "kfac"), seed=0, other_lr=1e-2)


def _rows(case, rank):
    """This worker's row slice of the global batch (all rows for rank None)."""
    if rank is None:
        return slice(0, N)
    cut = 5 if case.get("uneven") else N // WORLD
    return slice(0, cut) if rank == 0 else slice(cut, N)


def run_case(name, rank=None):
    """Run one case for ``STEPS`` steps; returns the parameters and the optimizer state."""
    case = CASES[name]
    model = _model()
    net = model
    if rank is not None and case.get("ddp"):
        if case["ddp"] == "exclude":
            exclude_lora_from_ddp(model)
        net = nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(case, net)
    if rank is not None:
        data_parallel(opt, comm=case["comm"], average=not case.get("uneven", False),
                      sync_other_grads=not case.get("ddp"))
    rows = _rows(case, rank)
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(100 + step)
        X = torch.randn(N, IN, generator=gen, dtype=torch.float64)
        Y = torch.randn(N, 3, generator=gen, dtype=torch.float64)
        if step == case.get("nan_step"):
            X[N - 1, 0] = float("nan")  # a row of the last worker only
        err = (net(X[rows]) - Y[rows]) ** 2
        loss = err.sum() if case.get("uneven") else err.mean()
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            opt.step()
    out = {f"param.{k}": v.detach().clone() for k, v in model.named_parameters()}
    for i, layer in enumerate(opt.layers):
        for k, v in opt.state[layer.B].items():
            if isinstance(v, torch.Tensor):
                out[f"state.{i}.{k}"] = v.clone()
    out["skipped"] = torch.tensor(opt.skipped_steps)
    if rank is not None:
        stats = comm_stats(opt)
        out["gathered_bytes"] = torch.tensor(stats["all_gather"]["bytes"])
        out["reduced_bytes"] = torch.tensor(stats["all_reduce"]["bytes"])
    opt.remove_hooks()
    return out


def _worker(rank, init_file, out_dir, names):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        for name in names:
            torch.save(run_case(name, rank), os.path.join(out_dir, f"{name}.{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    names = [n for n, c in CASES.items() if c["opt"] != "scaled" or ScaledPSILoRA is not None]
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.start_processes(_worker, args=(init_file, tmp, names), nprocs=WORLD,
                                 join=False, start_method="spawn")
        while not ctx.join(timeout=120):
            pass
        out = {}
        for name in names:
            out[name] = [
                torch.load(os.path.join(tmp, f"{name}.{r}.pt"), weights_only=True)
                for r in range(WORLD)
            ]
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(CASES))
def test_data_parallel_equals_single_process(results, name):
    if name not in results:
        pytest.skip("ScaledPSILoRA has not landed")
    r0, r1 = results[name]
    single = run_case(name)
    assert r0.keys() == r1.keys()
    for key in r0:
        # every worker holds the same bits
        assert torch.equal(r0[key], r1[key]), key
    for key, ref in single.items():
        torch.testing.assert_close(r0[key], ref, rtol=1e-10, atol=1e-12, msg=key)
    assert int(r0["skipped"]) == (1 if "nan" in name else 0)
    # the factors moved: a test that equal-but-unchanged parameters would fail
    start = {f"param.{k}": v for k, v in _model().named_parameters()}
    assert float((r0["param.2.lora_B"] - start["param.2.lora_B"].detach()).abs().max()) > 1e-3


@pytest.mark.timeout(240)
def test_strategies_move_what_they_should(results):
    # allgather gathers the rows, allreduce only reduces products (PSI-LoRA)
    ag, ar = results["psi_mom_allgather"][0], results["psi_mom_allreduce"][0]
    rows = N * ((IN + HID) + (HID + OUT)) * 8  # per step: N (m + n) float64 over both layers
    assert int(ag["gathered_bytes"]) == STEPS * rows
    assert int(ar["gathered_bytes"]) == 0
    # per step and layer: 2 LoRSum calls × (V-step n×r + U-step m×r), r = r_M = 2, plus the
    # other parameters' gradient (the 4→3 head: 12 weights and 3 biases)
    lora = 2 * 2 * ((IN + HID) + (HID + OUT)) * 8
    assert int(ar["reduced_bytes"]) == STEPS * (lora + 15 * 8)


def test_split_matters():
    # the single-process reference on half the batch differs: the comparison has power
    full = run_case("psi_mom_allreduce")
    half = run_case("psi_uneven_sum_allreduce")
    assert float((full["param.0.lora_A"] - half["param.0.lora_A"]).abs().max()) > 1e-4


@pytest.mark.parametrize("m,n,r,N_,K", [(24, 40, 3, 16, 1), (32, 16, 4, 8, 2)])
def test_measured_bytes(m, n, r, N_, K):
    ag = measure_comm_bytes(m, n, r, N=N_, comm="allgather", iters=K)
    ar = measure_comm_bytes(m, n, r, N=N_, comm="allreduce", iters=K)
    ar0 = measure_comm_bytes(m, n, r, N=N_, comm="allreduce", iters=K, momentum=0.0)
    assert ag["bytes"] == N_ * (m + n) * 4
    assert ar0["bytes"] == K * r * (m + n) * 4  # K iterations × (V-step + U-step)
    assert ar["bytes"] == 2 * K * r * (m + n) * 4  # plus the momentum call, r_M = r
    assert ar["by_collective"]["all_gather"]["bytes"] == 0
    if ScaledPSILoRA is not None:  # reads the rows: gathers them once, then computes locally
        sc = measure_comm_bytes(m, n, r, N=N_, comm="allreduce", iters=K, optimizer="scaled")
        assert sc["bytes"] == ag["bytes"]
    assert not dist.is_initialized()


def test_bad_input():
    model = _model()
    opt = PSILoRA(model, lr=0.1)
    with pytest.raises(RuntimeError, match="init_process_group"):
        data_parallel(opt)
    with pytest.raises(TypeError, match="LoRAOptimizer"):
        data_parallel(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="comm"):
        data_parallel(opt, comm="ring")
    with pytest.raises(ValueError, match="data_parallel"):
        comm_stats(opt)
    with pytest.raises(ValueError, match="comm"):
        measure_comm_bytes(8, 8, 2, comm="ring")

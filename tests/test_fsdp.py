"""FSDP2 (``torch.distributed.fsdp.fully_shard``) with the frozen base sharded and the LoRA
factors whole: 2 gloo processes equal 1 process on the whole batch (issue 17)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lowrank_prox.nn import LoRALinear
from lowrank_prox.optim import PSILoRA, ScaledPSILoRA
from lowrank_prox.optim.distributed import data_parallel

fsdp = pytest.importorskip("torch.distributed.fsdp")

WORLD, N, STEPS = 2, 8, 3


def _model():
    gen = torch.Generator().manual_seed(0)
    kw = {"generator": gen, "dtype": torch.float64}
    model = nn.Sequential(LoRALinear(8, 6, 2, **kw), nn.Tanh(), LoRALinear(6, 4, 2, **kw))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.lora_B.normal_(generator=gen)
    return model


def _make(kind, model):
    if kind == "psi":
        return PSILoRA(model, lr=0.2, momentum=0.9, ridge=1e-2, seed=0)
    return ScaledPSILoRA(model, lr=0.2, seed=0)


def _train(kind, model, rank=None):
    opt = _make(kind, model)
    if rank is not None:
        data_parallel(opt)
    gen = torch.Generator().manual_seed(5)
    for _ in range(STEPS):
        x = torch.randn(N, 8, generator=gen, dtype=torch.float64)
        y = torch.randn(N, 4, generator=gen, dtype=torch.float64)
        if rank is not None:
            x, y = x[rank::WORLD], y[rank::WORLD]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach().clone() for layer in (model[0], model[2])
            for p in (layer.lora_A, layer.lora_B)]


def _worker(rank, init_file, kind, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _model()
        for layer in (model[0], model[2]):
            fsdp.fully_shard(layer, ignored_params={layer.lora_A, layer.lora_B})
        local = model[0].weight.to_local().shape[0]  # the frozen base is sharded
        torch.save({"params": _train(kind, model, rank), "local_rows": local},
                   f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["psi", "scaled"])
def test_fsdp2_sharded_base_equals_one_process(kind):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "res")
        mp.start_processes(_worker, args=(os.path.join(tmp, "init"), kind, out), nprocs=WORLD,
                           join=True, start_method="fork")
        res = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    want = _train(kind, _model())
    assert [r["local_rows"] for r in res] == [3, 3]  # 6 base rows split over 2 ranks
    for a, b, w in zip(res[0]["params"], res[1]["params"], want, strict=True):
        assert torch.equal(a, b)  # ranks bit-identical
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-14)
    assert not torch.equal(want[1], _model()[0].lora_B)  # it trained

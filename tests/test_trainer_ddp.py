"""PSI-LoRA through ``transformers.Trainer`` on 2 CPU processes (gloo, localhost) = 1 process
on the whole batch; the logged ``grad_norm`` is the captured one (issue 17)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")

WORKER = Path(__file__).with_name("trainer_ddp_worker.py")
ROOT = WORKER.parent.parent


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out, world):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if world == 1:
        cmd = [sys.executable, str(WORKER), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    return _run(one, 1)[0], _run(two, 2)


def test_two_trainer_processes_equal_one_process_on_the_whole_batch(runs):
    one, (r0, r1) = runs
    assert len(one["params"]) == 6  # 2 layers x (lora_A, lora_B, c_attn bias)
    for k, p in one["params"].items():
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # ranks bit-identical
        torch.testing.assert_close(r0["params"][k], p, rtol=1e-12, atol=1e-14, msg=k)
    assert all(float(p.abs().sum()) > 0 for p in one["params"].values())


def test_logged_grad_norm_is_the_captured_norm(runs):
    one, (r0, r1) = runs
    assert len(one["grad_norms"]) == 3
    assert one["grad_norms"][-1] == pytest.approx(one["last_grad_norm"], rel=1e-15)
    assert r0["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-12)
    assert r0["grad_norms"] == r1["grad_norms"]
    # the Trainer's own value (norm of the factors' unused .grad) is a different number
    for ours, theirs in zip(one["grad_norms"], one["trainer_grad_norms"], strict=True):
        assert abs(ours - theirs) > 1e-3 * ours

"""PSI-LoRA through ``transformers.Trainer`` on 1 or 2 CPU processes (gloo); issue 17.

Launch (2 processes, localhost):

    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29517 \\
        tests/trainer_ddp_worker.py OUT_DIR

or ``python tests/trainer_ddp_worker.py OUT_DIR`` for one process.  The global batch is the
whole 8-sequence dataset at every step (8 per device on one process, 4 on each of two), so the
runs see the same data; each rank writes its trainable parameters to ``OUT_DIR/rank{r}.pt``.
The Trainer wraps the model in DDP itself; the LoRA factors' ``.grad`` is excluded from DDP's
all-reduce (:func:`exclude_lora_from_ddp`) and :func:`data_parallel` combines the captured rows
(``sync_other_grads=False``: DDP averages the head's gradient).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lowrank_prox.optim import PSILoRA, grad_norm_callback  # noqa: E402
from lowrank_prox.optim.distributed import data_parallel, exclude_lora_from_ddp  # noqa: E402

GLOBAL_BATCH, SEQ, STEPS = 8, 8, 3


def main(out_dir):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    args = TrainingArguments(
        output_dir=out_dir, use_cpu=True, ddp_backend="gloo" if world > 1 else None,
        per_device_train_batch_size=GLOBAL_BATCH // world, max_steps=STEPS,
        learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
        save_strategy="no", report_to=[], seed=0, dataloader_drop_last=True,
        disable_tqdm=True, ddp_find_unused_parameters=False,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=SEQ, n_embd=32, n_layer=2,
                                       n_head=2, initializer_range=0.3, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0)).double()
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
        init_lora_weights="gaussian", bias="lora_only"))  # c_attn biases: DDP syncs them
    ids = torch.randint(3, 40, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    opt = PSILoRA(model, lr=0.1, momentum=0.9, ridge=1e-2, seed=0)
    with torch.no_grad():  # a nonzero adapter, so both factors move from the first step
        for layer in opt.layers:
            layer.B.normal_(std=0.1, generator=torch.Generator().manual_seed(2))
    if world > 1:
        exclude_lora_from_ddp(model)
        data_parallel(opt, sync_other_grads=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    # first, so that the printer and the reporters see the captured norm too
    trainer.callback_handler.callbacks.insert(0, grad_norm_callback(opt))
    trainer_norms = []  # what the Trainer itself computed (the factors' unused .grad)
    trainer.callback_handler.callbacks.insert(0, _Record(trainer_norms))
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    params = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    torch.save({"params": params, "grad_norms": norms, "trainer_grad_norms": trainer_norms,
                "last_grad_norm": opt.last_grad_norm}, os.path.join(out_dir, f"rank{rank}.pt"))


class _Record(TrainerCallback):
    def __init__(self, out):
        self.out = out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.out.append(float(logs["grad_norm"]))


if __name__ == "__main__":
    main(sys.argv[1])

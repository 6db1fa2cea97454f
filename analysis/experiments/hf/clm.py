"""GPT-2 causal language modelling with PEFT LoRA and the Trainer (paper Fig 2, paper.md §9.8).

The paper's Fig 2 (GPT-2 on WikiText-103, validation perplexity for three learning rates per
method) has no published script or setting (reference/paper.md §9.8).  This is a standard
``run_clm``-style set-up: text tokenized, concatenated and cut into blocks of ``--block-size``
tokens; LoRA r = α = 8 on GPT-2's fused attention projection ``c_attn`` (a ``Conv1D``, hence
``fan_in_fan_out=True``); metric ``eval_perplexity = exp(eval_loss)``::

    python -m analysis.experiments.hf.clm --model openai-community/gpt2 \\
        --dataset Salesforce/wikitext --dataset-config wikitext-103-raw-v1 \\
        --method scaled-psilora --lr 0.2 --max-steps 2000 --out runs/clm

Offline: ``--model`` a local directory and ``--train-file``/``--validation-file`` plain text
files (one document or line per line).
"""

from __future__ import annotations

import argparse
import math
import sys

from . import common

__all__ = ["load_text", "main", "run"]


def load_text(args):
    """``DatasetDict`` with a ``text`` column: local files or a hub data set."""
    import datasets

    if args.train_file:
        if not args.validation_file:
            raise ValueError("--train-file needs --validation-file")
        return datasets.load_dataset(
            "text", data_files={"train": args.train_file, "validation": args.validation_file}
        )
    raw = datasets.load_dataset(args.dataset, args.dataset_config)
    return datasets.DatasetDict(train=raw["train"], validation=raw["validation"])


def _perplexity(logs):
    loss = logs.get("eval_loss")
    return {} if loss is None else {"eval_perplexity": math.exp(min(loss, 700.0))}


def run(args):
    """Train one configuration (``args`` as parsed by :func:`main`); returns the log path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

    spec = common.METHODS[args.method]
    raw = load_text(args)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    block = args.block_size

    def tokenize(batch):
        return tokenizer([t for t in batch["text"]])

    def group(batch):
        ids = [i for seq in batch["input_ids"] for i in seq]
        n = (len(ids) // block) * block
        blocks = [ids[i:i + block] for i in range(0, n, block)]
        return {"input_ids": blocks, "attention_mask": [[1] * block for _ in blocks],
                "labels": [list(b) for b in blocks]}

    data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)
    data = data.map(group, batched=True, remove_columns=data["train"].column_names)
    train_ds, eval_ds = data["train"], data["validation"]
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        eval_ds = eval_ds.select(range(min(args.max_eval_samples, len(eval_ds))))

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=common.torch_dtype(args.dtype))
    if spec.lora:
        model = common.peft_model(
            model, task_type="CAUSAL_LM", target_modules=args.target_modules.split(","),
            rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout,
            fan_in_fan_out=not args.no_fan_in_fan_out,
        )
    _, log_path = common.train(
        model, args, train_ds, eval_ds,
        collator=default_data_collator,
        main_metric="eval_neg_perplexity",
        derived=lambda logs: {**(p := _perplexity(logs)),
                              **({"eval_neg_perplexity": -p["eval_perplexity"]} if p else {})},
        processing_class=tokenizer,
        name_parts=("clm",),
    )
    return log_path


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(p, default_model="openai-community/gpt2")
    p.add_argument("--dataset", default="Salesforce/wikitext")
    p.add_argument("--dataset-config", default="wikitext-103-raw-v1")
    p.add_argument("--train-file", default=None)
    p.add_argument("--validation-file", default=None)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--target-modules", default="c_attn")
    p.add_argument("--no-fan-in-fan-out", action="store_true",
                   help="for models with nn.Linear projections (GPT-2 needs fan_in_fan_out)")
    p.set_defaults(batch_size=8, eval_batch_size=8)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

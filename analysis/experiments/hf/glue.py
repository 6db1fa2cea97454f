"""RoBERTa on GLUE with PEFT LoRA and the Trainer (paper Fig 4, reference/paper.md §9.5).

Paper setting: ``roberta-base``, LoRA r = α = 8 on ``query``, ``value``, dropout 0.1, classifier
trained fully (``modules_to_save``), batch 32, max length 128, linear decay without warmup, clip
1.0, evaluation every 500 steps, 3 epochs (20 for CoLA and STS-B), seeds 0–2, bf16::

    python -m analysis.experiments.hf.glue --model roberta-base --task mnli \\
        --method scaled-psilora --lr 0.2 --bf16-autocast --out runs/glue

Offline (``HF_HUB_OFFLINE=1``): ``--model`` a local directory and ``--data-dir`` a directory with
``train.{jsonl,csv}`` and ``validation.{jsonl,csv}`` holding the task's GLUE columns and
``label``.  Without ``--data-dir`` the data come from the hub (``nyu-mll/glue``).  The log is
described in :mod:`analysis.experiments.hf.common`; the main metric is ``eval_accuracy`` (MNLI:
matched validation; QNLI, SST-2, QQP, MRPC, RTE), ``eval_matthews`` (CoLA) or ``eval_spearman``
(STS-B).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import common

__all__ = ["TASKS", "compute_metrics", "load_glue", "main", "run"]

#: task -> (first text column, second text column or None, num_labels, validation split, metric)
TASKS = {
    "cola": ("sentence", None, 2, "validation", "matthews"),
    "sst2": ("sentence", None, 2, "validation", "accuracy"),
    "mrpc": ("sentence1", "sentence2", 2, "validation", "accuracy"),
    "qqp": ("question1", "question2", 2, "validation", "accuracy"),
    "stsb": ("sentence1", "sentence2", 1, "validation", "spearman"),
    "mnli": ("premise", "hypothesis", 3, "validation_matched", "accuracy"),
    "qnli": ("question", "sentence", 2, "validation", "accuracy"),
    "rte": ("sentence1", "sentence2", 2, "validation", "accuracy"),
}


def compute_metrics(task):
    """``EvalPrediction -> dict``: accuracy, Matthews correlation or Pearson/Spearman."""
    from scipy import stats
    from sklearn.metrics import matthews_corrcoef

    num_labels = TASKS[task][2]

    def metrics(pred):
        logits, labels = pred.predictions, pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        if num_labels == 1:
            p = np.asarray(logits, dtype=np.float64).reshape(-1)
            y = np.asarray(labels, dtype=np.float64).reshape(-1)
            return {"pearson": float(stats.pearsonr(p, y)[0]),
                    "spearman": float(stats.spearmanr(p, y)[0])}
        p = np.asarray(logits).argmax(-1)
        out = {"accuracy": float((p == labels).mean())}
        if task == "cola":
            out["matthews"] = float(matthews_corrcoef(labels, p))
        return out

    return metrics


def load_glue(task, data_dir=None):
    """``DatasetDict`` with ``train`` and ``validation`` (the task's evaluation split)."""
    import datasets

    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}")
    val_split = TASKS[task][3]
    if data_dir is None:
        raw = datasets.load_dataset("nyu-mll/glue", task)
        return datasets.DatasetDict(train=raw["train"], validation=raw[val_split])
    files = {}
    for split in ("train", "validation"):
        for ext, builder in (("jsonl", "json"), ("json", "json"), ("csv", "csv")):
            path = os.path.join(data_dir, f"{split}.{ext}")
            if os.path.exists(path):
                files[split] = (builder, path)
                break
        else:
            raise FileNotFoundError(f"no {split}.jsonl/.json/.csv in {data_dir!r}")
    builders = {b for b, _ in files.values()}
    if len(builders) != 1:
        raise ValueError(f"train and validation files must have the same format in {data_dir!r}")
    return datasets.load_dataset(builders.pop(), data_files={k: p for k, (_, p) in files.items()})


def run(args, *, optimizer_kwargs=None):
    """Train one configuration (``args`` as parsed by :func:`main`); returns the log path.

    ``optimizer_kwargs`` are extra options of the optimizer (e.g. Scaled PSI-LoRA's ``metric``).
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
    )

    key1, key2, num_labels, _, metric = TASKS[args.task]
    spec = common.METHODS[args.method]
    raw = load_glue(args.task, args.data_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def tokenize(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        return tokenizer(*texts, truncation=True, max_length=args.max_seq_length)

    cols = raw["train"].column_names
    data = raw.map(tokenize, batched=True, remove_columns=[c for c in cols if c != "label"])
    if num_labels == 1:
        data = data.cast_column("label", __import__("datasets").Value("float32"))
    train_ds, eval_ds = data["train"], data["validation"]
    if args.max_train_samples:
        train_ds = train_ds.select(range(min(args.max_train_samples, len(train_ds))))
    if args.max_eval_samples:
        eval_ds = eval_ds.select(range(min(args.max_eval_samples, len(eval_ds))))

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=num_labels, dtype=common.torch_dtype(args.dtype)
    )
    if spec.lora:
        model = common.peft_model(
            model, task_type="SEQ_CLS", target_modules=args.target_modules.split(","),
            rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout,
            fan_in_fan_out=args.fan_in_fan_out,
        )
    _, log_path = common.train(
        model, args, train_ds, eval_ds,
        collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics(args.task),
        main_metric=f"eval_{metric}",
        processing_class=tokenizer,
        name_parts=(args.task,),
        optimizer_kwargs=optimizer_kwargs,
    )
    return log_path


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(p, default_model="FacebookAI/roberta-base")
    p.add_argument("--task", default="mnli", choices=sorted(TASKS))
    p.add_argument("--data-dir", default=None, help="local train/validation .jsonl or .csv")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--target-modules", default="query,value")
    p.add_argument("--fan-in-fan-out", action="store_true",
                   help="PEFT fan_in_fan_out (the reference keeps it 'for BC')")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    path = run(args)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

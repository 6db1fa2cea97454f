"""T5 on SQuAD v2 with PEFT LoRA and the Trainer (the paper's v2 QA task, reference/paper.md §9.7).

Generative question answering as in the authors' ``run_seq2seq_qa.py``: the input is
``"question: <question> context: <context>"`` and the target the first gold answer, or the empty
string for an unanswerable question (SQuAD v2's "no answer" is an empty generation).  Paper
setting: ``google-t5/t5-small``, LoRA r = α = 8 on the attention ``q`` and ``v`` projections,
batch 12, max source length 384, 2 epochs, 3 % warmup and linear decay, bf16, evaluation with
greedy generation of at most 16 tokens, seeds 0–2; Scaled PSI-LoRA at lr 0.2–1 (K = 0,
λ0 = 1e-2, non-LoRA lr 1e-4), LoRA with AdamW at 2e-4–1e-3::

    python -m analysis.experiments.hf.run_seq2seq_qa --model google-t5/t5-small \\
        --method scaled-psilora --lr 0.2 --epochs 2 --bf16-autocast --out runs/squad

The data come from ``datasets.load_dataset("squad_v2")`` (``--dataset``); offline,
``--train-file`` and ``--validation-file`` are local JSON (lines) files with SQuAD's columns
``id``, ``question``, ``context``, ``answers`` (``--field`` names the key holding the records
when the file is one JSON object, e.g. ``data``).  Contexts longer than ``--max-seq-length``
tokens are truncated (the authors' training path; their evaluation also scores one window per
question).  Outputs in ``--out``: the JSON-lines training log of
:mod:`analysis.experiments.hf.common` (``eval_loss`` from step 0), and after training
``<run>_predictions.json`` (``id -> generated answer``) and ``<run>_metrics.json`` (SQuAD v2
exact match and F1 overall and on the answerable / unanswerable questions,
:func:`squad_v2_scores`, plus the final evaluation loss).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import string
import sys

from . import common

__all__ = [
    "NO_ANSWER",
    "load_squad",
    "main",
    "normalize_answer",
    "parser",
    "qa_input",
    "run",
    "squad_v2_scores",
]

#: The target of an unanswerable question.
NO_ANSWER = ""


def qa_input(question, context):
    """The T5 source text of one example: ``"question: <q> context: <c>"``."""
    if not isinstance(question, str) or not isinstance(context, str):
        raise TypeError("question and context must be str")
    return f"question: {question.lstrip()} context: {context.lstrip()}"


def _target(answers):
    texts = answers["text"]
    return texts[0] if len(texts) else NO_ANSWER


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text):
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(gold, pred):
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:  # a "no answer" on either side: 1 iff both are empty
        return float(g == p)
    common_tokens = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common_tokens == 0:
        return 0.0
    precision, recall = common_tokens / len(p), common_tokens / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_v2_scores(predictions, references):
    """SQuAD v2 exact match and F1 (in %), overall and split by answerability.

    ``predictions`` maps question id -> predicted text (``""``: no answer); ``references``
    maps id -> SQuAD ``answers`` (``{"text": [...]}``, empty for an unanswerable question).
    Per question: EM = max over the gold answers of [normalize(gold) == normalize(pred)], F1 =
    max over them of the token-overlap F1 (the gold list is ``[""]`` when unanswerable).  The
    totals are means × 100.  Returns ``exact``, ``f1``, ``total`` and ``HasAns_exact``,
    ``HasAns_f1``, ``HasAns_total``, ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total`` (the split
    keys only when that split is non-empty).
    """
    if not isinstance(predictions, dict) or not isinstance(references, dict):
        raise TypeError("predictions and references must be dicts keyed by question id")
    if set(predictions) != set(references) or not references:
        raise ValueError("predictions and references must have the same, non-empty, ids")
    rows = {}
    for qid, answers in references.items():
        golds = [a for a in answers["text"] if normalize_answer(a)] or [NO_ANSWER]
        pred = predictions[qid]
        em = max(float(normalize_answer(g) == normalize_answer(pred)) for g in golds)
        rows[qid] = (golds != [NO_ANSWER], em, max(_f1(g, pred) for g in golds))
    out = {}
    for prefix, keep in (("", lambda has: True), ("HasAns_", lambda has: has),
                         ("NoAns_", lambda has: not has)):
        sel = [(em, f1) for has, em, f1 in rows.values() if keep(has)]
        if sel or not prefix:
            out[f"{prefix}exact"] = 100.0 * sum(e for e, _ in sel) / len(sel)
            out[f"{prefix}f1"] = 100.0 * sum(f for _, f in sel) / len(sel)
            out[f"{prefix}total"] = len(sel)
    return out


def load_squad(args):
    """``DatasetDict`` with ``train`` and ``validation``: local JSON files or the hub's SQuAD v2."""
    import datasets

    if args.train_file or args.validation_file:
        if not (args.train_file and args.validation_file):
            raise ValueError("--train-file and --validation-file go together")
        files = {"train": args.train_file, "validation": args.validation_file}
        kw = {"field": args.field} if args.field else {}
        return datasets.load_dataset("json", data_files=files, **kw)
    raw = datasets.load_dataset(args.dataset, args.dataset_config)
    return datasets.DatasetDict(train=raw["train"], validation=raw["validation"])


def _generate(model, tokenizer, examples, args, device):
    """Greedy (or beam) answers for ``examples``: ``{id: text}``."""
    import torch

    model.eval()
    out = {}
    for i in range(0, len(examples), args.eval_batch_size):
        batch = examples[i : i + args.eval_batch_size]
        enc = tokenizer([qa_input(q, c) for q, c in zip(batch["question"], batch["context"],
                                                         strict=True)],
                        max_length=args.max_seq_length, truncation=True, padding=True,
                        return_tensors="pt").to(device)
        with torch.no_grad():
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=args.val_max_answer_length,
                                 num_beams=args.num_beams, do_sample=False)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        out.update({qid: t.strip() for qid, t in zip(batch["id"], texts, strict=True)})
    return out


def run(args):
    """Train one configuration (``args`` as parsed by :func:`main`); returns the log path.

    Writes the predictions and the SQuAD v2 scores of the validation questions next to it.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

    spec = common.METHODS[args.method]
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must be in [0, 1); got {args.warmup_ratio!r}")
    raw = load_squad(args)
    for split in ("train", "validation"):
        missing = {"id", "question", "context", "answers"} - set(raw[split].column_names)
        if missing:
            raise ValueError(f"{split} data lack the SQuAD columns {sorted(missing)}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def tokenize(batch):
        enc = tokenizer([qa_input(q, c) for q, c in zip(batch["question"], batch["context"],
                                                         strict=True)],
                        max_length=args.max_seq_length, truncation=True)
        labels = tokenizer(text_target=[_target(a) for a in batch["answers"]],
                           max_length=args.max_answer_length, truncation=True)
        enc["labels"] = labels["input_ids"]
        return enc

    eval_examples = raw["validation"]
    if args.max_eval_samples:
        eval_examples = eval_examples.select(range(min(args.max_eval_samples,
                                                       len(eval_examples))))
    train_raw = raw["train"]
    if args.max_train_samples:
        train_raw = train_raw.select(range(min(args.max_train_samples, len(train_raw))))
    cols = train_raw.column_names
    train_ds = train_raw.map(tokenize, batched=True, remove_columns=cols)
    eval_ds = eval_examples.map(tokenize, batched=True, remove_columns=eval_examples.column_names)

    torch.manual_seed(args.seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model, dtype=common.torch_dtype(args.dtype))
    if model.config.decoder_start_token_id is None:
        raise ValueError("the model's config.decoder_start_token_id must be set")
    if spec.lora:
        model = common.peft_model(
            model, task_type="SEQ_2_SEQ_LM", target_modules=args.target_modules.split(","),
            rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout,
        )
    trainer, log_path = common.train(
        model, args, train_ds, eval_ds,
        collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        main_metric="eval_neg_loss",
        derived=lambda logs: ({"eval_neg_loss": -logs["eval_loss"]} if "eval_loss" in logs
                              else {}),
        processing_class=tokenizer,
        name_parts=("squad",),
        training_kwargs={"warmup_steps": args.warmup_ratio},
    )
    step = trainer.state.global_step
    final = next((e for e in reversed(trainer.state.log_history)
                  if "eval_loss" in e and e.get("step") == step), None)
    if final is None:  # the last evaluation was before the last step
        final = trainer.evaluate()
    predictions = _generate(trainer.model, tokenizer, eval_examples, args, trainer.args.device)
    scores = squad_v2_scores(predictions,
                             {e["id"]: e["answers"] for e in eval_examples})
    scores["eval_loss"] = final["eval_loss"]
    stem = log_path[: -len(".jsonl")] if log_path.endswith(".jsonl") else log_path
    with open(stem + "_predictions.json", "w") as f:
        json.dump(predictions, f, indent=1)
    with open(stem + "_metrics.json", "w") as f:
        json.dump(scores, f, indent=1)
    return log_path


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(p, default_model="google-t5/t5-small")
    p.add_argument("--dataset", default="squad_v2")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--train-file", default=None, help="local JSON (lines) file, SQuAD columns")
    p.add_argument("--validation-file", default=None)
    p.add_argument("--field", default=None, help="JSON key holding the records (e.g. data)")
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--max-answer-length", type=int, default=30, help="training target length")
    p.add_argument("--val-max-answer-length", type=int, default=16,
                   help="generated answer length at evaluation")
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--target-modules", default="q,v")
    p.set_defaults(batch_size=12, eval_batch_size=12, epochs=2.0, eval_steps=2000)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

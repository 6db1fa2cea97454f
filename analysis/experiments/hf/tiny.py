"""Tiny local models and data sets for running the HF scripts offline (tests, smoke runs).

Nothing is downloaded: :func:`make_tiny_model` writes a randomly initialised 2-layer RoBERTa,
GPT-2 or T5 (hidden size 32) with a word-level tokenizer over a fixed small vocabulary to a
directory that ``--model`` accepts; :func:`make_tiny_glue`, :func:`make_tiny_text` and
:func:`make_tiny_squad` write generated data in the layout ``--data-dir`` / ``--train-file``
accept.  The generated tasks are learnable:

* GLUE-style classification: ``label = 1`` iff the sentence contains a word of the "positive"
  half of the vocabulary more often than of the "negative" half (pairs: iff the two sentences
  share their first word); ``stsb`` gets the fraction of shared words × 5.
* Language modelling: sentences from a small stochastic grammar (a deterministic successor word
  with probability 0.8), so perplexity can fall far below the vocabulary size.
* SQuAD-v2-style question answering: the context is a random word sequence, the question
  ``after wK`` asks for the word that follows ``wK`` in it; when ``wK`` is not in the context the
  question is unanswerable (empty answer, as SQuAD v2's).
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["VOCAB", "make_tiny_glue", "make_tiny_model", "make_tiny_squad", "make_tiny_text"]

#: Content words of the tiny tokenizer (plus the special tokens).
VOCAB = tuple(f"w{i}" for i in range(40))
_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
#: Extra words of the T5 tokenizer: the prompt words of the question-answering input.
_QA_WORDS = ("question:", "context:", "after")
_KINDS = ("roberta", "gpt2", "t5")


def _tokenizer(kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = (*_SPECIAL, *VOCAB, *(_QA_WORDS if kind == "t5" else ()))
    vocab = {t: i for i, t in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "t5":  # T5 appends </s> to inputs and targets; <pad> (id 0) starts decoding
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    if kind == "roberta":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
        )
    special = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>"}
    if kind == "roberta":
        special.update(cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special), vocab


def make_tiny_model(kind, out_dir, *, num_labels=2, seed=0, init_range=0.3):
    """Write a random 2-layer ``"roberta"`` (sequence classification), ``"gpt2"`` (causal LM) or
    ``"t5"`` (encoder–decoder, ``AutoModelForSeq2SeqLM``; attention ``q``/``k``/``v``/``o``).

    Returns ``out_dir``.  GPT-2 keeps its ``Conv1D`` layers (PEFT needs ``fan_in_fan_out``).
    ``init_range`` is the weights' initial std: larger than the usual 0.02 so that a random
    (unpretrained) model's features depend on its input and the tiny tasks are learnable.  T5
    ignores it (its own initialisation, ``initializer_factor`` 1, is scaled by the widths).
    """
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        RobertaConfig,
        RobertaForSequenceClassification,
        T5Config,
        T5ForConditionalGeneration,
    )

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}")
    tokenizer, vocab = _tokenizer(kind)
    ids = {k: vocab[v] for k, v in (("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>"))}
    torch.manual_seed(seed)
    if kind == "roberta":
        config = RobertaConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=70, num_labels=num_labels,
            pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"],
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            initializer_range=init_range,
        )
        model = RobertaForSequenceClassification(config)
    elif kind == "t5":
        config = T5Config(
            vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=2,
            num_decoder_layers=2, num_heads=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="relu",
            pad_token_id=ids["pad"], eos_token_id=ids["eos"], decoder_start_token_id=ids["pad"],
        )
        model = T5ForConditionalGeneration(config)
    else:
        config = GPT2Config(
            vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2,
            bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            initializer_range=init_range,
        )
        model = GPT2LMHeadModel(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _sentence(rng, n):
    return " ".join(rng.choice(VOCAB, size=n))


def make_tiny_glue(out_dir, task="sst2", *, n_train=256, n_eval=64, seed=0):
    """Write ``train.jsonl`` and ``validation.jsonl`` with the GLUE columns of ``task``.

    Returns ``out_dir``.  See the module docstring for the labels.
    """
    from .glue import TASKS

    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}; got {task!r}")
    key1, key2, num_labels = TASKS[task][:3]
    rng = np.random.default_rng(seed)
    half = len(VOCAB) // 2
    pos, neg = set(VOCAB[:half]), set(VOCAB[half:])

    def example():
        a = _sentence(rng, int(rng.integers(4, 9)))
        if key2 is None:
            words = a.split()
            score = sum(w in pos for w in words) - sum(w in neg for w in words)
            label = int(score > 0) if num_labels == 2 else int(np.clip(score + 1, 0, 2))
            return {key1: a, "label": label}
        b = _sentence(rng, int(rng.integers(4, 9)))
        if rng.random() < 0.5:
            b = " ".join([a.split()[0], *b.split()[1:]])
        wa, wb = a.split(), b.split()
        if num_labels == 1:
            label = 5.0 * len(set(wa) & set(wb)) / len(set(wa) | set(wb))
        elif num_labels == 2:
            label = int(wa[0] == wb[0])
        else:
            label = 0 if wa[0] == wb[0] else (1 if wa[0] in pos else 2)
        return {key1: a, key2: b, "label": label}

    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
            for _ in range(n):
                f.write(json.dumps(example()) + "\n")
    return out_dir


def make_tiny_text(out_dir, *, n_train=400, n_eval=60, seed=0):
    """Write ``train.txt`` and ``validation.txt`` (one sentence a line); returns the two paths."""
    rng = np.random.default_rng(seed)
    succ = rng.permutation(len(VOCAB))

    def sentence():
        i = int(rng.integers(len(VOCAB)))
        words = []
        for _ in range(int(rng.integers(6, 14))):
            words.append(VOCAB[i])
            i = int(succ[i]) if rng.random() < 0.8 else int(rng.integers(len(VOCAB)))
        return " ".join(words)

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for split, n in (("train", n_train), ("validation", n_eval)):
        path = os.path.join(out_dir, f"{split}.txt")
        with open(path, "w") as f:
            f.write("\n".join(sentence() for _ in range(n)) + "\n")
        paths.append(path)
    return tuple(paths)


def make_tiny_squad(out_dir, *, n_train=64, n_eval=16, unanswerable=0.25, seed=0):
    """Write ``train.json`` and ``validation.json`` (JSON lines) in SQuAD v2's columns.

    Each record has ``id``, ``title``, ``context``, ``question`` and ``answers`` (``{"text":
    [...], "answer_start": [...]}``, both empty for an unanswerable question, a fraction
    ``unanswerable`` of them).  See the module docstring for the task.  Returns the two paths.
    """
    if not 0.0 <= unanswerable <= 1.0:
        raise ValueError(f"unanswerable must be in [0, 1]; got {unanswerable!r}")
    rng = np.random.default_rng(seed)

    def example(i, split):
        words = list(rng.choice(VOCAB, size=int(rng.integers(6, 11)), replace=False))
        context = " ".join(words)
        if rng.random() < unanswerable:
            absent = [w for w in VOCAB if w not in words]
            key, answers = str(rng.choice(absent)), {"text": [], "answer_start": []}
        else:
            k = int(rng.integers(len(words) - 1))
            key, answer = words[k], words[k + 1]
            start = len(" ".join(words[: k + 1])) + 1
            answers = {"text": [answer], "answer_start": [start]}
        return {"id": f"{split}-{i}", "title": "tiny", "context": context,
                "question": f"after {key}", "answers": answers}

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for split, n in (("train", n_train), ("validation", n_eval)):
        path = os.path.join(out_dir, f"{split}.json")
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps(example(i, split)) + "\n")
        paths.append(path)
    return tuple(paths)

"""Offline, CPU-sized analogues of the paper's real-data experiments (SPEC §9; issue 6).

The paper's Figs 2–4 use GPT-2 on WikiText-103, RoBERTa-base on GLUE/MNLI and (v1) LeNet-5 on
MNIST (``reference/paper.md`` §9.3, §9.5, §9.6, §9.8).  Those need hub downloads and GPUs.  This
module regenerates each figure's *claim* on data that ships with Python or scikit-learn:

* **Language modelling** (Fig 2 analogue).  A small character-level transformer is pretrained
  briefly on a fixed list of standard-library ``.py`` files, then LoRA-fine-tuned (adapters on the
  attention ``q`` and ``v`` projections, every other weight frozen) on the English text of
  :data:`pydoc_data.topics.topics`.  Metric: validation perplexity on a held-out tail of the text.
* **Classification** (Figs 3 and 4 analogue).  scikit-learn's bundled 8×8 digits with a tanh MLP
  whose base weights are *frozen at random initialisation* and adapted by rank-``r`` LoRA on every
  linear layer (the paper's v1 MNIST recipe: "base weight and bias frozen at random init, no
  pretraining"; the LoRA layers' biases stay trainable like the reference's ``lora_bias``).
  Metric: validation accuracy on a fixed stratified split.

Every run function returns plain numbers (lists and floats); the figure builders in
:mod:`analysis.figures.realdata` only draw them.  Seeds are fixed; each run forks torch's RNG so
it does not disturb the caller's.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sysconfig
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "CharLMConfig",
    "DigitsConfig",
    "LM_METHODS",
    "DIGITS_METHODS",
    "available_methods",
    "char_vocab",
    "encode",
    "finetune_text",
    "fit_classifier",
    "load_digits_split",
    "make_optimizer",
    "pretrain_text",
    "pretrained_char_lm",
    "run_digits",
    "lr_sweep",
    "robust_width",
    "run_lm_finetune",
    "torch_threads",
    "uniform_perplexity",
]

@contextlib.contextmanager
def torch_threads(n=1):
    """Run torch with ``n`` intra-op threads, restoring the previous setting afterwards.

    The models here are tiny: one thread is faster than several, and on a shared 2-core machine
    torch's default (one thread per core) was measured 13-20x slower than one thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------

#: Method name -> (uses LoRA adapters, label).  ``psilora-k`` is PSI-LoRA with ``iters=k``.
_METHOD_LABELS = {
    "full-sgd": "Full (SGD)",
    "full-adamw": "Full (AdamW)",
    "lora-sgd": "LoRA (SGD)",
    "lora-adamw": "LoRA (AdamW)",
    "rplora": "RPLoRA",
    "svdlora": "SVDLoRA",
    "psilora-1": "PSI-LoRA x1",
    "psilora-2": "PSI-LoRA x2",
    "psilora-8": "PSI-LoRA x8",
    "scaled-psilora": "Scaled PSI-LoRA",
}
LM_METHODS = ("lora-adamw", "svdlora", "psilora-1", "scaled-psilora")
DIGITS_METHODS = (
    "full-sgd",
    "full-adamw",
    "lora-sgd",
    "lora-adamw",
    "rplora",
    "svdlora",
    "psilora-1",
    "psilora-2",
    "psilora-8",
    "scaled-psilora",
)
# The lowrank_prox.optim class each method needs (None: a torch.optim optimizer).
_METHOD_CLASS = {
    "rplora": "RPLoRA",
    "svdlora": "SVDLoRA",
    "psilora-1": "PSILoRA",
    "psilora-2": "PSILoRA",
    "psilora-8": "PSILoRA",
    "scaled-psilora": "ScaledPSILoRA",
}


def method_label(method):
    """Human-readable name of a method (``"psilora-8"`` -> ``"PSI-LoRA x8"``)."""
    return _METHOD_LABELS[method]


def available_methods(methods):
    """The subset of ``methods`` whose optimizer (and the LoRA layers) can be imported now.

    The figure builders use it so that they keep working while an optimizer is missing; the
    missing ones are named in the figure's notes.
    """
    out = []
    for m in methods:
        if m not in _METHOD_LABELS:
            raise ValueError(f"unknown method {m!r}; expected one of {sorted(_METHOD_LABELS)}")
        try:
            if not m.startswith("full"):
                _lora_api()
            if m in _METHOD_CLASS:
                _optim_class(_METHOD_CLASS[m])
        except (ImportError, AttributeError):
            continue
        out.append(m)
    return out


def _lora_api():
    from lowrank_prox.nn import LoRALinear, add_lora

    return LoRALinear, add_lora


def _optim_class(name):
    import lowrank_prox.optim as optim

    return getattr(optim, name)


def make_optimizer(method, model, lr, *, momentum=0.9, ridge=1e-3, **kwargs):
    """Build the optimizer for ``method`` on ``model`` (a LoRA model unless ``full-*``).

    ``momentum`` is the heavy-ball momentum of the SGD-type methods (SGD, RPLoRA, SVDLoRA,
    PSI-LoRA); ``ridge`` is λ0 of RPLoRA and PSI-LoRA (SPEC §6).  Scaled PSI-LoRA takes its own
    keyword options (``ridge``, ``betas``, ``damping``, ``metric``, ``power``: SPEC §7) from
    ``kwargs``; its ``ridge`` defaults to 1e-2 (the transformer default).  AdamW uses
    ``betas=(0.9, 0.99)`` and no weight decay (the paper's GLUE settings).
    """
    import torch

    if method not in _METHOD_LABELS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_METHOD_LABELS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if method in ("full-sgd", "lora-sgd"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if method in ("full-adamw", "lora-adamw"):
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    cls = _optim_class(_METHOD_CLASS[method])
    if method == "rplora":
        return cls(model, lr, ridge=ridge, momentum=momentum, **kwargs)
    if method == "svdlora":
        return cls(model, lr, momentum=momentum, **kwargs)
    if method.startswith("psilora-"):
        iters = int(method.split("-")[1])
        return cls(model, lr, iters=iters, ridge=ridge, momentum=momentum, **kwargs)
    # Scaled PSI-LoRA: defaults from SPEC §7 unless overridden.
    opts = {"iters": 1, "ridge": 1e-2, "betas": (0.9, 0.99), "damping": 1e-5}
    opts.update(kwargs)
    return cls(model, lr=lr, **opts)


def _add_adapters(model, rank, targets, *, train_bias):
    """Replace the ``targets`` linear layers by LoRA layers and freeze everything else.

    Trainable afterwards: ``lora_A``/``lora_B`` of every adapter, plus the adapters' own biases
    when ``train_bias`` (the reference's trainable ``lora_bias``).
    """
    LoRALinear, add_lora = _lora_api()
    model = add_lora(model, rank, targets) or model
    for p in model.parameters():
        p.requires_grad_(False)
    n_layers = 0
    for module in model.modules():
        if isinstance(module, LoRALinear):
            n_layers += 1
            module.lora_A.requires_grad_(True)
            module.lora_B.requires_grad_(True)
            if train_bias and getattr(module, "bias", None) is not None:
                module.bias.requires_grad_(True)
    if n_layers == 0:
        raise RuntimeError(f"add_lora found no layer among {targets!r}")
    return model


# --------------------------------------------------------------------------------------------
# Text data (character level)
# --------------------------------------------------------------------------------------------

#: Standard-library files used for pretraining, in this order (fixed for determinism; a file
#: missing from an unusual Python build is skipped).
STDLIB_FILES = (
    "textwrap.py",
    "string.py",
    "shlex.py",
    "fnmatch.py",
    "heapq.py",
    "bisect.py",
    "calendar.py",
    "csv.py",
    "difflib.py",
    "argparse.py",
)


@functools.cache
def char_vocab():
    """The character vocabulary: ``"\\n"``, printable ASCII 32–126, then one unknown symbol."""
    chars = "\n" + "".join(chr(c) for c in range(32, 127))
    return chars


def uniform_perplexity():
    """Perplexity of the uniform distribution over the vocabulary (= its size)."""
    return float(len(char_vocab()) + 1)


def encode(text):
    """Map ``text`` to an int64 array of vocabulary indices (unknown characters -> last index)."""
    vocab = char_vocab()
    table = np.full(128, len(vocab), dtype=np.int64)
    for i, ch in enumerate(vocab):
        table[ord(ch)] = i
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    out = np.full(codes.shape, len(vocab), dtype=np.int64)
    ascii_mask = codes < 128
    out[ascii_mask] = table[codes[ascii_mask]]
    return out


@functools.cache
def pretrain_text(max_chars=300_000):
    """Concatenated source of :data:`STDLIB_FILES` (the pretraining corpus), tabs expanded."""
    root = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in STDLIB_FILES:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts.append(f.read().expandtabs(4))
    text = "\n\n".join(parts)
    if not text:
        raise RuntimeError(f"no standard-library source found under {root}")
    return text[:max_chars]


@functools.cache
def finetune_text(val_fraction=0.1):
    """``(train, val)``: the English text of ``pydoc_data.topics``, topics in sorted order.

    The last ``val_fraction`` of the characters is the validation text.
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    cut = int(round(len(text) * (1.0 - val_fraction)))
    return text[:cut], text[cut:]


# --------------------------------------------------------------------------------------------
# Character-level transformer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CharLMConfig:
    """Model, pretraining and fine-tuning settings of the character-level LM task.

    The paper's Fig 2: GPT-2 (124M) on WikiText-103, LoRA r = 8 (settings unknown,
    paper.md §9.8).  Ours: ``n_layers`` pre-LN blocks of width ``d_model``, context ``context``,
    pretrained ``pretrain_steps`` AdamW steps on standard-library source, then fine-tuned
    ``steps`` steps with rank-``rank`` adapters on ``targets`` (the paper's GLUE choice: query and
    value), every other weight frozen.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 32
    rank: int = 8
    targets: tuple = ("q", "v")
    steps: int = 200
    batch: int = 32
    eval_every: int = 25
    val_windows: int = 256
    seed: int = 0


def _build_char_transformer(cfg):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.q = nn.Linear(d, d)
            self.k = nn.Linear(d, d)
            self.v = nn.Linear(d, d)
            self.o = nn.Linear(d, d)

        def forward(self, x):
            b, t, d = x.shape
            h = self.heads

            def split(y):
                return y.view(b, t, h, d // h).transpose(1, 2)

            y = F.scaled_dot_product_attention(
                split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
            )
            return self.o(y.transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attention(d, heads)
            self.ln2 = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 4 * d)
            self.fc2 = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class CharTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            vocab = len(char_vocab()) + 1
            self.tok = nn.Embedding(vocab, cfg.d_model)
            self.pos = nn.Embedding(cfg.context, cfg.d_model)
            self.blocks = nn.ModuleList(
                [Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers)]
            )
            self.ln = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, vocab)

        def forward(self, idx):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.tok(idx) + self.pos(pos)
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return CharTransformer()


def _batches(data, context, batch, steps, generator):
    """``steps`` random windows batches ``(x, y)`` from the 1-d long tensor ``data``."""
    import torch

    starts = torch.randint(0, len(data) - context - 1, (steps, batch), generator=generator)
    offsets = torch.arange(context + 1)
    for s in starts:
        w = data[s[:, None] + offsets]
        yield w[:, :-1], w[:, 1:]


def _lm_loss(model, x, y):
    from torch.nn import functional as F

    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _val_windows(data, context, n):
    """Non-overlapping validation windows from the start of ``data`` (at most ``n``)."""
    n = min(n, (len(data) - 1) // context)
    w = data[: n * context + 1]
    x = w[:-1].reshape(n, context)
    y = w[1:].reshape(n, context)
    return x, y


def _perplexity(model, x, y, chunk=128):
    import torch

    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            total += float(_lm_loss(model, xb, yb)) * len(xb)
    model.train(was_training)
    return math.exp(total / len(x))


_PRETRAINED = {}


def pretrained_char_lm(config=CharLMConfig()):
    """Pretrain the character transformer on standard-library source; return ``(model, info)``.

    The pretrained weights are cached per process (keyed on the architecture and pretraining
    fields of ``config``): each call returns a fresh model loaded from the cache, so fine-tuning
    one copy never changes another.  ``info`` holds the pretraining loss curve and the perplexity
    of the pretrained model on the fine-tuning validation text (the zero-adapter baseline).
    """
    import torch

    key = (
        config.d_model,
        config.n_layers,
        config.n_heads,
        config.context,
        config.pretrain_steps,
        config.pretrain_lr,
        config.pretrain_batch,
        config.seed,
    )
    if key not in _PRETRAINED:
        with torch.random.fork_rng(devices=[]), torch_threads(1):
            torch.manual_seed(config.seed)
            model = _build_char_transformer(config)
            data = torch.from_numpy(encode(pretrain_text()))
            gen = torch.Generator().manual_seed(config.seed)
            opt = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, betas=(0.9, 0.99))
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=config.pretrain_lr, total_steps=max(config.pretrain_steps, 1),
                pct_start=0.1,
            )
            losses = []
            batches = _batches(
                data, config.context, config.pretrain_batch, config.pretrain_steps, gen
            )
            for x, y in batches:
                loss = _lm_loss(model, x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _PRETRAINED[key] = (state, {"pretrain_loss": losses})
    state, info = _PRETRAINED[key]
    model = _build_char_transformer(config)
    model.load_state_dict(state)
    return model, dict(info)


def run_lm_finetune(method, lr, *, config=CharLMConfig(), seed=None, **optim_kwargs):
    """LoRA-fine-tune the pretrained character LM on ``pydoc_data.topics`` with ``method``.

    ``seed`` fixes the adapter initialisation and the batch order (default ``config.seed``); the
    pretrained model is the same for every seed (``config.seed`` fixes it).

    Returns a dict: ``steps`` (evaluation steps, 0 = before training), ``val_ppl`` (validation
    perplexity at those steps; ``inf`` once the loss is not finite), ``final_ppl``, ``best_ppl``,
    ``train_loss`` (per step), ``diverged`` (bool) and ``uniform_ppl``.
    """
    import torch

    if method.startswith("full"):
        raise ValueError(f"method must be a LoRA method for the LM task; got {method!r}")
    base, _ = pretrained_char_lm(config)
    train_text, val_text = finetune_text()
    train = torch.from_numpy(encode(train_text))
    val_x, val_y = _val_windows(
        torch.from_numpy(encode(val_text)), config.context, config.val_windows
    )
    seed = config.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(seed + 1)
        model = _add_adapters(base, config.rank, list(config.targets), train_bias=False)
        model.train()
        opt = make_optimizer(method, model, lr, **optim_kwargs)
        gen = torch.Generator().manual_seed(seed + 1)
        steps, ppl, losses = [0], [_perplexity(model, val_x, val_y)], []
        diverged = False
        batches = _batches(train, config.context, config.batch, config.steps, gen)
        for t, (x, y) in enumerate(batches):
            loss = _lm_loss(model, x, y)
            if not torch.isfinite(loss):
                diverged = True
                break
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            if (t + 1) % config.eval_every == 0 or t + 1 == config.steps:
                steps.append(t + 1)
                ppl.append(_perplexity(model, val_x, val_y))
                if not math.isfinite(ppl[-1]):
                    diverged = True
                    break
    if diverged:
        ppl.append(math.inf)
        steps.append(steps[-1] + 1)
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "val_ppl": ppl,
        "final_ppl": ppl[-1],
        "best_ppl": min(ppl),
        "train_loss": losses,
        "diverged": diverged,
        "uniform_ppl": uniform_perplexity(),
    }


# --------------------------------------------------------------------------------------------
# Digits (classification)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsConfig:
    """Settings of the digits task (analogue of the paper's v1 MNIST/LeNet-5 recipe, §9.3).

    Paper: LeNet-5 on MNIST, LoRA r = 8 on the three linear layers, base frozen at random init,
    batch 64, 20 epochs, momentum 0.9, λ0 = 1e-3, seeds 0–2.  Ours: a tanh MLP
    64 → ``hidden`` → 10 on 8×8 digits (1797 images, a stratified ``val_fraction`` split with
    ``split_seed``), rank ``rank`` adapters on every linear layer, same batch, epochs, momentum
    and λ0.  ``full-*`` methods train the same MLP's weights directly.
    """

    hidden: tuple = (128, 128)
    rank: int = 8
    epochs: int = 20
    batch: int = 64
    val_fraction: float = 0.25
    split_seed: int = 0


@functools.cache
def load_digits_split(val_fraction=0.25, split_seed=0):
    """Standardised digits ``(X_train, y_train, X_val, y_val)`` as numpy arrays (float32, int64).

    The split is stratified and fixed by ``split_seed``; features are standardised with the
    training mean and standard deviation (constant pixels get std 1).
    """
    X_tr, y_tr, X_va, y_va = _digits_raw_split(val_fraction, split_seed)
    mean = X_tr.mean(axis=0)
    std = X_tr.std(axis=0)
    std[std == 0] = 1.0
    f = lambda a: ((a - mean) / std).astype(np.float32)
    return f(X_tr), y_tr.astype(np.int64), f(X_va), y_va.astype(np.int64)


def _digits_raw_split(val_fraction, split_seed):
    """The stratified digits split ``(X_train, y_train, X_val, y_val)``, pixels 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(
        X, y, test_size=val_fraction, random_state=split_seed, stratify=y
    )
    return X_tr, y_tr, X_va, y_va


def _build_mlp(cfg):
    from torch import nn

    sizes = (64, *cfg.hidden, 10)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def run_digits(method, lr, *, seed=0, config=DigitsConfig(), **optim_kwargs):
    """Train on the digits task with ``method`` at learning rate ``lr``; return numbers.

    Returns a dict: ``epochs`` (0 = before training), ``val_acc`` and ``val_loss`` after each
    epoch, ``train_loss`` (mean over each epoch), ``best_acc``, ``mean_acc`` (over epochs
    1..E), ``last_acc``, ``diverged``.  Seeds fix the base initialisation, the adapter
    initialisation and the batch order.
    """
    import torch

    if method not in _METHOD_LABELS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_METHOD_LABELS)}")
    X_tr, y_tr, X_va, y_va = (torch.from_numpy(a) for a in load_digits_split(
        config.val_fraction, config.split_seed))
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        torch.manual_seed(seed)
        model = _build_mlp(config)
        if not method.startswith("full"):
            model = _add_adapters(model, config.rank, _linear_names(model), train_bias=True)
        opt = make_optimizer(method, model, lr, **optim_kwargs)
        gen = torch.Generator().manual_seed(seed)
        out = fit_classifier(model, opt, (X_tr, y_tr, X_va, y_va), epochs=config.epochs,
                             batch=config.batch, generator=gen)
    return {"method": method, "lr": lr, "seed": seed, **out}


def fit_classifier(model, optimizer, data, *, epochs, batch, generator):
    """Train ``model`` by cross-entropy for ``epochs`` epochs; return its accuracy curves.

    ``data`` is ``(X_train, y_train, X_val, y_val)`` (tensors); each epoch visits the training
    set in a random order drawn from ``generator``, in mini-batches of ``batch``, with one
    ``optimizer.step()`` per mini-batch.  A non-finite loss stops training (``diverged``) and
    the remaining epochs count at chance level (accuracy 0.1, losses ``inf``).

    Returns a dict: ``epochs`` (0 = before training), ``val_acc`` and ``val_loss`` after each
    epoch, ``train_loss`` (mean over each epoch), ``best_acc``, ``mean_acc`` (over epochs
    1..E), ``last_acc`` and ``diverged``.
    """
    import torch
    from torch.nn import functional as F

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1; got {epochs!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an int >= 1; got {batch!r}")
    if not isinstance(data, tuple | list) or len(data) != 4:
        raise TypeError("data must be (X_train, y_train, X_val, y_val)")
    X_tr, y_tr, X_va, y_va = data

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits = model(X_va)
            loss = float(F.cross_entropy(logits, y_va))
            acc = float((logits.argmax(1) == y_va).float().mean())
        model.train()
        return acc, loss

    acc0, loss0 = evaluate()
    accs, vlosses, tlosses = [acc0], [loss0], []
    diverged = False
    n = len(X_tr)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(X_tr[idx]), y_tr[idx])
            if not torch.isfinite(loss):
                diverged = True
                break
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item() * len(idx)
        if diverged:
            break
        tlosses.append(total / n)
        acc, vloss = evaluate()
        accs.append(acc)
        vlosses.append(vloss)
    if diverged:  # count the remaining epochs at chance level
        while len(accs) < epochs + 1:
            accs.append(0.1)
            vlosses.append(math.inf)
            tlosses.append(math.inf)
    after = accs[1:]
    return {
        "epochs": list(range(epochs + 1)),
        "val_acc": accs,
        "val_loss": vlosses,
        "train_loss": tlosses,
        "best_acc": max(after),
        "mean_acc": float(np.mean(after)),
        "last_acc": after[-1],
        "diverged": diverged,
    }


def _linear_names(model):
    from torch import nn

    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def config_dict(config):
    """A dataclass config as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def with_overrides(config, **changes):
    """``dataclasses.replace`` that ignores ``None`` values."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


# --------------------------------------------------------------------------------------------
# Learning-rate sweeps and the robustness number
# --------------------------------------------------------------------------------------------


def robust_width(lrs, values, *, higher_is_better, tol=0.05):
    """Width in decades of the learning-rate range within ``tol`` of the best value.

    "Within 5 %" means ``value ≥ (1 − tol)·best`` for a metric to maximise (accuracy) and
    ``value ≤ (1 + tol)·best`` for one to minimise (perplexity).  The metric is interpolated
    linearly in ``log10(lr)`` between grid points; the range is the contiguous interval around
    the best grid point where the condition holds, so its ends are the interpolated crossings
    (a grid end counts as an end: the width is a lower bound when the best LR is at the edge).
    Non-finite values (diverged runs) fail the condition.  Returns ``(width, lo, hi)`` with
    ``lo``/``hi`` the interval's learning rates.
    """
    x = np.log10(np.asarray(lrs, dtype=float))
    v = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.shape != v.shape or len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("lrs must be increasing, 1-d, with one value each (at least 2)")
    if not (0 <= tol < 1):
        raise ValueError(f"tol must be in [0, 1); got {tol!r}")
    finite = np.isfinite(v)
    if not finite.any():
        return 0.0, math.nan, math.nan
    if higher_is_better:
        best = np.max(v[finite])
        margin = np.where(finite, v - (1 - tol) * best, -np.inf)
    else:
        best = np.min(v[finite])
        margin = np.where(finite, (1 + tol) * best - v, -np.inf)
    i = int(np.argmax(np.where(finite, margin, -np.inf)))

    def crossing(j, k):  # margin[j] >= 0 > margin[k]: interpolated zero between x[j] and x[k]
        if not np.isfinite(margin[k]):
            return x[j]
        t = margin[j] / (margin[j] - margin[k])
        return x[j] + t * (x[k] - x[j])

    lo = i
    while lo > 0 and margin[lo - 1] >= 0:
        lo -= 1
    hi = i
    while hi < len(x) - 1 and margin[hi + 1] >= 0:
        hi += 1
    left = x[0] if lo == 0 else crossing(lo, lo - 1)
    right = x[-1] if hi == len(x) - 1 else crossing(hi, hi + 1)
    return float(right - left), float(10**left), float(10**right)


def _sweep_job(args):
    task, method, lr, seed, config = args
    import torch

    torch.set_num_threads(1)
    if task == "lm":
        run = run_lm_finetune(method, lr, config=config, seed=seed)
        return {k: run[k] for k in ("final_ppl", "best_ppl", "diverged", "steps", "val_ppl")}
    run = run_digits(method, lr, seed=seed, config=config)
    return {k: run[k] for k in ("last_acc", "best_acc", "mean_acc", "diverged")}


def lr_sweep(task, grids, seeds, config, *, workers=None, progress=None):
    """Run ``task`` (``"lm"`` or ``"digits"``) for every method × learning rate × seed.

    ``grids`` maps method -> learning rates.  Returns ``{(method, lr, seed): numbers}``.  With
    ``workers > 1`` the runs are spread over forked processes (each single-threaded); the
    results do not depend on the number of workers.
    """
    import multiprocessing

    if task not in ("lm", "digits"):
        raise ValueError(f"task must be 'lm' or 'digits'; got {task!r}")
    if task == "lm":
        pretrained_char_lm(config)  # once, in the parent: forked workers inherit the cache
    jobs = [(task, m, lr, s, config) for m, lrs in grids.items() for lr in lrs for s in seeds]
    wrap = progress or (lambda it, **_: it)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            outs = list(wrap(pool.imap(_sweep_job, jobs), desc=f"lr sweep ({task})",
                             total=len(jobs)))
    else:
        outs = [_sweep_job(j) for j in wrap(jobs, desc=f"lr sweep ({task})")]
    return {(j[1], j[2], j[3]): out for j, out in zip(jobs, outs, strict=True)}

"""LeNet-5 on scikit-learn's digits: the paper's v1 MNIST task, offline (SPEC §9; issue 18).

The paper's v1 MNIST experiment (``reference/paper.md`` §9.3; the authors' ``src/models.py``
``LeNet5`` and ``src/conf/task/mnist_lenet5.yaml``) trains LeNet-5 on MNIST resized to 32×32:

* features: conv 1→6 (5×5) → tanh → max-pool 2 → conv 6→16 (5×5) → tanh → max-pool 2 →
  flatten (16·5·5 = 400);
* classifier: linear 400→120 → tanh → 120→84 → tanh → 84→10;
* LoRA (rank 8) replaces the **three linear layers only**; their base weights and biases are
  frozen at random initialisation (no pretraining), the adapters start at ``B = 0``, the
  adapters' biases are trainable;
* the **convolutions stay trainable**: the low-rank optimizers update them by their "other
  parameters" path (SGD with the LoRA learning rate and momentum; Adam 1e-4 for Scaled
  PSI-LoRA), the LoRA-SGD/AdamW baselines with the same torch optimizer as the adapters;
* batch 64, 20 epochs, momentum 0.9, λ0 = 1e-3, seeds 0–2.

The authors' CIFAR configs build the same net with ``channels = 3`` (every width ×3);
:func:`build_lenet` takes ``channels`` for that.  Here the images are scikit-learn's 8×8
digits (1797, no download) scaled to [0, 1], upsampled to 32×32 (bilinear by default) and
standardised by the training set's pixel mean and standard deviation (the authors normalise
MNIST by its dataset constants).  Everything else is the recipe above; the epoch count is a
setting (:class:`LeNetConfig`).  The methods and the optimizer settings are those of
:mod:`analysis.experiments.realdata` (``make_optimizer``); the training loop is
:func:`analysis.experiments.realdata.fit_classifier`.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import realdata as R

__all__ = [
    "LeNetConfig",
    "UPSAMPLE_MODES",
    "build_lenet",
    "load_digits_images",
    "run_lenet",
]

#: How the 8×8 digits are brought to the net's input size: interpolation (``bilinear``,
#: ``nearest``: each pixel repeated) or ``pad`` (the 8×8 image centred on a zero canvas,
#: as MNIST's 28×28 digits sit in LeNet's 32×32 input).
UPSAMPLE_MODES = ("bilinear", "nearest", "pad")


@dataclass(frozen=True)
class LeNetConfig:
    """Settings of the LeNet-5 digits task (the paper's v1 MNIST recipe, paper.md §9.3).

    ``rank``: LoRA rank on the three linear layers; ``train_convs``: whether the convolutions
    are trained (the authors: yes) or frozen at their random initialisation; ``channels``: 1
    (MNIST) or 3 (the authors' CIFAR nets; the grey digits are repeated over the channels);
    ``size``: the input side (32 as the authors' resize; LeNet-5 needs 32 for its 400-wide
    flatten); ``upsample``: one of :data:`UPSAMPLE_MODES`.
    """

    rank: int = 8
    epochs: int = 20
    batch: int = 64
    train_convs: bool = True
    channels: int = 1
    size: int = 32
    upsample: str = "bilinear"
    val_fraction: float = 0.25
    split_seed: int = 0


def _check_config(config):
    if not isinstance(config, LeNetConfig):
        raise TypeError(f"config must be a LeNetConfig; got {type(config).__name__}")
    for name in ("rank", "epochs", "batch", "channels"):
        v = getattr(config, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config.{name} must be an int >= 1; got {v!r}")
    if config.size != 32:
        raise ValueError(f"config.size must be 32 (LeNet-5's input side); got {config.size!r}")
    if config.upsample not in UPSAMPLE_MODES:
        raise ValueError(f"config.upsample must be one of {UPSAMPLE_MODES}; got "
                         f"{config.upsample!r}")
    if not isinstance(config.train_convs, bool):
        raise TypeError(f"config.train_convs must be a bool; got {config.train_convs!r}")


def build_lenet(num_classes=10, channels=1):
    """LeNet-5 as the authors build it: widths 6/16 (convs) and 120/84 (linear) times ``channels``.

    Input ``(N, channels, 32, 32)``; the classifier's linear layers are ``classifier.0``,
    ``classifier.2`` and ``classifier.4`` (the LoRA targets).
    """
    from torch import nn

    for name, v in (("num_classes", num_classes), ("channels", channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1; got {v!r}")
    c = channels
    features = nn.Sequential(
        nn.Conv2d(c, 6 * c, kernel_size=5), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(6 * c, 16 * c, kernel_size=5), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(1),
    )
    classifier = nn.Sequential(
        nn.Linear(16 * 5 * 5 * c, 120 * c), nn.Tanh(), nn.Linear(120 * c, 84 * c), nn.Tanh(),
        nn.Linear(84 * c, num_classes),
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


@functools.cache
def _images(size, upsample, channels, val_fraction, split_seed):
    import torch
    from torch.nn import functional as F

    X_tr, y_tr, X_va, y_va = R._digits_raw_split(val_fraction, split_seed)

    def prep(a):
        x = torch.from_numpy((a / 16.0).astype(np.float32)).view(-1, 1, 8, 8)
        if upsample == "pad":
            p = (size - 8) // 2
            x = F.pad(x, (p, size - 8 - p, p, size - 8 - p))
        elif upsample == "bilinear":
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, size=(size, size), mode="nearest")
        return x.repeat(1, channels, 1, 1)

    tr, va = prep(X_tr), prep(X_va)
    mean, std = float(tr.mean()), float(tr.std())
    tr, va = (tr - mean) / std, (va - mean) / std
    return (tr.numpy(), y_tr.astype(np.int64), va.numpy(), y_va.astype(np.int64))


def load_digits_images(config=LeNetConfig()):
    """``(X_train, y_train, X_val, y_val)``: the digits as ``(N, channels, 32, 32)`` images.

    The split is that of :func:`analysis.experiments.realdata.load_digits_split` (stratified,
    ``config.split_seed``).  Pixels are scaled to [0, 1], brought to 32×32 by
    ``config.upsample`` and standardised by the training images' pixel mean and std (one
    scalar pair, like the authors' MNIST constants).  Returns float32/int64 numpy copies.
    """
    _check_config(config)
    arrays = _images(config.size, config.upsample, config.channels, config.val_fraction,
                     config.split_seed)
    return tuple(a.copy() for a in arrays)


def run_lenet(method, lr, *, seed=0, config=LeNetConfig(), **optim_kwargs):
    """Train LeNet-5 on the digits images with ``method`` at learning rate ``lr``.

    ``method`` is one of :data:`analysis.experiments.realdata.DIGITS_METHODS`.  LoRA methods:
    rank-``config.rank`` adapters on the three linear layers (base frozen at random init,
    adapter biases trainable), convolutions trained when ``config.train_convs`` (else frozen at
    init).  ``full-*``: every weight trained.  ``seed`` fixes the network initialisation, the
    adapters and the batch order; ``optim_kwargs`` go to ``make_optimizer``.

    Returns the dict of :func:`analysis.experiments.realdata.fit_classifier` plus ``method``,
    ``lr``, ``seed`` and ``trainable`` (parameter counts: ``lora``, ``conv``, ``other``).
    """
    import torch

    if method not in R.DIGITS_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(R.DIGITS_METHODS)}")
    _check_config(config)
    data = tuple(torch.from_numpy(a) for a in load_digits_images(config))
    with torch.random.fork_rng(devices=[]), R.torch_threads(1):
        torch.manual_seed(seed)
        model = build_lenet(10, config.channels)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        if not method.startswith("full"):
            model = R._add_adapters(model, config.rank, R._linear_names(model), train_bias=True)
            for conv in convs:  # _add_adapters froze them; the authors train them
                conv.requires_grad_(config.train_convs)
        elif not config.train_convs:
            for conv in convs:
                conv.requires_grad_(False)
        trainable = _count_trainable(model, convs)
        opt = R.make_optimizer(method, model, lr, **optim_kwargs)
        gen = torch.Generator().manual_seed(seed)
        out = R.fit_classifier(model, opt, data, epochs=config.epochs, batch=config.batch,
                               generator=gen)
    return {"method": method, "lr": lr, "seed": seed, "trainable": trainable, **out}


def _count_trainable(model, convs):
    conv_ids = {id(p) for c in convs for p in c.parameters()}
    counts = {"lora": 0, "conv": 0, "other": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = ("lora" if "lora_" in name else "conv" if id(p) in conv_ids else "other")
        counts[kind] += p.numel()
    return counts

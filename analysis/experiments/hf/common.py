"""Shared pieces of the Hugging Face runs: methods, PEFT set-up, Trainer arguments, JSON-lines log.

Methods (``--method``) and the paper's transformer settings (reference/paper.md §9.5, §10.3–10.4):

==================  =========================================================  =========
method              optimizer                                                  paper lr
==================  =========================================================  =========
``full``            ``torch.optim.AdamW`` on every weight, betas (0.9, 0.99)   1e-5
``lora``            ``torch.optim.AdamW`` on the adapters and the head          2e-4
``svdlora``         :class:`~lowrank_prox.optim.SVDLoRA`, AdamW rule            1e-4
``rplora``          :class:`~lowrank_prox.optim.RPLoRA`, SGD(0.9), λ = 1e-2     2e-3
``psilora``         :class:`~lowrank_prox.optim.PSILoRA`, K, λ0 = 1e-2, μ 0.9   5e-3
``proj-psilora``    :class:`~lowrank_prox.optim.ProjPSILoRA`, K = 0, λ0 = 1e-2  5e-3
``scaled-psilora``  :class:`~lowrank_prox.optim.ScaledPSILoRA`, K = 0, K-FAC½   0.2
==================  =========================================================  =========

Gradient clipping is done once: the :class:`~lowrank_prox.optim.LoRAOptimizer` methods clip
implicitly with their own ``max_grad_norm`` (‖G‖² = ⟨XXᵀ, ΔΔᵀ⟩, SPEC §6) and the Trainer's
clipping is switched off (``TrainingArguments(max_grad_norm=0)``; the paper used 1e10).  The
Trainer's clipping would act on ``.grad``, which these optimizers ignore for ``lora_A``/``lora_B``:
it would clip the head only, by a norm that includes the unused adapter gradients.  For ``full``
and ``lora`` (torch.optim) the Trainer clips as usual.

Log format (one JSON object per line, ``--log``): a first line ``{"event": "start", "settings":
{...}}``; then the Trainer's log dicts with ``"step"`` (training: ``loss``, ``learning_rate``,
``ridge`` = the λ = lr·λ0 of that step when the method has one; evaluation, also at step 0:
``eval_loss`` and ``eval_<metric>``); a last line ``{"event": "end", ...}`` with the best
evaluation metric.  :func:`read_log` reads it back as curves.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

__all__ = [
    "METHODS",
    "MethodSpec",
    "add_common_arguments",
    "build_optimizer",
    "jsonl_callback",
    "peft_model",
    "read_log",
    "training_arguments",
]


@dataclass(frozen=True)
class MethodSpec:
    """A method: default lr (paper §9.5), whether it uses LoRA adapters and our optimizers."""

    label: str
    lr: float
    lora: bool
    lowrank_optimizer: bool


METHODS = {
    "full": MethodSpec("Full", 1e-5, False, False),
    "lora": MethodSpec("LoRA", 2e-4, True, False),
    "svdlora": MethodSpec("SVDLoRA", 1e-4, True, True),
    "rplora": MethodSpec("RPLoRA", 2e-3, True, True),
    "psilora": MethodSpec("PSI-LoRA", 5e-3, True, True),
    "proj-psilora": MethodSpec("Proj. PSI-LoRA", 5e-3, True, True),
    "scaled-psilora": MethodSpec("Scaled PSI-LoRA", 0.2, True, True),
}


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}; got {method!r}")
    return METHODS[method]


def peft_model(model, *, task_type, target_modules, rank=8, alpha=None, dropout=0.1,
               fan_in_fan_out=False, modules_to_save=None):
    """Wrap ``model`` with a PEFT LoRA adapter (paper: r = α = 8, dropout 0.1, §9.5).

    ``alpha`` defaults to ``rank`` (scaling 1).  With ``task_type="SEQ_CLS"`` PEFT adds the
    classifier to ``modules_to_save`` (trained fully, by the secondary optimizer).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type=task_type,
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def build_optimizer(method, model, lr=None, *, max_grad_norm=1.0, iters=None, ridge=1e-2,
                    momentum=0.9, other_lr=1e-4, **kwargs):
    """The optimizer of ``method`` on ``model`` with the paper's transformer settings (§9.5).

    ``model`` must already be on its training device (state is created next to the parameters).
    ``max_grad_norm`` is passed to the low-rank optimizers (implicit clipping); for ``full`` and
    ``lora`` it is ignored here (the Trainer clips, see :func:`training_arguments`).  ``iters``
    is K of ``psilora`` (default 1), ``proj-psilora`` and ``scaled-psilora`` (default 0, the
    paper's K = 0).  ``other_lr`` is the Adam lr of the non-LoRA parameters of Scaled PSI-LoRA;
    the other LoRSum methods train them with SGD(``momentum``) at ``lr`` (the reference's
    setting).  Extra ``kwargs`` go to the optimizer class.
    """
    import torch

    import lowrank_prox.optim as optim

    spec = _check_method(method)
    lr = spec.lr if lr is None else lr
    clip = {"max_grad_norm": max_grad_norm} if max_grad_norm else {}
    if not spec.lowrank_optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, **kwargs)
    if method == "svdlora":
        return optim.SVDLoRA(model, lr, optimizer="adamw", betas=(0.9, 0.99), **clip, **kwargs)
    if method == "rplora":
        return optim.RPLoRA(model, lr, ridge=ridge, momentum=momentum, **clip, **kwargs)
    if method == "psilora":
        return optim.PSILoRA(model, lr, iters=1 if iters is None else iters, ridge=ridge,
                             momentum=momentum, **clip, **kwargs)
    if method == "proj-psilora":
        return optim.ProjPSILoRA(model, lr, iters=0 if iters is None else iters, ridge=ridge,
                                 momentum=momentum, **clip, **kwargs)
    opts = {"iters": 0 if iters is None else iters, "ridge": ridge, "betas": (0.9, 0.99),
            "damping": 1e-5, "metric": "kfac", "power": 0.5, "other_lr": other_lr}
    opts.update(kwargs)
    return optim.ScaledPSILoRA(model, lr=lr, **clip, **opts)


def training_arguments(method, out_dir, *, max_steps, batch_size=32, eval_batch_size=128,
                       eval_steps=500, logging_steps=50, max_grad_norm=1.0, seed=0,
                       device="auto", bf16_autocast=False, num_train_epochs=3.0,
                       lr_scheduler_type="linear", warmup_steps=0, **kwargs):
    """``transformers.TrainingArguments`` of the paper's runs (§9.5), clipping done once.

    Linear decay, no warmup (``warmup_steps``: a step count, or a float in [0, 1) for a
    fraction of the run, e.g. 0.03 for the paper's SQuAD runs), no weight decay, no
    checkpoints, no external reporting.  The
    Trainer's ``max_grad_norm`` is 0 for the low-rank optimizers (they clip themselves).
    ``learning_rate`` is not set: the optimizer passed to the Trainer carries it.
    ``max_steps <= 0`` trains ``num_train_epochs`` epochs.
    """
    from transformers import TrainingArguments

    spec = _check_method(method)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}")
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps if max_steps and max_steps > 0 else -1,
        num_train_epochs=num_train_epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        weight_decay=0.0,
        max_grad_norm=0.0 if spec.lowrank_optimizer else max_grad_norm,
        seed=seed,
        use_cpu=device == "cpu",
        bf16=bf16_autocast,
        disable_tqdm=True,
        **kwargs,
    )


def jsonl_callback(path, settings, *, main_metric=None, derived=None):
    """A ``TrainerCallback`` writing the run's log to ``path`` as JSON lines (format above).

    ``derived(logs) -> dict`` adds entries to each log (e.g. perplexity from ``eval_loss``);
    ``main_metric`` (e.g. ``"eval_accuracy"``) is tracked for the final ``best`` entry.
    """
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        def __init__(self):
            self.best = None
            self.t0 = time.perf_counter()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"event": "start", "settings": settings}) + "\n")

        def on_log(self, args, state, control, logs=None, **kw):
            entry = {"step": state.global_step, **(logs or {})}
            opt = kw.get("optimizer")
            opt = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer
            group = opt.param_groups[0] if opt is not None else {}
            if "ridge" in group and "learning_rate" in entry:  # λ of the step just taken
                entry["ridge"] = entry["learning_rate"] * group["ridge"]
            if derived is not None:
                entry.update(derived(entry))
            if main_metric in entry and _finite(entry[main_metric]):
                self.best = entry[main_metric] if self.best is None else max(
                    self.best, entry[main_metric])
            self._write(entry)

        def on_train_end(self, args, state, control, **kw):
            opt = kw.get("optimizer")
            opt = getattr(opt, "optimizer", opt)
            self._write({
                "event": "end",
                "step": state.global_step,
                "main_metric": main_metric,
                "best": self.best,
                "skipped_steps": getattr(opt, "skipped_steps", 0),
                "wall_s": round(time.perf_counter() - self.t0, 3),
            })

        def _write(self, entry):
            with open(path, "a") as f:
                f.write(json.dumps(entry, default=float) + "\n")

    return JsonlLogger()


def _finite(x):
    return isinstance(x, int | float) and math.isfinite(x)


def read_log(path):
    """Read a run log: ``{"settings", "train": {key: [(step, value)]}, "eval": {...}, "end"}``."""
    out = {"settings": None, "train": {}, "eval": {}, "end": None}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if entry.get("event") == "start":
                out["settings"] = entry["settings"]
            elif entry.get("event") == "end":
                out["end"] = entry
            else:
                kind = "eval" if any(k.startswith("eval_") for k in entry) else "train"
                for k, v in entry.items():
                    if k != "step" and _finite(v):
                        out[kind].setdefault(k, []).append((entry["step"], v))
    return out


def add_common_arguments(parser, *, default_model):
    """The command-line options every script shares."""
    parser.add_argument("--model", default=default_model,
                        help="hub id or local directory (config, weights, tokenizer)")
    parser.add_argument("--method", default="scaled-psilora", choices=sorted(METHODS))
    parser.add_argument("--lr", type=float, default=None, help="default: the paper's lr")
    parser.add_argument("--max-steps", type=int, default=-1, help="<= 0: --epochs epochs")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--eval-steps", type=int, default=500)
    parser.add_argument("--logging-steps", type=int, default=50)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=None, help="LoRSum iterations K")
    parser.add_argument("--ridge", type=float, default=1e-2, help="λ0")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--other-lr", type=float, default=1e-4,
                        help="Adam lr of the non-LoRA parameters (scaled-psilora)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="parameter dtype (bfloat16: LoRSum math still in float32)")
    parser.add_argument("--bf16-autocast", action="store_true",
                        help="Trainer bf16 autocast with float32 parameters (the paper's bf16)")
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--out", default="runs/hf", help="output directory")
    parser.add_argument("--log", default=None, help="JSON-lines log (default: OUT/NAME.jsonl)")
    return parser


def torch_dtype(name):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def run_name(args, *extra):
    """A file name for the run from its main settings."""
    lr = METHODS[args.method].lr if args.lr is None else args.lr
    parts = [*extra, args.method, f"lr{lr:g}", f"seed{args.seed}"]
    return "_".join(str(p) for p in parts)


def settings_of(args, **extra):
    """The run's settings as a JSON-able dict (logged on the first line)."""
    d = {k: v for k, v in vars(args).items()}
    d["lr"] = METHODS[args.method].lr if args.lr is None else args.lr
    d.update(extra)
    return d


def train(model, args, train_ds, eval_ds, *, collator, compute_metrics=None, main_metric,
          derived=None, processing_class=None, extra_settings=None, name_parts=(),
          optimizer_kwargs=None, training_kwargs=None):
    """Build the optimizer and the Trainer, train, and write the JSON-lines log.

    Returns ``(trainer, log_path)``.  The model must be the (PEFT-wrapped) model to train;
    ``optimizer_kwargs`` go to :func:`build_optimizer` (and into the logged settings),
    ``training_kwargs`` to :func:`training_arguments` (e.g. ``warmup_steps``).
    """
    import torch
    from transformers import Trainer

    targs = training_arguments(
        args.method, os.path.join(args.out, "trainer"), max_steps=args.max_steps,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        eval_steps=args.eval_steps, logging_steps=args.logging_steps,
        max_grad_norm=args.max_grad_norm, seed=args.seed, device=args.device,
        bf16_autocast=args.bf16_autocast, num_train_epochs=args.epochs,
        **(training_kwargs or {}),
    )
    model.to(targs.device)  # before the optimizer: its state lives next to the parameters
    torch.manual_seed(args.seed)
    optimizer = build_optimizer(
        args.method, model, args.lr, max_grad_norm=args.max_grad_norm, iters=args.iters,
        ridge=args.ridge, momentum=args.momentum, other_lr=args.other_lr,
        **(optimizer_kwargs or {}),
    )
    log_path = args.log or os.path.join(args.out, run_name(args, *name_parts) + ".jsonl")
    settings = settings_of(args, device=str(targs.device), **(extra_settings or {}),
                           **(optimizer_kwargs or {}))
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=processing_class,
        compute_metrics=compute_metrics,
        optimizers=(optimizer, None),
        callbacks=[jsonl_callback(log_path, settings, main_metric=main_metric, derived=derived)],
    )
    trainer.evaluate()  # the curves start at step 0
    trainer.train()
    return trainer, log_path

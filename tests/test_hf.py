"""PEFT and transformers.Trainer integration (issue 10), offline on tiny models.

Skipped when the ``hf`` extra (transformers, peft, datasets) is not installed.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("datasets")

from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    Trainer,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402

from analysis.experiments.hf import clm, common, glue, mnli_ablation, tiny  # noqa: E402
from lowrank_prox import lorsum  # noqa: E402
from lowrank_prox.factored import LowRankSum  # noqa: E402
from lowrank_prox.nn import add_lora  # noqa: E402
from lowrank_prox.optim import (  # noqa: E402
    ProjPSILoRA,
    PSILoRA,
    RPLoRA,
    ScaledPSILoRA,
    SVDLoRA,
)
from lowrank_prox.optim._peft import PeftLoRALayer  # noqa: E402


def _lora_config(**kw):
    return peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **kw})


def _tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=16, n_embd=32, n_layer=2,
                                      n_head=2, initializer_range=0.3))


def _tiny_roberta(num_labels=3):
    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=num_labels,
        initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


def test_gpt2_conv1d_layers_and_captured_gradient():
    """GPT-2's Conv1D (fan_in_fan_out): shapes, scaling, and G = ΔᵀX is the weight gradient."""
    pm = peft.get_peft_model(_tiny_gpt2(), _lora_config(
        target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
    opt = PSILoRA(pm, 0.1)
    opt.factor_grads = True  # the autograd .grad of the factors is the reference here
    layers = opt.layers
    assert [type(la) for la in layers] == [PeftLoRALayer] * 2
    for la in layers:
        assert isinstance(la.module.base_layer, Conv1D)
        assert (la.in_features, la.out_features, la.rank) == (32, 96, 4)
        assert la.scaling == 2.0 and la.fan_in_fan_out
    ids = torch.randint(0, 30, (3, 7))
    pm(input_ids=ids, labels=ids).loss.backward()
    for la in layers:
        X, D = la.capture.rows()
        G = D.mT @ X  # (out, in)
        A, B, s = la.A, la.B, la.scaling
        # dL/dB = s G Aᵀ and dL/dA = s Bᵀ G when G is the gradient of W = W0 + s B A.
        torch.testing.assert_close(s * G @ A.detach().mT, B.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s * B.detach().mT @ G, A.grad, rtol=1e-4, atol=1e-7)
    U, V = layers[0].factors()
    torch.testing.assert_close(U @ V.mT, 2.0 * layers[0].B @ layers[0].A)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_captures_the_same_gradient(reentrant):
    def captured(checkpointing):
        model = _tiny_gpt2()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
            model.enable_input_require_grads()
        pm = peft.get_peft_model(model, _lora_config(
            target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False))
        pm.train()
        opt = PSILoRA(pm, 0.1)
        ids = torch.randint(0, 30, (3, 7), generator=torch.Generator().manual_seed(1))
        pm(input_ids=ids, labels=ids).loss.backward()
        return [D.mT @ X for D, X in ((d, x) for x, d in (la.capture.rows()
                                                          for la in opt.layers))]

    for g, g_ckpt in zip(captured(False), captured(True), strict=True):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-4, atol=1e-6)  # float32 recompute


def test_roberta_layers_and_head_goes_to_other_optimizer():
    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(
        task_type="SEQ_CLS", target_modules=["query", "value"]))
    opt = PSILoRA(pm, 0.1)
    names = [la.name.rsplit(".", 1)[1] for la in opt.layers]
    assert names == ["query", "value"] * 2
    other = {id(p) for g in opt.other_optimizer.param_groups for p in g["params"]}
    head = {id(p) for n, p in pm.named_parameters()
            if p.requires_grad and "modules_to_save" in n and "classifier" in n}
    lora = {id(p) for la in opt.layers for p in (la.A, la.B)}
    assert head and other == head and not (other & lora)


def test_inactive_adapter_ignored_and_unsupported_configurations_rejected():
    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(target_modules=["query"]))
    pm.add_adapter("other", _lora_config(target_modules=["query"]))
    assert {la.adapter for la in PSILoRA(pm, 0.1).layers} == {"default"}
    pm.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="active adapters"):
        PSILoRA(pm, 0.1)

    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(target_modules=["query"]))
    pm.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        PSILoRA(pm, 0.1)

    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(target_modules=["query"],
                                                           use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        PSILoRA(pm, 0.1)


# ---------------------------------------------------------------------------------------------
# One step on a PEFT model == the step on the equivalent LoRALinear model
# ---------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self, conv):
        super().__init__()
        # Conv1D(nf=out, nx=in) stores its weight (in, out): fan_in_fan_out.
        self.fc1 = Conv1D(8, 6) if conv else nn.Linear(6, 8)
        self.fc2 = Conv1D(7, 8) if conv else nn.Linear(8, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _pair(conv, alpha):
    """A PEFT model (scaling alpha/4, random B) and the equivalent LoRALinear model, float64."""
    torch.manual_seed(1)
    base = _Net(conv).double()
    with torch.no_grad():
        for lin in (base.fc1, base.fc2):
            if conv:
                torch.nn.init.normal_(lin.weight, std=0.5)
    ref = _Net(False).double()
    with torch.no_grad():
        for name in ("fc1", "fc2", "head"):
            src, dst = getattr(base, name), getattr(ref, name)
            dst.weight.copy_(src.weight.mT if isinstance(src, Conv1D) else src.weight)
            dst.bias.copy_(src.bias)
    pm = peft.get_peft_model(base, _lora_config(
        lora_alpha=alpha, target_modules=["fc1", "fc2"], modules_to_save=["head"],
        fan_in_fan_out=conv, init_lora_weights=False))
    pm.double()
    add_lora(ref, 4, ["fc1", "fc2"])
    for p in ref.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            peft_layer = pm.base_model.model.get_submodule(name)
            s = peft_layer.scaling["default"]
            lin = getattr(ref, name)
            lin.lora_A.copy_(peft_layer.lora_A["default"].weight)
            lin.lora_B.copy_(s * peft_layer.lora_B["default"].weight)
            lin.lora_A.requires_grad_(True)
            lin.lora_B.requires_grad_(True)
        ref.head.weight.copy_(pm.base_model.model.head.modules_to_save["default"].weight)
        ref.head.bias.copy_(pm.base_model.model.head.modules_to_save["default"].bias)
    ref.head.requires_grad_(True)
    return pm, ref


_METHODS = {
    "psilora": lambda m: PSILoRA(m, 0.3, iters=2, ridge=1e-2, momentum=0.9, seed=0,
                                 max_grad_norm=5.0),
    "proj-psilora": lambda m: ProjPSILoRA(m, 0.3, iters=0, ridge=1e-2, momentum=0.9),
    "rplora-adam": lambda m: RPLoRA(m, 0.05, ridge=1e-2, optimizer="adam"),
    "svdlora": lambda m: SVDLoRA(m, 0.3, momentum=0.5),
    "scaled-psilora": lambda m: ScaledPSILoRA(m, 0.2, iters=1, seed=0),
}


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("method", sorted(_METHODS))
def test_peft_step_equals_loralinear_step(method, conv):
    alpha = 12.0  # scaling s = 3
    pm, ref = _pair(conv, alpha)
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(pm(x), ref(x))
    opt_p, opt_r = _METHODS[method](pm), _METHODS[method](ref)
    assert [la.scaling for la in opt_p.layers] == [3.0, 3.0]
    A0 = opt_p.layers[0].A.detach().clone()
    for _ in range(3):
        for model, opt in ((pm, opt_p), (ref, opt_r)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for lp, lr_ in zip(opt_p.layers, opt_r.layers, strict=True):
        torch.testing.assert_close(3.0 * lp.B, lr_.B, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(lp.A, lr_.A, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(opt_p.layers[0].A, A0)
    torch.testing.assert_close(pm(x), ref(x), rtol=1e-9, atol=1e-12)  # heads stepped too


# ---------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------


def test_bf16_parameters_float32_math_cast_back():
    """bf16 PEFT factors: the step is the float32 LoRSum of the captured X, Δ, cast to bf16."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 4)).to(torch.bfloat16)
    pm = peft.get_peft_model(base, _lora_config(target_modules=["0"], init_lora_weights=False))
    pm.to(torch.bfloat16)
    opt = PSILoRA(pm, 0.2, iters=1, ridge=1e-2, momentum=0.9, seed=0)
    (layer,) = opt.layers
    assert layer.A.dtype == torch.bfloat16 and layer.dtype == torch.float32
    seen = {}

    def hook(module, args, out):
        seen["X"] = args[0].detach().float()
        out.register_hook(lambda g: seen.update(D=g.float()))

    layer.module.register_forward_hook(hook)
    x = torch.randn(32, 12).to(torch.bfloat16)
    pm(x).float().pow(2).mean().backward()
    s = layer.scaling
    U0, V0 = s * layer.B.detach().float(), layer.A.detach().float().mT
    M_V = torch.randn(12, 4, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64).float()
    target = LowRankSum([(1.0, U0, V0), (-0.2, seen["D"].mT, seen["X"].mT),
                         (-0.2 * 0.9, torch.zeros(10, 4), M_V)])
    U1, V1 = lorsum(target, U0, V0, iters=1, ridge=0.2 * 1e-2)
    opt.step()
    assert layer.A.dtype == layer.B.dtype == torch.bfloat16
    assert opt.state[layer.B]["momentum_U"].dtype == torch.float32
    torch.testing.assert_close(layer.B, (U1 / s).to(torch.bfloat16), rtol=8e-3, atol=1e-6)
    torch.testing.assert_close(layer.A, V1.mT.to(torch.bfloat16), rtol=8e-3, atol=1e-6)
    assert not torch.equal(layer.A.float(), V0.mT)  # it moved


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


def _token_dataset(n=32, seq=6, num_labels=3, seed=0):
    import datasets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 30, (n, seq), generator=g)
    return datasets.Dataset.from_dict({
        "input_ids": ids.tolist(),
        "attention_mask": torch.ones(n, seq, dtype=torch.long).tolist(),
        "labels": (ids[:, 1] % num_labels).tolist(),
    })


def test_trainer_schedule_moves_lambda_and_clipping_is_done_once(tmp_path):
    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(
        task_type="SEQ_CLS", target_modules=["query", "value"]))
    lr0, ridge, steps = 0.05, 1e-2, 5
    opt = PSILoRA(pm, lr0, ridge=ridge, momentum=0.9, max_grad_norm=1.0, seed=0)
    lams = []
    ridge_of = opt._ridge
    opt._ridge = lambda group: lams.append(ridge_of(group)) or lams[-1]
    args = common.training_arguments("psilora", tmp_path, max_steps=steps, batch_size=8,
                                     logging_steps=1, eval_steps=100, device="cpu")
    assert args.max_grad_norm == 0.0  # the optimizer clips; the Trainer does not
    assert common.training_arguments("lora", tmp_path, max_steps=1).max_grad_norm == 1.0
    head = pm.base_model.model.classifier.modules_to_save["default"].out_proj.weight
    head0, A0 = head.detach().clone(), opt.layers[0].A.detach().clone()
    trainer = Trainer(model=pm, args=args, train_dataset=_token_dataset(),
                      eval_dataset=_token_dataset(8), optimizers=(opt, None))
    trainer.train()
    # Linear decay without warmup: λ_t = ridge · lr0 · (1 − t/T), one value per layer and step.
    expected = [ridge * lr0 * (1 - t / steps) for t in range(steps) for _ in opt.layers]
    assert lams == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[0]["lr"] == 0.0 and opt.skipped_steps == 0
    assert not torch.equal(opt.layers[0].A, A0) and not torch.equal(head, head0)


def test_trainer_optimizer_cls_and_kwargs(tmp_path):
    pm = peft.get_peft_model(_tiny_roberta(), _lora_config(
        task_type="SEQ_CLS", target_modules=["query", "value"]))
    args = common.training_arguments("psilora", tmp_path, max_steps=1, device="cpu")
    trainer = Trainer(model=pm, args=args, train_dataset=_token_dataset(),
                      eval_dataset=_token_dataset(8),
                      optimizer_cls_and_kwargs=(PSILoRA, {"model": pm, "lr": 0.01}))
    trainer.create_optimizer()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(opt, PSILoRA) and len(opt.layers) == 4


# ---------------------------------------------------------------------------------------------
# Scripts, end to end on tiny local models (offline)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_tiny")
    tiny.make_tiny_model("roberta", d / "roberta", num_labels=2)
    tiny.make_tiny_model("roberta", d / "roberta3", num_labels=3)
    tiny.make_tiny_model("gpt2", d / "gpt2")
    tiny.make_tiny_glue(d / "sst2", "sst2", n_train=32, n_eval=8)
    shutil.copy(d / "sst2" / "train.jsonl", d / "sst2" / "validation.jsonl")  # memorise
    tiny.make_tiny_glue(d / "mnli", "mnli", n_train=16, n_eval=8)
    tiny.make_tiny_text(d / "text", n_train=200, n_eval=20)
    return d


def _run_args(d, **kw):
    args = ["--max-steps", "40", "--batch-size", "16", "--eval-steps", "20",
            "--logging-steps", "10", "--device", "cpu", "--lora-dropout", "0", "--out", str(d)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def test_glue_script_learns_tiny_task(tiny_dir, tmp_path):
    args = glue.parser().parse_args(_run_args(
        tmp_path, model=tiny_dir / "roberta", task="sst2", data_dir=tiny_dir / "sst2",
        method="psilora", lr=0.2))
    log = common.read_log(glue.run(args))
    assert log["settings"]["method"] == "psilora" and log["end"]["skipped_steps"] == 0
    losses = [v for _, v in log["eval"]["eval_loss"]]
    steps = [s for s, _ in log["eval"]["eval_loss"]]
    assert steps == [0, 20, 40]
    assert losses[-1] < 0.25 * losses[0]
    assert log["eval"]["eval_accuracy"][-1][1] > log["eval"]["eval_accuracy"][0][1]
    lrs = dict(log["train"]["learning_rate"])
    assert all(v == pytest.approx(1e-2 * lrs[s]) for s, v in log["train"]["ridge"])


def test_clm_script_gpt2_conv1d_perplexity_falls(tiny_dir, tmp_path):
    args = clm.parser().parse_args(_run_args(
        tmp_path, model=tiny_dir / "gpt2", train_file=tiny_dir / "text" / "train.txt",
        validation_file=tiny_dir / "text" / "validation.txt", block_size=32,
        method="psilora", lr=5.0, batch_size=8, max_steps=120, eval_steps=60))
    log = common.read_log(clm.run(args))
    ppl = [v for _, v in log["eval"]["eval_perplexity"]]
    assert ppl[-1] < 0.5 * ppl[0]
    assert log["end"]["best"] == pytest.approx(-ppl[-1])


def test_mnli_ablation_grid_and_bf16_run(tiny_dir, tmp_path):
    assert len(mnli_ablation.configurations("metric")) == 3 * 2 * 2 * 3
    assert len(mnli_ablation.configurations("damping")) == 4 * 4
    argv = _run_args(tmp_path, model=tiny_dir / "roberta3", data_dir=tiny_dir / "mnli",
                     max_steps=4, eval_steps=4, dtype="bfloat16")
    argv += ["--lrs", "0.5", "--metrics", "shampoo", "--dampings", "1e-3"]
    assert mnli_ablation.main(argv) == 0
    (path,) = tmp_path.glob("mnli_shampoo_p0.5_d0.001_lr0.5.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    settings, end = lines[0]["settings"], lines[-1]
    assert settings["metric"] == "shampoo" and settings["dtype"] == "bfloat16"
    assert settings["method"] == "scaled-psilora" and settings["lr"] == 0.5
    assert end["event"] == "end" and end["skipped_steps"] == 0 and end["step"] == 4
    assert all(v == v for e in lines[1:-1] for v in e.values() if isinstance(v, float))

"""Real-data analogues of the paper's Figs 2–4 (issue 6): fast builds and their numbers."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import analysis.figures.realdata  # noqa: E402,F401  (registers the figures)
from analysis import registry  # noqa: E402
from analysis.experiments import realdata as R  # noqa: E402

ALL_LM = set(R.LM_METHODS)
ALL_DIGITS = set(R.DIGITS_METHODS)


def _build(name, tmp_path):
    _, builder = registry.FIGURES[name]
    result = builder(fast=True)
    registry.save(name, result, tmp_path)
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert set(data) >= {"figure", "description", "notes", "settings", "series", "metrics"}
    assert "OFFLINE ANALOGUE" in data["notes"]
    return data


@pytest.fixture(scope="module")
def fig2(tmp_path_factory):
    return _build("fig2_lr_robustness", tmp_path_factory.mktemp("fig2"))


@pytest.fixture(scope="module")
def fig3(tmp_path_factory):
    return _build("fig3_scaled_ablation", tmp_path_factory.mktemp("fig3"))


@pytest.fixture(scope="module")
def fig4(tmp_path_factory):
    return _build("fig4_method_curves", tmp_path_factory.mktemp("fig4"))


def test_all_methods_importable():
    # The committed figures must include every method.
    assert set(R.available_methods(R.DIGITS_METHODS)) == ALL_DIGITS
    assert set(R.available_methods(R.LM_METHODS)) == ALL_LM


def test_encode_vocabulary():
    vocab = R.char_vocab()
    codes = R.encode("a\nZ~é")
    assert codes.tolist() == [vocab.index("a"), 0, vocab.index("Z"), vocab.index("~"), len(vocab)]
    assert R.uniform_perplexity() == len(vocab) + 1


def test_finetune_split_is_fixed_and_disjoint():
    train, val = R.finetune_text()
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert R.finetune_text() == (train, val)
    assert val[:200] not in train


def test_digits_split_fixed_and_standardised():
    Xtr, ytr, Xva, yva = R.load_digits_split()
    assert Xtr.shape[1] == 64 and len(Xtr) + len(Xva) == 1797
    assert abs(float(Xtr.mean())) < 1e-5
    assert set(ytr.tolist()) == set(range(10)) == set(yva.tolist())


def test_pretrained_cache_returns_independent_copies():
    cfg = R.CharLMConfig(pretrain_steps=5, context=16, d_model=32, n_heads=2, n_layers=1)
    a, info = R.pretrained_char_lm(cfg)
    b, _ = R.pretrained_char_lm(cfg)
    assert len(info["pretrain_loss"]) == 5
    with torch.no_grad():
        a.head.weight.add_(1.0)
    assert not torch.equal(a.head.weight, b.head.weight)
    c, _ = R.pretrained_char_lm(cfg)
    assert torch.equal(b.head.weight, c.head.weight)


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="method"):
        R.run_digits("adam", 1e-3)
    with pytest.raises(ValueError, match="method"):
        R.available_methods(["nope"])


def test_fig2_lr_curves(fig2):
    m = fig2["metrics"]
    uniform = m["uniform_ppl"]
    assert uniform == R.uniform_perplexity()
    # The briefly pretrained model already beats the uniform model on the held-out text.
    assert 1.0 < m["pretrained_val_ppl"] < uniform
    assert set(m["methods"]) == ALL_LM
    for row in m["methods"].values():
        assert len(row["mean"]) == len(row["lrs"]) >= 4
        assert math.log10(row["lrs"][-1] / row["lrs"][0]) >= 4 - 1e-9
        assert row["best"] is not None and 1.0 < row["best"] < uniform
        assert 0.0 <= row["robust_decades"] <= 4 + 1e-9
        lo, hi = row["robust_range"]
        assert row["robust_decades"] == pytest.approx(math.log10(hi / lo))
    assert m["most_robust_method"] in ALL_LM
    assert isinstance(m["claim_scaled_most_robust"], bool)


def test_committed_lr_curves_settings():
    """The committed LR-curve figures: >= 7 LRs over >= 4 decades, >= 3 seeds, every method."""
    from pathlib import Path

    for name, methods in (("fig2_lr_robustness", ALL_LM), ("fig4_lr_curves", ALL_DIGITS)):
        data = json.loads((Path(__file__).parents[1] / "figures" / f"{name}.json").read_text())
        assert not data["settings"]["fast"] and len(data["settings"]["seeds"]) >= 3
        assert set(data["metrics"]["methods"]) == methods
        for row in data["metrics"]["methods"].values():
            assert len(row["lrs"]) >= 7 and row["lrs"][-1] / row["lrs"][0] >= 1e4 * (1 - 1e-9)
            width, _, _ = R.robust_width(
                row["lrs"], [math.inf if v is None else v for v in row["mean"]],
                higher_is_better=name == "fig4_lr_curves")
            assert width == pytest.approx(row["robust_decades"])


def test_robust_width_interpolates_on_log_grid():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    # Accuracy: best 1.0 at 1e-2; 0.95 threshold crossed halfway to 1e-3 (0.9) and at 1e-1.
    w, lo, hi = R.robust_width(lrs, [0.9, 1.0, 0.95, 0.5], higher_is_better=True)
    assert w == pytest.approx(1.5) and lo == pytest.approx(10**-2.5) and hi == pytest.approx(0.1)
    # Perplexity: best 10 at 1e-1; 10.5 = 1.05 x best crossed at the grid end and halfway up.
    w, lo, hi = R.robust_width(lrs, [10.2, 10.4, 10.0, 11.0], higher_is_better=False)
    assert w == pytest.approx(2.5) and lo == pytest.approx(1e-3)
    # A diverged run (inf) ends the range at the last good grid point.
    w, _, _ = R.robust_width(lrs, [10.0, math.inf, 10.0, 10.0], higher_is_better=False)
    assert w == pytest.approx(0.0)
    with pytest.raises(ValueError, match="increasing"):
        R.robust_width([1.0, 0.1], [1, 2], higher_is_better=True)


def test_fig3_ablation_grid(fig3):
    grid = fig3["settings"]["grid"]
    rows = fig3["metrics"]["table"]
    expected = 1
    for k in ("metric", "power", "damping", "lr"):
        expected *= len(grid[k])
    assert len(rows) == expected == len(fig3["series"])
    assert {r["metric"] for r in rows} == {"kfac", "shampoo"}
    assert {r["power"] for r in rows} == {0.25, 0.5}
    for r in rows:
        assert 0.0 <= r["best_acc"] <= 1.0
    # Scaled PSI-LoRA learns the task: its best configuration is far above chance (0.1).
    assert fig3["metrics"]["best_config"]["best_acc"] > 0.6


def test_fig4_table_and_curves(fig4):
    table = fig4["metrics"]["table"]
    assert set(table) == ALL_DIGITS
    for method, row in table.items():
        for key in ("best_acc", "mean_acc", "last_acc"):
            s = row[key]
            assert s["min"] <= s["mean"] <= s["max"] <= 1.0
        assert row["best_acc"]["mean"] >= row["last_acc"]["mean"] - 1e-12
        curve = fig4["series"][method]
        assert curve["epochs"][0] == 0 and len(curve["val_acc_mean"]) == len(curve["epochs"])
        # Before training every method sees the same frozen random network.
        assert curve["val_acc_mean"][0] == pytest.approx(fig4["series"]["lora-adamw"]
                                                          ["val_acc_mean"][0])
    # Trained methods are far above chance (0.1), and LoRA-AdamW improves on its untrained adapter.
    for method in ("full-adamw", "lora-adamw", "psilora-1", "scaled-psilora"):
        assert table[method]["best_acc"]["mean"] > 0.6
    lora = fig4["series"]["lora-adamw"]["val_acc_mean"]
    assert lora[-1] > lora[0] + 0.3
    assert all(math.isfinite(v) for v in fig4["series"]["lora-adamw"]["train_loss_mean"])


def test_torch_threads_restores_setting():
    before = torch.get_num_threads()
    with R.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

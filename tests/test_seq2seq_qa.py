"""SQuAD v2 with T5 (issue 18): the ``run_seq2seq_qa`` script end to end, offline, on a tiny
random T5 with a word-level tokenizer built locally and synthetic question/context pairs."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("datasets")

from analysis.experiments.hf import common, tiny  # noqa: E402
from analysis.experiments.hf import run_seq2seq_qa as qa  # noqa: E402


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    d = tmp_path_factory.mktemp("t5")
    tiny.make_tiny_model("t5", d / "t5")
    train, val = tiny.make_tiny_squad(d / "data", n_train=64, n_eval=16)
    return d / "t5", train, val


def test_squad_v2_scores_definition():
    refs = {
        "a": {"text": ["the cat", "a cat"]},   # normalises to "cat" twice
        "b": {"text": ["black dog"]},
        "c": {"text": []},                     # unanswerable
        "d": {"text": []},
    }
    preds = {"a": "The Cat.", "b": "dog", "c": "", "d": "dog"}
    s = qa.squad_v2_scores(preds, refs)
    # b: precision 1, recall 1/2 -> F1 2/3; d: answered an unanswerable question -> 0.
    assert s["HasAns_exact"] == pytest.approx(50.0) and s["HasAns_f1"] == pytest.approx(
        100 * (1 + 2 / 3) / 2)
    assert s["NoAns_exact"] == s["NoAns_f1"] == pytest.approx(50.0)
    assert s["exact"] == pytest.approx(50.0) and s["f1"] == pytest.approx(
        100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert (s["total"], s["HasAns_total"], s["NoAns_total"]) == (4, 2, 2)
    assert "NoAns_total" not in qa.squad_v2_scores({"a": "cat"}, {"a": refs["a"]})
    assert qa.normalize_answer("  An Apple, the END! ") == "apple end"
    with pytest.raises(ValueError, match="same"):
        qa.squad_v2_scores({"a": "x"}, refs)
    with pytest.raises(TypeError, match="dict"):
        qa.squad_v2_scores([("a", "x")], refs)


def test_input_format_and_targets(tiny_t5):
    assert qa.qa_input("  after w3", " w1 w3 w7") == "question: after w3 context: w1 w3 w7"
    assert qa._target({"text": [], "answer_start": []}) == qa.NO_ANSWER == ""
    assert qa._target({"text": ["w7", "w8"], "answer_start": [6, 9]}) == "w7"
    _, train, _ = tiny_t5
    rows = [json.loads(line) for line in open(train)]
    for r in rows:  # the synthetic answers are spans of their contexts, as in SQuAD
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True):
            assert r["context"][start:start + len(text)] == text
    n_empty = sum(not r["answers"]["text"] for r in rows)
    assert 0 < n_empty < len(rows)
    with pytest.raises(ValueError, match="together"):
        qa.load_squad(qa.parser().parse_args(["--train-file", train]))


def _args(model, train, val, out, *extra):
    return qa.parser().parse_args([
        "--model", str(model), "--train-file", str(train), "--validation-file", str(val),
        "--max-steps", "30", "--batch-size", "16", "--eval-steps", "10", "--logging-steps", "5",
        "--device", "cpu", "--lora-dropout", "0", "--out", str(out), *extra])


@pytest.mark.parametrize("method, extra", [
    ("scaled-psilora", ["--lr", "0.5"]),                       # the paper's warm-up, 3 %
    ("psilora", ["--lr", "0.5"]),                              # warm-up: a first step at lr 0
])
def test_script_trains_tiny_t5_and_writes_outputs(tiny_t5, tmp_path, method, extra):
    model, train, val = tiny_t5
    args = _args(model, train, val, tmp_path, "--method", method, *extra)
    log_path = qa.run(args)
    log = common.read_log(log_path)
    assert log["settings"]["method"] == method and log["settings"]["target_modules"] == "q,v"
    assert log["end"]["skipped_steps"] == 0 and log["end"]["step"] == 30
    evals = log["eval"]["eval_loss"]
    assert [s for s, _ in evals] == [0, 10, 20, 30]
    assert evals[-1][1] < 0.75 * evals[0][1]
    train_loss = [v for _, v in log["train"]["loss"]]
    assert train_loss[-1] < 0.8 * train_loss[0]
    stem = log_path[: -len(".jsonl")]
    predictions = json.loads(open(stem + "_predictions.json").read())
    metrics = json.loads(open(stem + "_metrics.json").read())
    refs = {r["id"]: r["answers"] for r in map(json.loads, open(val))}
    assert set(predictions) == set(refs)
    assert all(isinstance(p, str) for p in predictions.values())
    expected = qa.squad_v2_scores(predictions, refs)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    assert metrics["eval_loss"] == pytest.approx(evals[-1][1])
    assert metrics["total"] == metrics["HasAns_total"] + metrics["NoAns_total"] == 16


def test_psilora_adapter_survives_a_zero_lr_first_step(tiny_t5):
    from transformers import AutoModelForSeq2SeqLM

    model, _, _ = tiny_t5
    pm = common.peft_model(AutoModelForSeq2SeqLM.from_pretrained(str(model)),
                           task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"], dropout=0.0)
    opt = common.build_optimizer("psilora", pm, 0.5)
    ids = torch.randint(5, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    for lr in (0.0, 0.5):
        opt.param_groups[0]["lr"] = lr
        pm(input_ids=ids, labels=ids[:, :3].contiguous()).loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(opt.layers[0].B.detach().norm()) > 0.0

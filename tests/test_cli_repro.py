"""CLI output folders, quiet progress, timing-free JSON, byte-identical figures, bench verdict."""

from __future__ import annotations

import json

import pytest

from analysis import _timing, registry
from analysis.__main__ import build_parser


def test_fast_never_targets_committed_figures(tmp_path):
    assert registry.output_dir(None, fast=False) == registry.COMMITTED_DIR
    tmp = registry.output_dir(None, fast=True, log=lambda m: None)
    assert not registry.is_committed(tmp) and tmp.is_dir()
    forced = registry.output_dir(registry.COMMITTED_DIR, fast=True, force=True)
    assert registry.is_committed(forced)
    assert registry.output_dir(tmp_path, fast=True) == tmp_path
    rejected = registry.FigureResult(None, {}, {}, {}, extra={"acceptance": {"accepted": False}})
    out = registry.output_dir(registry.COMMITTED_DIR, fast=False, result=rejected,
                              log=lambda m: None)
    assert not registry.is_committed(out)


def test_progress_quiet_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    it = [1, 2]
    assert registry.progress(it) is it


def test_drop_timings():
    d = {"seconds_per_run": 1.0, "a": {"seconds_x": 2, "run_seconds": 3, "b": [1]}, "secs": 4}
    assert registry.drop_timings(d) == {"a": {"b": [1]}, "secs": 4}


def test_bench_is_listed_on_demand():
    registry.load_all()
    assert "bench" in registry.FIGURES and "bench" not in registry.default_names()
    args = build_parser().parse_args(["figures", "--only", "bench", "--fast"])
    assert args.only == ["bench"] and args.fast and args.out is None


def test_help_is_plain_text(capsys):
    for cmd in ("figures", "list", "verify", "bench"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and "usage:" in text


def test_monitor_rejects_load_and_spread(monkeypatch):
    monkeypatch.setattr(_timing.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    mon = _timing.Monitor(cpu_count=2)
    mon.add(_timing.Timing(1.0, 5, 0.01))
    assert mon.verdict()["accepted"]
    mon.add(_timing.Timing(1.0, 5, 0.5))
    mon.add(_timing.Timing(1.0, 5, 0.6))
    v = mon.verdict()
    assert not v["accepted"] and "spread" in v["reasons"][0]
    busy = _timing.Monitor(cpu_count=2, load_before=6.4)
    assert not busy.verdict()["accepted"]
    assert _timing.relative_spread([1.0, 1.0, 1.0, 1.0]) == 0.0


def test_run_until_accepted_repeats(monkeypatch):
    loads = iter([6.0, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(_timing.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    calls = []
    result, verdict = _timing.run_until_accepted(lambda mon: calls.append(1) or len(calls),
                                                 attempts=2, wait_s=0, log=lambda m: None,
                                                 sleep=lambda s: None)
    assert verdict["accepted"] and verdict["attempts"] == 2 and result == 2


def test_fast_figure_is_byte_identical(tmp_path):
    registry.load_all()
    outs = []
    for k in range(2):
        res = registry.build("ridge_effect", fast=True)
        outs.append(registry.save("ridge_effect", res, tmp_path / str(k)))
    for a, b in zip(*outs, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not any(k.startswith("seconds") for k in json.loads(outs[0][2].read_text())["metrics"])

"""``python -m analysis bench --fast``: JSON structure and accuracy columns (never the times)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import bench
from lowrank_prox import lorsum, truncated_svd

PROJECTION_KEYS = {"case", "seed", "m", "n", "r", "ratio", "eta", "method", "time_s", "repeats",
                   "excess", "rel_excess"}
METHODS = ["scipy svds", "sklearn randomized_svd", "torch.svd_lowrank",
           "truncated_svd randomized"] + [f"LoRSum x{k}" for k in bench.LORSUM_ITERS]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(fast=True, out=out) == 0
    for ext in ("png", "pdf", "json"):
        assert (out / f"bench.{ext}").stat().st_size > 0
    return json.loads((out / "bench.json").read_text())


def _dense_rel_excess(problem, A, B):
    Y = problem.dense()
    s = np.linalg.svd(Y, compute_uv=False)
    tail2 = np.sum(s[problem.r:] ** 2)
    return (np.sum((Y - np.asarray(A) @ np.asarray(B).T) ** 2) - tail2) / tail2


# -- the problem generator and the error measure -----------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 0.9, 0.99])
def test_make_problem_has_the_requested_gap_ratio(ratio):
    p = bench.make_problem(200, 150, 8, ratio=ratio, n_rows=16, seed=3)
    s = np.linalg.svd(p.dense(), compute_uv=False)
    assert s[8] / s[7] == pytest.approx(ratio, rel=1e-8)
    assert p.tail2 == pytest.approx(np.sum(s[8:] ** 2), rel=1e-10)
    # the warm start is close to, but not, the projection
    rel0 = _dense_rel_excess(p, p.U, p.V)
    assert 1e-6 < rel0


def test_excess_error_matches_dense_computation():
    p = bench.make_problem(120, 90, 6, n_rows=10, seed=1)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((120, 6)), rng.standard_normal((90, 6))
    Y = p.dense()
    s = np.linalg.svd(Y, compute_uv=False)
    want = np.sum((Y - A @ B.T) ** 2) - np.sum(s[6:] ** 2)
    assert bench.excess_error(p, A, B) == pytest.approx(want, rel=1e-10)
    U, s_, Vh = truncated_svd(p.target, 6)
    assert abs(bench.excess_error(p, U * s_, Vh.T)) < 1e-12 * np.sum(s**2)


@pytest.mark.parametrize("kwargs", [dict(ratio=1.0), dict(ratio=0.0), dict(n_rows=200)])
def test_make_problem_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        bench.make_problem(100, 100, 8, **kwargs)


# -- the fast run's JSON -----------------------------------------------------------------


def test_structure(sidecar):
    assert sidecar["figure"] == "bench"
    assert {"settings", "series", "metrics", "notes", "description"} <= set(sidecar)
    series = sidecar["series"]
    assert {"projection", "hard", "floor", "optimizers", "seven_b", "skipped"} <= set(series)
    sizes, ranks = sidecar["settings"]["sizes"], sidecar["settings"]["ranks"]
    proj = series["projection"]
    for row in proj:
        assert PROJECTION_KEYS <= set(row)
        assert row["time_s"] > 0 and row["repeats"] >= 1
    for m in sizes:
        for r in ranks:
            got = {row["method"] for row in proj if row["m"] == m and row["r"] == r}
            assert set(METHODS) <= got, (m, r)
    assert {(f["m"], f["r"]) for f in series["floor"]} == {(m, r) for m in sizes for r in ranks}
    for f in series["floor"]:
        assert f["multiple"] == pytest.approx(f["lorsum1_s"] / f["floor_s"])
    cases = {row["case"] for row in series["hard"]}
    assert cases == {f"hard {q}" for q in bench.HARD_RATIOS}
    assert set(sidecar["metrics"]["scaling_exponent"]) >= set(METHODS)
    rows = series["optimizers"]
    assert rows and rows[0]["method"] == "LoRA + Adam" and rows[0]["time_ratio"] == 1.0
    for row in rows:
        assert row["method"] not in series["skipped"]


def test_reference_methods_are_exact(sidecar):
    """Full SVD and ARPACK reach Π_r(Y) to rounding; the columns measure that."""
    for row in sidecar["series"]["projection"] + sidecar["series"]["hard"]:
        if row["method"].startswith("full SVD") or row["method"] == "scipy svds":
            assert abs(row["rel_excess"]) < 1e-9, row
        assert row["rel_excess"] > -1e-9, row  # nothing beats the optimum


def test_lorsum_excess_is_monotone_in_iterations(sidecar):
    """Every ALS half-step is an exact block minimiser (SPEC §3), so more iterations never hurt."""
    rows = sidecar["series"]["projection"] + sidecar["series"]["hard"]
    keys = {(row["case"], row["m"], row["r"]) for row in rows}
    for key in keys:
        rel = [next(x["rel_excess"] for x in rows if (x["case"], x["m"], x["r"]) == key
                    and x["method"] == f"LoRSum x{k}") for k in bench.LORSUM_ITERS]
        assert all(b <= a + 1e-12 for a, b in zip(rel, rel[1:], strict=False)), (key, rel)


def test_hard_spectra_are_harder(sidecar):
    """The gap ratio is as requested and LoRSum x1's error grows with it (SPEC §4 rate)."""
    hard = sidecar["series"]["hard"]
    for q in bench.HARD_RATIOS:
        for row in hard:
            if row["case"] == f"hard {q}":
                assert row["ratio"] == pytest.approx(q, rel=1e-8)
    x1 = [next(r["rel_excess"] for r in hard if r["case"] == f"hard {q}"
               and r["method"] == "LoRSum x1") for q in bench.HARD_RATIOS]
    assert x1[0] < x1[1]


def test_accuracy_columns_recomputed_densely(sidecar):
    """Rebuild one problem from its seed and recompute the excess with m×n matrices."""
    rows = sidecar["series"]["projection"]
    m, r = sidecar["settings"]["sizes"][0], sidecar["settings"]["ranks"][-1]
    pick = {row["method"]: row for row in rows if row["m"] == m and row["r"] == r}
    p = bench.make_problem(m, m, r, seed=pick["LoRSum x1"]["seed"])
    assert pick["LoRSum x1"]["eta"] == pytest.approx(p.eta, rel=1e-12)
    for k in (1, 2):
        U, V = lorsum(p.target, p.U, p.V, iters=k)
        want = _dense_rel_excess(p, U, V)
        assert pick[f"LoRSum x{k}"]["rel_excess"] == pytest.approx(want, rel=1e-6)
    U, s, Vh = truncated_svd(p.target, r, method="randomized", random_state=0)
    want = _dense_rel_excess(p, U * s, Vh.T)
    got = pick["truncated_svd randomized"]["rel_excess"]
    assert got == pytest.approx(want, rel=1e-3, abs=1e-10)


def test_targets_are_consistent(sidecar):
    t = sidecar["metrics"]["targets"]
    assert t["lorsum1_vs_full_svd_met"] == (t["lorsum1_vs_full_svd"] >= 1000)
    assert t["lorsum1_floor_multiple_met"] == (t["lorsum1_floor_multiple"] <= 2.0)
    for base in ("svd_lowrank", "svds"):
        key = f"matched_vs_{base}"
        assert key in t
        if t[key] is not None:
            assert t[key + "_met"] == (t[key] >= 10)
            assert t[key + "_iters"] in bench.LORSUM_ITERS
    assert t["lorsum1_vs_unscaled_met"] == (t["lorsum1_vs_unscaled"] <= 1.25)
    for key in ("lorsum1_vs_full_svd", "lorsum1_floor_multiple", "lorsum1_vs_unscaled"):
        assert key in sidecar["notes"]


def test_unscaled_path_gives_the_same_result(sidecar):
    # inside the scaling window lorsum is bit-identical to the pre-safeguard code path, so the
    # timing comparison compares the same arithmetic (issue 14)
    proj = sidecar["series"]["projection"]
    new = {(r["m"], r["seed"]): r["excess"] for r in proj if r["method"] == "LoRSum x1"}
    old = {(r["m"], r["seed"]): r["excess"] for r in proj if r["method"] == bench.UNSCALED}
    assert new and new.keys() == old.keys()
    assert all(new[k] == old[k] for k in new)

# -- the figure, redrawn from the committed JSON (no benchmark run) ---------------------------


def test_redraw_from_committed_json_writes_images_and_keeps_the_json(tmp_path):
    from analysis.registry import COMMITTED_DIR

    committed = (COMMITTED_DIR / "bench.json").read_bytes()
    paths = bench.redraw(out=tmp_path)
    assert [p.name for p in paths] == ["bench.png", "bench.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert (COMMITTED_DIR / "bench.json").read_bytes() == committed
    assert not (tmp_path / "bench.json").exists()
    with pytest.raises(ValueError, match="json_path"):
        bench.redraw(tmp_path / "missing.json", out=tmp_path)
    (tmp_path / "other.json").write_text('{"series": {}}')
    with pytest.raises(ValueError, match="not a benchmark JSON"):
        bench.redraw(tmp_path / "other.json", out=tmp_path)


def test_figure_panels_are_readable():
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    from analysis.registry import COMMITTED_DIR
    from analysis.style import FAMILY_COLORS, figure_title

    path = COMMITTED_DIR / "bench.json"
    data = json.loads(path.read_text())
    fig = bench.figure_from_json(path)
    assert figure_title(fig).startswith("Benchmark")
    ax_a, ax_b, ax_c, ax_d = fig.axes
    # (a) one labelled tick per size, no minor labels (they overlapped)
    sizes = [str(m) for m in data["settings"]["sizes"]]
    assert [t.get_text() for t in ax_a.get_xticklabels()] == sizes
    assert all(not t.get_text() for t in ax_a.get_xticklabels(minor=True))
    # (b) methods named in the legend, not by point labels (only the short "×K" marks)
    legend_b = [t.get_text() for t in ax_b.get_legend().get_texts()]
    # (the pre-safeguard timing reference is not drawn: its ratio is in the notes)
    methods = {row["method"] for row in data["series"]["projection"]} - {bench.UNSCALED}
    assert methods <= set(legend_b)
    assert "lorsum1_vs_unscaled" in data["notes"] or "unscaled" in data["notes"]
    assert all(t.get_text().startswith("×") for t in ax_b.texts)
    # (d) the dotted line is the PSI-LoRA step target, named in the legend; family colours
    legend_d = [t.get_text() for t in ax_d.get_legend().get_texts()]
    assert any(f"≤ {bench.PSILORA_STEP_TARGET:g}×" in lab for lab in legend_d)
    dotted = [ln for ln in ax_d.get_lines() if ln.get_linestyle() == ":" and ln.get_xydata().size]
    assert [ln.get_ydata()[0] for ln in dotted] == [bench.PSILORA_STEP_TARGET]
    labels = [t.get_text() for t in ax_d.get_xticklabels()]
    bars = ax_d.patches[: len(labels)]  # the step-time bars, in method order
    for lab, bar in zip(labels, bars, strict=True):
        fam = {"LoRA + Adam": "LoRA", "PSI-LoRA x1": None}.get(lab, lab)
        if fam is not None:
            assert same_color(bar.get_facecolor(), FAMILY_COLORS[fam]), lab
    assert len(ax_c.get_legend().get_texts()) == len(bench.HARD_RATIOS)
    plt.close(fig)


def test_captured_rows_are_counted(sidecar):
    """The rows X, Δ held between backward and step (in ``__slots__`` objects of the capture)
    are found: exactly the capture's own byte count, and non-zero for the capturing methods."""
    import torch

    from lowrank_prox.nn import LoRALinear
    from lowrank_prox.optim import PSILoRA

    model = torch.nn.Sequential(LoRALinear(32, 16, 4), torch.nn.Tanh(), LoRALinear(16, 8, 2))
    opt = PSILoRA(model, 0.1, momentum=0.9)
    model(torch.randn(64, 32)).pow(2).mean().backward()
    skip = set(bench._storages(dict(opt.state))) | set(bench._storages(list(model.parameters())))
    held = {k: v for k, v in bench._storages(opt, attributes=True).items() if k not in skip}
    assert sum(held.values()) == sum(la.capture.nbytes for la in opt.layers) == 64 * (48 + 24) * 4
    rows = {row["method"]: row for row in sidecar["series"]["optimizers"]}
    assert rows["LoRA + Adam"]["captured_bytes"] == 0
    for method in ("PSI-LoRA x1", "Scaled PSI-LoRA", "SVDLoRA", "RPLoRA"):
        assert rows[method]["captured_bytes"] > 0, method

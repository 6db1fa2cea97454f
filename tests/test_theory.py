"""Theory verification (issue 4): Prop. 1, Thm 3.1, ridge, special cases, verify CLI, figures.

Tolerances: identities to 1e-12 (float64 rounding), fitted per-iteration rates within 5% in the
exponent (|log ρ_meas / log ρ_pred − 1| ≤ 0.05), log-log slopes within 0.05.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis import theory as T
from analysis import verify

ROUNDING = 1e-12
RATE_TOL = 0.05
SLOPE_TOL = 0.05


# -- helpers -------------------------------------------------------------------------------


def test_fit_rate_recovers_a_geometric_sequence():
    k = np.arange(40)
    v = 3.0 * 0.7**k
    v[:3] *= 5.0  # a transient before k_min
    rate, k1, k2 = T.fit_rate(k, v, lo=1e-12, hi=10.0, k_min=3)
    assert abs(rate - 0.7) < 1e-12 and k1 == 3 and k2 == 39
    assert math.isnan(T.fit_rate(k, v, lo=1e-12, hi=1e-11)[0])  # window too short


def test_excess_error_matches_direct_difference():
    rng = np.random.default_rng(0)
    Y, _, s, Vf = T.gap_matrix(30, 20, 3, 0.8, rng)
    V = Vf[:, :3] + 0.05 * rng.standard_normal((20, 3))
    Q, _ = np.linalg.qr(V)
    direct = np.linalg.norm(Y - Y @ Q @ Q.T) ** 2 - np.sum(s[3:] ** 2)
    assert direct > 1e-4
    assert abs(T.excess_error(s, Vf, 3, V) - direct) <= 1e-12 * np.sum(s**2)
    assert abs(T.excess_error(s, Vf, 3, Vf[:, :3])) <= 1e-25  # exact subspace: zero excess


def test_gap_spectrum_has_the_requested_gap():
    s = T.gap_spectrum(4, 0.6, 20)
    assert s[3] == 1.0 and abs(s[4] / s[3] - 0.6) < 1e-15 and np.all(np.diff(s) < 0)


# -- Proposition 1 -----------------------------------------------------------------------------


def test_prop1():
    p = T.run_prop1()
    assert p["ey_rel_err"] <= ROUNDING
    assert p["competitor_min_ratio"] >= 1 - ROUNDING
    assert p["prox_identity_err"] <= ROUNDING
    assert p["prox_min_gap"] >= -ROUNDING * max(1.0, abs(p["prox_f_star"]))
    assert p["tie_residual_diff"] <= ROUNDING
    assert abs(p["tie_residuals"][0] - p["tie_floor"]) <= ROUNDING * p["tie_floor"]
    assert abs(p["tie_distance"] - math.sqrt(2)) <= 1e-10  # two distinct minimisers


# -- Theorem 3.1 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rates():
    return T.run_rates()


@pytest.mark.parametrize("ratio", [0.3, 0.6, 0.9, 0.99])
def test_thm31_rates_match_prediction(rates, ratio):
    v = rates[ratio]
    assert v["rate_predicted"] == pytest.approx(ratio**2)
    assert T.exponent_error(v["rate_measured"], ratio**2) <= RATE_TOL
    assert T.exponent_error(v["excess_rate_measured"], ratio**4) <= RATE_TOL
    k1, k2 = v["rate_window"]
    assert k2 - k1 >= 4  # the fit uses enough iterations to mean something
    assert v["bound_violation"] <= 1 + 1e-8 and v["bound_checked_k"] >= 10


def test_thm31_span_is_block_power_iteration():
    w = T.run_power_equivalence()
    assert w["max_angle"] <= 1e-10
    assert w["angle_to_limit"].min() > 0.1  # the check is not trivial: far from U_r*


def test_thm31_warm_start():
    warm = T.run_warm_start()
    assert abs(warm["tan0_slope"] - 1) <= SLOPE_TOL
    assert warm["wedin_max_ratio"] <= 1
    for row in warm["rows"]:
        k = np.arange(len(row["tan_warm"]))
        chk = (row["bound_warm"] >= 1e-12) & (k >= 1)
        assert np.all(row["tan_warm"][chk] <= row["bound_warm"][chk] * (1 + 1e-8))
        if row["eta"] <= 1e-1:  # warm start beats a random start at K = 1
            assert row["tan_warm"][1] < row["tan_random"][1]
    r2 = next(r for r in warm["rows"] if r["eta"] == 1e-2)
    assert r2["dist_K1"] < 1e-4 and r2["dist_K2"] < 1e-8


# -- ridge -------------------------------------------------------------------------------------


def test_ridge_fixed_point_is_order_lambda():
    res = T.run_ridge(T.RidgeConfig(lambdas=(1e-6, 1e-4, 1e-2), iters=1500, trace_iters=60))
    assert abs(res["fixed_slope"] - 1) <= SLOPE_TOL
    assert abs(res["fast_shift_slope"] - 1) <= SLOPE_TOL
    for row in res["rows"]:
        assert row["fixed_unconverged"] <= 0.05 * row["fixed_dist"]  # really a fixed point


# -- special cases -----------------------------------------------------------------------------


def test_special_cases():
    s = T.run_special_cases()
    for key in ("scaledgd_err", "rplora_err", "gauss_seidel_err", "tangent_err"):
        assert s[key] <= ROUNDING, key
    assert s["svdlora_dist"] <= 1e-10
    for key in ("svdlora", "alternating", "jacobi"):
        assert abs(s[f"first_order_{key}_slope"] - 2) <= SLOPE_TOL, key
    # ScaledGD is *not* the tangent projection to first order: its remainder is O(η).
    assert abs(s["first_order_jacobi_vs_PT_slope"] - 1) <= SLOPE_TOL


# -- verify CLI --------------------------------------------------------------------------------


def test_verify_exits_zero_and_writes_json(tmp_path, capsys):
    path = tmp_path / "verify.json"
    assert verify.main(json_path=path) == 0
    out = capsys.readouterr().out
    assert "claim" in out and "holds" in out and " NO" not in out
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) >= 20 and all(r["holds"] for r in rows)
    claims = " ".join(r["claim"] for r in rows)
    for word in ("Prop1", "Thm3.1", "Ridge", "ScaledGD", "RPLoRA", "Gauss-Seidel", "SVDLoRA",
                 "P_T"):
        assert word in claims


# -- figures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built():
    """The fast FigureResults of the three theory figures (figures inspectable after saving)."""
    from analysis.registry import load_all

    figs = load_all()
    return {name: figs[name][1](fast=True)
            for name in ("prop1_projection", "thm31_rate", "ridge_effect")}


@pytest.fixture(scope="module")
def figures(built, tmp_path_factory):
    from analysis.registry import save

    out = tmp_path_factory.mktemp("figures")
    data = {}
    for name, result in built.items():
        save(name, result, out)
        data[name] = json.loads((out / f"{name}.json").read_text())
        assert (out / f"{name}.png").stat().st_size > 0
        pdf = (out / f"{name}.pdf").read_bytes()
        assert b"CreationDate" not in pdf
    return data


def test_figure_sidecars_have_every_field(figures):
    for name, d in figures.items():
        assert d["figure"] == name
        assert {"settings", "series", "metrics", "notes", "description"} <= set(d)
        assert d["notes"] and d["metrics"]


@pytest.mark.parametrize("ratio", ["0.3", "0.6", "0.9", "0.99"])
def test_thm31_rate_metrics(figures, ratio):
    m = figures["thm31_rate"]["metrics"]
    pred, meas = m[f"rate_predicted_{ratio}"], m[f"rate_measured_{ratio}"]
    assert pred == pytest.approx(float(ratio) ** 2)
    assert T.exponent_error(meas, pred) <= RATE_TOL
    assert m[f"bound_max_ratio_{ratio}"] <= 1 + 1e-8


def test_prop1_projection_metrics(figures):
    m = figures["prop1_projection"]["metrics"]
    for ratio in ("0.3", "0.6", "0.9", "0.99"):
        assert m[f"min_residual_over_floor_{ratio}"] >= 1 - ROUNDING
        assert m[f"distance_K8_{ratio}"] <= m[f"distance_K1_{ratio}"]
    assert m["distance_final_0.3"] <= 1e-12 and m["distance_final_0.6"] <= 1e-12
    assert m["ey_rel_err"] <= ROUNDING and m["competitor_min_ratio"] >= 1 - ROUNDING


def test_ridge_effect_metrics(figures):
    m = figures["ridge_effect"]["metrics"]
    assert abs(m["fixed_slope"] - 1) <= SLOPE_TOL
    assert abs(m["fast_shift_slope"] - 1) <= SLOPE_TOL
    for lam in ("0.0001", "0.01", "0.1"):
        assert 0.5 <= m[f"slow_ratio_{lam}"] <= 2.0


# -- figure readability (the drawn objects, issue 16) ----------------------------------------


def _hex(color):
    from matplotlib.colors import to_hex

    return to_hex(color)


def test_theory_figures_have_titles_and_labelled_axes(built):
    from analysis.style import figure_title

    for name, result in built.items():
        assert figure_title(result.fig), name
        for ax in result.fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (name, ax)


def test_theory_figure_colours_follow_the_swept_parameter(built):
    from analysis.style import sweep_colors

    ratios = T.ProjectionConfig().ratios
    gap = sweep_colors(ratios)
    assert len(set(gap.values())) == len(ratios)
    ax = built["prop1_projection"].fig.axes[1]  # one line per gap ratio, in config order
    assert [_hex(line.get_color()) for line in ax.get_lines()] == [gap[r] for r in ratios]
    # ridge panel (b): one line per λ, light to dark in λ order
    lams = [float(x) for x in built["ridge_effect"].series["lambda"]]
    lines = built["ridge_effect"].fig.axes[1].get_lines()
    assert [_hex(line.get_color()) for line in lines] == [sweep_colors(lams)[v] for v in lams]
    assert [line.get_label() for line in lines] == [f"λ = {v:g}" for v in lams]


def test_thm31_iteration_ticks_are_integers_and_one_legend_explains_the_band(built):
    fig = built["thm31_rate"].fig
    for ax in fig.axes[:5]:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.xaxis.get_major_locator()() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert any(lab.startswith("shaded:") for lab in labels)
    assert any("bound" in lab for lab in labels) and len(labels) == 5

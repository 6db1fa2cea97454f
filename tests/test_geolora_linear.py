"""GeoLoRA on the paper's linear task (companion figure of Fig 1a), checked by its JSON numbers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


def test_geolora_linear_task_figure(tmp_path):
    from analysis.figures.geolora import geolora_linear_task
    from analysis.registry import save

    result = geolora_linear_task(fast=True)
    _check_drawing(result.fig)
    save("geolora_linear_task", result, tmp_path)
    data = json.loads((tmp_path / "geolora_linear_task.json").read_text())
    m = data["metrics"]
    start = m["initial_excess"]
    assert start > 0
    # SVDLoRA at lr 0.5 lands on the optimum (SPEC §2); K = 8 is close to it
    assert m["final_excess_SVDLoRA"] < 1e-6 * start
    assert m["final_excess_PSI_LoRA_x8"] < 1e-6 * start
    # GeoLoRA trains (a 10x drop in 12 epochs at the larger lr) and the larger lr is faster
    assert m["final_excess_GeoLoRA_lr_0_5"] < 1e-1 * start
    assert m["final_excess_GeoLoRA_lr_0_5"] < m["final_excess_GeoLoRA_lr_0_25"]
    assert set(data["series"]) == {
        "SVDLoRA", "PSI-LoRA x1", "PSI-LoRA x8", "GeoLoRA lr 0.5", "GeoLoRA lr 0.25"
    }


def _check_drawing(fig):
    """The shared style: family colours, every method in the legend, the band explained."""
    from matplotlib.colors import same_color

    from analysis.style import FAMILY_COLORS, method_style

    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"SVDLoRA", "PSI-LoRA x1", "PSI-LoRA x8", "GeoLoRA lr 0.5",
                          "GeoLoRA lr 0.25"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    assert same_color(lines["SVDLoRA"].get_color(), FAMILY_COLORS["SVDLoRA"])
    assert same_color(lines["GeoLoRA lr 0.5"].get_color(), FAMILY_COLORS["GeoLoRA"])
    for k in ("PSI-LoRA x1", "PSI-LoRA x8"):
        assert same_color(lines[k].get_color(), method_style(k)["color"])
    assert not same_color(lines["GeoLoRA lr 0.25"].get_color(), FAMILY_COLORS["GeoLoRA"])
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith(("shaded:", "one seed")) for n in notes)

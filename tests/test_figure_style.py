"""Readability of every figure as a reader without the paper sees it, on the drawn objects.

Each figure is drawn from its committed JSON (no experiment runs); a JSON of an older format
(missing a key the drawing needs) is skipped, :mod:`tests.test_figure_redraw` covers it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from analysis import registry  # noqa: E402
from analysis.style import family, method_style  # noqa: E402

registry.load_all()
NAMES = sorted(registry.FIGURES)


@pytest.fixture(scope="module")
def drawn():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    for name in NAMES:
        path = registry.COMMITTED_DIR / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        try:
            fig = registry.DRAW[name](data)
        except KeyError:
            continue
        fig.canvas.draw()
        figs[name] = (fig, data)
    yield figs
    for fig, _ in figs.values():
        plt.close(fig)


def _get(drawn, name):
    if name not in drawn:
        pytest.skip(f"figures/{name}.json missing or of an older format")
    return drawn[name]


def _axes(fig):
    """Every plotting axes of ``fig`` (insets included, colour bars excluded)."""
    out = []
    for ax in fig.axes:
        out.append(ax)
        out.extend(ax.child_axes)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_titles_fit_inside_the_figure(drawn, name):
    fig, _ = _get(drawn, name)
    renderer = fig.canvas.get_renderer()
    width = fig.bbox.width
    texts = [ax.title for ax in fig.axes] + [leg.get_title() for leg in fig.legends]
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    for text in texts:
        if not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        assert box.x0 >= -1 and box.x1 <= width + 1, (name, text.get_text()[:60])


def _in_view(ax, line):
    x, y = (np.asarray(v, dtype=float) for v in line.get_data())
    if x.size != y.size or y.size == 0:
        return np.array([])
    if line.get_transform() != ax.transData:  # axhline & co: x in axes coordinates
        return y[np.isfinite(y)]
    lo, hi = sorted(ax.get_xlim())
    keep = np.isfinite(y) & np.isfinite(x) & (x >= lo) & (x <= hi)
    if ax.get_yscale() == "log":
        keep &= y > 0
    return y[keep]


@pytest.mark.parametrize("name", NAMES)
def test_y_limits_show_every_plotted_line(drawn, name):
    fig, _ = _get(drawn, name)
    for ax in _axes(fig):
        lo, hi = sorted(ax.get_ylim())
        tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
        for line in ax.get_lines():
            y = _in_view(ax, line)
            if y.size:
                assert y.min() >= lo - tol and y.max() <= hi + tol, (
                    name, ax.get_title(), line.get_label(), (y.min(), y.max()), (lo, hi))


def _has_bands(ax):
    from matplotlib.collections import PolyCollection

    return any(isinstance(c, PolyCollection) and len(c.get_paths()) for c in ax.collections)


def _band_notes(fig):
    texts = [t.get_text() for t in fig.texts]
    texts += [t.get_text() for leg in fig.legends for t in [leg.get_title(), *leg.get_texts()]]
    return texts


@pytest.mark.parametrize("name", NAMES)
def test_every_shaded_band_is_explained(drawn, name):
    fig, _ = _get(drawn, name)
    for ax in _axes(fig):
        if not _has_bands(ax):
            continue
        texts = [t.get_text() for t in ax.texts] + _band_notes(fig)
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("shaded" in t or "no band" in t for t in texts), (name, ax.get_title())


#: Lines drawn on purpose in another shade of their family (a second lr, τ, or the best-lr run).
SHADE_EXCEPTIONS = ("lr 0.25", "best final loss", "τ = 0.02")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "bench"])  # bench: SVD solvers
def test_methods_have_their_family_colour(drawn, name):
    from matplotlib.colors import same_color

    fig, _ = _get(drawn, name)
    for ax in _axes(fig):
        for line in ax.get_lines():
            label = line.get_label()
            if label.startswith("_") or family(label) is None or any(
                    e in label for e in SHADE_EXCEPTIONS):
                continue
            want = method_style(label.split(" rM")[0].split(" (")[0].split(":")[0])["color"]
            if want is not None:
                assert same_color(line.get_color(), want), (name, label)


def _integer_ticks(axis):
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_locator()() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("name", NAMES)
def test_epoch_iteration_and_rank_axes_have_integer_ticks(drawn, name):
    fig, _ = _get(drawn, name)
    for ax in fig.axes:
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            words = label.lower()
            counted = words.startswith(("epoch", "iteration", "optimizer step", "rank",
                                        "initial rank", "final rank", "als", "fine-tuning step"))
            if counted and axis.get_scale() == "linear":
                assert _integer_ticks(axis), (name, ax.get_title(), label)


def _legend_texts(fig):
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for ax in fig.axes:
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    return texts


def _method_labels(name, data):
    """The method names a figure's legend must show."""
    if name in ("fig1_linear_fullbatch", "fig1_linear_minibatch", "geolora_linear_task"):
        return list(data["series"])
    if name in ("fig4_method_curves", "fig4_lenet_digits"):
        return [data["metrics"]["table"][m]["label"] for m in data["settings"]["methods"]]
    if name in ("fig2_lr_robustness", "fig4_lr_curves"):
        return [data["metrics"]["methods"][m]["label"] for m in data["settings"]["methods"]]
    if name == "fig5_momentum_rank":
        return ["SVDLoRA", "PSI-LoRA x1 rM = r", "PSI-LoRA x8 rM = 4r"]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_every_legend_names_each_method(drawn, name):
    fig, data = _get(drawn, name)
    texts = _legend_texts(fig)
    for label in _method_labels(name, data):
        assert any(t == label or t.startswith(label + " ") or t.startswith(label + ":")
                   for t in texts), (name, label)


@pytest.mark.parametrize("name", ["fig4_method_curves", "fig4_lenet_digits", "fig4_lr_curves"])
def test_fig4_accuracy_axes_show_lora_sgd_and_chance(drawn, name):
    fig, _ = _get(drawn, name)
    acc = [ax for ax in fig.axes if "accuracy" in ax.get_ylabel()]
    assert acc
    for ax in acc:
        lo, hi = ax.get_ylim()
        assert lo <= 0.0 and hi >= 1.0  # the whole range: LoRA SGD near chance is visible


def test_fig3_names_what_damping_means(drawn):
    fig, _ = _get(drawn, "fig3_scaled_ablation")
    (legend,) = fig.legends
    assert "damping ε" in legend.get_title().get_text()
    assert "(statistic + ε)^p" in legend.get_title().get_text()
    assert "\n" in fig._suptitle.get_text()  # detail on a second line, not a cut-off one

"""One visual style for every figure and notebook: colours per method, line styles, bands.

Every builder in :mod:`analysis.figures` (and the notebooks) draws a method with
:func:`method_style` and says what its shaded band means with :func:`band_note`, so one method
has one colour everywhere and a reader never has to guess what a band is.

Method families and their colours (a PSI-LoRA ×K curve gets a darker green as K grows)::

    SVDLoRA black · LoRA blue · RPLoRA orange · PSI-LoRA green · Proj. PSI-LoRA purple
    Scaled PSI-LoRA red · GeoLoRA brown · full fine-tuning grey
    simultaneous GD on U, S, V (GeoLoRA's "SVD-LoRA") cyan

A swept parameter (a gap ratio, a ridge λ, an initial rank) gets an ordered colour map with
:func:`sweep_colors`, so light-to-dark reads as small-to-large; rank axes get
:func:`integer_ticks`.

Line styles: AdamW variants dashed, SGD variants solid; "balanced" (gauge-balanced momentum)
solid and "as published" dotted where both appear.
"""

from __future__ import annotations

import re

__all__ = [
    "BAND_MINMAX",
    "BAND_STD",
    "FAMILY_COLORS",
    "add_band_note",
    "family",
    "figure_title",
    "integer_ticks",
    "method_order",
    "method_style",
    "sweep_colors",
    "use",
]

#: One colour per method family (matplotlib named colours, colour-blind-safe tab palette).
FAMILY_COLORS = {
    "SVDLoRA": "black",
    "LoRA": "tab:blue",
    "RPLoRA": "tab:orange",
    "PSI-LoRA": "tab:green",
    "Proj. PSI-LoRA": "tab:purple",
    "Scaled PSI-LoRA": "tab:red",
    "GeoLoRA": "tab:brown",
    "Full": "dimgray",
    "Simultaneous GD": "tab:cyan",
}

#: Colour maps for the K-dependent shade of the iterative families.
_SHADE_MAPS = {"PSI-LoRA": "Greens", "Proj. PSI-LoRA": "Purples", "Scaled PSI-LoRA": "Reds"}
_SHADES = {1: 0.5, 2: 0.65, 4: 0.72, 8: 0.8, 16: 0.86, 32: 0.9, 128: 1.0}

#: What a shaded band means, in the words the figures print.
BAND_MINMAX = "shaded: min–max over seeds; line: mean"
BAND_STD = "shaded: mean ± 1 std over seeds"

# Aliases used by the experiment modules (method keys such as "psilora-2", "lora-adamw").
_KEY_ALIASES = {
    "full": "Full",
    "svdlora": "SVDLoRA",
    "lora": "LoRA",
    "rplora": "RPLoRA",
    "psilora": "PSI-LoRA",
    "projpsilora": "Proj. PSI-LoRA",
    "proj-psilora": "Proj. PSI-LoRA",
    "scaled-psilora": "Scaled PSI-LoRA",
    "scaledpsilora": "Scaled PSI-LoRA",
    "geolora": "GeoLoRA",
}


def family(label):
    """The method family of a label (``"PSI-LoRA x8"``, ``"psilora-8"``, ``"LoRA AdamW"`` …)."""
    text = str(label)
    low = text.lower()
    for key, fam in sorted(_KEY_ALIASES.items(), key=lambda kv: -len(kv[0])):
        if low.startswith(key):
            return fam
    for fam in sorted(FAMILY_COLORS, key=len, reverse=True):
        if text.startswith(fam) or low.startswith(fam.lower()):
            return fam
    return None


def _iterations(label):
    match = re.search(r"(?:x|×|-)(\d+)\b", str(label))
    return int(match.group(1)) if match else None


def method_style(label):
    """``dict(color=..., ls=...)`` for a method label, the same in every figure.

    Unknown labels get matplotlib's default colour cycle (``color=None``).
    """
    fam = family(label)
    low = str(label).lower()
    color = FAMILY_COLORS.get(fam)
    K = _iterations(label)
    if fam in _SHADE_MAPS and K is not None:
        import matplotlib

        cmap = matplotlib.colormaps[_SHADE_MAPS[fam]]
        color = matplotlib.colors.to_hex(cmap(_SHADES.get(K, 0.9)))
    ls = "--" if "adam" in low else "-"
    if "as published" in low or "unbalanced" in low:
        ls = ":"
    if "rm=2r" in low:
        ls = "--"
    elif "rm=4r" in low:
        ls = "-."
    return {"color": color, "ls": ls}


def method_order(labels):
    """``labels`` in the legend order of every figure: by family (the order of
    :data:`FAMILY_COLORS`), then by the iteration count K, then alphabetically.  A figure drawn
    from its JSON (whose keys are sorted) gets the same order as one drawn from a run."""
    fams = list(FAMILY_COLORS)

    def key(label):
        fam = family(label)
        return (fams.index(fam) if fam in fams else len(fams), _iterations(label) or 0,
                str(label))

    return sorted(labels, key=key)


def add_band_note(ax, text=BAND_MINMAX, *, loc="lower left"):
    """Print what the shaded bands mean inside the axes (small grey text)."""
    x, ha = (0.01, "left") if "left" in loc else (0.99, "right")
    y, va = (0.01, "bottom") if "lower" in loc else (0.99, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=7, color="0.35")


def sweep_colors(values, cmap="viridis", *, lo=0.0, hi=0.85):
    """``{value: hex colour}`` along ``cmap`` in the sorted order of ``values``.

    The same values give the same colours in every figure (e.g. the gap ratios of the theory
    figures); ``lo``/``hi`` trim the ends of the map (viridis' last yellow is hard to read).
    """
    import matplotlib

    order = sorted(set(values))
    cm = matplotlib.colormaps[cmap]
    span = max(len(order) - 1, 1)
    return {v: matplotlib.colors.to_hex(cm(lo + (hi - lo) * i / span)) for i, v in enumerate(order)}


def integer_ticks(axis):
    """Only integer tick positions on ``axis`` (``ax.xaxis`` or ``ax.yaxis``): ranks, counts."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))


def figure_title(fig):
    """The overall title of ``fig``: its suptitle, else the title of a figure-level legend
    (a figure whose legend sits above the panels carries the title there), else ``""``."""
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle.get_text():
        return fig._suptitle.get_text()
    for leg in fig.legends:
        if leg.get_title().get_text():
            return leg.get_title().get_text()
    return ""


def use():
    """Shared rcParams (font sizes, grid); call once before drawing."""
    import matplotlib

    matplotlib.rcParams.update(
        {
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 7,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "figure.dpi": 100,
            "savefig.dpi": 150,
        }
    )

"""``python -m analysis claims``: the papers' empirical claims, one by one, against figures/.

One row per empirical claim of the PSI-LoRA abstract and figure captions 1-5
(``../shared/seeds/000_*.txt``; its v1 "OPLoRA" abstract in ``002_*.txt``) and of GeoLoRA's
figures 2 and 5 (``001_*.txt``): the claim in one line, the experiment of this project that
tests it (a registered figure), the measured metric with its spread over seeds, the rule that
turns the numbers into a verdict, the verdict (``holds`` / ``partly`` / ``does not hold here`` /
``not tested here``) and the likely reason when a claim does not hold.

Every number is read from the committed ``figures/*.json`` (nothing is re-run and nothing is
typed in): each ``_claim_*`` function below is the verdict logic, a function of those numbers
and of the thresholds in this module (:data:`TOL`, :data:`NOISE_SIGMAS`, :data:`GAP_CLOSED`),
which each row states.  Theory claims (Proposition 1, Theorem 3.1, the special cases) are
checked by ``python -m analysis verify``; here only their in-training/empirical side appears.

Public API: :func:`collect` (the rows), :func:`report` (rows, numbers and counts, the JSON of
``--json``), :func:`to_markdown` (the README table), :func:`readme_block`, :func:`main`.
The report never gates: :func:`main` returns 0 whatever the verdicts.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["VERDICTS", "Claim", "collect", "report", "to_markdown", "readme_block",
           "update_readme", "main"]

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
README = ROOT / "README.md"
START, END = "<!-- claims:start -->", "<!-- claims:end -->"

VERDICTS = ("holds", "partly", "does not hold here", "not tested here")
#: Relative tolerance of "within 5 %" (the LR-robustness figures use the same 5 %).
TOL = 0.05
#: "Matches" = worse by at most this many standard deviations of the seed noise of the
#: difference, sqrt(std_a² + std_b²) (std over seeds, ddof 0, as in the figure JSON).
NOISE_SIGMAS = 2.0
#: Fraction of the log10 excess gap (best LoRA → SVDLoRA) that counts as "closed".
GAP_CLOSED = 0.9
#: In-training share of LoRSum calls that must be within 1 % of the SVDLoRA step / under the bound.
SHARE = 0.9
BOUND_SHARE = 0.99
#: Step-time ratio to LoRA + Adam: the benchmark's target (issue 9) and the "few x" limit.
STEP_RATIO_TARGET = 1.3
STEP_RATIO_FEW = 3.0

SOURCES = {
    "abstract": "PSI-LoRA abstract (000)",
    "fig1": "PSI-LoRA Fig 1 caption (000)",
    "fig2": "PSI-LoRA Fig 2 caption (000)",
    "fig2-body": "PSI-LoRA (as quoted in issue 16)",
    "fig3": "PSI-LoRA Fig 3 caption (000)",
    "fig4": "PSI-LoRA Fig 4 caption (000)",
    "fig5": "PSI-LoRA Fig 5 caption (000)",
    "v1": "OPLoRA v1 abstract (002)",
    "geo2": "GeoLoRA Fig 2 caption (001)",
    "geo5": "GeoLoRA Fig 5 caption (001)",
}


@dataclass(frozen=True)
class Claim:
    """One row of the report.

    ``numbers`` holds the values the verdict was computed from (what tests compare); it is
    reported separately (``report()["numbers"][id]``), not as a table column.
    """

    id: str
    source: str
    claim: str
    experiment: str
    measured: str
    rule: str
    verdict: str
    reason: str
    numbers: dict = field(default_factory=dict, compare=False)

    def row(self):
        """The table row: every field but ``numbers``."""
        d = asdict(self)
        d.pop("numbers")
        return d


class MissingFigure(LookupError):
    """A figure JSON (or a field of it) that a claim needs is not there."""


class _Figures:
    """Lazy reader of ``DIR/NAME.json``; a missing file raises :class:`MissingFigure`."""

    def __init__(self, directory):
        self.directory = directory
        self._cache = {}

    def __call__(self, name):
        if name not in self._cache:
            path = self.directory / f"{name}.json"
            if not path.is_file():
                raise MissingFigure(f"{path.name} is missing")
            self._cache[name] = json.loads(path.read_text())
        return self._cache[name]


# --- formatting and small statistics ---------------------------------------------------------

def _g(x, digits=3):
    """``x`` with ``digits`` significant digits (``-`` for None)."""
    return "-" if x is None else f"{float(x):.{digits}g}"


def _stats(values):
    """mean, std (ddof 0), min, max of a list of numbers (NaN-free by construction)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise MissingFigure(f"non-finite or empty seed values {values!r}")
    return dict(mean=float(a.mean()), std=float(a.std()), min=float(a.min()), max=float(a.max()))


def _range(s):
    """``mean [min–max]`` from :func:`_stats`."""
    return f"{_g(s['mean'])} [{_g(s['min'])}–{_g(s['max'])}]"


def _pm(mean, std):
    return f"{_g(mean, 4)} ± {_g(std, 2)}"


def _compare(ours, ours_std, base, base_std, *, lower_is_better):
    """``"improves"``, ``"matches"`` or ``"worse"``; matches = worse by at most
    NOISE_SIGMAS · sqrt(ours_std² + base_std²), the seed noise of the difference."""
    diff = (base - ours) if lower_is_better else (ours - base)
    if diff >= 0:
        return "improves"
    noise = NOISE_SIGMAS * math.hypot(ours_std, base_std)
    return "matches" if -diff <= noise else "worse"


def _score(n_ok, n_total):
    """holds if all, partly if some, does not hold here if none."""
    if n_ok == n_total:
        return "holds"
    return "partly" if n_ok else "does not hold here"


def _above_oracle(value, oracle):
    """Distance above the SVDLoRA oracle in decades: max(0, log10(value / oracle))."""
    return max(0.0, math.log10(value / oracle))


def _non_increasing(values):
    return all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))


# --- shared readers --------------------------------------------------------------------------

def _lin_final(series, name):
    """Seed statistics of the final excess of one linear-task run."""
    return _stats(series[name]["final_per_seed"])


def _lin_at(series, name, epoch):
    s = series[name]
    return dict(mean=s["mean"][epoch], min=s["min"][epoch], max=s["max"][epoch])


def _checkpoints(fig):
    """The linear task's checkpoint epochs (from the mini-batch figure's settings)."""
    return [int(e) for e in fig("fig1_linear_minibatch")["settings"]["checkpoints"]]


def _lr_best(method):
    """(best mean, std over seeds at the best LR) of one LR-sweep method, from its per-seed
    values (the figure's ``mean``/``per_seed`` arrays, one entry per learning rate)."""
    i = int(np.argmin(method["mean"]) if method.get("_lower") else np.argmax(method["mean"]))
    s = _stats(method["per_seed"][i])
    return s["mean"], s["std"], method["lrs"][i]


def _sweep(fig, name, lower):
    """The methods of an LR-sweep figure, each tagged with the direction of its metric."""
    methods = fig(name)["metrics"]["methods"]
    return {k: dict(v, _lower=lower) for k, v in methods.items()}


LORA_TYPE_EXCLUDE = ("full-",)  # full fine-tuning is a reference, not a LoRA method


def _lora_type(methods):
    return {k: v for k, v in methods.items() if not k.startswith(LORA_TYPE_EXCLUDE)}


def _label(methods, key):
    return methods[key].get("label", key)


def _bench_opt(fig):
    rows = fig("bench")["series"]["optimizers"]
    return {r["method"]: r for r in rows}


def _bench_acceptance(fig):
    acc = fig("bench").get("acceptance")
    if acc is None:
        return "acceptance not recorded"
    return "run accepted" if acc.get("accepted") else "run REJECTED as noisy"


# --- the claims: PSI-LoRA abstract ------------------------------------------------------------

def _claim_gap(fig):
    s = fig("fig1_linear_fullbatch")["series"]
    ks = sorted(int(m.group(1)) for n in s if (m := re.fullmatch(r"PSI-LoRA x(\d+)", n)))
    lora = min(("LoRA SGD", "LoRA AdamW"), key=lambda n: _lin_final(s, n)["mean"])
    base, svd = _lin_final(s, lora), _lin_final(s, "SVDLoRA")
    gap = math.log10(base["mean"] / svd["mean"])
    closed = {k: math.log10(base["mean"] / _lin_final(s, f"PSI-LoRA x{k}")["mean"]) / gap
              for k in ks}
    best = max(closed.values())
    first = next((k for k in ks if closed[k] >= GAP_CLOSED), None)
    verdict = "holds" if best >= GAP_CLOSED else ("partly" if best >= 0.5 else
                                                   "does not hold here")
    x1 = _lin_final(s, f"PSI-LoRA x{ks[0]}")
    measured = (f"final excess, 5 seeds: {lora} {_range(base)}, SVDLoRA {_range(svd)}, "
                f"PSI-LoRA ×{ks[0]} {_range(x1)}; share of the log10 gap closed by ×"
                + "/×".join(map(str, ks)) + ": " + "/".join(f"{closed[k]:.0%}" for k in ks)
                + " (> 100 %: below SVDLoRA, at the float32 floor)")
    reason = (f"caveat: ×1–×2 close only {closed[ks[0]]:.0%}–{closed[ks[1]]:.0%} of it; "
              f"the gap is closed from ×{first} on" if first else
              "more alternating iterations than the figure runs are needed")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(closed={str(k): v for k, v in closed.items()}, best_closed=best,
                             lora=base["mean"], svdlora=svd["mean"], first_k=first),
                rule=f"holds if some ×K closes ≥ {GAP_CLOSED:.0%} of log10(best LoRA / SVDLoRA) "
                     "final excess; partly if ≥ 50 %")


def _claim_power(fig):
    r = fig("thm31_rate")
    ratios = []
    for rho, v in r["series"]["rates"].items():
        pred = r["metrics"][f"rate_predicted_{rho}"]
        ratios += [x / pred for x in v["rate_measured_per_seed"]]
    rs = _stats(ratios)
    dev = max(abs(rs["min"] - 1), abs(rs["max"] - 1))
    summary = fig("thm31_in_training")["metrics"]
    theorem = {k: v for k, v in summary.items() if "theorem" in k and v.get("checked")}
    checked = sum(v["checked"] for v in theorem.values())
    held = sum(round(v["holds_fraction"] * v["checked"]) for v in theorem.values())
    share = held / checked
    ok = dev <= TOL and share >= BOUND_SHARE
    measured = (f"tan θ rate / ρ² ({len(r['series']['rates'])} gaps × "
                f"{len(r['settings']['seeds'])} seeds): {_range(rs)}; Theorem 3.1 bound held in "
                f"training on {held}/{checked} LoRSum calls (digits, char-LM; step and momentum)")
    return dict(measured=measured, verdict="holds" if ok else "partly",
                reason="" if ok else "see thm31_in_training",
                numbers=dict(rate_ratio_min=rs["min"], rate_ratio_max=rs["max"],
                             bound_held=held, bound_checked=checked),
                rule=f"holds if every measured rate is within {TOL:.0%} of ρ² = "
                     f"(σ_r+1/σ_r)² and the bound holds on ≥ {BOUND_SHARE:.0%} of calls")


def _claim_momentum(fig):
    s = fig("fig1_linear_minibatch")["series"]
    svd = _lin_final(s, "SVDLoRA")
    runs = {n: _lin_final(s, n) for n in s if re.fullmatch(r"PSI-LoRA x1, .*", n)}
    ok = sum(v["mean"] <= svd["mean"] for v in runs.values())
    m = fig("fig1_linear_minibatch")["metrics"]
    diag = m.get("diagnostic_x1_unbalanced_no_jitter_final_excess")
    measured = ("final excess (batch 64, momentum 0.75, rank-r LoRSum momentum), 5 seeds: "
                + ", ".join(f"{n.replace('PSI-LoRA ', '')} {_range(v)}" for n, v in runs.items())
                + f"; SVDLoRA (full-rank momentum) {_range(svd)}")
    reason = ("caveat: without the momentum balancing and without the authors' 1e-6 Gram jitter "
              f"×1 climbs to {_g(diag)} (gauge drift of the momentum pair)" if diag else "")
    return dict(measured=measured, verdict=_score(ok, len(runs)), reason=reason,
                numbers=dict(svdlora=svd["mean"], **{n: v["mean"] for n, v in runs.items()}),
                rule="holds if PSI-LoRA ×1 with its low-rank momentum ends at or below "
                     "SVDLoRA (seed mean), in both the default and the published variant")


def _claim_diagonal(fig):
    table = fig("fig3_scaled_ablation")["metrics"]["table"]
    per_metric = {}
    for row in table:
        per_metric[row["metric"]] = max(per_metric.get(row["metric"], 0.0), row["best_acc"])
    top = max(per_metric.values())
    ok_metric = all(v >= (1 - TOL) * top for v in per_metric.values())
    parts, oks, numbers = [], [ok_metric], dict(fig3_best=per_metric)
    for name, lower, unit in (("fig4_lr_curves", False, "acc"), ("fig2_lr_robustness", True,
                                                                  "ppl")):
        methods = _lora_type(_sweep(fig, name, lower))
        mean, std, _ = _lr_best(methods["scaled-psilora"])
        others = {k: _lr_best(v) for k, v in methods.items() if k != "scaled-psilora"}
        key = (min if lower else max)(others, key=lambda k: others[k][0])
        ratio = mean / others[key][0]
        oks.append(ratio <= 1 + TOL if lower else ratio >= 1 - TOL)
        parts.append(f"{name} best {unit}: Scaled {_pm(mean, std)} vs {_label(methods, key)} "
                     f"{_pm(*others[key][:2])}")
        numbers[name] = dict(scaled=mean, best_other=others[key][0], ratio=ratio)
    measured = ("fig3 (1 seed) best accuracy, diagonal "
                + ", ".join(f"{k} {_g(v)}" for k, v in per_metric.items())
                + "; " + "; ".join(parts) + " (3 seeds)")
    return dict(measured=measured, verdict=_score(sum(oks), len(oks)),
                reason="" if all(oks) else "see the fig2/fig4 LR sweeps", numbers=numbers,
                rule=f"holds if each diagonal metric's best run is within {TOL:.0%} of the "
                     f"ablation's best and Scaled PSI-LoRA's best is within {TOL:.0%} of the "
                     "best LoRA-type method on digits and on the char-LM")


def _task_vs(fig, lower_name, ours_key, base_keys, source):
    """(ours, best baseline) ``(mean, std, label)`` on one task for :func:`_claim_match`."""
    if source == "linear":
        s = fig("fig1_linear_minibatch")["series"]
        o = _lin_final(s, ours_key)
        bases = {k: _lin_final(s, k) for k in base_keys}
        key = min(bases, key=lambda k: bases[k]["mean"])
        return (o["mean"], o["std"], ours_key), (bases[key]["mean"], bases[key]["std"], key)
    lower = source == "ppl"
    methods = _sweep(fig, lower_name, lower)
    o = _lr_best(methods[ours_key])
    bases = {k: _lr_best(methods[k]) for k in base_keys if k in methods}
    key = (min if lower else max)(bases, key=lambda k: bases[k][0])
    return ((o[0], o[1], _label(methods, ours_key)),
            (bases[key][0], bases[key][1], _label(methods, key)))


def _claim_match(fig):
    tasks = [
        ("linear task, mini-batch (final excess, 5 seeds)", None, "PSI-LoRA x1, balanced",
         ("LoRA SGD", "LoRA AdamW", "RPLoRA SGD", "RPLoRA AdamW"), "linear", True),
        ("digits (best last accuracy over 7 LRs, 3 seeds)", "fig4_lr_curves", "psilora-1",
         ("lora-sgd", "lora-adamw", "rplora"), "acc", False),
        ("char-LM (best perplexity over 7 LRs, 3 seeds)", "fig2_lr_robustness", "psilora-1",
         ("lora-adamw",), "ppl", True),
    ]
    parts, outcomes, numbers = [], [], {}
    for title, name, ours, bases, kind, lower in tasks:
        (om, os_, ol), (bm, bs, bl) = _task_vs(fig, name, ours, bases, kind)
        out = _compare(om, os_, bm, bs, lower_is_better=lower)
        outcomes.append(out)
        parts.append(f"{title}: {ol} {_pm(om, os_)} vs {bl} {_pm(bm, bs)} ({out})")
        numbers[kind] = dict(ours=om, ours_std=os_, base=bm, base_std=bs, outcome=out)
    ok = sum(o != "worse" for o in outcomes)
    worse = [p for p, o in zip(parts, outcomes, strict=True) if o == "worse"]
    return dict(measured="; ".join(parts), verdict=_score(ok, len(outcomes)),
                reason="; ".join(worse), numbers=numbers,
                rule=f"on each task PSI-LoRA ×1 improves on, or is worse by ≤ {NOISE_SIGMAS:g}σ "
                     "of the seed noise than, the best LoRA baseline (LoRA SGD/AdamW, RPLoRA); "
                     "holds if on every task")


def _claim_overhead(fig):
    opt = _bench_opt(fig)
    base = opt["LoRA + Adam"]["step_s"]
    ratios = {k: v["step_s"] / base for k, v in opt.items() if k != "LoRA + Adam"}
    r = ratios["PSI-LoRA x1"]
    verdict = ("holds" if r <= STEP_RATIO_TARGET else
               "partly" if r <= STEP_RATIO_FEW else "does not hold here")
    measured = ("optimizer step time / LoRA + Adam step (MLP width "
                f"{fig('bench')['settings']['mlp_width']}, one bench run, "
                f"{_bench_acceptance(fig)}; no seeds, wall-clock on a shared CPU): "
                + ", ".join(f"{k} {_g(v)}" for k, v in ratios.items()))
    reason = ("" if verdict == "holds" else
              "the two LoRSum calls per layer are skinny m×r products that torch's CPU BLAS runs "
              "several times slower than the flops suggest (bench notes); SVDLoRA's "
              f"{_g(ratios.get('SVDLoRA'))}× is what PSI-LoRA avoids")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(ratios=ratios, psilora=r),
                rule=f"holds if PSI-LoRA ×1 ≤ {STEP_RATIO_TARGET:g}× (the bench target, issue 9); "
                     f"partly if ≤ {STEP_RATIO_FEW:g}×")


def _claim_memory(fig):
    opt = _bench_opt(fig)
    state = {k: v["state_per_lora_param"] for k, v in opt.items()}
    adam, svd = state["LoRA + Adam"], state["SVDLoRA"]
    ours = ("PSI-LoRA x1", "Scaled PSI-LoRA")
    ok = sum(state[k] <= adam and state[k] <= svd / 10 for k in ours)
    measured = ("optimizer state per LoRA parameter (bench, deterministic byte counts): "
                + ", ".join(f"{k} {_g(v)}" for k, v in state.items()))
    return dict(measured=measured, verdict=_score(ok, len(ours)),
                reason="" if ok == len(ours) else "see bench memory table",
                numbers=dict(state=state),
                rule="holds if PSI-LoRA's and Scaled PSI-LoRA's state ≤ LoRA + Adam's and "
                     "≤ 1/10 of SVDLoRA's (m·n per layer)")


# --- the claims: figure captions -------------------------------------------------------------

def _toward_oracle(series, names_by_k, checkpoints):
    """Per checkpoint, the distance above SVDLoRA of each ×K (in K order); (ok, table)."""
    table, ok = {}, True
    for e in checkpoints:
        oracle = series["SVDLoRA"]["mean"][e]
        d = [_above_oracle(series[n]["mean"][e], oracle) for n in names_by_k]
        table[e] = d
        ok &= _non_increasing(d)
    ok &= table[checkpoints[0]][-1] < table[checkpoints[0]][0]
    return ok, table


def _psi_runs(series, suffix=""):
    pat = re.compile(r"PSI-LoRA x(\d+)" + re.escape(suffix))
    return {int(m.group(1)): n for n in series if (m := pat.fullmatch(n))}


def _claim_fig1(fig, name, suffixes):
    s = fig(name)["series"]
    cps = _checkpoints(fig)
    oks, parts, numbers = [], [], {}
    for suffix in suffixes:
        runs = _psi_runs(s, suffix)
        ks = sorted(runs)
        ok, table = _toward_oracle(s, [runs[k] for k in ks], cps)
        oks.append(ok)
        label = suffix.strip(", ") or "mean"
        first, last = cps[0], cps[-1]
        parts.append(f"{label} excess at epoch {first} / {last}, ×" + "/×".join(map(str, ks))
                     + ": " + "/".join(_g(s[runs[k]]['mean'][first]) for k in ks) + " / "
                     + "/".join(_g(s[runs[k]]['mean'][last]) for k in ks))
        numbers[label] = {str(e): d for e, d in table.items()}
    svd = s["SVDLoRA"]
    parts.append(f"SVDLoRA {_g(svd['mean'][cps[0]])} / {_g(svd['mean'][cps[-1]])}")
    x1 = _lin_final(s, _psi_runs(s, suffixes[0])[1])
    parts.append(f"×1 final over 5 seeds {_range(x1)}")
    return oks, "; ".join(parts), numbers


FIG1_RULE = ("distance above SVDLoRA, max(0, log10(excess / SVDLoRA's)), non-increasing in K at "
             "epochs {cps} and smaller at ×max than ×1 at the first; below SVDLoRA counts as 0")


def _claim_fig1_full(fig):
    oks, measured, numbers = _claim_fig1(fig, "fig1_linear_fullbatch", [""])
    return dict(measured=measured, verdict=_score(sum(oks), len(oks)), numbers=numbers,
                reason="" if all(oks) else "more iterations do not move toward SVDLoRA here",
                rule=FIG1_RULE.format(cps="/".join(map(str, _checkpoints(fig)))))


def _claim_fig1_mini(fig):
    suffixes = (", balanced", ", as published (unbalanced)")
    oks, measured, numbers = _claim_fig1(fig, "fig1_linear_minibatch", suffixes)
    s = fig("fig1_linear_minibatch")["series"]
    finals = [_lin_final(s, n)["mean"] for _, n in sorted(_psi_runs(s, suffixes[0]).items())]
    reason = ("caveat: every PSI-LoRA run ends below SVDLoRA, and there more iterations end "
              "higher (" + "/".join(_g(f) for f in finals) + "), nearer the oracle"
              if all(oks) else "more iterations do not move toward SVDLoRA here")
    return dict(measured=measured, verdict=_score(sum(oks), len(oks)), reason=reason,
                numbers=numbers,
                rule=FIG1_RULE.format(cps="/".join(map(str, _checkpoints(fig))))
                + ", for both variants")


def _widest(methods, key):
    """(widest by the seed mean?, seeds on which ``key`` is the widest, number of seeds)."""
    mean = {k: v["robust_decades"] for k, v in methods.items()}
    seeds = np.asarray([v["robust_decades_per_seed"] for v in methods.values()])
    keys = list(methods)
    wins = int(np.sum(np.argmax(seeds, axis=0) == keys.index(key)))
    return max(mean, key=mean.get) == key, wins, seeds.shape[1]


def _width(method):
    """Robustness width of the seed-mean curve, with [min–max] of the per-seed widths."""
    s = _stats(method["robust_decades_per_seed"])
    return dict(s, mean=method["robust_decades"])


def _claim_fig2_robust(fig):
    parts, scores, numbers = [], [], {}
    for name, task in (("fig2_lr_robustness", "char-LM (Fig 2's task)"),
                       ("fig4_lr_curves", "digits")):
        methods = _lora_type(fig(name)["metrics"]["methods"])
        best, wins, n = _widest(methods, "scaled-psilora")
        runner = max((k for k in methods if k != "scaled-psilora"),
                     key=lambda k: methods[k]["robust_decades"])
        sc, ru = (_width(methods[k]) for k in ("scaled-psilora", runner))
        scores.append(2 if best and wins == n else 1 if best else 0)
        parts.append(f"{task}: Scaled {_range(sc)} decades vs runner-up "
                     f"{methods[runner]['label']} {_range(ru)}; widest on {wins}/{n} seeds")
        numbers[name] = dict(scaled=sc["mean"], runner_up=ru["mean"], wins=wins, seeds=n,
                             widest=best)
    verdict = ("holds" if all(x == 2 for x in scores) else
               "partly" if any(scores) else "does not hold here")
    weak = [p.split(":")[0] for p, x in zip(parts, scores, strict=True) if x < 2]
    reason = ("" if verdict == "holds" else
              f"on {', '.join(weak)} the margin is inside the seed spread (not the widest on "
              "every seed)")
    return dict(measured="; ".join(parts), verdict=verdict, reason=reason, numbers=numbers,
                rule=f"width (decades of LR within {TOL:.0%} of the method's best, 7 LRs × 3 "
                     "seeds); holds if Scaled is the widest LoRA method by the seed mean and on "
                     "every seed, on both sweeps; partly if by the mean only or on one")


def _claim_fig2_best(fig):
    methods = _sweep(fig, "fig2_lr_robustness", True)
    sc = methods["scaled-psilora"]
    others = {k: v for k, v in methods.items() if k != "scaled-psilora"}
    wins, compared = 0, 0
    for lr, ppl in zip(sc["lrs"], sc["mean"], strict=True):
        x = math.log10(lr)
        there = [float(np.interp(x, np.log10(v["lrs"]), v["mean"])) for v in others.values()
                 if math.log10(v["lrs"][0]) <= x <= math.log10(v["lrs"][-1])]
        if there:
            compared += 1
            wins += ppl < min(there)
    best = _lr_best(sc)
    bests = {k: _lr_best(v) for k, v in others.items()}
    top = min(bests, key=lambda k: bests[k][0])
    best_is_lowest = best[0] < bests[top][0]
    verdict = ("holds" if wins == compared and best_is_lowest else
               "does not hold here" if not best_is_lowest and 2 * wins < compared else "partly")
    rank = 1 + sum(v[0] < best[0] for v in bests.values())
    measured = (f"best perplexity (3 seeds): Scaled {_pm(best[0], best[1])} at lr {_g(best[2])} "
                f"vs {_label(methods, top)} {_pm(*bests[top][:2])} (Scaled ranks {rank} of "
                f"{len(methods)}); lowest of all methods at {wins} of its {compared} LRs "
                "(others log-interpolated to its LR)")
    reason = ("" if verdict == "holds" else
              "likely: a 2-layer char model fine-tuned 100 steps is not curvature-limited, so "
              "the exact "
              "SVDLoRA projection wins at matched LR; the paper's GPT-2/WikiText-103 run (3 LRs "
              "per method) is not reproduced")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(wins=wins, compared=compared, scaled_best=best[0],
                             best_other=bests[top][0], rank=rank),
                rule="holds if Scaled has the lowest perplexity at every LR of its grid and the "
                     "lowest best; does not hold if neither (lowest at < half of its LRs)")


def _claim_fig2_range(fig):
    m = fig("fig2_lr_robustness")["metrics"]["methods"]["scaled-psilora"]
    inside = [(lr, p) for lr, p in zip(m["lrs"], m["mean"], strict=True) if 0.01 <= lr <= 10]
    worst_lr, worst = max(inside, key=lambda t: t[1])
    ratio = worst / min(m["mean"])
    seeds = _stats(m["per_seed"][m["lrs"].index(worst_lr)])
    ok = ratio <= 1 + TOL
    lo, hi = m["robust_range"]
    measured = (f"Scaled PSI-LoRA, char-LM, seed-mean perplexity over its LRs in [0.01, 10]: "
                f"worst {_g(worst)} [{_g(seeds['min'])}–{_g(seeds['max'])}] at lr "
                f"{_g(worst_lr)} = {_g(ratio)}× its best; within "
                f"{TOL:.0%} only over lr {_g(lo, 2)}–{_g(hi, 2)} ({_g(m['robust_decades'])} "
                "decades)")
    reason = ("" if ok else
              f"at lr ≥ {_g(min(lr for lr, p in inside if p > (1 + TOL) * min(m['mean'])))} "
              "the perplexity rises (likely the preconditioned step overshoots); how the metric's "
              "scale "
              "(statistics vs N and sequence length, damping) maps the paper's LRs to ours is "
              "open (issue 16)")
    return dict(measured=measured, verdict="holds" if ok else "does not hold here",
                reason=reason, numbers=dict(worst_over_best=ratio, worst_lr=worst_lr),
                rule=f"holds if every LR in [0.01, 10] is within {TOL:.0%} of the best")


def _claim_fig3(fig):
    table = fig("fig3_scaled_ablation")["metrics"]["table"]
    best = {}
    for row in table:
        key = (row["metric"], row["power"])
        best[key] = max(best.get(key, 0.0), row["best_acc"])
    top = max(best.values())
    ok = sum(v >= (1 - TOL) * top for v in best.values())
    unstable = [r for r in table if r["best_acc"] - r["last_acc"] > TOL]
    lrs = sorted({r["lr"] for r in unstable})
    measured = ("digits, 1 seed, best accuracy per (metric, power) over damping × lr: "
                + ", ".join(f"{m} p={p} {_g(v)}" for (m, p), v in best.items())
                + f"; {len(unstable)}/{len(table)} runs end > {TOL:g} below their best"
                + (f" (lr {', '.join(_g(x) for x in lrs)})" if lrs else ""))
    return dict(measured=measured, verdict=_score(ok, len(best)),
                reason="" if ok == len(best) else "some settings never reach the best band",
                numbers=dict(best={f"{m}|{p}": v for (m, p), v in best.items()},
                             unstable=len(unstable)),
                rule=f"the caption states no result; tested: every (metric, power) reaches "
                     f"within {TOL:.0%} of the ablation's best at its best damping and lr")


def _claim_fig4(fig):
    table = fig("fig4_method_curves")["metrics"]["table"]
    ours = [k for k in ("psilora-1", "psilora-2", "psilora-8") if k in table]
    bases = [k for k in ("lora-sgd", "lora-adamw", "rplora") if k in table]
    outcomes = {}
    for o in ours:
        for b in bases:
            a, c = table[o]["best_acc"], table[b]["best_acc"]
            outcomes[(o, b)] = _compare(a["mean"], a["std"], c["mean"], c["std"],
                                        lower_is_better=False)
    ok = sum(v != "worse" for v in outcomes.values())
    def cell(k):
        acc = table[k]["best_acc"]
        return f"{table[k]['label']} {_pm(acc['mean'], acc['std'])}"

    measured = ("digits, LoRA on a frozen random MLP, 20 epochs, best validation accuracy "
                "(3 seeds): " + ", ".join(cell(k) for k in ours + bases)
                + f"; Scaled PSI-LoRA {cell('scaled-psilora')[len('Scaled PSI-LoRA '):]}, "
                  f"SVDLoRA {cell('svdlora')[len('SVDLoRA '):]}")
    worse = [f"{table[o]['label']} < {table[b]['label']}" for (o, b), v in outcomes.items()
             if v == "worse"]
    return dict(measured=measured, verdict=_score(ok, len(outcomes)),
                reason="; ".join(worse), numbers=dict(outcomes={f"{o}|{b}": v for (o, b), v in
                                                                outcomes.items()}),
                rule=f"every PSI-LoRA ×K improves on, or is within {NOISE_SIGMAS:g}σ of, every "
                     "LoRA baseline (LoRA SGD/AdamW, RPLoRA) at the paper's MNIST LRs")


def _claim_fig5(fig):
    d = fig("fig5_momentum_rank")
    s = d["series"]
    cps = _checkpoints(fig)
    mults = d["settings"]["momentum_ranks"]
    pat = re.compile(r"PSI-LoRA x(\d+) rM=(\w+), (.+)")
    groups = {}
    for n in s:
        if m := pat.fullmatch(n):
            groups.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = n
    ok, e25, numbers = 0, cps[1], {}
    parts = []
    for (k, variant), by_rank in sorted(groups.items()):
        names = [by_rank[r] for r in mults]
        good, table = _toward_oracle(s, names, cps)
        ok += good
        numbers[f"x{k}|{variant}"] = {str(e): v for e, v in table.items()}
        if variant.startswith("balanced"):
            parts.append(f"×{k} " + "/".join(
                f"{_g(s[n]['mean'][e25])} [{_g(s[n]['min'][e25])}–{_g(s[n]['max'][e25])}]"
                for n in names))
    measured = (f"excess at epoch {e25}, rM = " + "/".join(mults) + " (balanced, 5 seeds): "
                + "; ".join(parts) + f"; SVDLoRA {_g(s['SVDLoRA']['mean'][e25])}")
    return dict(measured=measured, verdict=_score(ok, len(groups)),
                reason=("caveat: by epoch 100 every run sits below SVDLoRA at the mini-batch "
                        "noise floor, where the rank matters little" if ok == len(groups) else
                        "a larger momentum rank does not move every run toward SVDLoRA"),
                numbers=numbers,
                rule="distance above SVDLoRA (as in F1) non-increasing r → 2r → 4r at epochs "
                     + "/".join(map(str, cps)) + " for every ×K and both variants, and smaller "
                     "at 4r than r at the first")


# --- the claims: the v1 (OPLoRA) abstract ----------------------------------------------------

def _claim_few_steps(fig):
    summary = fig("thm31_in_training")["metrics"]
    steps = {k.rsplit("|", 1)[0]: v["within_1pct_fraction"] for k, v in summary.items()
             if k.endswith("|step")}
    momentum = {k.rsplit("|", 1)[0]: v["within_1pct_fraction"] for k, v in summary.items()
                if k.endswith("|momentum")}
    low = min(steps.values())
    hard = {r["ratio"]: r["rel_excess"] for r in fig("bench")["series"]["hard"]
            if r["method"] == "LoRSum x2"}
    verdict = "holds" if low >= SHARE else ("partly" if low >= 0.5 else "does not hold here")
    measured = ("share of PSI-LoRA ×1 step calls within 1 % of the SVDLoRA step (digits, char-LM "
                "× λ0): " + ", ".join(f"{k} {_g(v, 2)}" for k, v in steps.items())
                + "; bench, LoRSum ×2 relative excess over Π_r at σ_r+1/σ_r = "
                + ", ".join(f"{_g(k, 2)}: {_g(v, 2)}" for k, v in sorted(hard.items())))
    reason = ("" if verdict == "holds" else
              "the ridge λ = lr·λ0 anchors each call at the warm start (an O(λ) offset, "
              "ridge_effect), a small spectral gap needs many more iterations (bench: gap 0.99), "
              "and the momentum call is within 1 % less often (" + ", ".join(
                  f"{k} {_g(v, 2)}" for k, v in momentum.items()) + ")")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(step_within=steps, momentum_within=momentum, hard_x2=hard),
                rule=f"holds if ≥ {SHARE:.0%} of the step calls are within 1 % in every task and "
                     "ridge setting; partly if ≥ 50 %")


def _claim_adam_budget(fig):
    opt = _bench_opt(fig)
    per = {k: (v["lora_bytes"] + v["state_bytes"]) / v["lora_bytes"] for k, v in opt.items()}
    total = {k: v["total_per_lora_param"] for k, v in opt.items()}
    adam = "LoRA + Adam"
    state_ok = per["PSI-LoRA x1"] <= per[adam]
    total_ok = total["PSI-LoRA x1"] <= total[adam]
    verdict = "holds" if state_ok and total_ok else ("partly" if state_ok else
                                                     "does not hold here")
    cap = opt["PSI-LoRA x1"]["captured_per_lora_param"]
    measured = ("per LoRA parameter, adapter + optimizer state: "
                + ", ".join(f"{k} {_g(per[k])}" for k in ("PSI-LoRA x1", adam, "SVDLoRA"))
                + "; with gradients and captured rows: "
                + ", ".join(f"{k} {_g(total[k])}" for k in ("PSI-LoRA x1", adam)))
    reason = ("" if verdict == "holds" else
              f"LoRSum needs the full layer gradient G = ΔᵀX, so the optimizer keeps the X and Δ "
              f"rows from backward to step: {_g(cap)}× the adapter here (N/r with N = 64 rows, "
              "r = 8); GeoLoRA needs none")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(adapter_plus_state=per, total=total),
                rule="holds if adapter + state ≤ Adam's (3×) and the total during a step ≤ Adam's; "
                     "partly if only the first")


def _claim_approach_svd(fig):
    parts, oks, numbers = [], [], {}
    s = fig("fig1_linear_minibatch")["series"]
    o, b = _lin_final(s, "PSI-LoRA x1, balanced"), _lin_final(s, "SVDLoRA")
    oks.append(o["mean"] <= (1 + TOL) * b["mean"])
    parts.append(f"linear mini-batch final excess {_g(o['mean'])} vs {_g(b['mean'])}")
    numbers["linear"] = o["mean"] / b["mean"]
    for name, lower, task in (("fig4_lr_curves", False, "digits acc"),
                              ("fig2_lr_robustness", True, "char-LM ppl")):
        methods = _sweep(fig, name, lower)
        om, bm = _lr_best(methods["psilora-1"])[0], _lr_best(methods["svdlora"])[0]
        ratio = om / bm
        oks.append(ratio <= 1 + TOL if lower else ratio >= 1 - TOL)
        parts.append(f"{task} {_g(om, 4)} vs {_g(bm, 4)}")
        numbers[name] = ratio
    state = {k: v["state_per_lora_param"] for k, v in _bench_opt(fig).items()}
    oks.append(state["PSI-LoRA x1"] <= state["SVDLoRA"] / 10)
    parts.append(f"optimizer state {_g(state['PSI-LoRA x1'])} vs {_g(state['SVDLoRA'])} per LoRA "
                 "parameter")
    numbers["state_ratio"] = state["PSI-LoRA x1"] / state["SVDLoRA"]
    return dict(measured="PSI-LoRA ×1 vs SVDLoRA (seed means): " + "; ".join(parts),
                verdict=_score(sum(oks), len(oks)),
                reason="" if all(oks) else "see the task(s) outside the tolerance",
                numbers=numbers,
                rule=f"holds if within {TOL:.0%} of SVDLoRA (or better) on every task and the "
                     "state is ≤ 1/10 of SVDLoRA's")


# --- the claims: GeoLoRA figures 2 and 5 -----------------------------------------------------

def _claim_geo_rank(fig):
    m = fig("geolora_rank_adaptivity")["metrics"]
    st = fig("geolora_rank_adaptivity")["settings"]
    default, small = m["geolora_final_ranks"], m["geolora_small_tau_final_ranks"]
    spread = max(default) - min(default)
    verdict = ("holds" if spread == 0 else
               "partly" if max(small) == min(small) else "does not hold here")
    measured = (f"rank-{m['target_rank']} target, initial ranks {st['ranks0']} (1 seed): final "
                f"ranks at τ = {st['tau']:g} {default}, at τ = {st['small_tau']:g} {small}")
    reason = ("" if verdict == "holds" else
              "at the default τ the smallest target direction is cut while the iterate is far "
              "from W* and never re-enters, and from low ranks the tangent gradient vanishes at a "
              "lower-rank stationary point; the reference trainers' coefficient steps between "
              "augmentation and truncation are not reproduced (per-step form)")
    return dict(measured=measured, verdict=verdict, reason=reason,
                numbers=dict(spread_default=spread, spread_small=max(small) - min(small)),
                rule="holds if the final rank is the same from every initial rank at the default "
                     "τ; partly if only at a small τ")


def _not_tested(measured, rule):
    return dict(measured=measured, verdict="not tested here", rule=rule, reason="", numbers={})


def _claim_geo_acc(fig):
    return _not_tested("—", "would need several seeds per initial rank on a fine-tuning task "
                            "(e.g. GeoLoRALinear on the digits MLP, initial ranks 2–32, 3 seeds): "
                            "between-rank spread of accuracy vs within-rank seed std")


def _claim_geo_adalora(fig):
    return _not_tested("—", "no AdaLoRA here; would need AdaLoRA (peft.AdaLoraConfig) and GeoLoRA "
                            "on an lr × rank-budget grid, counting runs that diverge in epoch 1")


def _claim_geo_lr(fig):
    d = fig("geolora_matrix_regression")
    scan = d["series"]["lr_scan"]
    stable = [lr for lr, ok in zip(scan["lr"], scan["stable"], strict=True) if ok]
    simgd_max = max(stable)
    geo_lr = d["settings"]["geolora_lr"]
    m = d["metrics"]
    geo_ok = m["final_loss_geolora"] < m["initial_loss"]
    ok = geo_lr > simgd_max and m["simgd_diverges_at_geolora_lr"] and geo_ok
    measured = (f"reconstructed problem (1 seed): simultaneous GD on U, S, V largest stable lr "
                f"{_g(simgd_max)} (diverges at {_g(geo_lr)}); GeoLoRA stable at {_g(geo_lr)}: "
                f"{_g(geo_lr / simgd_max)}× larger (GeoLoRA paper: 0.00178 vs 0.1)")
    return dict(measured=measured, verdict="holds" if ok else "does not hold here",
                reason="" if ok else "GeoLoRA is not stable at the larger lr here",
                numbers=dict(simgd_max_stable=simgd_max, geolora_lr=geo_lr),
                rule="holds if GeoLoRA converges at an lr above simultaneous GD's largest stable "
                     "lr, where simultaneous GD diverges")


def _claim_geo_converge(fig):
    d = fig("geolora_matrix_regression")
    m = d["metrics"]
    loss = d["series"]["loss"]
    eps = float(np.finfo(np.float32).eps)
    geo = loss["geolora"][-1] / loss["geolora"][0]
    sim = loss["simgd"][-1] / loss["simgd"][0]
    tail = np.asarray(loss["simgd"][-(len(loss["simgd"]) // 4):])
    rising = float(np.mean(np.diff(tail) > 0))
    ok = geo <= eps and sim > 1e3 * eps and rising > 0.1
    measured = (f"loss after {d['settings']['iters']} iterations / initial: GeoLoRA {_g(geo, 2)}; "
                f"simultaneous GD at its largest stable lr {_g(sim, 2)} (loss "
                f"{_g(loss['simgd'][-1])}), rising in {rising:.0%} of the last quarter's "
                f"iterations; at a smaller lr it reaches {_g(m['final_loss_simgd_best'], 2)}")
    reason = ("caveat: the oscillation is edge-of-stability at the largest stable lr, not a "
              "bad fixed point (a smaller lr converges); the problem is reconstructed" if ok
              else "GeoLoRA does not reach single precision or the baseline converges")
    return dict(measured=measured, verdict="holds" if ok else "does not hold here",
                reason=reason, numbers=dict(geolora_rel=geo, simgd_rel=sim, rising=rising),
                rule="holds if GeoLoRA's final/initial loss ≤ float32 eps and simultaneous GD's "
                     "stays > 1000 eps with the loss rising in > 10 % of the last quarter")


def _claim_geo_identify(fig):
    d = fig("geolora_matrix_regression")
    final = d["series"]["rank_geolora"][-1]
    target = d["metrics"]["target_rank"]
    ok = final == target
    return dict(measured=f"GeoLoRA rank {d['settings']['rank0']} → {final} (target {target}); "
                         "AdaLoRA not run",
                verdict="holds" if ok else "does not hold here",
                reason="caveat: only GeoLoRA's half is tested (no AdaLoRA here)" if ok
                else "GeoLoRA ends at the wrong rank",
                numbers=dict(final_rank=final, target_rank=target),
                rule="holds if GeoLoRA's final rank equals the target's")


# --- the table -------------------------------------------------------------------------------

#: (id, source key, the claim in one line, experiment(s), verdict function)
CLAIMS = (
    ("A1", "abstract", "LoRSum (PSI-LoRA) closes the gap between LoRA and SVDLoRA for gradient "
     "descent", "fig1_linear_fullbatch", _claim_gap),
    ("A2", "abstract", "the alternating least-squares updates are an implicit block power "
     "method (Theorem 3.1)", "thm31_rate, thm31_in_training", _claim_power),
    ("A3", "abstract", "LoRSum can maintain a low-rank momentum", "fig1_linear_minibatch",
     _claim_momentum),
    ("A4", "abstract", "storing only the diagonal of K-FAC / Shampoo still performs well",
     "fig3_scaled_ablation, fig4_lr_curves, fig2_lr_robustness", _claim_diagonal),
    ("A5", "abstract", "PSI-LoRA matches or improves on LoRA baselines",
     "fig1_linear_minibatch, fig4_lr_curves, fig2_lr_robustness", _claim_match),
    ("A6", "abstract", "at a modest compute overhead", "bench", _claim_overhead),
    ("A7", "abstract", "memory-efficient, no full-matrix SVD, LoRA-style parameter efficiency",
     "bench", _claim_memory),
    ("F1a", "fig1", "full batch: PSI-LoRA ×K moves toward SVDLoRA as K grows",
     "fig1_linear_fullbatch", _claim_fig1_full),
    ("F1b", "fig1", "mini-batch with momentum: PSI-LoRA ×K moves toward SVDLoRA as K grows",
     "fig1_linear_minibatch", _claim_fig1_mini),
    ("F2a", "fig2", "Scaled PSI-LoRA is more robust to the learning rate",
     "fig2_lr_robustness, fig4_lr_curves", _claim_fig2_robust),
    ("F2b", "fig2", "Scaled PSI-LoRA has better perplexity at every learning rate",
     "fig2_lr_robustness", _claim_fig2_best),
    ("F2c", "fig2-body", "Scaled PSI-LoRA is robust over lr 0.01–10", "fig2_lr_robustness",
     _claim_fig2_range),
    ("F3", "fig3", "Scaled PSI-LoRA ablation: metric × power × damping × lr",
     "fig3_scaled_ablation", _claim_fig3),
    ("F4", "fig4", "validation curves: PSI-LoRA matches or beats the LoRA baselines",
     "fig4_method_curves", _claim_fig4),
    ("F5", "fig5", "a larger momentum rank moves PSI-LoRA closer to the SVDLoRA oracle",
     "fig5_momentum_rank", _claim_fig5),
    ("V1", "v1", "1–2 alternating steps closely match the truncated SVD",
     "thm31_in_training, bench", _claim_few_steps),
    ("V2", "v1", "momentum within a memory budget of 3× the LoRA parameters (as Adam)", "bench",
     _claim_adam_budget),
    ("V3", "v1", "PSI-LoRA approaches SVDLoRA's performance with much less memory",
     "fig1_linear_minibatch, fig4_lr_curves, fig2_lr_robustness, bench", _claim_approach_svd),
    ("G2a", "geo2", "GeoLoRA converges to a similar parameter count from any initial rank",
     "geolora_rank_adaptivity", _claim_geo_rank),
    ("G2b", "geo2", "accuracy differences between initial ranks are below the seed variance",
     "—", _claim_geo_acc),
    ("G2c", "geo2", "GeoLoRA is more robust than AdaLoRA, notably at high learning rates", "—",
     _claim_geo_adalora),
    ("G5a", "geo5", "GeoLoRA allows much larger learning rates than SVD-LoRA (simultaneous GD)",
     "geolora_matrix_regression", _claim_geo_lr),
    ("G5b", "geo5", "GeoLoRA converges to single precision; SVD-LoRA oscillates and stalls",
     "geolora_matrix_regression", _claim_geo_converge),
    ("G5c", "geo5", "GeoLoRA identifies the rank (AdaLoRA does not)",
     "geolora_matrix_regression", _claim_geo_identify),
)


def _figures_dir(figures_dir):
    if figures_dir is None:
        return FIGURES
    if not isinstance(figures_dir, (str, Path)):
        raise TypeError(f"figures_dir must be a str or Path, got {type(figures_dir).__name__}")
    path = Path(figures_dir)
    if not path.is_dir():
        raise ValueError(f"figures_dir must be an existing folder, got {str(path)!r}")
    return path


def collect(figures_dir=None):
    """Every claim's :class:`Claim`, in table order, from ``figures_dir`` (default figures/).

    A claim whose figure JSON (or a field of it) is missing is reported as ``not tested
    here``, with the file or field named in its rule; nothing is raised for it.
    """
    fig = _Figures(_figures_dir(figures_dir))
    rows = []
    for cid, source, text, experiment, fn in CLAIMS:
        try:
            out = fn(fig)
        except (MissingFigure, KeyError, IndexError) as exc:
            out = _not_tested("—", f"figure data missing ({exc}); regenerate with "
                                   f"python -m analysis figures --only {experiment}")
        if out["verdict"] not in VERDICTS:  # pragma: no cover - a bug in a _claim_ function
            raise RuntimeError(f"claim {cid}: unknown verdict {out['verdict']!r}")
        rows.append(Claim(cid, SOURCES[source], text, experiment, **out))
    return rows


def report(figures_dir=None):
    """``{"claims": [rows], "numbers": {id: {...}}, "counts": {verdict: n}, ...}`` (JSON-able)."""
    t0 = time.perf_counter()
    rows = collect(figures_dir)
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    return {"claims": [r.row() for r in rows], "numbers": {r.id: r.numbers for r in rows},
            "counts": counts, "thresholds": dict(tol=TOL, noise_sigmas=NOISE_SIGMAS,
                                                 gap_closed=GAP_CLOSED, share=SHARE,
                                                 bound_share=BOUND_SHARE),
            "seconds": time.perf_counter() - t0}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


MARKDOWN_COLUMNS = ("id", "claim", "source", "experiment", "measured", "rule", "verdict",
                    "reason")


def to_markdown(rows):
    """The README table of :func:`collect` rows (verdicts in bold), plus a count line."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Claim) for r in rows):
        raise TypeError("rows must be a list of Claim (from analysis.claims.collect())")
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |",
             "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for r in rows:
        d = r.row()
        d["verdict"] = f"**{d['verdict']}**"
        d["experiment"] = ", ".join(f"`{e}`" if e != "—" else e
                                    for e in d["experiment"].split(", "))
        lines.append("| " + " | ".join(_cell(d[c]) for c in MARKDOWN_COLUMNS) + " |")
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."]
    return "\n".join(lines) + "\n"


def readme_block(markdown):
    """``markdown`` between the README markers (what the README must contain verbatim)."""
    return f"{START}\n{markdown}{END}"


def update_readme(path=README, figures_dir=None):
    """Replace the README's claims block by the current table; True if the file changed."""
    path = Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = head + readme_block(to_markdown(collect(figures_dir))) + tail
    if new != text:
        path.write_text(new)
    return new != text


def _text(rows):
    out = []
    for r in rows:
        out.append(f"{r.id:<4} {r.verdict.upper():<19} {r.claim}  [{r.source}]")
        out.append(f"     experiment: {r.experiment}")
        out.append(f"     measured:   {r.measured}")
        out.append(f"     rule:       {r.rule}")
        if r.reason:
            out.append(f"     reason:     {r.reason}")
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    out.append("\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({len(rows)} claims)")
    return "\n".join(out)


def main(json_path=None, markdown=False, figures_dir=None, write_readme=False):
    """Print the claims table (text, or ``markdown``); always return 0 (a report, not a gate).

    ``json_path``: ``"-"`` prints the :func:`report` JSON to stdout instead of the table; any
    other value writes it to that path.  ``write_readme``: also refresh the README block.
    """
    if json_path == "-":
        print(json.dumps(report(figures_dir), indent=1, ensure_ascii=False))
        return 0
    rows = collect(figures_dir)
    print(to_markdown(rows) if markdown else _text(rows), end="" if markdown else "\n")
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report(figures_dir), indent=1, ensure_ascii=False) + "\n")
    if write_readme:
        changed = update_readme(README, figures_dir)
        print(f"README.md claims block {'updated' if changed else 'already current'}",
              file=sys.stderr)
    return 0

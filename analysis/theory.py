"""Theory checks: Proposition 1, Theorem 3.1, the ridge, the special cases (SPEC §2, §4, §5).

Each ``run_*`` function takes a frozen dataclass config and returns plain numbers (dicts of
floats and NumPy arrays); nothing here plots.  The figures (:mod:`analysis.figures.theory`),
the ``verify`` table (:mod:`analysis.verify`) and the tests read the same numbers.

Everything is computed by the core (:func:`lowrank_prox.lorsum`,
:func:`lowrank_prox.lorsum_history`, :func:`lowrank_prox.truncated_svd`,
:func:`lowrank_prox.principal_angles`, :func:`lowrank_prox.tangent_project`).  The
ScaledGD / RPLoRA / Gauss–Seidel formulas written out in :func:`run_special_cases` are the
*references* the core is compared with.  NumPy float64 throughout; seeds are part of each
config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

import lowrank_prox as lp

__all__ = [
    "PowerConfig",
    "Prop1Config",
    "ProjectionConfig",
    "RateConfig",
    "RidgeConfig",
    "SpecialConfig",
    "WarmConfig",
    "als_iterates",
    "config_dict",
    "excess_error",
    "exponent_error",
    "fit_rate",
    "gap_matrix",
    "gap_spectrum",
    "loglog_slope",
    "run_power_equivalence",
    "run_projection",
    "run_prop1",
    "run_rates",
    "run_ridge",
    "run_special_cases",
    "GaugeConfig",
    "run_gauge",
    "run_warm_start",
    "tan_max_angle",
]

EPS = float(np.finfo(np.float64).eps)


def config_dict(cfg):
    """A config as a JSON-friendly dict (for figure sidecars)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


# -- helpers -----------------------------------------------------------------------------------


def gap_spectrum(rank, ratio, length):
    """Singular values with ``σ_{r+1}/σ_r = ratio``: top ``1 + 0.5(r−i)`` (σ_r = 1), tail
    ``ratio·0.8^j`` (so σ_{r+2}/σ_{r+1} = 0.8 and the asymptotic rate is set by the gap)."""
    top = 1.0 + 0.5 * np.arange(rank)[::-1]
    tail = ratio * 0.8 ** np.arange(length - rank)
    return np.concatenate([top, tail])


def gap_matrix(m, n, rank, ratio, rng):
    """``Y = Σ σ_i u_i v_iᵀ`` with :func:`gap_spectrum`; returns ``(Y, U, s, V)`` (full SVD)."""
    k = min(m, n)
    s = gap_spectrum(rank, ratio, k)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (U * s) @ V.T, U, s, V


def tan_max_angle(A, B):
    """``tan θ_max(span A, span B)`` from :func:`lowrank_prox.principal_angles`."""
    theta = float(lp.principal_angles(A, B)[0])
    return math.tan(theta) if theta < math.pi / 2 else math.inf


def als_iterates(Y, U0, V0, iters, *, ridge=0.0, anchor=None):
    """``[(U_k, V_k)]`` for ``k = 0..iters`` (after each full V-then-U iteration), one
    :func:`lowrank_prox.lorsum_history` run."""
    hist = lp.lorsum_history(Y, U0, V0, iters=iters, ridge=ridge, anchor=anchor,
                             keep_iterates=True)
    its = [(U0, V0)]
    its += [hist.iterates[j] for j, step in enumerate(hist.steps) if step == "u"]
    return its


def excess_error(s, V_full, rank, V):
    """``‖Y − Y P_V‖² − ‖Y − Π_r(Y)‖²`` for ``Y = Σ σ_i u_i v_iᵀ`` without cancellation.

    After a U-step ``U_k V_kᵀ = Y P_{V_k}`` (SPEC §4), so this is the excess error of the
    iterate.  Expanding over the right singular vectors,
    ``excess = Σ_{i≤r} σ_i² ‖(I−P_V) v_i‖² − Σ_{i>r} σ_i² ‖P_V v_i‖²``: each piece is small
    and computed directly, so the value is accurate far below ``eps·‖Y‖²`` (where the direct
    difference of two norms stops).
    """
    Q, _ = np.linalg.qr(V)
    C = Q.T @ V_full  # (r, k)
    resid = V_full[:, :rank] - Q @ C[:, :rank]
    head = np.sum(s[:rank] ** 2 * np.sum(resid**2, axis=0))
    tail = np.sum(s[rank:] ** 2 * np.sum(C[:, rank:] ** 2, axis=0))
    return float(head - tail)


def fit_rate(k, values, *, lo, hi, k_min=0):
    """Per-iteration geometric rate ``exp(slope)`` of a least-squares line through
    ``log values`` against ``k``, on the window ``k ≥ k_min`` and ``lo ≤ value ≤ hi``.

    Returns ``(rate, k_first, k_last)``; ``rate`` is NaN when the window has < 3 points.
    """
    k = np.asarray(k, dtype=float)
    v = np.asarray(values, dtype=float)
    w = (k >= k_min) & (v >= lo) & (v <= hi) & np.isfinite(v)
    if w.sum() < 3:
        return math.nan, math.nan, math.nan
    slope = np.polyfit(k[w], np.log(v[w]), 1)[0]
    return float(math.exp(slope)), float(k[w][0]), float(k[w][-1])


def loglog_slope(x, y):
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def exponent_error(measured, predicted):
    """``|log measured / log predicted − 1|``: relative error in digits gained per iteration."""
    return abs(math.log(measured) / math.log(predicted) - 1.0)


# -- Proposition 1 (SPEC §2) -------------------------------------------------------------------


@dataclass(frozen=True)
class Prop1Config:
    """Random ``W``, ``Δ`` for Eckart–Young; rank-r ``W_t`` and ``G`` for the proximal form."""

    m: int = 30
    n: int = 20
    rank: int = 3
    delta_scale: float = 0.3
    eta: float = 0.1
    n_random: int = 40
    seed: int = 0


def run_prop1(cfg=Prop1Config()):
    """Proposition 1 (SPEC §2): Π_r attains the Eckart–Young residual; nothing tried beats it;
    Π_r(W_t − ηG) minimises the proximal linearisation; at σ_r = σ_{r+1} two minimisers tie.

    Competitors: ``Y P_Q`` for random ``Q`` (the best matrix with a random row space), LoRSum
    local solutions (1, 2 and 5 iterations from random starts) and small random perturbations
    of the factors of Π_r.
    """
    rng = np.random.default_rng(cfg.seed)
    m, n, r = cfg.m, cfg.n, cfg.rank
    W = rng.standard_normal((m, n))
    A = W + cfg.delta_scale * rng.standard_normal((m, n))
    U, s, Vh = lp.truncated_svd(A, r)
    P = (U * s) @ Vh
    sig = np.linalg.svd(A, compute_uv=False)
    floor = float(np.sqrt(np.sum(sig[r:] ** 2)))
    resid = float(np.linalg.norm(A - P))

    def competitors(Y, Ustar, sstar, Vhstar):
        out = []
        for _ in range(cfg.n_random):
            Q, _ = np.linalg.qr(rng.standard_normal((n, r)))
            out.append(("random row space", Y @ Q @ Q.T))
        for iters in (1, 2, 5):
            for _ in range(cfg.n_random // 4):
                Ul, Vl = lp.lorsum(Y, rng.standard_normal((m, r)), rng.standard_normal((n, r)),
                                   iters=iters)
                out.append((f"lorsum x{iters}", Ul @ Vl.T))
        for eps in (1e-6, 1e-3, 1e-1):
            for _ in range(cfg.n_random // 4):
                Up = Ustar * sstar + eps * rng.standard_normal((m, r))
                Vp = Vhstar.T + eps * rng.standard_normal((n, r))
                out.append((f"perturbed Pi_r ({eps:g})", Up @ Vp.T))
        return out

    comp = competitors(A, U, s, Vh)
    ratios = np.array([np.linalg.norm(A - B) / floor for _, B in comp])

    # Proximal form with a rank-r W_t: f(W) = <G, W − W_t> + ‖W − W_t‖²/(2η).
    Wt = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    G = rng.standard_normal((m, n))
    eta = cfg.eta
    Yp = Wt - eta * G

    def f(Wm):
        D = Wm - Wt
        return float(np.sum(G * D) + np.sum(D * D) / (2 * eta))

    Up_, sp_, Vhp_ = lp.truncated_svd(Yp, r)
    Pp = (Up_ * sp_) @ Vhp_
    f_star = f(Pp)
    sig_p = np.linalg.svd(Yp, compute_uv=False)
    f_pred = float((np.sum(sig_p[r:] ** 2) - eta**2 * np.sum(G * G)) / (2 * eta))
    comp_p = competitors(Yp, Up_, sp_, Vhp_) + [("W_t", Wt)]
    f_gaps = np.array([f(B) - f_star for _, B in comp_p])

    # Tie σ_r = σ_{r+1}: two distinct minimisers with the same residual.
    s_tie = np.concatenate([[3.0, 2.0][: r - 1], [1.0, 1.0], 0.5 ** np.arange(1, min(m, n) - r)])
    s_tie = np.sort(s_tie)[::-1][: min(m, n)]
    Ut, _ = np.linalg.qr(rng.standard_normal((m, len(s_tie))))
    Vt, _ = np.linalg.qr(rng.standard_normal((n, len(s_tie))))
    T = (Ut * s_tie) @ Vt.T
    U4, s4, Vh4 = lp.truncated_svd(T, r + 1)
    keep1 = list(range(r))
    keep2 = list(range(r - 1)) + [r]
    M1 = (U4[:, keep1] * s4[keep1]) @ Vh4[keep1]
    M2 = (U4[:, keep2] * s4[keep2]) @ Vh4[keep2]
    tie_floor = float(np.sqrt(np.sum(s_tie[r:] ** 2)))
    tie_r1, tie_r2 = float(np.linalg.norm(T - M1)), float(np.linalg.norm(T - M2))

    return {
        "ey_floor": floor,
        "ey_residual": resid,
        "ey_rel_err": abs(resid - floor) / floor,
        "competitor_min_ratio": float(ratios.min()),
        "competitor_count": len(comp),
        "prox_f_star": f_star,
        "prox_f_pred": f_pred,
        "prox_identity_err": abs(f_star - f_pred) / max(abs(f_pred), 1.0),
        "prox_min_gap": float(f_gaps.min()),
        "prox_competitor_count": len(comp_p),
        "tie_residuals": (tie_r1, tie_r2),
        "tie_floor": tie_floor,
        "tie_residual_diff": abs(tie_r1 - tie_r2) / tie_floor,
        "tie_distance": float(np.linalg.norm(M1 - M2)),
    }


@dataclass(frozen=True)
class ProjectionConfig:
    """LoRSum×K from a random start against Π_r(Y), for several gaps (figure prop1_projection)."""

    m: int = 60
    n: int = 40
    rank: int = 4
    ratios: tuple = (0.3, 0.6, 0.9, 0.99)
    iters: int = 60
    seed: int = 0


def run_projection(cfg=ProjectionConfig()):
    """Relative residual ‖Y − U_KV_Kᵀ‖/‖Y‖, its Eckart–Young floor and ‖U_KV_Kᵀ − Π_r(Y)‖/‖Π_r(Y)‖
    for ``K = 0..iters`` (SPEC §2, §4)."""
    out = {}
    for i, ratio in enumerate(cfg.ratios):
        rng = np.random.default_rng([cfg.seed, i])
        Y, Uf, s, Vf = gap_matrix(cfg.m, cfg.n, cfg.rank, ratio, rng)
        U, sv, Vh = lp.truncated_svd(Y, cfg.rank)
        P = (U * sv) @ Vh
        its = als_iterates(Y, rng.standard_normal((cfg.m, cfg.rank)),
                           rng.standard_normal((cfg.n, cfg.rank)), cfg.iters)
        ny, npn = np.linalg.norm(Y), np.linalg.norm(P)
        out[ratio] = {
            "K": np.arange(cfg.iters + 1),
            "residual": np.array([np.linalg.norm(Y - Uk @ Vk.T) / ny for Uk, Vk in its]),
            "floor": float(np.sqrt(np.sum(s[cfg.rank:] ** 2)) / ny),
            "distance": np.array([np.linalg.norm(Uk @ Vk.T - P) / npn for Uk, Vk in its]),
        }
    return out


# -- Theorem 3.1 (SPEC §4) ---------------------------------------------------------------------


@dataclass(frozen=True)
class RateConfig:
    """Random-start ALS on a matrix with gap ``σ_{r+1}/σ_r = ratio``; ``iters`` per ratio.

    The rate is fitted on ``k ≥ k_min`` where ``fit_lo ≤ tan θ_k ≤ fit_hi`` (past the transient
    of the other singular directions, small-angle regime, above the float64 floor); the excess
    error on the same window squared.
    """

    m: int = 60
    n: int = 40
    rank: int = 4
    ratios: tuple = (0.3, 0.6, 0.9, 0.99)
    iters: tuple = (20, 60, 200, 800)
    k_min: int = 5
    fit_lo: float = 1e-11
    fit_hi: float = 1e-1
    bound_floor: float = 1e-12
    seed: int = 0


def run_rates(cfg=RateConfig()):
    """Theorem 3.1 (SPEC §4): ``tan θ_max(U_k, U_r*) ≤ (σ_{r+1}/σ_r)^{2k} tan θ_0`` and the fitted
    per-iteration rates of tan θ (predicted ρ²) and of the excess error (predicted ρ⁴).

    Returns ``{ratio: {...}}`` with the curves, the fitted rates and windows, and
    ``bound_violation``: ``max_k tan θ_k / bound_k`` over the k ≥ 1 with ``bound_k ≥ bound_floor``
    (≤ 1 when the bound holds; below that the float64 floor of tan θ is reached).
    """
    if len(cfg.iters) != len(cfg.ratios):
        raise ValueError("RateConfig.iters must give one iteration count per ratio")
    out = {}
    for i, (ratio, K) in enumerate(zip(cfg.ratios, cfg.iters, strict=True)):
        rng = np.random.default_rng([cfg.seed, i])
        Y, Uf, s, Vf = gap_matrix(cfg.m, cfg.n, cfg.rank, ratio, rng)
        U0 = rng.standard_normal((cfg.m, cfg.rank))
        V0 = rng.standard_normal((cfg.n, cfg.rank))
        its = als_iterates(Y, U0, V0, K)
        Ustar = Uf[:, : cfg.rank]
        k = np.arange(K + 1)
        tan = np.array([tan_max_angle(Uk, Ustar) for Uk, _ in its])
        excess = np.array([np.nan] + [excess_error(s, Vf, cfg.rank, Vk) for _, Vk in its[1:]])
        rho = s[cfg.rank] / s[cfg.rank - 1]
        bound = rho ** (2 * k) * tan[0]
        checked = (bound >= cfg.bound_floor) & (k >= 1)
        rate, k1, k2 = fit_rate(k, tan, lo=cfg.fit_lo, hi=cfg.fit_hi, k_min=cfg.k_min)
        sr2 = s[cfg.rank - 1] ** 2
        erate, e1, e2 = fit_rate(k, excess / sr2, lo=cfg.fit_lo**2, hi=cfg.fit_hi**2,
                                 k_min=cfg.k_min)
        out[ratio] = {
            "k": k,
            "tan": tan,
            "bound": bound,
            "excess": excess,
            "rate_predicted": float(rho**2),
            "rate_measured": rate,
            "rate_window": (k1, k2),
            "rate_exponent_err": exponent_error(rate, rho**2),
            "excess_rate_predicted": float(rho**4),
            "excess_rate_measured": erate,
            "excess_window": (e1, e2),
            "excess_exponent_err": exponent_error(erate, rho**4),
            "bound_violation": float(np.max(tan[checked] / bound[checked])),
            "bound_checked_k": int(checked.sum()),
        }
    return out


@dataclass(frozen=True)
class PowerConfig:
    """ALS vs explicit block power iteration, on a slow gap so the span is far from U_r*."""

    m: int = 60
    n: int = 40
    rank: int = 4
    ratio: float = 0.9
    iters: int = 6
    seed: int = 1


def run_power_equivalence(cfg=PowerConfig()):
    """span U_k (LoRSum, λ = 0) vs span (YYᵀ)^k U_0 (orthogonal iteration written out), SPEC §4.

    Returns the largest principal angle between the two for each ``k`` and, for scale, the
    angle of each to the limit ``U_r*``.
    """
    rng = np.random.default_rng(cfg.seed)
    Y, Uf, _, _ = gap_matrix(cfg.m, cfg.n, cfg.rank, cfg.ratio, rng)
    U0 = rng.standard_normal((cfg.m, cfg.rank))
    its = als_iterates(Y, U0, rng.standard_normal((cfg.n, cfg.rank)), cfg.iters)
    Q = U0
    diff, to_star = [], []
    for k in range(1, cfg.iters + 1):
        Q, _ = np.linalg.qr(Y @ (Y.T @ Q))  # reference: one step of orthogonal iteration
        diff.append(float(lp.principal_angles(its[k][0], Q)[0]))
        to_star.append(float(lp.principal_angles(Q, Uf[:, : cfg.rank])[0]))
    return {"k": np.arange(1, cfg.iters + 1), "angle_als_vs_power": np.array(diff),
            "angle_to_limit": np.array(to_star), "max_angle": float(max(diff))}


@dataclass(frozen=True)
class WarmConfig:
    """Warm start ``Y = U_tV_tᵀ − ηG`` (G = ΔᵀX, ‖G‖₂ = 1, σ(W_t) = 2.5, 2, 1.5, 1)."""

    m: int = 60
    n: int = 40
    rank: int = 4
    batch: int = 8
    etas: tuple = (1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1, 3.16e-1, 1.0)
    slope_eta_max: float = 0.1
    iters: int = 6
    seed: int = 2


def run_warm_start(cfg=WarmConfig()):
    """Warm vs random start (SPEC §4): initial angle O(η‖G‖/gap), then the ρ_Y^{2k} contraction.

    For each η: ``tan θ_0`` of the warm start ``U_t``, the Wedin bound
    ``sin θ_0 ≤ η‖G‖₂ / σ_r(Y)`` (Wedin 1972 with the unperturbed matrix W_t of rank r),
    ``tan θ_k`` for warm and random starts, the bound ``ρ_Y^{2k} tan θ_0``, and the relative
    distance of ``U_KV_Kᵀ`` to Π_r(Y) after K = 1, 2 iterations.  ``tan0_slope`` is the log-log
    slope of ``tan θ_0`` against η on ``η ≤ slope_eta_max`` (predicted 1).
    """
    rng = np.random.default_rng(cfg.seed)
    m, n, r = cfg.m, cfg.n, cfg.rank
    sw = 1.0 + 0.5 * np.arange(r)[::-1]
    Qu, _ = np.linalg.qr(rng.standard_normal((m, r)))
    Qv, _ = np.linalg.qr(rng.standard_normal((n, r)))
    Ut, Vt = Qu * np.sqrt(sw), Qv * np.sqrt(sw)
    Dt = rng.standard_normal((m, cfg.batch))
    X = rng.standard_normal((n, cfg.batch))
    gnorm = float(np.linalg.norm(Dt @ X.T, 2))
    Dt = Dt / gnorm  # ‖G‖₂ = 1
    U_rand = rng.standard_normal((m, r))
    V_rand = rng.standard_normal((n, r))
    rows = []
    for eta in cfg.etas:
        Y = lp.LowRankSum([(1.0, Ut, Vt), (-eta, Dt, X)])
        Us, ss, Vhs = lp.truncated_svd(Y, min(r + 1, Y.inner_dim))
        Ustar = Us[:, :r]
        P = (Us[:, :r] * ss[:r]) @ Vhs[:r]
        rho = float(ss[r] / ss[r - 1])
        warm = als_iterates(Y, Ut, Vt, cfg.iters)
        rand = als_iterates(Y, U_rand, V_rand, cfg.iters)
        tan_w = np.array([tan_max_angle(Uk, Ustar) for Uk, _ in warm])
        tan_r = np.array([tan_max_angle(Uk, Ustar) for Uk, _ in rand])
        dist = [float(np.linalg.norm(Uk @ Vk.T - P) / np.linalg.norm(P)) for Uk, Vk in warm]
        sin0 = math.sin(math.atan(tan_w[0]))
        rows.append({
            "eta": eta,
            "rho": rho,
            "tan_warm": tan_w,
            "tan_random": tan_r,
            "bound_warm": rho ** (2 * np.arange(cfg.iters + 1)) * tan_w[0],
            "sin0": sin0,
            "wedin": eta / float(ss[r - 1]),
            "dist_K1": dist[1],
            "dist_K2": dist[2],
        })
    etas = np.array([row["eta"] for row in rows])
    tan0 = np.array([row["tan_warm"][0] for row in rows])
    sel = etas <= cfg.slope_eta_max
    return {
        "rows": rows,
        "tan0_slope": loglog_slope(etas[sel], tan0[sel]),
        "wedin_max_ratio": float(max(row["sin0"] / row["wedin"] for row in rows)),
        "sigma_r_Wt": float(sw[-1]),
    }


# -- ridge (SPEC §4, "How λ enters ... measure it") -------------------------------------------


@dataclass(frozen=True)
class RidgeConfig:
    """Warm start anchored at the adapter: ``Y = U_tV_tᵀ − ηG``, anchor ``(U_t, V_t)``.

    ``iters`` full iterations approximate the fixed point; the fast phase is the first
    ``fast_iters`` iterations; the slow-phase rate is fitted on the iteration-to-iteration
    changes ``‖W_{k+1} − W_k‖/‖Π_r(Y)‖ ≥ 1e-13`` from the iteration where the λ = 0 transient
    ``ρ^{2k}`` is below 1e-16 (``k ≥ 2·⌈log 1e-8 / log ρ²⌉``) to ``trace_iters``.
    """

    m: int = 60
    n: int = 40
    rank: int = 4
    batch: int = 8
    eta: float = 0.3
    lambdas: tuple = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    slope_lambda_max: float = 1e-2
    iters: int = 3000
    trace_iters: int = 400
    fast_iters: int = 3
    seed: int = 3


def run_ridge(cfg=RidgeConfig()):
    """What the ridge λ does to LoRSum (no paper claim; SPEC §4 asks to measure it).

    Per λ: the relative distance of the λ-fixed point (``iters`` iterations) to Π_r(Y) (the λ = 0
    limit); the distance ``‖U_kV_kᵀ − Π_r(Y)‖/‖Π_r(Y)‖`` for the first iterations
    (fast phase) and ``fast_shift = max_{k ≤ fast_iters} ‖W_k(λ) − W_k(0)‖/‖Π_r(Y)‖``; the
    slow-phase per-iteration rate of
    ``‖W_{k+1} − W_k‖`` and, for comparison, the empirical law ``1/(1 + λ/σ_r(W_t))``.
    """
    rng = np.random.default_rng(cfg.seed)
    m, n, r = cfg.m, cfg.n, cfg.rank
    sw = 1.0 + 0.5 * np.arange(r)[::-1]
    Qu, _ = np.linalg.qr(rng.standard_normal((m, r)))
    Qv, _ = np.linalg.qr(rng.standard_normal((n, r)))
    Ut, Vt = Qu * np.sqrt(sw), Qv * np.sqrt(sw)
    Dt = rng.standard_normal((m, cfg.batch))
    X = rng.standard_normal((n, cfg.batch))
    Dt = Dt / float(np.linalg.norm(Dt @ X.T, 2))
    Y = lp.LowRankSum([(1.0, Ut, Vt), (-cfg.eta, Dt, X)])
    Us, ss, Vhs = lp.truncated_svd(Y, r + 1)
    P = (Us[:, :r] * ss[:r]) @ Vhs[:r]
    nP = float(np.linalg.norm(P))
    rho2 = float((ss[r] / ss[r - 1]) ** 2)
    k0 = int(math.ceil(math.log(1e-8) / math.log(rho2)))

    def trace(lam, iters):
        U, V = Ut, Vt
        W = [U @ V.T]
        for _ in range(iters):
            U, V = lp.lorsum(Y, U, V, iters=1, ridge=lam, anchor=(Ut, Vt))
            W.append(U @ V.T)
        return W

    base = trace(0.0, cfg.fast_iters)
    base_fast = np.array([np.linalg.norm(Wk - P) / nP for Wk in base])
    slow_k_min = max(2 * k0, cfg.fast_iters + 1)
    rows = []
    for lam in cfg.lambdas:
        Uf, Vf = lp.lorsum(Y, Ut, Vt, iters=cfg.iters, ridge=lam)
        Uh, Vh_ = lp.lorsum(Y, Ut, Vt, iters=cfg.iters // 2, ridge=lam)
        Wfix = Uf @ Vf.T
        W = trace(lam, cfg.trace_iters)
        steps = np.array([np.linalg.norm(W[j + 1] - W[j]) / nP for j in range(len(W) - 1)])
        slow, s1, s2 = fit_rate(np.arange(len(steps)), steps, lo=1e-13, hi=1.0,
                                k_min=slow_k_min)
        fast = np.array([np.linalg.norm(Wk - P) / nP for Wk in W[: cfg.fast_iters + 1]])
        shift = max(float(np.linalg.norm(W[j] - base[j]) / nP) for j in range(1, len(base)))
        rows.append({
            "lambda": lam,
            "fixed_dist": float(np.linalg.norm(Wfix - P) / nP),
            "fixed_unconverged": float(np.linalg.norm(Wfix - Uh @ Vh_.T) / nP),
            "trace_dist": np.array([np.linalg.norm(Wk - Wfix) / nP for Wk in W]),
            "fast_dist": fast,
            "fast_shift": shift,
            "slow_rate": slow,
            "slow_window": (s1, s2),
            "slow_law": 1.0 / (1.0 + lam / float(sw[-1])),
        })
    lams = np.array([row["lambda"] for row in rows])
    fixed = np.array([row["fixed_dist"] for row in rows])
    sel = lams <= cfg.slope_lambda_max
    shifts = np.array([row["fast_shift"] for row in rows])
    return {
        "rows": rows,
        "rho2": rho2,
        "fast_shift_slope": loglog_slope(lams[sel], shifts[sel]),
        "slow_k_min": slow_k_min,
        "base_fast": base_fast,
        "fixed_slope": loglog_slope(lams[sel], fixed[sel]),
        "fixed_coef": float(np.median(fixed[sel] / lams[sel])),
        "sigma_r_Wt": float(sw[-1]),
        "sigma_r_Y": float(ss[r - 1]),
    }


# -- special cases (SPEC §5) -------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialConfig:
    m: int = 30
    n: int = 20
    rank: int = 3
    batch: int = 6
    eta: float = 0.05
    ridge: float = 0.1
    svd_iters: int = 300
    first_order_etas: tuple = (1e-2, 1e-3, 1e-4)
    seed: int = 4


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_special_cases(cfg=SpecialConfig()):
    """SPEC §5: Jacobi = ScaledGD (λ = 0) / RPLoRA (λ > 0); one alternating iteration =
    Gauss–Seidel; K → ∞, λ = 0 = SVDLoRA; P_T(G) and the first-order form of the steps.

    Max relative errors against the explicit formulas; for the first-order statements the
    remainder ``‖step − (W − η·D)‖`` for η over ``first_order_etas`` and its log-log slope
    (predicted 2: the identity holds to first order, the remainder is O(η²)).
    """
    rng = np.random.default_rng(cfg.seed)
    m, n, r = cfg.m, cfg.n, cfg.rank
    U = rng.standard_normal((m, r))
    V = rng.standard_normal((n, r))
    Dt = rng.standard_normal((m, cfg.batch))
    X = rng.standard_normal((n, cfg.batch))
    G = Dt @ X.T
    eta, lam = cfg.eta, cfg.ridge
    I = np.eye(r)

    def target(e):
        return lp.LowRankSum([(1.0, U, V), (-e, Dt, X)])

    Y = target(eta)
    Yd = Y.to_dense()
    out = {}
    # Jacobi, λ = 0: ScaledGD (Tong et al. 2021).
    Uj, Vj = lp.lorsum(Y, U, V, iters=0, ridge=0.0)
    U_ref = U - eta * G @ V @ np.linalg.inv(V.T @ V)
    V_ref = V - eta * G.T @ U @ np.linalg.inv(U.T @ U)
    out["scaledgd_err"] = max(_rel(Uj, U_ref), _rel(Vj, V_ref))
    # Jacobi, λ > 0: RPLoRA / PrecGD (Zhang & Pilanci 2024).
    Uj, Vj = lp.lorsum(Y, U, V, iters=0, ridge=lam)
    U_rp = U - eta * G @ V @ np.linalg.inv(V.T @ V + lam * I)
    V_rp = V - eta * G.T @ U @ np.linalg.inv(U.T @ U + lam * I)
    out["rplora_err"] = max(_rel(Uj, U_rp), _rel(Vj, V_rp))
    # One alternating iteration: the RPLoRA V, then U from the fresh V (Gauss–Seidel).
    Ug, Vg = lp.lorsum(Y, U, V, iters=1, ridge=lam)
    U_gs = (lam * U + Yd @ V_rp) @ np.linalg.inv(V_rp.T @ V_rp + lam * I)
    out["gauss_seidel_err"] = max(_rel(Vg, V_rp), _rel(Ug, U_gs))
    # K → ∞, λ = 0: SVDLoRA.
    Uk, Vk = lp.lorsum(Y, U, V, iters=cfg.svd_iters, ridge=0.0)
    Us, ss, Vhs = lp.truncated_svd(Y, r)
    Pr = (Us * ss) @ Vhs
    out["svdlora_dist"] = float(np.linalg.norm(Uk @ Vk.T - Pr) / np.linalg.norm(Pr))
    # Tangent projection: factored = definition.
    PU = U @ np.linalg.pinv(U)
    PV = V @ np.linalg.pinv(V)
    PT_ref = PU @ G + G @ PV - PU @ G @ PV
    PT = lp.tangent_project(lp.LowRankSum([(1.0, Dt, X)]), U, V)
    out["tangent_err"] = _rel(PT.to_dense(), PT_ref)
    out["tangent_rank"] = int(PT.inner_dim)
    # First-order forms: SVDLoRA step and the alternating step are W − ηP_T(G) + O(η²);
    # the Jacobi (ScaledGD) step is W − η(P_U G + G P_V) + O(η²).
    W = U @ V.T
    PT_d = lp.tangent_project(G, U, V)
    first = {"svdlora": [], "alternating": [], "jacobi": [], "jacobi_vs_PT": []}
    for e in cfg.first_order_etas:
        Ye = target(e)
        Ue, se, Vhe = lp.truncated_svd(Ye, r)
        first["svdlora"].append(np.linalg.norm((Ue * se) @ Vhe - (W - e * PT_d)))
        Ua, Va = lp.lorsum(Ye, U, V, iters=1)
        first["alternating"].append(np.linalg.norm(Ua @ Va.T - (W - e * PT_d)))
        Uq, Vq = lp.lorsum(Ye, U, V, iters=0)
        first["jacobi"].append(np.linalg.norm(Uq @ Vq.T - (W - e * (PU @ G + G @ PV))))
        first["jacobi_vs_PT"].append(np.linalg.norm(Uq @ Vq.T - (W - e * PT_d)))
    etas = cfg.first_order_etas
    gn = float(np.linalg.norm(G))
    for key, vals in first.items():
        out[f"first_order_{key}"] = np.array(vals) / gn
        out[f"first_order_{key}_slope"] = loglog_slope(etas, vals)
    return out



# -- issue 20: scaled LoRSum rate, low-rank momentum error, GeoLoRA inequalities, auto K ------


@dataclass(frozen=True)
class ScaledRateConfig:
    """Scaled LoRSum (λ = 0) on ``T = P_out^{-1/2} Ỹ P_in^{-1/2}`` with Ỹ of known gap (SPEC §7).

    Diagonal metrics with entries ``exp(N(0, metric_spread²))``; rates fitted as in
    :class:`RateConfig` on the angle of ``P_out^{1/2} U_k`` to the top-r left singular subspace
    of the weighted target ``P_out^{1/2} T P_in^{1/2} = Ỹ``.
    """

    m: int = 60
    n: int = 40
    rank: int = 4
    ratios: tuple = (0.3, 0.6, 0.8)
    iters: tuple = (20, 50, 100)
    metric_spread: float = 1.0
    k_min: int = 5
    fit_lo: float = 1e-11
    fit_hi: float = 1e-1
    seed: int = 4


def run_scaled_rates(cfg=ScaledRateConfig()):
    """Scaled LoRSum is subspace iteration in the metric: ``tan θ(P_out^{1/2}U_k, Ũ*)`` contracts
    by ``(σ̃_{r+1}/σ̃_r)²`` per iteration, σ̃ the singular values of ``P_out^{1/2} T P_in^{1/2}``;
    against it, the rate of the *unweighted* target's gap (what the metric changes)."""
    out = {}
    for i, (ratio, K) in enumerate(zip(cfg.ratios, cfg.iters, strict=True)):
        rng = np.random.default_rng([cfg.seed, i])
        Yw, Uf, s, Vf = gap_matrix(cfg.m, cfg.n, cfg.rank, ratio, rng)
        p_out = np.exp(cfg.metric_spread * rng.standard_normal(cfg.m))
        p_in = np.exp(cfg.metric_spread * rng.standard_normal(cfg.n))
        Tm = Yw / np.sqrt(p_out)[:, None] / np.sqrt(p_in)[None, :]
        U = rng.standard_normal((cfg.m, cfg.rank))
        V = rng.standard_normal((cfg.n, cfg.rank))
        Ustar = Uf[:, : cfg.rank]
        tan = [tan_max_angle(np.sqrt(p_out)[:, None] * U, Ustar)]
        for _ in range(K):
            U, V = lp.scaled_lorsum(Tm, U, V, metric_in=p_in, metric_out=p_out, iters=1)
            tan.append(tan_max_angle(np.sqrt(p_out)[:, None] * U, Ustar))
        tan = np.array(tan)
        k = np.arange(K + 1)
        rho = s[cfg.rank] / s[cfg.rank - 1]
        rate, k1, k2 = fit_rate(k, tan, lo=cfg.fit_lo, hi=cfg.fit_hi, k_min=cfg.k_min)
        s_plain = np.linalg.svd(Tm, compute_uv=False)
        bound = rho ** (2 * k) * tan[0]
        chk = (bound >= 1e-12) & (k >= 1)
        out[ratio] = {
            "k": k, "tan": tan, "rate_predicted": float(rho**2), "rate_measured": rate,
            "rate_window": (k1, k2), "rate_exponent_err": exponent_error(rate, rho**2),
            "unweighted_rate": float((s_plain[cfg.rank] / s_plain[cfg.rank - 1]) ** 2),
            "bound_violation": float(np.max(tan[chk] / bound[chk])),
        }
    return out


@dataclass(frozen=True)
class MomentumConfig:
    """Rank-r_M momentum ``M ← LoRSum_K(μM + G_t)`` (SPEC §6, d = 0) vs ``M^full ← μM^full + G_t``.

    ``G_t = A + noise_t``: a fixed rank-``signal_rank`` part with singular values ``signal`` and
    a fresh Gaussian ``noise·N(0,1)/√(mn)`` part each step (the gradient spectrum's tail).
    """

    m: int = 60
    n: int = 40
    signal_rank: int = 4
    signal: tuple = (4.0, 3.0, 2.0, 1.5)
    noise: float = 1.0
    ranks: tuple = (2, 4, 8, 16)
    mus: tuple = (0.5, 0.75, 0.9)
    steps: int = 60
    iters: int = 1
    seed: int = 5


def run_momentum_error(cfg=MomentumConfig()):
    """``‖M_t − M_t^full‖`` of the low-rank momentum vs r_M and μ, with two predictions.

    Exact (triangle inequality on ``E_t = (M_t − Z_t) + μE_{t−1}``, ``Z_t = μM_{t−1} + G_t``):
    ``‖E_t‖ ≤ Σ_j μ^j ‖Z_{t−j} − M_{t−j}‖`` (the recursion of the measured per-step truncation
    errors).  From the gradient spectrum: with τ = mean ``‖G_t − Π_{r_M}(G_t)‖`` (the tail of
    the gradient's spectrum past r_M), ``τ/(1 − μ)`` (errors adding up coherently) and
    ``τ/√(1 − μ²)`` (independent errors).  Steady state = mean over the second half.
    """
    rng = np.random.default_rng(cfg.seed)
    m, n = cfg.m, cfg.n
    A_u, _ = np.linalg.qr(rng.standard_normal((m, cfg.signal_rank)))
    A_v, _ = np.linalg.qr(rng.standard_normal((n, cfg.signal_rank)))
    A = (A_u * np.asarray(cfg.signal)) @ A_v.T
    Gs = [A + cfg.noise * rng.standard_normal((m, n)) / math.sqrt(min(m, n))
          for _ in range(cfg.steps)]
    rows = []
    for rM in cfg.ranks:
        sig = [np.linalg.svd(G, compute_uv=False) for G in Gs]
        tau = float(np.mean([math.sqrt(np.sum(s[rM:] ** 2)) for s in sig]))
        for mu in cfg.mus:
            r2 = np.random.default_rng([cfg.seed, rM])
            MU, MV = np.zeros((m, rM)), r2.standard_normal((n, rM))
            Mfull = np.zeros((m, n))
            err, bound, b = [], [], 0.0
            for t, G in enumerate(Gs):
                Z = lp.LowRankSum([(mu, MU, MV), (1.0, G, np.eye(n))])
                start = "u" if t == 0 else "v"
                MU, MV = lp.lorsum(Z, MU, MV, iters=cfg.iters, start=start)
                Zd = Z.to_dense()
                Mfull = mu * Mfull + G
                b = mu * b + float(np.linalg.norm(Zd - MU @ MV.T))
                err.append(float(np.linalg.norm(MU @ MV.T - Mfull)))
                bound.append(b)
            half = cfg.steps // 2
            rows.append({
                "rank": rM, "mu": mu, "error": np.array(err), "bound": np.array(bound),
                "steady_error": float(np.mean(err[half:])),
                "tail_G": tau, "pred_coherent": tau / (1 - mu),
                "pred_independent": tau / math.sqrt(1 - mu**2),
                "bound_violation": float(np.max(np.array(err) / np.array(bound))),
                "full_norm": float(np.linalg.norm(Mfull)),
            })
    return {"rows": rows}


@dataclass(frozen=True)
class GeoTheoryConfig:
    """GeoLoRA steps on a matrix regression and on the linear task (SPEC §8, §9; reduced sizes).

    Matrix regression: ``L(W) = ½‖X Wᵀ − X W*ᵀ‖²/N`` with W* of rank 4 (spectrum 4, 2, 1, 0.5)
    and Gaussian X; linear task: ``L(W) = ½‖W − T‖²`` (X = I, T Gaussian); both start from a
    rank-``rank0`` point, step ``lr_fraction/ℒ``.
    """

    m: int = 40
    n: int = 30
    n_samples: int = 120
    rank0: int = 4
    tau: float = 0.1
    lr_fraction: float = 0.5
    steps: int = 60
    seed: int = 6


def _geo_problem(kind, cfg, rng):
    m, n = cfg.m, cfg.n
    if kind == "matrix regression":
        A, _ = np.linalg.qr(rng.standard_normal((m, 4)))
        B, _ = np.linalg.qr(rng.standard_normal((n, 4)))
        Ws = (A * np.array([4.0, 2.0, 1.0, 0.5])) @ B.T
        X = rng.standard_normal((cfg.n_samples, n))
        H = X.T @ X / cfg.n_samples
        return (lambda W: 0.5 * float(np.sum((W - Ws) @ H * (W - Ws))),
                lambda W: (W - Ws) @ H, float(np.linalg.eigvalsh(H)[-1]))
    T_ = rng.standard_normal((m, n))
    return (lambda W: 0.5 * float(np.sum((W - T_) ** 2)), lambda W: W - T_, 1.0)


def run_geolora_theory(cfg=GeoTheoryConfig()):
    """GeoLoRA's Theorems 1 and 3 as *reconstructed* here (their statements are not available,
    reference/peers.md §1.6), measured along GeoLoRA runs.

    With ``Ŵ_k = W_k − ηP_T(∇L(W_k))`` (the augmented step before truncation, SPEC §8) and
    ``ϑ_k = ‖W_{k+1} − Ŵ_k‖`` (the truncation error; the rule guarantees ``ϑ_k < τ‖σ(Ŝ_k)‖``):

    * descent (reconstruction of Thm 1, ℒ-smooth L):
      ``L(W_{k+1}) ≤ L(W_k) − η(1 − ℒη/2)‖P_T∇L(W_k)‖² + ‖∇L(Ŵ_k)‖ϑ_k + ℒϑ_k²/2``;
    * error bound (reconstruction of Thm 3, L convex and ℒ-smooth, η ≤ 2/ℒ, so full gradient
      descent ``W̄_{k+1} = W̄_k − η∇L(W̄_k)`` from the same W_0 is non-expansive):
      ``‖W_k − W̄_k‖ ≤ Σ_{j<k} (η ε_j + ϑ_j)``, ``ε_j = ‖(I − P_T)∇L(W_j)‖`` the normal part.

    Returns per task the worst slack of each inequality (≤ 0 when it holds; relative to the
    scale of its terms) and the curves.
    """
    out = {}
    for i, kind in enumerate(("matrix regression", "linear task")):
        rng = np.random.default_rng([cfg.seed, i])
        loss, grad, Lc = _geo_problem(kind, cfg, rng)
        eta = cfg.lr_fraction / Lc
        U, _ = np.linalg.qr(rng.standard_normal((cfg.m, cfg.rank0)))
        V, _ = np.linalg.qr(rng.standard_normal((cfg.n, cfg.rank0)))
        S = 0.1 * np.eye(cfg.rank0)
        W = U @ S @ V.T
        Wbar = W.copy()
        acc, desc_slack, err_slack, trunc_ok = 0.0, [], [], True
        losses, errs, bounds, ranks = [loss(W)], [0.0], [0.0], [cfg.rank0]
        for _ in range(cfg.steps):
            G = grad(W)
            PG = lp.tangent_project(G, U, V)
            What = W - eta * PG
            U, S, V = lp.geolora_step(U, S, V, G, eta, tau=cfg.tau)
            Wn = U @ S @ V.T
            theta = float(np.linalg.norm(Wn - What))
            sig_hat = np.linalg.svd(What, compute_uv=False)
            trunc_ok &= theta <= cfg.tau * float(np.linalg.norm(sig_hat)) * (1 + 1e-10) + 1e-13
            rhs = (loss(W) - eta * (1 - Lc * eta / 2) * float(np.sum(PG**2))
                   + float(np.linalg.norm(grad(What))) * theta + Lc * theta**2 / 2)
            desc_slack.append((loss(Wn) - rhs) / max(loss(W), 1e-300))
            acc += eta * float(np.linalg.norm(G - PG)) + theta
            Wbar = Wbar - eta * grad(Wbar)
            W = Wn
            e = float(np.linalg.norm(W - Wbar))
            err_slack.append((e - acc) / max(acc, 1e-300))
            losses.append(loss(W))
            errs.append(e)
            bounds.append(acc)
            ranks.append(S.shape[0])
        out[kind] = {
            "lr": eta, "smoothness": Lc, "loss": np.array(losses), "error": np.array(errs),
            "error_bound": np.array(bounds), "rank": np.array(ranks),
            "descent_max_slack": float(max(desc_slack)),
            "error_max_slack": float(max(err_slack)),
            "truncation_rule_holds": bool(trunc_ok),
            "final_error_over_bound": errs[-1] / bounds[-1] if bounds[-1] > 0 else math.nan,
        }
    return out


@dataclass(frozen=True)
class AutoLinearConfig:
    """PSI-LoRA steps on the full-batch linear task (SPEC §9(a) at full size, no momentum):
    ``W ← LoRSum(UVᵀ − ηG)``, ``G = 2(W − T)`` (sum-reduced MSE, X = I), λ = η·λ0."""

    d_in: int = 200
    d_out: int = 600
    rank: int = 8
    lr: float = 0.1
    ridge0: float = 1e-3
    epochs: int = 30
    fixed: tuple = (1, 2, 8, 32)
    tols: tuple = (1e-2, 1e-4, 1e-6)
    max_iters: int = 200
    seed: int = 0


def run_auto_linear(cfg=AutoLinearConfig()):
    """Iterations spent by ``iters="auto"`` (subspace test) vs the excess loss reached, next to
    fixed K; excess = ‖W − T‖² − Σ_{i>r} σ_i(T)² after ``epochs`` steps, evaluated as
    ``‖W − T_r‖² − 2⟨W, T − T_r⟩`` (``T_r = Π_r(T)``, equal because ``⟨T_r, T − T_r⟩ = 0``), which
    keeps its relative accuracy where the difference of the two sides would cancel."""
    rng = np.random.default_rng(cfg.seed)
    T_ = rng.standard_normal((cfg.d_in, cfg.d_out)).T
    Ut, st, Vth = np.linalg.svd(T_, full_matrices=False)
    floor = float(np.sum(st[cfg.rank:] ** 2))
    T_r = (Ut[:, : cfg.rank] * st[: cfg.rank]) @ Vth[: cfg.rank]
    T_tail = T_ - T_r
    b = 1 / math.sqrt(cfg.d_in)
    U0s, s0, V0h = np.linalg.svd(rng.uniform(-b, b, (cfg.d_out, cfg.d_in)), full_matrices=False)
    U0 = U0s[:, : cfg.rank] * np.sqrt(s0[: cfg.rank])
    V0 = V0h[: cfg.rank].T * np.sqrt(s0[: cfg.rank])
    lam = cfg.lr * cfg.ridge0
    variants = [("K", K) for K in cfg.fixed] + [("auto", tol) for tol in cfg.tols]
    rows = []
    for kind, val in variants:
        U, V = U0.copy(), V0.copy()
        spent = 0
        for _ in range(cfg.epochs):
            W = U @ V.T
            Y = lp.LowRankSum([(1.0, U, V), (-2 * cfg.lr, W - T_, np.eye(cfg.d_in))])
            if kind == "K":
                U, V = lp.lorsum(Y, U, V, iters=val, ridge=lam)
                spent += val
            else:
                h = lp.lorsum_history(Y, U, V, iters="auto", tol=val, max_iters=cfg.max_iters,
                                      ridge=lam)
                U, V = h.U, h.V
                spent += h.n_iter
        W = U @ V.T
        excess = float(np.sum((W - T_r) ** 2) - 2.0 * np.sum(W * T_tail))
        rows.append({"variant": f"K={val}" if kind == "K" else f"auto tol={val:g}",
                     "iterations": spent, "mean_K": spent / cfg.epochs,
                     "excess": excess, "rel_excess": excess / floor})
    return {"rows": rows, "floor": floor}


# -- gauge (issue 15: balanced LoRSum) ----------------------------------------------------------


@dataclass(frozen=True)
class GaugeConfig:
    """Gauge checks on ``Y = U_tV_tᵀ − ηG`` (as :class:`RidgeConfig`).

    ``gauge_conds``: condition numbers of the gauge ``D`` (``U → UD``, ``V → VD⁻ᵀ``) applied to
    the start; ``lambdas`` for the ridge rows; ``tries`` random gauges for the minimum-norm
    check; ``iters`` steps of the balanced ridge iterations.
    """

    m: int = 60
    n: int = 40
    rank: int = 4
    batch: int = 8
    eta: float = 0.3
    als_iters: int = 3
    gauge_conds: tuple = (1e1, 1e3)
    lambdas: tuple = (1e-4, 1e-3, 1e-2, 1e-1)
    tries: int = 100
    iters: int = 300
    seed: int = 5


def _gauge(rng, r, cond):
    Q1, _ = np.linalg.qr(rng.standard_normal((r, r)))
    Q2, _ = np.linalg.qr(rng.standard_normal((r, r)))
    return (Q1 * np.geomspace(1.0, cond, r)) @ Q2


def run_gauge(cfg=GaugeConfig()):
    """The gauge ``(U, V) → (UD, VD⁻ᵀ)`` and LoRSum (issue 15; :mod:`lowrank_prox.gauge`).

    - ``invariance``: per (λ, cond D), ``‖W(UD, VD⁻ᵀ) − W(U, V)‖/‖W(U, V)‖`` after ``als_iters``
      LoRSum iterations anchored at the start (λ = 0 and the ``lambdas``);
    - ``min_norm``: over ``tries`` random gauges (cond 1–1e3) and small perturbations of the
      balanced pair, ``min (‖UD‖² + ‖VD⁻ᵀ‖²)/(2‖UVᵀ‖_*)`` (≥ 1) and the balanced pair's value;
    - ``fixed``: per λ, the distance to Π_r(Y) of (a) the balanced ridge iteration with the
      anchor fixed at the start, ``(U, V) ← balance(LoRSum_1(Y; anchor (U_t, V_t)))`` and
      the same without balancing (:func:`run_ridge`'s fixed point), (b) the balanced proximal
      iteration of the optimizers, anchor = the current point, and its log-log slopes.
    """
    from lowrank_prox.gauge import balance

    rng = np.random.default_rng(cfg.seed)
    m, n, r = cfg.m, cfg.n, cfg.rank
    sw = 1.0 + 0.5 * np.arange(r)[::-1]
    Qu, _ = np.linalg.qr(rng.standard_normal((m, r)))
    Qv, _ = np.linalg.qr(rng.standard_normal((n, r)))
    Ut, Vt = Qu * np.sqrt(sw), Qv * np.sqrt(sw)
    Dt = rng.standard_normal((m, cfg.batch))
    X = rng.standard_normal((n, cfg.batch))
    Dt = Dt / float(np.linalg.norm(Dt @ X.T, 2))
    Y = lp.LowRankSum([(1.0, Ut, Vt), (-cfg.eta, Dt, X)])
    Us, ss, Vhs = lp.truncated_svd(Y, r)
    P = (Us * ss) @ Vhs
    nP = float(np.linalg.norm(P))

    invariance = []
    for lam in (0.0, *cfg.lambdas):
        for cond in cfg.gauge_conds:
            D = _gauge(rng, r, cond)
            U0, V0 = lp.lorsum(Y, Ut, Vt, iters=cfg.als_iters, ridge=lam)
            U1, V1 = lp.lorsum(Y, Ut @ D, Vt @ np.linalg.inv(D).T, iters=cfg.als_iters,
                               ridge=lam)
            W0 = U0 @ V0.T
            invariance.append({"lambda": lam, "cond": cond,
                               "rel_diff": float(np.linalg.norm(U1 @ V1.T - W0)
                                                 / np.linalg.norm(W0))})

    U, V = Ut @ _gauge(rng, r, 30.0), None
    V = (Ut @ Vt.T).T @ np.linalg.pinv(U).T  # same product, unbalanced pair
    nuc = float(np.linalg.svd(U @ V.T, compute_uv=False).sum())
    Ub, Vb, _ = balance(U, V)
    balanced_ratio = float(((Ub**2).sum() + (Vb**2).sum()) / (2 * nuc))
    ratios = []
    for j in range(cfg.tries):
        if j % 2:
            D = _gauge(rng, r, 10 ** rng.uniform(0, 3))
            A, B = U @ D, V @ np.linalg.inv(D).T
        else:  # near the balanced pair
            D = np.eye(r) + 1e-3 * rng.standard_normal((r, r))
            A, B = Ub @ D, Vb @ np.linalg.inv(D).T
        ratios.append(float(((A**2).sum() + (B**2).sum()) / (2 * nuc)))

    rows = []
    for lam in cfg.lambdas:
        Ua, Va = Ut, Vt
        Ub_, Vb_ = Ut, Vt
        Up, Vp = Ut, Vt
        for _ in range(cfg.iters):
            Ua, Va = lp.lorsum(Y, Ua, Va, iters=1, ridge=lam, anchor=(Ut, Vt))
            Ub_, Vb_, _ = lp.lorsum(Y, Ub_, Vb_, iters=1, ridge=lam, anchor=(Ut, Vt),
                                    balance=True)
            Up, Vp, _ = lp.lorsum(Y, Up, Vp, iters=1, ridge=lam, balance=True)
        rows.append({
            "lambda": lam,
            "fixed_dist": float(np.linalg.norm(Ua @ Va.T - P) / nP),
            "balanced_fixed_dist": float(np.linalg.norm(Ub_ @ Vb_.T - P) / nP),
            "prox_dist": float(np.linalg.norm(Up @ Vp.T - P) / nP),
        })
    lams = np.array(cfg.lambdas)
    return {
        "invariance": invariance,
        "balanced_ratio": balanced_ratio,
        "min_ratio": float(min(ratios)),
        "rows": rows,
        "fixed_slope": loglog_slope(lams, [row["fixed_dist"] for row in rows]),
        "balanced_fixed_slope": loglog_slope(lams, [row["balanced_fixed_dist"] for row in rows]),
        "balanced_fixed_coef": float(np.median([row["balanced_fixed_dist"] / row["lambda"]
                                                for row in rows])),
        "max_prox_dist": float(max(row["prox_dist"] for row in rows)),
    }

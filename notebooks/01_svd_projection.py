# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — The SVD projection: what SVDLoRA computes (Proposition 1)
#
# A LoRA adapter keeps the weight update at rank $r$: $W = UV^\top$ with
# $U \in \mathbb{R}^{m\times r}$, $V \in \mathbb{R}^{n\times r}$.
# The *ideal* low-rank step takes a full gradient step and projects it back to rank $r$.
# This notebook checks the three facts behind that step (SPEC §2):
#
# 1. **Eckart–Young–Mirsky**: the truncated SVD $\Pi_r(Y)$ is a best rank-$r$ approximation,
#    with error $\big(\sum_{i>r}\sigma_i^2\big)^{1/2}$.
# 2. **Proposition 1**: $\Pi_r(W_t - \eta G)$ solves the proximal problem
#    $\min_{\operatorname{rank} W\le r} \langle G, W-W_t\rangle + \tfrac1{2\eta}\|W-W_t\|^2$,
#    i.e. SVDLoRA is projected gradient descent on the rank-$r$ set.
# 3. **Cost**: an SVD per layer per step grows like $mn\min(m,n)$; a factored target
#    never needs the $m\times n$ matrix.
#
# Everything below calls the library (`lowrank_prox`); no algorithm is re-implemented here.
# Set `LOWRANK_PROX_FAST=1` for the small sizes used in the test suite.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from lowrank_prox import LowRankSum, lorsum, tangent_project, truncated_svd

FAST = os.environ.get("LOWRANK_PROX_FAST", "0") not in ("", "0")
rng = np.random.default_rng(0)


def spectrum_matrix(rng, m, n, s):
    """A random m×n matrix with singular values ``s`` (random orthonormal bases)."""
    k = len(s)
    P, _ = np.linalg.qr(rng.standard_normal((m, k)))
    Q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (P * s) @ Q.T


# %% [markdown]
# ## 1. Eckart–Young–Mirsky
#
# Build $Y$ with a known spectrum $\sigma_i = 0.8^{i}$, truncate it at every rank $r$, and
# compare the error with the tail $\big(\sum_{i>r}\sigma_i^2\big)^{1/2}$. As a contrast, two
# other rank-$r$ approximations: projecting $Y$ onto a *random* $r$-dimensional column space
# ($Q Q^\top Y$), and one LoRSum iteration from a random start (notebook 02 shows why more
# iterations close that gap).

# %%
m, n = (60, 40) if FAST else (200, 120)
sigma = 0.8 ** np.arange(min(m, n))
Y = spectrum_matrix(rng, m, n, sigma)

ranks = np.arange(1, 21)
err_svd, err_tail, err_rand, err_als1 = [], [], [], []
for r in ranks:
    U, s, Vh = truncated_svd(Y, int(r))
    err_svd.append(np.linalg.norm(Y - (U * s) @ Vh))
    err_tail.append(np.sqrt(np.sum(sigma[r:] ** 2)))
    Q, _ = np.linalg.qr(rng.standard_normal((m, r)))
    err_rand.append(np.linalg.norm(Y - Q @ (Q.T @ Y)))
    U1, V1 = lorsum(Y, rng.standard_normal((m, r)), rng.standard_normal((n, r)), iters=1)
    err_als1.append(np.linalg.norm(Y - U1 @ V1.T))

err_svd, err_tail = np.array(err_svd), np.array(err_tail)
worst = np.max(np.abs(err_svd - err_tail) / err_tail)
print(f"max |error - tail| / tail over r = 1..20: {worst:.1e}")
print(f"random subspace is worse at every rank: {bool(np.all(np.array(err_rand) > err_svd))}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(ranks, err_tail, "k-", lw=3, alpha=0.3, label=r"tail $(\sum_{i>r}\sigma_i^2)^{1/2}$")
ax.semilogy(ranks, err_svd, "o", ms=4, label=r"truncated SVD $\|Y-\Pi_r(Y)\|$")
ax.semilogy(ranks, err_als1, "s", ms=4, label="1 LoRSum iteration, random start")
ax.semilogy(ranks, err_rand, "^", ms=4, label=r"random subspace $\|Y-QQ^\top Y\|$")
ax.set_xlabel("rank r")
ax.set_ylabel("Frobenius error")
ax.set_title("Eckart–Young–Mirsky")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The truncated SVD sits exactly on the tail curve (to rounding), and any other rank-$r$
# matrix is above it.
#
# ## 2. Proposition 1: SVDLoRA is projected gradient descent
#
# Expanding the square,
# $$\langle G, W-W_t\rangle + \tfrac1{2\eta}\|W-W_t\|^2
#   = \tfrac1{2\eta}\|W-(W_t-\eta G)\|^2 - \tfrac\eta2\|G\|^2,$$
# so the proximal step over rank-$r$ matrices is the best rank-$r$ approximation of the full
# step $W_t-\eta G$, i.e. $\Pi_r(W_t-\eta G)$.
#
# Take a rank-$r$ point $W_t=U_tV_t^\top$ and a mini-batch gradient $G=\Delta^\top X$ (kept
# factored as the term $(\Delta^\top, X^\top)$ of a `LowRankSum`). Compare the proximal
# objective at $\Pi_r(W_t-\eta G)$ with three other rank-$r$ candidates:
# the plain LoRA step $(U-\eta GV)(V-\eta G^\top U)^\top$, one LoRSum iteration (PSI-LoRA×1),
# and the tangent step $W_t - \eta P_T(G)$ truncated back to rank $r$.

# %%
m, n, r, N = (50, 30, 4, 16) if FAST else (300, 200, 8, 64)
P, _ = np.linalg.qr(rng.standard_normal((m, r)))
Q, _ = np.linalg.qr(rng.standard_normal((n, r)))
root_s = np.sqrt(np.linspace(3.0, 1.0, r))
Ut, Vt = P * root_s, Q * root_s         # balanced factors, singular values 3 … 1
X = rng.standard_normal((N, n))
Delta = rng.standard_normal((N, m))
Delta /= np.linalg.norm(Delta.T @ X)    # scale so that ‖G‖ = 1
G = LowRankSum([(1.0, Delta.T, X.T)])  # G = Δᵀ X, never formed inside the library
Gd = G.to_dense()                       # dense copy, only to evaluate objectives here
Wt = Ut @ Vt.T
eta = 0.5


def prox_objective(W):
    return np.sum(Gd * (W - Wt)) + np.sum((W - Wt) ** 2) / (2 * eta)


step = LowRankSum([(1.0, Ut, Vt), (-eta, Delta.T, X.T)])  # Y = W_t − ηG, factored
U, s, Vh = truncated_svd(step, r)                        # exact SVD from the factors
U1, V1 = lorsum(step, Ut, Vt, iters=1)                   # PSI-LoRA×1, no SVD
candidates = {
    "SVDLoRA  Π_r(W_t − ηG)": (U * s) @ Vh,
    "LoRA SGD step": (Ut - eta * Gd @ Vt) @ (Vt - eta * Gd.T @ Ut).T,
    "PSI-LoRA×1 (one LoRSum iteration)": U1 @ V1.T,
}
Ut_, st_, Vht_ = truncated_svd(Wt - eta * tangent_project(Gd, Ut, Vt), r)
candidates["Π_r(W_t − η P_T(G))"] = (Ut_ * st_) @ Vht_
for name, W in candidates.items():
    print(f"{name:36s} objective = {prox_objective(W): .6f}   rank = {np.linalg.matrix_rank(W)}")
best = min(candidates, key=lambda k: prox_objective(candidates[k]))
print("smallest:", best)

# %% [markdown]
# The SVD step has the smallest proximal objective, as Proposition 1 says; the others are
# feasible (rank $r$) but not optimal.
#
# **To first order the projection is the tangent step.** For small $\eta$,
# $\Pi_r(W_t-\eta G) = W_t - \eta P_T(G) + O(\eta^2)$ with
# $P_T(G) = P_UG + GP_V - P_UGP_V$ (SPEC §5, LoRA-Pro's direction and GeoLoRA's first-order
# part). The gap should fall with slope 2 on a log–log plot.

# %%
etas = np.logspace(-4, 0, 9)
PT = tangent_project(Gd, Ut, Vt)
gaps = []
for e in etas:
    U, s, Vh = truncated_svd(LowRankSum([(1.0, Ut, Vt), (-e, Delta.T, X.T)]), r)
    gaps.append(np.linalg.norm((U * s) @ Vh - (Wt - e * PT)))
gaps = np.array(gaps)
slope = np.polyfit(np.log(etas[:5]), np.log(gaps[:5]), 1)[0]
print(f"log-log slope of ‖Π_r(W_t − ηG) − (W_t − η P_T G)‖ for small η: {slope:.2f}")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(etas, gaps, "o-", label="measured gap")
ax.loglog(etas, gaps[0] * (etas / etas[0]) ** 2, "k--", lw=1, label=r"slope 2 ($\eta^2$)")
ax.set_xlabel(r"step size $\eta$")
ax.set_ylabel(r"$\|\Pi_r(W_t-\eta G) - (W_t-\eta P_T G)\|$")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. What the projection costs as $m$ and $n$ grow
#
# The reference SVDLoRA keeps a dense $m\times n$ adapter and takes a full SVD of it after
# every step: $O(mn\min(m,n))$ time and $O(mn)$ memory per layer. When the target is kept
# factored, $Y = U_tV_t^\top - \eta\Delta^\top X$ has inner dimension $R = r+N$, and
# `truncated_svd` only needs QR factorisations of the stacked factors ($O((m+n)R^2)$), while a
# LoRSum iteration costs $O(r(m+n)R)$ and never runs an SVD. Wall-clock times below are from
# this machine (best of a few repeats) and only the trend matters.

# %%
def best_time(fn, *args, repeats=3, **kwargs):
    """Best wall time of ``fn(*args, **kwargs)`` over a few repeats."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times)


sizes = [64, 128, 256, 512] if FAST else [128, 256, 512, 1024, 2048]
r, N = 8, 32
cost = {"dense SVD of W_t − ηG": [], "factored exact SVD": [], "LoRSum, 1 iteration": []}
for d in sizes:
    m, n = d, d // 2
    Ut, Vt = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    X, Delta = rng.standard_normal((N, n)), rng.standard_normal((N, m))
    Y = LowRankSum([(1.0, Ut, Vt), (-0.1, Delta.T, X.T)])
    Yd = Y.to_dense()
    cost["dense SVD of W_t − ηG"].append(best_time(truncated_svd, Yd, r))
    cost["factored exact SVD"].append(best_time(truncated_svd, Y, r))
    cost["LoRSum, 1 iteration"].append(best_time(lorsum, Y, Ut, Vt, iters=1))

for name, t in cost.items():
    slope = np.polyfit(np.log(sizes[-3:]), np.log(t[-3:]), 1)[0]
    print(f"{name:24s} time at m={sizes[-1]}: {t[-1] * 1e3:8.2f} ms, growth exponent ≈ {slope:.1f}")

fig, ax = plt.subplots(figsize=(5.5, 3.5))
for name, t in cost.items():
    ax.loglog(sizes, t, "o-", label=name)
ax.set_xticks(sizes, labels=[str(d) for d in sizes])
ax.tick_params(axis="x", which="minor", labelbottom=False)
ax.set_xlabel("m  (n = m/2, r = 8, batch N = 32)")
ax.set_ylabel("seconds")
ax.set_title("Cost of one projection step")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The dense SVD grows roughly cubically in the layer size; the factored routes grow roughly
# linearly (until fixed overheads dominate at small sizes). PSI-LoRA (notebooks 02 and 03)
# replaces the SVD by one or two LoRSum iterations warm-started at the current adapter.

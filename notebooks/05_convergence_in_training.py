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
# # 05 — Checking Theorem 3.1 on your own model
#
# Every PSI-LoRA step solves, per adapted layer, a rank-$r$ approximation problem
# $\Pi_r(Y)$ for the factored target $Y=UV^\top-\eta[(1-d)G+\mu M]$ with $K$ warm-started
# LoRSum iterations (block power iteration, notebook 02). Theorem 3.1 (SPEC §4, $\lambda=0$)
# bounds how far that is from $\Pi_r(Y)$ — SVDLoRA's step from the same point:
# $$\tan\theta_K\le\rho^{2K}\tan\theta_0,\qquad
#   \frac{\|U_KV_K^\top-\Pi_r(Y)\|}{\|\Pi_r(Y)\|}\le
#   \frac{\sqrt{\sigma_1^2+\sigma_{r+1}^2}}{\|\Pi_r(Y)\|}\,\rho^{2K-1}\,\|\tan\Theta_0\|_F,
#   \qquad\rho=\frac{\sigma_{r+1}}{\sigma_r},$$
# with $\theta_0$ the angle of the warm start to the top-$r$ subspace. Whether $K=1$ is enough
# depends on the gap $\rho$ of *your* layers at *your* learning rate. This notebook shows how to
# measure it: train a small model with `diagnostics=True`, read the per-layer table, plot
# measured against predicted, count the steps where the bound holds, and see what
# `iters="auto"` spends.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import lowrank_prox as lp
from analysis.style import FAMILY_COLORS, method_style
from lowrank_prox.nn import add_lora
from lowrank_prox.optim import PSILoRA, ScaledPSILoRA, SubspaceDiagnostics

FAST = os.environ.get("LOWRANK_PROX_FAST", "0") not in ("", "0")
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The model: an MLP on 8×8 digits with rank-8 adapters
#
# A frozen random tanh MLP $64\to128\to128\to10$ with a rank-8 `LoRALinear` adapter on each of
# its three linear layers (`add_lora`), trained on scikit-learn's digits (1797 images, bundled
# offline). Any model with `LoRALinear` or PEFT LoRA layers works the same way.

# %%
X, y = load_digits(return_X_y=True)
X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def make_model(b_scale=0.01, seed=0):
    """The adapted MLP; ``lora_B ~ b_scale·N(0, 1)`` (0: PEFT's zero initialisation)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                          nn.Linear(128, 10))
    add_lora(model, 8, ["0", "2", "4"])
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if name.endswith("lora_B"):
            with torch.no_grad():
                p.normal_(0.0, 1.0).mul_(b_scale)
    return model


def train(model, opt, steps, batch=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


steps = 40 if FAST else 100

# %% [markdown]
# ## 2. Train with diagnostics on
#
# `SubspaceDiagnostics` records, for every adapted layer, every step and both LoRSum calls
# (`"step"` and `"momentum"`), the exact $\Pi_r$ of the call's factored target (from the QR
# core of its stacked factors, no $m\times n$ matrix), the gap, the measured distance, the
# largest principal angle and the theorem's prediction from the warm start. It is off by
# default; with it off the optimizer pays one attribute test per call, and turning it on does
# not change a single bit of the training.
#
# The theorem is stated for $\lambda=0$, so the ridge here is exactly 0 (the theorem's
# setting), and `lora_B` starts small and random; section 4 takes PEFT's zero start.

# %%
diag = SubspaceDiagnostics()
model = make_model()
opt = PSILoRA(model, lr=0.02, momentum=0.9, ridge=0.0, seed=0, diagnostics=diag)
losses = train(model, opt, steps)
print(f"loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f} over {steps} steps")

table = diag.table()
print(f"{len(table['step'])} rows; columns:", ", ".join(table))
step_rows = np.flatnonzero(table["call"] == "step")
print(f"\n{'layer':>5} {'call':>8} {'step':>4} {'gap':>6} {'distance':>9} {'bound':>9} "
      f"{'holds':>5} {'K for 1%':>8}")
for i in step_rows[:: max(1, len(step_rows) // 8)]:
    print(f"{table['layer'][i]:>5} {table['call'][i]:>8} {table['step'][i]:4.0f} "
          f"{table['gap'][i]:6.3f} {table['distance'][i]:9.2e} {table['distance_pred'][i]:9.2e} "
          f"{table['holds'][i]!s:>5} {table['iters_for_1pct'][i]:8.0f}")

# %% [markdown]
# `summary()` aggregates per layer and call: the fraction of checked steps (λ = 0, finite
# prediction) where measured ≤ bound, and how often one iteration was within 1 % of SVDLoRA's
# step.

# %%
summary = diag.summary(within=0.01)
print(f"{'layer/call':>12} {'steps':>5} {'median gap':>10} {'holds':>6} {'within 1%':>9}")
for name, s in summary.items():
    print(f"{name:>12} {s['steps']:5d} {s['median_gap']:10.3f} {s['holds_fraction']:6.1%} "
          f"{s['within_fraction']:9.1%}")
checked = table["theory_applies"] & np.isfinite(table["distance_pred"])
print(f"\nbound holds on {table['holds'][checked].mean():.1%} of {checked.sum()} checked calls")

# %% [markdown]
# ## 3. Measured against predicted
#
# Each point is one LoRSum call of one layer; below the diagonal the bound holds. Right: the
# step call's distance per layer over training (dashed: the bound), against the 1 % line.

# %%
psi = method_style("PSI-LoRA x1")
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
for call, marker, color in (("step", "o", psi["color"]), ("momentum", "^", "0.5")):
    sel = checked & (table["call"] == call)
    ax.scatter(table["distance_pred"][sel], np.maximum(table["distance"][sel], 1e-12), s=8,
               marker=marker, color=color, alpha=0.6, label=f"{call} call")
lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
ax.plot(lims, lims, "k-", lw=1, label="measured = bound")
ax.set(xscale="log", yscale="log", xlabel="Theorem 3.1 bound", ylabel="measured distance",
       title="every layer, every step")
ax.legend(fontsize=8)
for lay, ls in zip(dict.fromkeys(table["layer"]), ("-", "--", ":"), strict=False):
    sel = (table["layer"] == lay) & (table["call"] == "step")
    ln = ax2.semilogy(table["step"][sel], table["distance"][sel], ls=ls, color=psi["color"],
                      label=f"layer {lay}: measured")
    ax2.semilogy(table["step"][sel], table["distance_pred"][sel], ls=ls, color="0.6", lw=1)
ax2.axhline(0.01, color=FAMILY_COLORS["SVDLoRA"], lw=0.8, ls=":", label="1 % of SVDLoRA")
ax2.set(xlabel="optimizer step", ylabel="distance to $\\Pi_r(Y)$ (grey: bound)",
        title="step call, per layer")
ax2.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 4. Zero-initialised `lora_B` and the ridge
#
# PEFT starts `lora_B` at zero. At $\lambda=0$ the first V-step then has no information (its
# Gram $B^\top B$ is zero, and the minimum-norm solution would set $A=0$ too, for good), so
# from $B=0$ the optimizer starts that call with the U-step, the range finder
# (`lowrank_prox.optim.psilora.first_side`); the theorem's setting is kept. Two ridges beside it:
#
# * a tiny one, $\lambda_0=10^{-8}$, counted as $\lambda=0$ through `ridge_tol`. Its effect
#   on a call is $O(\lambda/\sigma_{\min}(U)^2)$ — the *factor's* smallest singular value,
#   which stays small for a while when `lora_B` starts at zero — so it can exceed a bound that
#   has fallen to the $10^{-5}$ level: it is not a safe stand-in for $\lambda=0$;
# * the default $\lambda_0=10^{-3}$: the ridge anchors each call at the warm start, the result
#   is not the power iteration's and the $\lambda=0$ bound does not apply
#   (`theory_applies` is False). The distance to SVDLoRA's step is still measured.

# %%
for ridge, tol in ((0.0, 0.0), (1e-8, 1e-6), (1e-3, 0.0)):
    d = SubspaceDiagnostics(ridge_tol=tol)
    model = make_model(b_scale=0.0)
    opt = PSILoRA(model, lr=0.02, momentum=0.9, ridge=ridge, seed=0, diagnostics=d)
    losses = train(model, opt, steps)
    t = d.table()
    ok = t["theory_applies"] & np.isfinite(t["distance_pred"])
    miss = ok & ~t["holds"]
    st = t["call"] == "step"
    head = f"λ0={ridge:g}: loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f};"
    within = f"step call within 1 % of SVDLoRA on {np.mean(t['distance'][st] <= 0.01):.1%}"
    if not ok.any():
        print(f"{head} the λ = 0 theorem applies to no call; {within}")
        continue
    worst = f", largest distance there {t['distance'][miss].max():.1e}" if miss.any() else ""
    print(f"{head} bound holds on {t['holds'][ok].mean():.1%} of {ok.sum()} calls "
          f"({miss.sum()} misses{worst}); {within}")

# %% [markdown]
# ## 5. Scaled PSI-LoRA: the theorem in the metric
#
# Scaled LoRSum is plain LoRSum on $\tilde Y=P_{\rm out}^{1/2}TP_{\rm in}^{1/2}$ with factors
# $P_{\rm out}^{1/2}U$, $P_{\rm in}^{1/2}V$ (SPEC §7), so the theorem holds with the gap
# $\tilde\sigma_{r+1}/\tilde\sigma_r$ of the *weighted* target. `ScaledPSILoRA(diagnostics=...)`
# measures its step call there (`subspace_diagnostics(..., metric_in=P_in, metric_out=P_out)`);
# its momentum call is unscaled and measured in the plain norm. Its λ is at least `min_ridge`,
# so we set both to 0.

# %%
diag_s = SubspaceDiagnostics()
model = make_model()
opt = ScaledPSILoRA(model, lr=0.05, ridge=0.0, min_ridge=0.0, seed=0, diagnostics=diag_s)
train(model, opt, steps)
for name, s in diag_s.summary().items():
    print(f"{name:>12} median gap {s['median_gap']:.3f}  bound holds {s['holds_fraction']:6.1%} "
          f"of {s['checked_steps']}  within 1 % {s['within_fraction']:.1%}")

# %% [markdown]
# ## 6. How many iterations does a layer need? `iters="auto"`
#
# The table's `iters_for_1pct` is the theorem's answer: the smallest $K$ whose bound is
# ≤ 1 %. `lorsum(..., iters="auto", tol=...)` answers it at run time, stopping when the
# subspace moves less than `tol` between iterations (or `stop="objective"`: when the relative
# objective decrease is below `tol`), capped at `max_iters`; `tol=0` is exactly
# `iters=max_iters`. On the linear task (SPEC §9(a): $W\leftarrow\Pi_r$-step on
# $\|W-T\|^2$, a rank-$r$ adapter, a dense random $T$, so the gaps are small) we count the
# iterations spent over training against the excess loss reached, next to fixed $K$.

# %%
print("K needed for 1 % by the bound (step calls, λ=0): median "
      f"{np.nanmedian(table['iters_for_1pct'][table['call'] == 'step']):.0f}, max "
      f"{np.nanmax(table['iters_for_1pct'][table['call'] == 'step']):.0f}")

rng = np.random.default_rng(0)
d_out, d_in, r, lr, lam = (150, 50, 4, 0.1, 1e-4)
T = rng.standard_normal((d_out, d_in))
floor = np.sum(np.linalg.svd(T, compute_uv=False)[r:] ** 2)
U0, V0 = 0.1 * rng.standard_normal((d_out, r)), 0.1 * rng.standard_normal((d_in, r))
epochs = 10 if FAST else 20


def linear_task(iters, tol=None):
    U, V, spent = U0, V0, 0
    for _ in range(epochs):
        Y = lp.LowRankSum([(1.0, U, V), (-2 * lr, U @ V.T - T, np.eye(d_in))])
        if iters == "auto":
            h = lp.lorsum_history(Y, U, V, iters="auto", tol=tol, max_iters=200, ridge=lam)
            U, V, k = h.U, h.V, h.n_iter
        else:
            (U, V), k = lp.lorsum(Y, U, V, iters=iters, ridge=lam), iters
        spent += k
    return spent, (np.sum((U @ V.T - T) ** 2) - floor) / floor


results = {f"K={K}": linear_task(K) for K in (1, 2, 4, 8)}
results |= {f"auto tol={tol:g}": linear_task("auto", tol) for tol in (1e-1, 1e-2, 1e-4)}
for name, (spent, excess) in results.items():
    print(f"{name:>14}: {spent:4d} iterations, relative excess {excess:.2e}")

fig, ax = plt.subplots(figsize=(5.5, 3.6))
for name, (spent, excess) in results.items():
    auto = name.startswith("auto")
    ax.loglog(spent, excess, "s" if auto else "o",
              color=FAMILY_COLORS["PSI-LoRA"] if not auto else FAMILY_COLORS["RPLoRA"])
    ax.annotate(name, (spent, excess), fontsize=7, xytext=(3, 3), textcoords="offset points")
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.set(xlabel=f"LoRSum iterations over {epochs} steps", ylabel="relative excess loss",
       title="linear task: fixed K (circles) vs iters='auto' (squares)")
plt.show()

# %% [markdown]
# ## 7. In a `transformers.Trainer`
#
# `lowrank_prox.optim.trainer_callback(diag)` returns a `TrainerCallback` that adds each
# layer's latest `distance`, `distance_pred`, `gap`, `angle` and `holds` to every log entry
# (keys `subspace/<layer>/<call>/<column>`), so they land in `trainer.state.log_history` and in
# whatever logger the Trainer reports to:
#
# ```python
# diag = SubspaceDiagnostics(ridge_tol=1e-6, every=10)   # record one step in 10
# opt = PSILoRA(peft_model, lr=0.02, momentum=0.9, ridge=1e-8, diagnostics=diag)
# trainer = Trainer(model=peft_model, args=args, train_dataset=data,
#                   optimizers=(opt, None), callbacks=[trainer_callback(diag)])
# ```
#
# Recording costs one QR of the stacked factors per call, $O((m+n)R^2+R^3)$ with $R$ the
# target's inner dimension (e.g. $r$ + batch rows + $r_M$); `every` thins it out on large runs.

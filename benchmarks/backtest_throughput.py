"""Backtest throughput: snapshots/s of the compiled engine on 10^6 and 10^7 synthetic snapshots.

    python benchmarks/backtest_throughput.py [--sizes 1e6 1e7] [--levels 5] [--every 10]

The book is a seeded random walk generated here with NumPy (1-tick mid steps, 1-3 tick spread,
trades on ~30% of rows). The policy is fixed_spread, re-quoting every ``--every`` rows, one
episode over the whole book. Prints, per size, the time of the engine alone (``run_backtest(...,
metrics=False)``), of the full ``run_backtest`` (engine + episode metrics), ns per snapshot,
and the ratio of ns/snapshot between the sizes (≈1 means cost linear in N). A bare numba loop
over the same arrays (read the best prices, accumulate the mid) is the floor.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from cmm_lightning.config import MarketConfig
from cmm_lightning.data.lob import Book
from cmm_lightning.market import fixed_spread, run_backtest


def random_walk_book(n: int, levels: int = 5, seed: int = 0) -> Book:
    rng = np.random.default_rng(seed)
    mid2 = 2 * 10_000 + 2 * np.cumsum(rng.integers(-1, 2, n, dtype=np.int64))  # 2 x mid, in ticks
    spread = rng.integers(1, 4, n, dtype=np.int64)
    bid1 = (mid2 - spread) // 2
    ask1 = bid1 + spread
    k = np.arange(levels, dtype=np.int64)
    side = rng.choice(np.array([-1, 1], np.int8), n)
    traded = rng.random(n) < 0.3
    return Book(
        ts=np.cumsum(rng.integers(1_000, 1_000_000, n, dtype=np.int64)),
        bid_px=bid1[:, None] - k, ask_px=ask1[:, None] + k,
        bid_sz=rng.integers(1, 500, (n, levels)).astype(np.float64),
        ask_sz=rng.integers(1, 500, (n, levels)).astype(np.float64),
        trade_px=np.where(traded, np.where(side > 0, ask1, bid1) + side * rng.integers(0, 2, n), 0),
        trade_sz=np.where(traded, rng.integers(1, 300, n), 0).astype(np.float64),
        trade_side=np.where(traded, side, 0).astype(np.int8), tick_size=0.01, source="random walk")


@njit(cache=True)
def bare_loop(bpx, apx):
    acc = 0.0
    for r in range(bpx.shape[0]):
        acc += 0.5 * (bpx[r, 0] + apx[r, 0])
    return acc


def engine_only(book, dec, sig, cfg):
    """The engine without the episode metrics (packing + compiled loop + fills table)."""
    t0 = time.perf_counter()
    res = run_backtest(book, dec, sig, cfg, end_row=book.n, metrics=False)
    return time.perf_counter() - t0, len(res.fills)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--every", type=int, default=10, help="rows between decisions")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = MarketConfig(base_size=100, min_size=100, max_size=100, inventory_limit=1000, eta=0.05,
                       fixed_half_spread=1.0, latency=1, maker_fee=-0.0002, taker_fee=0.0003, episode_length=None)
    warm = random_walk_book(10_000, args.levels)  # compile / load the numba cache
    wdec = np.arange(0, warm.n - 1, args.every)
    run_backtest(warm, wdec, fixed_spread(len(wdec), cfg), cfg, end_row=warm.n)
    bare_loop(warm.bid_px, warm.ask_px)

    rows = []
    for size in args.sizes:
        n = int(size)
        book = random_walk_book(n, args.levels)
        dec = np.arange(0, n - 1, args.every, dtype=np.int64)
        sig = fixed_spread(len(dec), cfg)
        t_eng = min(engine_only(book, dec, sig, cfg)[0] for _ in range(args.repeats))
        _, n_fills = engine_only(book, dec, sig, cfg)
        t_full = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = run_backtest(book, dec, sig, cfg, end_row=n)
            t_full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_loop(book.bid_px, book.ask_px)
        t_bare = time.perf_counter() - t0
        rows.append((n, t_eng, min(t_full), t_bare, n_fills, res.metrics["epnl"]))
        print(f"N={n:>11,}  engine {t_eng:7.3f} s = {n / t_eng / 1e6:6.1f} M snapshots/s "
              f"({1e9 * t_eng / n:5.1f} ns/snapshot)   run_backtest {min(t_full):7.3f} s = "
              f"{n / min(t_full) / 1e6:6.1f} M/s   bare loop {n / t_bare / 1e6:7.1f} M/s   "
              f"fills {n_fills:,}  decisions {len(dec):,}  EPnL {res.metrics['epnl']:,.2f}", flush=True)
        del book, res
    if len(rows) >= 2:
        (n0, e0, f0, *_), (n1, e1, f1, *_) = rows[0], rows[-1]
        print(f"time per snapshot, N={n1:,} vs N={n0:,}: engine {e1 / n1 / (e0 / n0):.2f}x, "
              f"run_backtest {f1 / n1 / (f0 / n0):.2f}x  (1.00 = exactly linear)")


if __name__ == "__main__":
    main()

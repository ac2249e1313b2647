"""Our engine vs hftbacktest on the AMZN LOBSTER day: agreement, then rows/s side by side.

    python benchmarks/hft_compare.py [--tiles 10] [--entry-ns 1000000] [--resp-ns 1000000]
                                     [--interval-ns 100000000] [--repeats 3] [--path DIR]

Both engines run the same fixed-spread policy (``cmm_lightning.market.hft_agreement``) on the same
book: hftbacktest 2.4.x on the converted event array (``HashMapMarketDepthBacktest``, risk-averse
queue, no partial fills, constant order latency), ours with ``market.fill_model=hftbacktest``. A bare
numba loop that only reads every row (best prices, trade fields) is the floor. Rows are LOBSTER
rows (messages); the day tiled xN shifts each copy's timestamps past the previous one.
Timings exclude reading the CSVs and converting; hftbacktest's time is its policy loop only
(its asset build is printed apart), ours is the policy's clock + quotes (``fixed_spread_decisions``)
+ ``run_backtest`` (input checks, the compiled run, the fills table).
Best of ``--repeats`` after a warm-up run (JIT compile) on a small slice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from numba import njit

from cmm_lightning.data.hft_events import book_to_events

from cmm_lightning.market.hft_agreement import (pnl_from_fills, run_fixed_spread_engine,
                                                run_fixed_spread_hftbacktest, same_fills, tile_book)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "lobster"


@njit(cache=True)
def bare_loop(ts, bid_px, ask_px, trade_px, trade_sz, trade_side):
    """The floor: read each row's time, best prices and trade once; return a checksum."""
    acc = 0.0
    last = ts[0]
    for r in range(ts.shape[0]):
        acc += (ts[r] - last) * 1e-9 + bid_px[r, 0] - ask_px[r, 0] + trade_side[r] * trade_sz[r] * trade_px[r]
        last = ts[r]
    return acc


def best_of(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(DEFAULT_PATH))
    ap.add_argument("--tiles", type=int, default=10)
    ap.add_argument("--interval-ns", type=int, default=100_000_000)
    ap.add_argument("--entry-ns", type=int, default=1_000_000)
    ap.add_argument("--resp-ns", type=int, default=1_000_000)
    ap.add_argument("--maker-fee", type=float, default=-0.002)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import hftbacktest

    from cmm_lightning.data.lobster import read_lobster

    pol = dict(interval_ns=args.interval_ns, entry_ns=args.entry_ns, resp_ns=args.resp_ns,
               maker_fee=args.maker_fee, size=100.0, limit=500.0)
    t0 = time.perf_counter()
    day = read_lobster(args.path, 5)
    t_read = time.perf_counter() - t0
    print(f"hftbacktest {hftbacktest.__version__}; {day.n:,} LOBSTER rows read in {t_read:.2f} s; "
          f"policy: re-quote {pol['size']:.0f} @ bid-1/ask+1 every {args.interval_ns / 1e6:g} ms, "
          f"limit ±{pol['limit']:.0f}, latency entry {args.entry_ns} ns / response {args.resp_ns} ns, "
          f"maker fee {args.maker_fee}/share")

    warm = day.slice(0, 5000)  # JIT warm-up of every path
    run_fixed_spread_hftbacktest(book_to_events(warm), **pol)
    run_fixed_spread_engine(warm, **pol)
    bare_loop(warm.ts, warm.bid_px, warm.ask_px, warm.trade_px, warm.trade_sz, warm.trade_side)

    rows = []
    for name, book in (("day", day), (f"day x{args.tiles}", tile_book(day, args.tiles))):
        t0 = time.perf_counter()
        events = book_to_events(book)
        t_conv = time.perf_counter() - t0
        hft_runs = [run_fixed_spread_hftbacktest(events, **pol) for _ in range(args.repeats)]
        t_hft = min(s["elapsed_s"] for _, s in hft_runs)
        t_build = min(s["build_s"] for _, s in hft_runs)
        fh, st = hft_runs[0]
        t_ours, res = best_of(lambda: run_fixed_spread_engine(book, **pol), args.repeats)
        fo, mid = res
        t_bare, _ = best_of(lambda: bare_loop(book.ts, book.bid_px, book.ask_px, book.trade_px,
                                              book.trade_sz, book.trade_side), args.repeats)
        ph = pnl_from_fills(fh, st["final_mid_ticks"], maker_fee=args.maker_fee)
        po = pnl_from_fills(fo, mid, maker_fee=args.maker_fee)
        agree = same_fills(fh, fo) and ph["pnl"] == po["pnl"]
        n = book.n
        rows.append((name, n, len(events), t_conv, t_build, t_hft, t_ours, t_bare, ph, po, agree))

    print(f"\n{'':10} {'rows':>10} {'events':>10} | {'hftbacktest':>12} {'ours':>12} {'bare loop':>12} | "
          f"{'ours/hft':>8} {'bare/ours':>9} | fills (hft, ours)  PnL $ (hft, ours)  agree")
    for name, n, ne, t_conv, t_build, t_hft, t_ours, t_bare, ph, po, agree in rows:
        print(f"{name:10} {n:>10,} {ne:>10,} | {n / t_hft / 1e6:>8.3f} M/s {n / t_ours / 1e6:>8.2f} M/s "
              f"{n / t_bare / 1e6:>8.1f} M/s | {t_hft / t_ours:>7.1f}x {t_ours / t_bare:>8.1f}x | "
              f"{ph['n_fills']:>5} {po['n_fills']:>5}  {ph['pnl']:>9.2f} {po['pnl']:>9.2f}  {agree}")
    print("\nrows/s = LOBSTER rows / seconds (best of repeats). Not timed above: converting "
          + ", ".join(f"{r[0]} {r[3]:.2f} s" for r in rows) + "; hftbacktest asset build "
          + ", ".join(f"{r[0]} {r[4]:.2f} s" for r in rows) + ".")
    ok = all(r[10] for r in rows)
    fast = all(r[5] / r[6] >= 5 for r in rows)
    near = all(r[6] / r[7] <= 20 for r in rows)
    print(f"targets: fills+PnL agree {ok}; ours >= 5x hftbacktest {fast}; ours within 20x of the bare loop {near}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Trade an exported CMM in hftbacktest's own backtester on a LOBSTER day (default: the AMZN sample).

    pip install -e ".[dev]"        # hftbacktest 2.4.x comes with the dev / bench extra
    python examples/cmm_in_hftbacktest.py                       # random-weight CMM, the whole AMZN day
    python examples/cmm_in_hftbacktest.py --cmm runs/amzn/checkpoints/cmm.pt --compare
    python examples/cmm_in_hftbacktest.py --rows 20000 --compare # a quick slice, and our engine beside it

What it does:

1. **Data.** Reads the LOBSTER orderbook + message files (``--data``: a folder or either file) into a
   ``Book`` (``cmm_lightning.data.lobster.read_lobster``): the CMM builds its input windows from the
   Book's rows. hftbacktest replays events, not rows: ``cmm_lightning.data.hft_events.book_to_events
   (book)`` converts the Book into hftbacktest's event array (``hftbacktest.event_dtype``: row 0 as a
   depth snapshot, then per row its trade and its depth diff; prices in currency). ``--events
   FILE.npz`` saves it with ``np.savez_compressed(FILE, data=events)`` — the format
   ``BacktestAsset().data([...])`` reads — and reuses the file next time.
2. **Model.** ``--cmm PATH`` loads an export (``checkpoints/cmm.pt`` of a ``fit`` run). Without it the
   example makes one: ``cmm_lightning.export.random_cmm(n_features=4·levels+3)``, the default shape
   (9 tcn students + Hájek-MoE) with random weights — it trades, but on noise. A trained one on the
   AMZN day: ``python -m cmm_lightning fit --config conf/smoke.yaml --config conf/lobster.yaml
   run.dir=runs/amzn_smoke`` (the smoke pipeline, tiny teacher, a few minutes on 2 cores) or
   ``--config conf/lobster.yaml`` alone (the real teacher), then ``--cmm runs/amzn_smoke/checkpoints/cmm.pt``.
   v̂ needs the mean traded volume of the train windows at the model's horizon: ``--volume-ref``, or
   computed from the day at ``--horizon`` (default: ``data.horizon`` of the run's ``config.yaml`` next to
   the export, else 10).
3. **Strategy.** ``cmm_lightning.market.hft_strategy.run_cmm_hftbacktest``: a numba loop over
   ``hbt.elapse(interval)``; at each step it finds the Book row of ``hbt.current_timestamp``, and one
   compiled call (``cmm_quote``) builds the window, runs the fused kernel, turns the predictions into
   signals (``market.policies.predictions``) and quotes (``market.quoting.quote``) from
   ``hbt.depth(0)``'s best prices and ``hbt.position(0)``; it cancels the live quotes and posts the
   new ones GTX (post-only), a side only if the position stays inside ``--inventory-limit`` even if
   every order of that side that may still fill does. hftbacktest: ``HashMapMarketDepthBacktest``,
   risk-averse queue, no partial fills, ``constant_latency(--entry-ms, --response-ms)``, per-share
   fees, tick 0.01, lot 1.
4. ``--compare`` also runs the same decisions through our engine (``market.fill_model=hftbacktest``)
   and checks the fills and PnL are identical.

Your own strategy loop can call the pieces directly (all ``@njit``)::

    ts, bk, kw, T, prm, sp, scratch, pred = strategy_args(model, book, cfg, volume_ref)
    ...  # inside your @njit loop, after hbt.elapse(...):
    r = last_row(ts, hbt.current_timestamp, r)
    depth = hbt.depth(0)
    bid, bid_sz, ask, ask_sz = cmm_quote(bk, kw, r, T, prm, sp, depth.best_bid_tick,
                                         depth.best_ask_tick, hbt.position(0), scratch, pred)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lobster"


def run_horizon(cmm_path: str | None) -> int | None:
    """``data.horizon`` of the fit run an export came from (``<run>/checkpoints/cmm.pt``), if any."""
    if not cmm_path:
        return None
    cfg = Path(cmm_path).resolve().parent.parent / "config.yaml"
    if not cfg.is_file():
        return None
    from omegaconf import OmegaConf

    h = OmegaConf.load(cfg).get("data", {}).get("horizon")
    return int(h) if h is not None else None


def load_events(book, path: str | None) -> np.ndarray:
    from cmm_lightning.data.hft_events import book_to_events

    if path and Path(path).is_file():
        events = np.load(path)["data"]
        if len(events) == 0 or events["exch_ts"][0] != book.ts[0] or events["exch_ts"][-1] != book.ts[-1]:
            raise SystemExit(f"{path} holds the events of another book (other --data / --rows?): delete it or "
                             "pass another --events file")
        print(f"events: {len(events):,} from {path}")
        return events
    t0 = time.perf_counter()
    events = book_to_events(book)
    print(f"events: {len(events):,} converted in {time.perf_counter() - t0:.2f} s (data.hft_events.book_to_events)")
    if path:
        np.savez_compressed(path, data=events)
        print(f"        saved to {path}")
    return events


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="LOBSTER folder, orderbook or message file")
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--rows", type=int, default=None, help="only the first N rows of the day")
    ap.add_argument("--events", default=None, help="hftbacktest event file (.npz) to save / reuse")
    ap.add_argument("--cmm", default=None, help="exported CMM (checkpoints/cmm.pt); default: random weights")
    ap.add_argument("--volume-ref", type=float, default=None, help="v̂ reference: mean train traded volume")
    ap.add_argument("--horizon", type=int, default=None, help="horizon for the volume reference (default: the "
                                                              "run's data.horizon, else 10)")
    ap.add_argument("--interval-ms", type=float, default=100.0, help="decision clock")
    ap.add_argument("--entry-ms", type=float, default=1.0, help="order entry latency")
    ap.add_argument("--response-ms", type=float, default=1.0, help="order response latency")
    ap.add_argument("--maker-fee", type=float, default=-0.002, help="currency per share (negative: rebate)")
    ap.add_argument("--taker-fee", type=float, default=0.0)
    ap.add_argument("--inventory-limit", type=int, default=1000)
    ap.add_argument("--eta", type=float, default=0.05, help="inventory skew, ticks per share")
    ap.add_argument("--spread-mult", type=float, default=1.0, help="c in δ = max(1, c·ŝ/2)")
    ap.add_argument("--base-size", type=int, default=100)
    ap.add_argument("--compare", action="store_true", help="also run our engine and check fill-for-fill agreement")
    args = ap.parse_args(argv)

    from cmm_lightning.market.hft_agreement import pnl_from_fills, same_fills
    from cmm_lightning.data.lobster import read_lobster
    from cmm_lightning.data.windows import make_windows
    from cmm_lightning.export import load_cmm, random_cmm
    from cmm_lightning.market.hft_strategy import hft_market_config, run_cmm_engine, run_cmm_hftbacktest
    from cmm_lightning.market.policies import train_volume_ref

    t0 = time.perf_counter()
    book = read_lobster(args.data, args.levels)
    if args.rows:
        book = book.slice(0, min(args.rows, book.n))
    span = (book.ts[-1] - book.ts[0]) / 1e9
    print(f"book: {book.source}, {book.n:,} rows, {book.levels} levels, {span / 3600:.2f} h "
          f"({time.perf_counter() - t0:.1f} s to read)")
    events = load_events(book, args.events)

    if args.cmm:
        model = load_cmm(args.cmm)
        what = args.cmm
    else:
        model = random_cmm(n_features=4 * book.levels + 3)
        what = "random weights (export.random_cmm; pass --cmm for a trained export)"
    st = model.spec["students"]
    print(f"CMM: {what}: {st['n_students']} {st['encoder']} students, mode {model.mode}, window {st['window']}")

    vref = args.volume_ref
    if vref is None:
        h = args.horizon or run_horizon(args.cmm) or 10
        vref = train_volume_ref(make_windows(book, int(st["window"]), h))
        print(f"volume reference: {vref:.2f} shares (mean traded volume of the train windows, horizon {h})")
    cfg = hft_market_config(latency_ns=int(args.entry_ms * 1e6), response_latency_ns=int(args.response_ms * 1e6),
                            maker_fee=args.maker_fee, taker_fee=args.taker_fee, inventory_limit=args.inventory_limit,
                            eta=args.eta, spread_mult=args.spread_mult, base_size=args.base_size)
    interval = int(args.interval_ms * 1e6)

    t0 = time.perf_counter()
    fills, state = run_cmm_hftbacktest(model, book, events, cfg, interval_ns=interval, volume_ref=vref)
    wall = time.perf_counter() - t0
    dec = state["decisions"]
    quoted = (dec[:, 8] > 0) | (dec[:, 10] > 0)
    pnl = pnl_from_fills(fills, state["final_mid_ticks"], float(book.tick_size), args.maker_fee)
    print(f"hftbacktest: {len(dec):,} decisions every {args.interval_ms:g} ms ({quoted.mean():.0%} quoted), "
          f"{len(fills):,} fills, {fills['qty'].sum():,.0f} shares")
    print(f"  final position {state['position']:+,.0f}, PnL ${pnl['pnl']:,.2f} (cash + position x final mid, "
          f"fees ${pnl['fee']:,.2f}); hftbacktest's own: balance ${state['balance']:,.2f}, fee ${state['fee']:,.2f}, "
          f"{state['num_trades']} trades")
    print(f"  strategy loop {state['elapsed_s']:.2f} s ({state['elapsed_s'] / max(len(dec), 1) * 1e6:.1f} µs per "
          f"decision, hftbacktest's replay included); compiling it {state['compile_s']:.1f} s, {wall:.1f} s in all")
    out = {"fills": len(fills), "position": state["position"], "pnl": pnl["pnl"], "decisions": len(dec)}
    if args.compare:
        t0 = time.perf_counter()
        ours, mid = run_cmm_engine(model, book, cfg, interval_ns=interval, volume_ref=vref)
        po = pnl_from_fills(ours, mid, float(book.tick_size), args.maker_fee)
        same = same_fills(fills, ours) and po == pnl
        print(f"our engine (market.fill_model=hftbacktest): {len(ours):,} fills, position {po['position']:+,.0f}, "
              f"PnL ${po['pnl']:,.2f} ({time.perf_counter() - t0:.2f} s) -> "
              f"{'identical, fill for fill' if same else 'DIFFERENT'}")
        out["agree"] = bool(same)
    return out


if __name__ == "__main__":
    main()

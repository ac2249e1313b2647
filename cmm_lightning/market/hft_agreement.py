"""The agreement check between our engine (``market.fill_model=hftbacktest``) and hftbacktest itself.

A fixed-spread reference policy (below) run by both backtesters on the same events, and the tools
to compare their fills: the scaffolding shared by ``tests/test_hft_agreement.py`` and
``benchmarks/hft_compare.py`` (docs/hft_agreement.md has the results and the differences by
design). :func:`tile_book` makes long inputs for throughput runs. The hftbacktest runner imports
hftbacktest (a ``dev``/``bench`` extra, never a runtime dependency) only when called.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from ..data.lob import Book

def tile_book(book: Book, times: int, gap_ns: int = 1_000_000_000) -> Book:
    """The book repeated ``times`` times, each copy shifted to start ``gap_ns`` after the previous
    one ends (a long input for throughput runs; per-row ``meta`` arrays are repeated too)."""
    span = int(book.ts[-1] - book.ts[0]) + gap_ns
    ts = np.concatenate([book.ts + k * span for k in range(times)])
    rep = lambda a: np.concatenate([a] * times)  # noqa: E731
    meta = {k: (rep(v) if isinstance(v, np.ndarray) and len(v) == book.n else v) for k, v in book.meta.items()}
    return Book(ts=ts, bid_px=rep(book.bid_px), bid_sz=rep(book.bid_sz), ask_px=rep(book.ask_px),
                ask_sz=rep(book.ask_sz), trade_px=rep(book.trade_px), trade_sz=rep(book.trade_sz),
                trade_side=rep(book.trade_side), tick_size=book.tick_size, source=f"{book.source} x{times}",
                meta=meta)


# ----------------------------------------------------------------------------- the agreement check
# The fixed-spread reference policy, identical in both engines: every ``interval_ns`` of exchange
# time after the first row (t_k = ts[0] + k * interval, k >= 1, t_k <= ts[-1]) cancel every live
# quote and post GTX (post-only) ``size`` shares at best bid - 1 tick and best ask + 1 tick of the
# local book. A side is quoted only if the position cannot breach ``limit`` even if every order of
# that side still possibly live (the quote being cancelled, not yet known filled) fills:
# ``pos_known + open_side + size <= limit``. hftbacktest runs it on ``HashMapMarketDepthBacktest``
# with ``risk_adverse_queue_model`` + ``no_partial_fill_exchange`` + ``constant_latency(entry,
# resp)`` + ``trading_qty_fee_model`` (fees per share, like ours), lot 1; our engine with
# ``MarketConfig(fill_model="hftbacktest")``. docs/hft_agreement.md has the differences by design.

FILL_DTYPE = np.dtype([("ts", "i8"), ("side", "i1"), ("px", "i8"), ("qty", "f8")])  # px in ticks


def _clock_quotes(ts, bid_px, ask_px, interval, size, dec_ts, rows, q):  # pragma: no cover - jit
    """One merge pass over rows and clock: ``dec_ts[k] = ts[0] + (k+1)·interval``, ``rows[k]`` =
    last row with ``ts <= dec_ts[k]``, ``q[k]`` = (best bid − 1, size, best ask + 1, size) of that
    row. The outputs come from NumPy (huge pages: ~4x faster to first touch than numba's)."""
    n = ts.shape[0]
    r = 0
    bid, ask = bid_px[0, 0], ask_px[0, 0]
    for k in range(dec_ts.shape[0]):
        t = ts[0] + (k + 1) * interval
        while r + 1 < n and ts[r + 1] <= t:
            r += 1
            bid, ask = bid_px[r, 0], ask_px[r, 0]  # read as the rows pass: one sequential stream
        dec_ts[k] = t
        rows[k] = r
        q[k, 0] = bid - 1
        q[k, 1] = size
        q[k, 2] = ask + 1
        q[k, 3] = size


@functools.cache
def _clock_kernel():
    """:func:`_clock_quotes` compiled on first use (importing this module needs NumPy only)."""
    from numba import njit

    return njit(cache=True)(_clock_quotes)


def fixed_spread_decisions(book: Book, interval_ns: int, size: float = 100.0):
    """The reference policy's decisions on hftbacktest's clock -> ``(dec_ts, rows, quotes [D, 4])``:
    decisions at ``t_k = ts[0] + k * interval_ns`` (k >= 1, t_k <= ts[-1]), each seeing the local
    book row ``rows[k]`` (last row with ``ts <= t_k``) and quoting ``size`` at its best bid − 1 /
    best ask + 1 (ticks), as ``run_backtest(..., raw_quotes=True, decision_ts=dec_ts)`` takes them."""
    ts = np.ascontiguousarray(book.ts, np.int64)
    K = (int(ts[-1]) - int(ts[0])) // int(interval_ns)
    dec_ts, rows, q = np.empty(K, np.int64), np.empty(K, np.int64), np.empty((K, 4))
    _clock_kernel()(ts, np.ascontiguousarray(book.bid_px, np.int64), np.ascontiguousarray(book.ask_px, np.int64),
                   np.int64(interval_ns), float(size), dec_ts, rows, q)
    return dec_ts, rows, q


def run_fixed_spread_engine(book: Book, *, interval_ns: int = 100_000_000, size: float = 100.0,
                            limit: float = 500.0, entry_ns: int = 1_000_000, resp_ns: int = 1_000_000,
                            maker_fee: float = 0.0, taker_fee: float = 0.0, tick_size: float = 0.01,
                            result: bool = False):
    """The reference policy in our engine (``fill_model="hftbacktest"``, one episode: the whole
    book) -> ``(fills sorted like sort_fills, final mid in ticks)``, or the ``BacktestResult``
    (with metrics) when ``result``. ``tick_size`` is accepted for symmetry with
    :func:`run_fixed_spread_hftbacktest`; our engine takes it from the book."""
    from ..config import MarketConfig
    from .engine import run_backtest

    dec_ts, rows, q = fixed_spread_decisions(book, interval_ns, size)
    cfg = MarketConfig(fill_model="hftbacktest", latency_ns=int(entry_ns), response_latency_ns=int(resp_ns),
                       inventory_limit=limit, maker_fee=maker_fee, taker_fee=taker_fee, min_size=1,
                       max_size=max(size, 1), lot_size=1.0, episode_length=None)
    res = run_backtest(book, rows, q, cfg, end_row=book.n, raw_quotes=True, decision_ts=dec_ts,
                       metrics=result)
    return res if result else engine_fills(res, book)


def engine_fills(res, book: Book) -> tuple[np.ndarray, float]:
    """A ``run_backtest`` result's fills as FILL_DTYPE, sorted like :func:`sort_fills`, and the
    final mid in ticks: what the hftbacktest runners return, to compare with them."""
    f = res.fills
    out = np.zeros(len(f), FILL_DTYPE)
    out["ts"], out["side"], out["px"], out["qty"] = f["ts"], f["side"], f["price"], f["size"]
    return sort_fills(out), 0.5 * float(book.bid_px[-1, 0] + book.ask_px[-1, 0])


@functools.cache
def order_sweep():
    """The pass over hftbacktest's orders both hftbacktest loops make after each ``elapse``
    (compiled on first use: it takes hftbacktest's jitclass): ``sweep(hbt, done, fills, n) ->
    (n, open_buy, open_sell)`` records every FILLED order into ``fills[n:]`` (FILL_DTYPE), sums the
    size of each side's orders that may still fill (resting, in flight, or filled but not yet
    reported) and, unless ``done``, cancels every resting one (cancel and replace)."""
    from hftbacktest import BUY, FILLED, NEW, NONE
    from numba import njit

    @njit
    def sweep(hbt, done, fills, n):  # pragma: no cover - jit
        open_buy = 0.0
        open_sell = 0.0
        values = hbt.orders(0).values()
        while values.has_next():
            o = values.get()
            if o.status == FILLED:
                fills[n].ts = o.exch_timestamp
                fills[n].side = o.side
                fills[n].px = o.exec_price_tick
                fills[n].qty = o.exec_qty
                n += 1
            elif not done and (o.status == NEW or o.req == NEW):
                if o.side == BUY:
                    open_buy += o.leaves_qty
                else:
                    open_sell += o.leaves_qty
                if o.status == NEW and o.req == NONE:
                    hbt.cancel(0, o.order_id, False)
        return n, open_buy, open_sell

    return sweep


@functools.cache
def _hftbacktest_policy():
    """The reference policy as hftbacktest's numba loop over ``elapse(interval)`` (compiled on first
    use): records every fill into ``fills`` (FILL_DTYPE) and returns how many."""
    from hftbacktest import GTX, LIMIT
    from numba import njit

    sweep = order_sweep()

    @njit
    def policy(hbt, interval, size, limit, fills):  # pragma: no cover - jit
        n = 0
        oid = 1
        tick = hbt.depth(0).tick_size
        while True:
            done = hbt.elapse(interval) != 0  # the end of the data: record the last fills only
            n, open_buy, open_sell = sweep(hbt, done, fills, n)
            if done:
                return n
            hbt.clear_inactive_orders(0)
            pos = hbt.position(0)
            depth = hbt.depth(0)
            if pos + open_buy + size <= limit:
                hbt.submit_buy_order(0, oid, (depth.best_bid_tick - 1) * tick, size, GTX, LIMIT, False)
                oid += 1
            if -pos + open_sell + size <= limit:
                hbt.submit_sell_order(0, oid, (depth.best_ask_tick + 1) * tick, size, GTX, LIMIT, False)
                oid += 1

    return policy


def run_fixed_spread_hftbacktest(events: np.ndarray, *, interval_ns: int = 100_000_000, size: float = 100.0,
                                 limit: float = 500.0, entry_ns: int = 1_000_000, resp_ns: int = 1_000_000,
                                 maker_fee: float = 0.0, taker_fee: float = 0.0, tick_size: float = 0.01):
    """The reference policy on hftbacktest over ``events`` (:func:`~cmm_lightning.data.hft_events.book_to_events`) -> ``(fills
    sorted like sort_fills, state)``, state = dict(position, balance, fee, num_trades,
    final_mid_ticks, elapsed_s: the policy loop, build_s: the asset build)."""
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    policy = _hftbacktest_policy()
    t0 = time.perf_counter()
    asset = (BacktestAsset().data(events).linear_asset(1.0)
             .constant_latency(int(entry_ns), int(resp_ns))
             .risk_adverse_queue_model().no_partial_fill_exchange()
             .trading_qty_fee_model(maker_fee, taker_fee)
             .tick_size(tick_size).lot_size(1.0))
    hbt = HashMapMarketDepthBacktest([asset])
    build = time.perf_counter() - t0
    fills = np.zeros(len(events) // 2 + 16, FILL_DTYPE)
    t0 = time.perf_counter()
    n = policy(hbt, int(interval_ns), float(size), float(limit), fills)
    elapsed = time.perf_counter() - t0
    sv = hbt.state_values(0)
    depth = hbt.depth(0)
    state = dict(position=float(sv.position), balance=float(sv.balance), fee=float(sv.fee),
                 num_trades=int(sv.num_trades), final_mid_ticks=0.5 * (depth.best_bid_tick + depth.best_ask_tick),
                 elapsed_s=elapsed, build_s=build)
    hbt.close()
    return sort_fills(fills[:n]), state


def sort_fills(fills: np.ndarray) -> np.ndarray:
    """FILL_DTYPE fills in (ts, side, px, qty) order (what ``np.sort(fills, order=["ts", "side"])``
    gives, ~10x faster)."""
    return fills[np.lexsort((fills["qty"], fills["px"], fills["side"], fills["ts"]))]


def same_fills(a: np.ndarray, b: np.ndarray) -> bool:
    """Fill for fill: same count and identical (ts, side, px, qty) in (ts, side) order."""
    return len(a) == len(b) and all(np.array_equal(a[k], b[k]) for k in FILL_DTYPE.names)


def pnl_from_fills(fills: np.ndarray, final_mid_ticks: float, tick_size: float = 0.01,
                   maker_fee: float = 0.0) -> dict:
    """Cash, position and PnL = cash + position x final mid - fees of FILL_DTYPE fills (every fill a
    maker fill, ``maker_fee`` per share), in exact integer ticks where possible."""
    signed = np.where(fills["side"] > 0, 1, -1) * fills["qty"]
    position = float(signed.sum())
    cash_ticks = float(-(signed * fills["px"]).sum())  # integer-valued: ticks x shares
    fee = maker_fee * float(fills["qty"].sum())
    pnl = (cash_ticks + position * final_mid_ticks) * tick_size - fee
    return dict(n_fills=len(fills), position=position, cash_ticks=cash_ticks, fee=fee, pnl=pnl)

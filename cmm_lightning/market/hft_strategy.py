"""The exported CMM as an hftbacktest strategy: its whole decision inside an ``@njit`` loop.

One compiled call, :func:`cmm_quote` (= :func:`cmm_predict`, steps 1-2, then
:func:`cmm_quote_from`, steps 3-4), does what the ``cmm`` policy does at a decision, from the book
to the quotes:

1. the model's input window ending at book row ``row``
   (:func:`~cmm_lightning.data.windows.window_from_book`),
2. the fused students + Hájek-MoE kernel (:func:`~cmm_lightning.fused_kernel.book_decision` with
   ``*CMMDecision.kernel_args()``) → predictions ``(mid, spread, volume)``,
3. predictions → signals exactly as :func:`cmm_lightning.market.policies.predictions`
   (:func:`cmm_signals`: m̂ = predicted mid move, ŝ = predicted spread,
   v̂ = base_size · max(expm1(volume), 0) / volume_ref, η = eta),
4. the quoting rule :func:`~cmm_lightning.market.quoting.quote` with the market parameter vector
   ``engine.params(cfg, tick)`` → ``(bid ticks, bid size, ask ticks, ask size)``.

It takes plain arrays and scalars, so any numba code can call it: an hftbacktest strategy loop
passes the best bid / ask ticks of ``hbt.depth(0)`` and ``hbt.position(0)``, and finds the book row
of ``hbt.current_timestamp`` with :func:`last_row`. :func:`strategy_args` packs what it needs.

:func:`run_cmm_hftbacktest` runs the CMM in hftbacktest's own backtester
(``HashMapMarketDepthBacktest``, risk-averse queue, no partial fills, constant order latency,
per-share fees) with the cancel / replace logic of the fixed-spread reference strategy
(``cmm_lightning.market.hft_agreement``): every ``interval_ns`` cancel the live quotes and post the
new ones GTX (post-only); a side is quoted only if the position stays inside
``market.inventory_limit`` even if every order of that side that may still fill does fill.
:func:`run_cmm_engine` runs the same decisions (same clock, same book rows, predictions from the
same compiled kernel) through our engine with ``market.fill_model=hftbacktest``; the two agree
fill for fill (``tests/test_hft_strategy.py``; docs/hft_agreement.md has what that needs).

hftbacktest is a dev/bench extra, never a runtime dependency: it is imported (and the strategy
loop, which takes hftbacktest's jitclass and so cannot use numba's disk cache, compiled) only
when :func:`run_cmm_hftbacktest` is called. The array functions are module-level
``@njit(cache=True)``; numba keys a cached function on its own file only, so after editing
``export.py``, ``market/quoting.py`` or ``data/windows.py`` touch this file (or clear its
``__pycache__/*.nbi|*.nbc``) to rebuild the cached copies. ``examples/cmm_in_hftbacktest.py`` is
the runnable example.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from numba import njit

from ..fused_kernel import book_decision
from .quoting import EPS, P_LIMIT, quote

# signal parameters: the float64 vector [3] cmm_signals / cmm_quote take (signal_params)
S_BASE, S_VREF, S_ETA = range(3)
# the decision log run_cmm_hftbacktest keeps, float64 [K, len(DECISION_COLS)]
DECISION_COLS = ("ts", "row", "best_bid", "best_ask", "pred_mid", "pred_spread", "pred_volume",
                 "bid_px", "bid_sz", "ask_px", "ask_sz")
(D_TS, D_ROW, D_BB, D_BA, D_MID, D_SPREAD, D_VOL, D_BPX, D_BSZ, D_APX, D_ASZ) = range(len(DECISION_COLS))


def signal_params(cfg=None, volume_ref: float | None = None) -> np.ndarray:
    """``(base_size, volume_ref, eta)`` float64 [3] from a MarketConfig (None: the defaults);
    ``volume_ref`` None or 0: v̂ = base_size (as :func:`~cmm_lightning.market.policies.predictions`)."""
    from ..config import MarketConfig

    cfg = MarketConfig() if cfg is None else cfg
    return np.array([float(cfg.base_size), float(volume_ref or 0.0), float(cfg.eta)])


@njit(cache=True, inline="always")
def cmm_signals(pred, sp):
    """Predictions ``pred`` [3] (mid ticks, spread ticks, log1p volume) → signals (m̂, ŝ, v̂, η),
    the formulas of :func:`cmm_lightning.market.policies.predictions` in the same order of
    operations (``sp`` = :func:`signal_params`). NaN predictions give NaN signals (no quotes)."""
    m = np.float64(pred[0])  # numba's float() keeps a float32 float32
    s = np.float64(pred[1])
    base, vref = sp[S_BASE], sp[S_VREF]
    v = base
    if vref != 0.0:  # policies.predictions: `if volume_ref:`
        e = np.expm1(np.float64(pred[2]))
        if e < 0.0:  # np.maximum(e, 0): NaN stays NaN
            e = 0.0
        v = base * e / vref
    return m, s, v, sp[S_ETA]


@njit(cache=True, inline="always")
def last_row(ts, t, r):
    """The last book row with ``ts <= t``, searching forward from row ``r`` (a clock only moves
    forward: start at 0, pass the previous answer back in). Stays at ``r`` if ``ts[r + 1] > t``."""
    n = ts.shape[0]
    while r + 1 < n and ts[r + 1] <= t:
        r += 1
    return r


@njit(cache=True, nogil=True)
def cmm_predict(bk, kw, row, T, scratch, pred):  # pragma: no cover - jit
    """The CMM's predictions at book row ``row`` → ``pred`` float32 [3] (mid, spread, volume): the
    window ending at ``row`` and the fused kernel (:func:`~cmm_lightning.fused_kernel.book_decision`).
    ``bk`` = :func:`~cmm_lightning.data.windows.book_arrays` (bid_px, bid_sz, ask_px, ask_sz,
    trade_sz, trade_side), ``kw`` = ``CMMDecision.kernel_args()``, ``T`` the model's window,
    ``scratch`` float32 [``CMMDecision.scratch_size()``]. A row without a full window
    (``row < T - 1``) gives NaN (no quotes)."""
    if row < T - 1:
        pred[:] = np.nan
    else:
        book_decision(*bk, row, T, *kw, scratch, pred)
    return pred


@njit(cache=True, inline="always")
def cmm_quote_from(pred, prm, sp, best_bid, best_ask, inv):
    """Predictions → signals (:func:`cmm_signals`) → the quoting rule
    :func:`~cmm_lightning.market.quoting.quote` → ``(bid_px, bid_size, ask_px, ask_size)``."""
    m, s, v, eta = cmm_signals(pred, sp)
    return quote(prm, best_bid, best_ask, inv, m, s, v, eta)


@njit(cache=True, nogil=True)
def cmm_quote(bk, kw, row, T, prm, sp, best_bid, best_ask, inv, scratch, pred):  # pragma: no cover - jit
    """The CMM's whole decision at book row ``row``: window → fused kernel → signals → quotes.

    ``bk``, ``kw``, ``T``, ``scratch``, ``pred`` as :func:`cmm_predict` (``pred`` receives the
    predictions); ``prm`` = ``engine.params(cfg, tick)``, ``sp`` = :func:`signal_params`;
    ``best_bid`` / ``best_ask`` (ticks) and ``inv`` (shares) as the trader sees them. Returns
    ``(bid_px, bid_size, ask_px, ask_size)`` (ticks, shares; size 0 = that side not quoted), the
    quoting rule with its own inventory rule (``inv ± size`` inside ``market.inventory_limit``).
    """
    cmm_predict(bk, kw, row, T, scratch, pred)
    return cmm_quote_from(pred, prm, sp, best_bid, best_ask, inv)


@njit(cache=True, nogil=True)
def predict_rows(bk, kw, rows, T, scratch, out):  # pragma: no cover - jit
    """Predictions at book rows ``rows`` → ``out`` float32 [D, 3] (NaN where ``row < T - 1``), by
    :func:`cmm_predict`; a row equal to the one before it copies its predictions."""
    for j in range(rows.shape[0]):
        if j > 0 and rows[j] == rows[j - 1]:
            out[j, :] = out[j - 1, :]
        else:
            cmm_predict(bk, kw, rows[j], T, scratch, out[j])
    return out


def strategy_args(model, book, cfg=None, volume_ref: float | None = None) -> tuple:
    """``(ts, bk, kw, T, prm, sp, scratch, pred)``: what :func:`last_row` and :func:`cmm_quote`
    take for ``model`` (a tcn ``CMMDecision``) on ``book`` (a Book) under the market config
    ``cfg`` (None: the defaults). ``volume_ref``: the mean traded volume of the train windows
    (``policies.train_volume_ref``), None: v̂ = base_size."""
    from ..data.windows import book_arrays as window_arrays
    from .engine import params

    st = model.spec["students"]
    T, F = int(st["window"]), int(st["n_features"])
    if F != 4 * book.levels + 3:
        raise ValueError(f"the CMM reads {F} features per snapshot ({(F - 3) // 4} levels); the book has "
                         f"{book.levels} levels ({4 * book.levels + 3} features)")
    c = np.ascontiguousarray
    bk = tuple(c(a) for a in window_arrays(book))
    return (c(book.ts, np.int64), bk, model.kernel_args(), T, params(cfg, float(book.tick_size)),
            signal_params(cfg, volume_ref), np.empty(model.scratch_size(), np.float32), np.empty(3, np.float32))


def hft_market_config(**kw):
    """A ``MarketConfig`` for the agreement: ``fill_model="hftbacktest"``, one episode (the whole
    book), 1 ms entry and response latency unless ``kw`` says otherwise."""
    from ..config import MarketConfig

    base = dict(fill_model="hftbacktest", latency_ns=1_000_000, response_latency_ns=1_000_000, episode_length=None)
    return MarketConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- our engine
def cmm_clock_decisions(model, book, cfg=None, *, interval_ns: int = 100_000_000, volume_ref=None):
    """The CMM on hftbacktest's clock for our engine -> ``(dec_ts, rows, preds [D, 3] float32,
    signals [D, 4])``: decisions at ``ts[0] + k·interval_ns`` (k >= 1, up to ``ts[-1]``), each at
    the last row at or before it (``hft_agreement.fixed_spread_decisions``' clock), predictions
    from the compiled kernel (:func:`predict_rows`), signals from ``market.policies.predictions``."""
    from .hft_agreement import fixed_spread_decisions
    from .policies import predictions

    ts, bk, kw, T, _, _, scratch, _ = strategy_args(model, book, cfg, volume_ref)
    dec_ts, rows, _ = fixed_spread_decisions(book, interval_ns)
    preds = predict_rows(bk, kw, rows, T, scratch, np.empty((len(rows), 3), np.float32))
    return dec_ts, rows, preds, predictions(preds, cfg, volume_ref)


def run_cmm_engine(model, book, cfg=None, *, interval_ns: int = 100_000_000, volume_ref=None,
                   result: bool = False):
    """The ``cmm`` policy in our engine on hftbacktest's clock (one episode: the whole book;
    ``cfg`` default :func:`hft_market_config`) -> ``(fills FILL_DTYPE sorted like sort_fills, final
    mid in ticks)``, or with ``result`` the ``BacktestResult`` (with metrics)."""
    from .engine import run_backtest
    from .hft_agreement import engine_fills

    cfg = hft_market_config() if cfg is None else cfg
    dec_ts, rows, _, sig = cmm_clock_decisions(model, book, cfg, interval_ns=interval_ns, volume_ref=volume_ref)
    if len(rows) == 0:
        raise ValueError(f"the book spans less than one decision interval ({interval_ns} ns)")
    res = run_backtest(book, rows, sig, cfg, end_row=book.n, decision_ts=dec_ts, metrics=result,
                       episodes=np.array([[rows[0], book.n]], np.int64))
    return res if result else engine_fills(res, book)


# ----------------------------------------------------------------------------- hftbacktest
@functools.cache
def _hbt_loop():
    """The CMM as hftbacktest's numba strategy loop over ``elapse(interval)`` (compiled on first use:
    it takes hftbacktest's jitclass). The cancel / replace logic of the fixed-spread reference
    strategy (``hft_agreement._hftbacktest_policy``, the same ``order_sweep``); the quotes from
    :func:`cmm_quote`."""
    from hftbacktest import GTX, LIMIT

    from .hft_agreement import order_sweep

    sweep = order_sweep()

    @njit
    def loop(hbt, interval, ts, bk, kw, T, prm, sp, scratch, fills, log):  # pragma: no cover - jit
        n = 0  # fills recorded
        k = 0  # decisions taken
        oid = 1
        r = 0
        seen = -1  # the book row of the predictions in pred
        tick = hbt.depth(0).tick_size
        limit = prm[P_LIMIT]
        pred = np.empty(3, np.float32)
        while True:
            done = hbt.elapse(interval) != 0  # the end of the data: record the last fills only
            n, open_buy, open_sell = sweep(hbt, done, fills, n)  # fills in, resting orders cancelled
            if done:
                return n, k
            hbt.clear_inactive_orders(0)
            t = hbt.current_timestamp
            r = last_row(ts, t, r)
            if r != seen:  # no new book row since the last decision: the same window, the same predictions
                cmm_predict(bk, kw, r, T, scratch, pred)
                seen = r
            pos = hbt.position(0)
            depth = hbt.depth(0)
            bb, ba = depth.best_bid_tick, depth.best_ask_tick
            bp, bs, ap, as_ = cmm_quote_from(pred, prm, sp, bb, ba, pos)
            if not (pos + open_buy + bs <= limit + EPS):  # the worst case of each side
                bs = 0.0
            if not (pos - open_sell - as_ >= -limit - EPS):
                as_ = 0.0
            if k < log.shape[0]:
                log[k, 0], log[k, 1], log[k, 2], log[k, 3] = t, r, bb, ba
                log[k, 4], log[k, 5], log[k, 6] = pred[0], pred[1], pred[2]
                log[k, 7], log[k, 8], log[k, 9], log[k, 10] = bp, bs, ap, as_
            k += 1
            if bs > 0:
                hbt.submit_buy_order(0, oid, bp * tick, bs, GTX, LIMIT, False)
                oid += 1
            if as_ > 0:
                hbt.submit_sell_order(0, oid, ap * tick, as_, GTX, LIMIT, False)
                oid += 1

    return loop


def run_cmm_hftbacktest(model, book, events=None, cfg=None, *, interval_ns: int = 100_000_000,
                        volume_ref=None):
    """The CMM trading in hftbacktest's backtester on ``events`` (default
    ``data.hft_events.book_to_events(book)``; the Book ``book`` is what the model reads its windows
    from) -> ``(fills FILL_DTYPE sorted like sort_fills, state)``.

    ``cfg`` (default :func:`hft_market_config`): ``latency_ns`` / ``response_latency_ns`` are
    hftbacktest's ``constant_latency(entry, response)``, ``maker_fee`` / ``taker_fee`` its
    ``trading_qty_fee_model`` (currency per share), ``lot_size`` its lot; the quoting knobs
    (``spread_mult``, ``eta``, ``base_size``, ``min_size``, ``max_size``, ``inventory_limit``) the
    quoting rule's. ``state``: position, balance, fee, num_trades (hftbacktest's ``state_values``),
    final_mid_ticks, decisions (float64 [K, len(DECISION_COLS)]: time, book row, best bid / ask
    seen, predictions, quotes sent after the inventory rule), elapsed_s (the strategy loop),
    build_s (the asset build), compile_s (compiling the loop: the first call in a process only)."""
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    from ..data.hft_events import book_to_events

    from .hft_agreement import FILL_DTYPE, sort_fills

    cfg = hft_market_config() if cfg is None else cfg
    if events is None:
        events = book_to_events(book)
    elif len(events) and (int(events["exch_ts"].min()) < int(book.ts[0])
                          or int(events["exch_ts"].max()) > int(book.ts[-1])):
        raise ValueError("the events span times outside the book's rows (converted from another book?): the "
                         "strategy reads its windows from the book, so both must be the same market data")
    ts, bk, kw, T, prm, sp, scratch, _ = strategy_args(model, book, cfg, volume_ref)
    loop = _hbt_loop()
    t0 = time.perf_counter()
    asset = (BacktestAsset().data(events).linear_asset(1.0)
             .constant_latency(int(cfg.latency_ns), int(cfg.response_latency_ns))
             .risk_adverse_queue_model().no_partial_fill_exchange()
             .trading_qty_fee_model(float(cfg.maker_fee), float(cfg.taker_fee))
             .tick_size(float(book.tick_size)).lot_size(float(cfg.lot_size)))
    hbt = HashMapMarketDepthBacktest([asset])
    build = time.perf_counter() - t0
    fills = np.zeros(len(events) // 2 + 16, FILL_DTYPE)
    log = np.zeros(((int(ts[-1]) - int(ts[0])) // int(interval_ns) + 2, len(DECISION_COLS)))
    args = (hbt, np.int64(interval_ns), ts, bk, kw, T, prm, sp, scratch, fills, log)
    try:
        t0 = time.perf_counter()
        if not loop.signatures:  # compile first (once per process), so that elapsed_s is the loop's time
            import numba

            loop.compile(tuple(numba.typeof(a) for a in args))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n, k = loop(*args)
        elapsed = time.perf_counter() - t0
        sv = hbt.state_values(0)
        depth = hbt.depth(0)
        state = dict(position=float(sv.position), balance=float(sv.balance), fee=float(sv.fee),
                     num_trades=int(sv.num_trades),
                     final_mid_ticks=0.5 * (depth.best_bid_tick + depth.best_ask_tick),
                     decisions=log[:min(k, len(log))], elapsed_s=elapsed, build_s=build, compile_s=compile_s)
    finally:
        hbt.close()
    return sort_fills(fills[:n]), state

"""Hand-worked fill-model scenarios: a few snapshots, fixed quotes, exact PnL / inventory / fills.

Conventions in the comments: row r = book after event r; an order decided after row d with
latency 1 is live from row d+1 and saw the book of row d on arrival. tick_size = 1 unless said,
so currency = ticks.
"""

import numpy as np
import pytest

from cmm_lightning.config import MarketConfig
from cmm_lightning.data.lob import Book
from cmm_lightning.errors import CMMInputError
from cmm_lightning.market import Engine, run_backtest


def make_book(bid, ask, bsz=50.0, asz=50.0, trades=None, ts=None, tick=1.0, meta=None):
    """L=1 book; ``trades`` = {row: (price, size, side)}."""
    n = len(bid)
    tpx, tsz, tsd = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int8)
    for r, (p, s, sd) in (trades or {}).items():
        tpx[r], tsz[r], tsd[r] = p, s, sd
    col = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (n,)).reshape(n, 1).copy()
    return Book(ts=np.arange(n, dtype=np.int64) * 10 if ts is None else np.asarray(ts, np.int64),
                bid_px=col(bid, np.int64), bid_sz=col(bsz, np.float64), ask_px=col(ask, np.int64),
                ask_sz=col(asz, np.float64), trade_px=tpx, trade_sz=tsz, trade_side=tsd, tick_size=tick,
                meta=meta or {})


def cfg(**kw):
    # one episode unless a test says otherwise (independent of the config's default episode_length)
    base = dict(latency=1, min_size=1, max_size=1000, inventory_limit=1000, eta=0.0, maker_fee=0.0,
                taker_fee=0.0, episode_length=None)
    base.update(kw)
    return MarketConfig(**base)


def fills(res):
    return [(int(f["row"]), int(f["side"]), int(f["price"]), float(f["size"])) for f in res.fills]


def test_crossed_by_opposite_best():
    # rows:   0       1       2        3        4
    # book  99/101  99/101  99/100  102/103   99/101
    # decision after row 0: bid 100 x10 (improves the best: queue 0), ask 102 x10; live from row 1.
    # row 2: best ask 100 <= our bid 100 -> bid fills 10 @ 100: cash -1000, q +10.
    # row 3: best bid 102 >= our ask 102 -> ask fills 10 @ 102: cash +20, q 0.
    # equity per row = cash + q*mid: 0, 0, -1000 + 10*99.5 = -5, 20, 20.  EPnL = 20.
    b = make_book(bid=[99, 99, 99, 102, 99], ask=[101, 101, 100, 103, 101])
    res = run_backtest(b, [0], [[100, 10, 102, 10]], cfg(), end_row=5, raw_quotes=True)
    assert fills(res) == [(2, 1, 100, 10.0), (3, -1, 102, 10.0)]
    np.testing.assert_array_equal(res.equity, [0, 0, -5, 20, 20])
    np.testing.assert_array_equal(res.inventory, [0, 0, 10, 0, 0])
    assert res.metrics["epnl"] == 20.0 and res.metrics["n_trades"] == 2


def test_traded_through_fills_whole_order():
    # bid 99 x10 joins the best (queue ahead 50). Row 2: a sell prints 5 @ 98, below our bid:
    # traded through -> the whole 10 fills @ 99 (not capped by the 5 printed).
    # Row 3: a buy prints @ 102 above our ask 101 -> ask 101 x10 fills. cash = -990 + 1010 = 20.
    b = make_book(bid=[99] * 5, ask=[101] * 5, trades={2: (98, 5, -1), 3: (102, 1, 1)})
    res = run_backtest(b, [0], [[99, 10, 101, 10]], cfg(), end_row=5, raw_quotes=True)
    assert fills(res) == [(2, 1, 99, 10.0), (3, -1, 101, 10.0)]
    assert res.metrics["epnl"] == 20.0
    np.testing.assert_array_equal(res.inventory, [0, 0, 10, 0, 0])


def _queue_book():
    # best bid 99 with 50 shown at row 0; row 1: 30 cancelled (shows 20), no trade;
    # rows 2-5: sells print at 99: 40, 25, 20, 10.   mid = 100 throughout.
    return make_book(bid=[99] * 6, ask=[101] * 6, bsz=[50, 20, 10, 10, 10, 10],
                     trades={2: (99, 40, -1), 3: (99, 25, -1), 4: (99, 20, -1), 5: (99, 10, -1)})


def test_at_price_partial_fill_beyond_queue_and_cancels_ignored():
    # bid 99 x30 decided after row 0, live from row 1: queue ahead Q = 50 (shown at row 0).
    # row 1: the level drops to 20 by cancellations -> Q stays 50 (never shrunk by cancels).
    # row 2: 40 trade @ 99 <= Q -> Q = 10, no fill.
    # row 3: 25 trade > Q=10 -> fill min(30, 25-10) = 15 @ 99, Q = 0.
    # row 4: 20 trade -> fill min(15, 20) = 15 -> order done (q = 30).  row 5: nothing left.
    # cash = -30*99 = -2970; mark to mid 100 at row 5: equity = 30.
    res = run_backtest(_queue_book(), [0], [[99, 30, 0, 0]], cfg(), end_row=6, raw_quotes=True)
    assert fills(res) == [(3, 1, 99, 15.0), (4, 1, 99, 15.0)]
    np.testing.assert_array_equal(res.inventory, [0, 0, 0, 15, 30, 30])
    assert res.metrics["epnl"] == 30.0
    assert res.episode_metrics[0]["final_inventory"] == 30.0


def test_hftbacktest_style_options():
    # queue_depth_cap: Q = min(Q, shown size) after every row -> row 1: Q = min(50, 20) = 20;
    # row 2: 40 > 20 -> fill min(30, 20) = 20, Q = 0; row 3: fill the remaining 10.
    res = run_backtest(_queue_book(), [0], [[99, 30, 0, 0]], cfg(queue_depth_cap=True), end_row=6,
                       raw_quotes=True)
    assert fills(res) == [(2, 1, 99, 20.0), (3, 1, 99, 10.0)]
    # partial_fills=False (default queue): row 3 is the first trade beyond Q -> all 30 at once.
    res = run_backtest(_queue_book(), [0], [[99, 30, 0, 0]], cfg(partial_fills=False), end_row=6,
                       raw_quotes=True)
    assert fills(res) == [(3, 1, 99, 30.0)]


def test_entry_latency_in_snapshots_and_ns():
    # trades through our bid 99 at rows 1, 2 and 3 (sizes 1, 2, 3 to tell them apart).
    tr = {1: (98, 1, -1), 2: (98, 2, -1), 3: (98, 3, -1)}
    ts = [0, 100, 150, 300, 400]
    b = make_book(bid=[99] * 5, ask=[101] * 5, trades=tr, ts=ts)
    # latency 1 snapshot: live from row 1 -> fills on the row-1 print.
    assert fills(run_backtest(b, [0], [[99, 10, 0, 0]], cfg(latency=1), end_row=5, raw_quotes=True)) \
        == [(1, 1, 99, 10.0)]
    # latency 2 snapshots: not live at row 1; fills at row 2.
    assert fills(run_backtest(b, [0], [[99, 10, 0, 0]], cfg(latency=2), end_row=5, raw_quotes=True)) \
        == [(2, 1, 99, 10.0)]
    # latency 200 ns: live at the first row with ts >= 0 + 200, i.e. row 3 (ts 300); rows 1-2 missed.
    res = run_backtest(b, [0], [[99, 10, 0, 0]], cfg(latency_ns=200), end_row=5, raw_quotes=True)
    assert fills(res) == [(3, 1, 99, 10.0)] and res.fills["ts"][0] == 300


def test_cancel_latency():
    # bid 99 x10 decided after row 0 (live row 1); after row 2 we withdraw it (size 0).
    # A sell prints through at row 3. latency 1: the cancel is effective at row 3 -> no fill.
    # latency 2: the order is live from row 2 and the cancel only lands at row 4 -> fills at row 3.
    b = make_book(bid=[99] * 5, ask=[101] * 5, trades={3: (98, 5, -1)})
    q = [[99, 10, 0, 0], [99, 0, 0, 0]]
    assert fills(run_backtest(b, [0, 2], q, cfg(latency=1), end_row=5, raw_quotes=True)) == []
    assert fills(run_backtest(b, [0, 2], q, cfg(latency=2), end_row=5, raw_quotes=True)) == [(3, 1, 99, 10.0)]


def test_fees_rebates_and_taker_on_arrival():
    # tick 0.25, maker fee -0.5/share (rebate), taker fee 1.0/share, latency 2.
    # after row 0 (book 99/101, mid 100): signals m̂=+2, ŝ=2, v̂=10, η=0 -> p = 102, δ = 1:
    # bid = min(⌊101⌋, best_ask-1 = 100) = 100, ask = ⌈103⌉ = 103. Live at row 2, seeing row 1 (97/99):
    # bid 100 >= best ask 99 -> taker: buys 10 @ 99 ticks, fee 10:  cash = -10*99*0.25 - 10 = -257.5
    # (it walks the asks of row 1: the best shows 50 >= 10, so all 10 fill at level 1, unchanged)
    # row 3 (103/105): best bid 103 >= our ask 103 -> maker sell 10 @ 103, rebate 5:
    # cash = -257.5 + 10*103*0.25 + 5 = 5.0; flat -> EPnL = 5.0, fees = 10 - 5 = 5.
    b = make_book(bid=[99, 97, 97, 103, 103], ask=[101, 99, 99, 105, 105], tick=0.25)
    c = cfg(latency=2, maker_fee=-0.5, taker_fee=1.0)
    res = run_backtest(b, [0], [[2.0, 2.0, 10.0, 0.0]], c, end_row=5)
    assert fills(res) == [(2, 1, 99, 10.0), (3, -1, 103, 10.0)]
    assert res.fills["taker"].tolist() == [True, False]
    assert res.fills["fee"].tolist() == [10.0, -5.0]
    assert res.metrics["epnl"] == 5.0 and res.metrics["fees"] == 5.0
    # post_only: the crossing bid is rejected; only the ask fills -> q = -10, cash = 257.5 + 5;
    # marked at mid 104 ticks = 26.0 -> equity = 262.5 - 260 = 2.5
    res = run_backtest(b, [0], [[2.0, 2.0, 10.0, 0.0]], cfg(latency=2, maker_fee=-0.5, taker_fee=1.0,
                                                             post_only=True), end_row=5)
    assert fills(res) == [(3, -1, 103, 10.0)] and res.metrics["epnl"] == 2.5


def book_levels(bids, asks, trades=None, tick=1.0):
    """Book with L levels per side: ``bids[r]`` / ``asks[r]`` = [(price, size), ...] best first
    ((0, 0) = an empty level, LOBSTER padding); ``trades`` = {row: (price, size, side)}."""
    n = len(bids)
    tpx, tsz, tsd = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int8)
    for r, (p, s, sd) in (trades or {}).items():
        tpx[r], tsz[r], tsd[r] = p, s, sd
    lv = lambda rows, k, dt: np.array([[lvl[k] for lvl in row] for row in rows], dt)
    return Book(ts=np.arange(n, dtype=np.int64) * 10, bid_px=lv(bids, 0, np.int64), bid_sz=lv(bids, 1, np.float64),
                ask_px=lv(asks, 0, np.int64), ask_sz=lv(asks, 1, np.float64), trade_px=tpx, trade_sz=tsz,
                trade_side=tsd, tick_size=tick)


BIDS3 = [(99, 50), (98, 50), (97, 50)]
ASKS2 = [(101, 20), (102, 15), (0, 0)]  # two levels, then padding
ASKS_UP = [(104, 20), (105, 20), (106, 20)]  # the ask moved above 103


def test_taker_walks_the_book_and_its_remainder_rests():
    # taker fee 0.5/share, maker fee -0.25/share (rebate). Decision after row 0: bid 103 x50, live
    # from row 1, sees row 0's asks 101 (20), 102 (15), then an empty level: it walks them:
    #   buy 20 @ 101 (fee 10) and 15 @ 102 (fee 7.5); the empty level stops the walk.
    #   cash = -(2020 + 10) - (1530 + 7.5) = -3567.5, q = 35, fees 17.5; both fills logged at row 1.
    # The remaining 15 rest at 103 (queue 0). Rows 1-2 still show asks 101/102 (our orders never
    # move the replayed book): the crossed rule (best ask <= 103) does NOT fill them again.
    # (a) row 3: a buy prints 5 @ 102, below our bid: traded through -> the 15 fill @ 103 as maker:
    #   cash = -3567.5 - 1545 + 3.75 = -5108.75, q = 50, fees 13.75.
    #   equity = cash + q*100 (mid 100): 0, -67.5, -67.5, -108.75, -108.75.
    c = cfg(maker_fee=-0.25, taker_fee=0.5)
    b = book_levels([BIDS3] * 5, [ASKS2] * 5, trades={3: (102, 5, 1)})
    res = run_backtest(b, [0], [[103, 50, 0, 0]], c, end_row=5, raw_quotes=True)
    assert fills(res) == [(1, 1, 101, 20.0), (1, 1, 102, 15.0), (3, 1, 103, 15.0)]
    assert res.fills["taker"].tolist() == [True, True, False]
    assert res.fills["fee"].tolist() == [10.0, 7.5, -3.75]
    np.testing.assert_array_equal(res.equity, [0, -67.5, -67.5, -108.75, -108.75])
    np.testing.assert_array_equal(res.inventory, [0, 35, 35, 50, 50])
    m = res.metrics
    assert (m["n_trades"], m["fees"], m["fill_rate"]) == (3, 13.75, 1.0)
    assert res.episode_metrics[0]["n_orders"] == 1
    # no print: rows 1-4 keep showing the levels it took -> the remainder never fills (q stays 35)
    b = book_levels([BIDS3] * 5, [ASKS2] * 5)
    res = run_backtest(b, [0], [[103, 50, 0, 0]], c, end_row=5, raw_quotes=True)
    assert fills(res) == [(1, 1, 101, 20.0), (1, 1, 102, 15.0)]
    # (b) row 3: the best ask moves to 104 (> 103); row 4: back to 101 -> crossed: the 15 fill @ 103.
    #   equity row 3 = -3567.5 + 35 * (99 + 104)/2 = -15; row 4 = -5108.75 + 50*100 = -108.75.
    b = book_levels([BIDS3] * 5, [ASKS2] * 3 + [ASKS_UP, ASKS2])
    res = run_backtest(b, [0], [[103, 50, 0, 0]], c, end_row=5, raw_quotes=True)
    assert fills(res) == [(1, 1, 101, 20.0), (1, 1, 102, 15.0), (4, 1, 103, 15.0)]
    np.testing.assert_array_equal(res.equity, [0, -67.5, -67.5, -15, -108.75])
    # the gym-env door: the same fills (the guard is engine state, kept between calls)
    eng = Engine(b, c, log_fills=True)
    eng.reset(0)
    eng.advance(1)
    eng.submit(0, quotes=[103, 50, 0, 0])
    for r in range(2, 6):
        eng.advance(r)
    np.testing.assert_array_equal(eng.fills(), res.fills)


def test_taker_limit_reaches_only_the_first_level():
    # bid 101 x50 against asks 101 (20), 102 (15): only level 1 is at or under the limit:
    # buy 20 @ 101 (taker, no fees here); the other 30 rest at 101, not refilled at rows 1-2 by the
    # still-displayed ask 101. Row 3: a sell prints @ 100, through our bid -> the 30 fill @ 101.
    # cash = -50*101 = -5050, q = 50; mark at mid 100 -> equity -50.
    b = book_levels([BIDS3] * 4, [ASKS2] * 4, trades={3: (100, 1, -1)})
    res = run_backtest(b, [0], [[101, 50, 0, 0]], cfg(), end_row=4, raw_quotes=True)
    assert fills(res) == [(1, 1, 101, 20.0), (3, 1, 101, 30.0)]
    assert res.fills["taker"].tolist() == [True, False]
    np.testing.assert_array_equal(res.inventory, [0, 20, 20, 50])
    assert res.metrics["epnl"] == -50.0


def test_taker_ask_walks_the_bids():
    # the mirror: ask 97 x50 against bids 99 (20), 98 (15) (L = 2: the walk ends after the last
    # level). Sells 20 @ 99 (fee 10) and 15 @ 98 (fee 7.5): cash = 1980 - 10 + 1470 - 7.5 = 3432.5,
    # q = -35. The other 15 rest at 97; rows 1-2 still show bid 99 >= 97: no fill. Row 3: the best
    # bid drops to 96 (< 97); row 4: back to 99 -> crossed: the 15 sell @ 97 (rebate 3.75):
    # cash = 3432.5 + 1455 + 3.75 = 4891.25, q = -50; mid 100 -> equity -108.75.
    bids = [(99, 20), (98, 15)]
    asks = [(101, 50), (102, 50)]
    b = book_levels([bids] * 3 + [[(96, 20), (95, 20)], bids], [asks] * 5)
    res = run_backtest(b, [0], [[0, 0, 97, 50]], cfg(maker_fee=-0.25, taker_fee=0.5), end_row=5, raw_quotes=True)
    assert fills(res) == [(1, -1, 99, 20.0), (1, -1, 98, 15.0), (4, -1, 97, 15.0)]
    assert res.fills["taker"].tolist() == [True, True, False]
    np.testing.assert_array_equal(res.inventory, [0, -35, -35, -35, -50])
    assert res.metrics["epnl"] == -108.75 and res.metrics["n_trades"] == 3


def test_taker_walks_grow_the_fills_log():
    # every row a bid 110 x5 walks 5 ask levels of 1 share each: 5 fills per decision, 400
    # decisions = 2000 fills, more than the first fills log holds (both doors grow it in between).
    n = 402
    asks = [(101 + k, 1) for k in range(5)]
    b = book_levels([[(99 - k, 50) for k in range(5)]] * n, [asks] * n)
    dec = np.arange(400)
    q = np.tile([110.0, 5.0, 0.0, 0.0], (400, 1))
    res = run_backtest(b, dec, q, cfg(inventory_limit=10**6), end_row=n, raw_quotes=True)
    assert len(res.fills) == 2000 and res.fills["taker"].all() and res.inventory[-1] == 2000
    assert res.fills["price"][:5].tolist() == [101, 102, 103, 104, 105]
    eng = Engine(b, cfg(inventory_limit=10**6), log_fills=True)
    eng.reset(0)
    for d in dec:
        eng.advance(d + 1)
        eng.submit(d, quotes=q[d])
    eng.advance(n)
    np.testing.assert_array_equal(eng.fills(), res.fills)
    # 60 such orders decided after row 0 (latency 2: all reach the exchange at row 2, one pass):
    # 300 fills between two checks of the log's room, more than the Engine's first log (256) holds.
    eng = Engine(b, cfg(latency=2, inventory_limit=10**6), log_fills=True)
    eng.reset(0)
    eng.advance(1)
    for _ in range(60):
        eng.submit(0, quotes=q[0])
    eng.advance(3)
    f = eng.fills()
    assert len(f) == 300 and (f["row"] == 2).all() and eng.inventory[0] == 300
    assert f["price"].tolist() == [101, 102, 103, 104, 105] * 60


def test_taker_post_only_rejects():
    # post_only: the crossing bid 103 is rejected (not placed): no fill, no order.
    b = book_levels([BIDS3] * 5, [ASKS2] * 5, trades={3: (102, 5, 1)})
    res = run_backtest(b, [0], [[103, 50, 0, 0]], cfg(post_only=True), end_row=5, raw_quotes=True)
    assert fills(res) == [] and res.episode_metrics[0]["n_orders"] == 0


def test_inventory_limit_side_not_quoted():
    # limit 15, size 10, quotes 99 / 101 (mid 100, ŝ=2 -> δ=1). Row 2: sell through @ 98 -> q = 10.
    # decision after row 2: q + 10 = 20 > 15 -> bid not quoted (withdrawn from row 3); the ask
    # 101 x10 is re-sent unchanged and keeps its place. Row 4: another print @ 98 -> no fill.
    # Row 5: buy prints @ 102 -> ask fills 10 @ 101, q = 0.  cash = -990 + 1010 = 20.
    # MAP = mean |q| over rows 0..5 = (10+10+10)/6 = 5; PnLMAP = 20/5 = 4; 2 orders placed, 2 filled.
    b = make_book(bid=[99] * 6, ask=[101] * 6, trades={2: (98, 5, -1), 4: (98, 5, -1), 5: (102, 1, 1)})
    sig = [[0, 2, 10, 0]] * 2
    res = run_backtest(b, [0, 2], sig, cfg(inventory_limit=15), end_row=6)
    assert fills(res) == [(2, 1, 99, 10.0), (5, -1, 101, 10.0)]
    np.testing.assert_array_equal(res.inventory, [0, 0, 10, 10, 10, 0])
    m = res.metrics
    assert (m["epnl"], m["map"], m["pnlmap"], m["fill_rate"]) == (20.0, 5.0, 4.0, 1.0)
    assert res.episode_metrics[0]["n_orders"] == 2


def test_mark_to_mid_and_episodes_start_flat():
    # two episodes of 4 rows: [0,4) and [4,8), decisions at 0 and 4, bid 99 x10 / ask 103 x10.
    # ep 1: sell prints @ 98 at row 1 -> buy 10 @ 99; mid at row 3 = (101+103)/2 = 102
    #       -> EPnL = 10*(102-99) = 30 (marked to mid, the position is not carried).
    # ep 2: starts flat; buy prints @ 104 at row 5 -> sell 10 @ 103; mid at row 7 = 100 -> EPnL = 30.
    bid = [99, 99, 99, 101, 99, 99, 99, 99]
    ask = [101, 101, 101, 103, 101, 105, 101, 101]
    b = make_book(bid=bid, ask=ask, trades={1: (98, 1, -1), 5: (104, 1, 1)})
    q = [[99, 10, 103, 10], [99, 10, 103, 10]]
    res = run_backtest(b, [0, 4], q, cfg(), episode_length=4, end_row=8, raw_quotes=True)
    assert res.episodes.tolist() == [[0, 4], [4, 8]]
    assert [e["epnl"] for e in res.episode_metrics] == [30.0, 30.0]
    assert res.inventory[4] == 0 and res.inventory[5] == -10
    assert res.metrics["epnl"] == 30.0 and res.metrics["epnl_std"] == 0.0 and res.metrics["total_epnl"] == 60.0
    np.testing.assert_array_equal(res.cumulative_equity()[[3, 7]], [30.0, 60.0])


def test_lobster_messages_drive_the_queue():
    # with msg_* in book.meta, executions (types 4, 5) at our price on our side shrink the queue;
    # trade_* arrays are ignored (here they carry a decoy print through our bid at row 2).
    # bid 99 x20, queue ahead 50 at row 0.  messages:
    #   row 1: type 3 delete 30 @ 99 bid  -> queue unchanged (50)
    #   row 2: type 4 exec   45 @ 99 bid  -> Q = 5
    #   row 3: type 4 exec   10 @ 101 ask -> other side, nothing
    #   row 4: type 5 hidden 12 @ 99 bid  -> 12 > 5: fill min(20, 7) = 7
    #   row 5: type 4 exec   40 @ 98 bid  -> through: fill the remaining 13 @ 99
    mt = np.array([1, 3, 4, 4, 5, 4], np.int8)
    mp = np.array([99, 99, 99, 101, 99, 98], np.int64)
    ms = np.array([5, 30, 45, 10, 12, 40], np.float64)
    md = np.array([1, 1, 1, -1, 1, 1], np.int8)
    meta = dict(msg_type=mt, msg_price=mp, msg_size=ms, msg_direction=md)
    b = make_book(bid=[99] * 6, ask=[101] * 6, trades={2: (97, 100, -1)}, meta=meta)
    res = run_backtest(b, [0], [[99, 20, 0, 0]], cfg(), end_row=6, raw_quotes=True)
    assert fills(res) == [(4, 1, 99, 7.0), (5, 1, 99, 13.0)]


def test_queue_lookup_levels():
    # L=2 book: bid levels 99 (50), 97 (30); a bid at 98 sits in a gap -> queue 0, so the first
    # sell print at 98 fills it; a bid at 97 waits behind 30.
    n = 4
    b = Book(ts=np.arange(n, dtype=np.int64), bid_px=np.tile([99, 97], (n, 1)), bid_sz=np.tile([50.0, 30.0], (n, 1)),
             ask_px=np.tile([101, 102], (n, 1)), ask_sz=np.tile([50.0, 50.0], (n, 1)),
             trade_px=np.array([0, 98, 97, 97]), trade_sz=np.array([0, 4.0, 25.0, 10.0]),
             trade_side=np.array([0, -1, -1, -1], np.int8), tick_size=1.0)
    assert fills(run_backtest(b, [0], [[98, 10, 0, 0]], cfg(), end_row=4, raw_quotes=True)) == [(1, 1, 98, 4.0), (2, 1, 98, 6.0)]
    # 97: row 1 print @ 98 is above us (nothing); row 2: 25 <= 30 -> Q = 5; row 3: 10 -> fill 5.
    assert fills(run_backtest(b, [0], [[97, 10, 0, 0]], cfg(), end_row=4, raw_quotes=True)) == [(3, 1, 97, 5.0)]


def test_quote_rule_through_the_engine():
    # book 100/104 (mid 102). m̂ = -0.6, ŝ = 3, c = 2, η = 0.1, q = 0 -> p = 101.4, δ = max(1, 3) = 3
    # -> bid ⌊98.4⌋ = 98, ask ⌈104.4⌉ = 105; size v̂=37.9 -> lots of 5 -> 35.
    # Row 1 (97/98): best ask 98 <= 98 -> buy 35 @ 98; row 2 (105/106): best bid 105 >= 105 -> sell
    # 35 @ 105. Flat at the end: EPnL = 35 * 7 = 245.
    b = make_book(bid=[100, 97, 105, 100], ask=[104, 98, 106, 104])
    res = run_backtest(b, [0], [[-0.6, 3.0, 37.9, 0.1]], cfg(spread_mult=2.0, lot_size=5), end_row=4)
    assert fills(res) == [(1, 1, 98, 35.0), (2, -1, 105, 35.0)]
    assert res.metrics["epnl"] == 35 * (105 - 98)


def test_engine_door_matches_backtest_and_is_deterministic():
    rng = np.random.default_rng(0)
    n = 3000
    mid = 1000 + np.cumsum(rng.integers(-1, 2, n))
    spr = rng.integers(1, 4, n)
    bid, ask = mid - spr // 2 - 1, mid + (spr + 1) // 2
    side = rng.choice([-1, 1], n).astype(np.int8)
    has = rng.random(n) < 0.3
    tpx = np.where(side > 0, ask, bid) + rng.integers(-1, 2, n) * side
    trades = {int(r): (int(tpx[r]), float(rng.integers(1, 80)), int(side[r])) for r in np.flatnonzero(has)}
    b = make_book(bid=bid, ask=ask, bsz=rng.integers(1, 100, n).astype(float), asz=40.0, trades=trades)
    dec = np.arange(10, n - 20, 7)
    sig = np.stack([rng.normal(0, 1, len(dec)), rng.uniform(0, 6, len(dec)), rng.uniform(5, 60, len(dec)),
                    np.full(len(dec), 0.02)], axis=1)
    c = cfg(latency=2, inventory_limit=200, maker_fee=-0.01, taker_fee=0.02)
    res = run_backtest(b, dec, sig, c, episode_length=1000)
    res2 = run_backtest(b, dec, sig, c, episode_length=1000)
    assert res.fills.tobytes() == res2.fills.tobytes() and np.array_equal(res.equity, res2.equity)
    assert len(res.fills) > 50
    assert np.abs(res.inventory).max() <= 200 + 60  # limit at decision time (+ one clip in flight)

    # the gym-env door: same kernels stepped one decision at a time, one env per episode
    eng = Engine(b, c, n_envs=1, log_fills=True)
    equities, all_fills = [], []
    for s, t in res.episodes:
        eng.reset(s)
        js = np.flatnonzero((dec >= s) & (dec < t))
        for j in js:
            eng.advance(dec[j] + 1)
            eng.submit(dec[j], signals=sig[j])
        eng.advance(t)
        equities.append(float(eng.equity()[0]))
        all_fills.append(eng.fills().copy())
    assert equities == [e["epnl"] for e in res.episode_metrics]
    np.testing.assert_array_equal(np.concatenate(all_fills), res.fills)

    # batched: one env per episode, all stepped together; equity after the K-th decision row
    # of each episode equals the backtest's per-row equity there.
    eng = Engine(b, c, n_envs=len(res.episodes))
    eng.reset(res.episodes[:, 0])
    in_ep = [(dec >= s) & (dec < t) for s, t in res.episodes]
    K = min(int(m.sum()) for m in in_ep) - 1
    for k in range(K):
        rows = np.array([dec[m][k] for m in in_ep])
        eng.advance(rows + 1)
        eng.submit(rows, signals=np.stack([sig[m][k] for m in in_ep]))
    rows = np.array([dec[m][K] for m in in_ep])
    eng.advance(rows + 1)
    np.testing.assert_array_equal(eng.equity(), res.equity[rows - res.rows[0]])
    np.testing.assert_array_equal(eng.inventory, res.inventory[rows - res.rows[0]])


def test_clock_decisions_between_rows():
    # rows at t = 0, 100, 200 (99/101); decisions every 10 ns from t = 10: nine after row 0, ten
    # after row 1. Latency 5 ns: each decision's orders reach the exchange before the next row, so
    # the next decision places them first (the engine does so without the pending FIFO). Quotes:
    # bid 98 x10 / ask 102 x10, except at t = 50 a bid at 101, which crosses the best ask 101.
    # design: the first pair rests (2 orders); the same price and size again is a modify (kept, not
    # counted); the 101 bid reaches the exchange with the t = 60 decision: a taker buy of 10 @ 101 at
    # row 1 (counted), then t = 60's bid 98 rests again (counted): 4 orders, equity 10 x (100 - 101).
    # post_only: the crossing bid is rejected (and cancels the resting 98): 3 orders, no fill.
    # hftbacktest model (post-only, cancel + new each time): all 38 orders but the crossing one.
    b = make_book(bid=[99] * 3, ask=[101] * 3, ts=[0, 100, 200])
    dts = np.arange(10, 200, 10, dtype=np.int64)
    dec = np.where(dts < 100, 0, 1)
    q = np.tile([98.0, 10.0, 102.0, 10.0], (len(dec), 1))
    q[4, 0] = 101.0
    for kw, n_orders, want in ((dict(), 4, [(1, 1, 101, 10.0)]), (dict(post_only=True), 3, []),
                               (dict(fill_model="hftbacktest"), 37, [])):
        res = run_backtest(b, dec, q, cfg(latency_ns=5, **kw), end_row=3, raw_quotes=True, decision_ts=dts)
        assert fills(res) == want and res.fills["taker"].all()
        assert res.episode_metrics[0]["n_orders"] == n_orders and res.metrics["epnl"] == (-10.0 if want else 0.0)


def test_bad_inputs_are_clear():
    b = make_book(bid=[99] * 5, ask=[101] * 5)
    with pytest.raises(CMMInputError, match="latency"):
        run_backtest(b, [0], [[0, 2, 10, 0]], cfg(latency=0))
    with pytest.raises(CMMInputError, match="increasing"):
        run_backtest(b, [2, 1], [[0, 2, 10, 0]] * 2, cfg())
    with pytest.raises(CMMInputError, match=r"\[D, 4\]"):
        run_backtest(b, [0, 1], [[0, 2, 10, 0]], cfg())


def test_fill_models_share_one_interface():
    # one module per fill model (market/engine/<name>.py), every registered name has one, each
    # with the same members; the model's id reaches the parameter vector
    from cmm_lightning.market.engine import FILL_MODELS, params
    from cmm_lightning.market.engine.model import MODELS
    from cmm_lightning.market.quoting import P_MODEL

    assert sorted(MODELS) == sorted(FILL_MODELS.spec(n) for n in FILL_MODELS.names())
    for name in FILL_MODELS.names():
        mod = MODELS[FILL_MODELS.spec(name)]
        assert mod.__name__ == f"cmm_lightning.market.engine.{name}"
        for member in ("ALWAYS_NS", "STRICT_ARRIVAL", "MODIFY_KEEPS_QUEUE", "UNSEEN_QUEUE", "configure",
                       "print_fill", "trader_inventory"):
            assert hasattr(mod, member), (name, member)
        assert params(cfg(fill_model=name), 1.0)[P_MODEL] == FILL_MODELS.spec(name)
    with pytest.raises(CMMInputError, match="fill_model"):
        params(cfg(fill_model="hftbacktes"), 1.0)


def test_episode_state_is_named():
    # the per-episode account comes back as named columns (metrics reads them, not slot numbers)
    b = make_book(bid=[99, 99, 99, 102, 99, 99], ask=[101, 101, 100, 103, 101, 101])
    res = run_backtest(b, [0, 3], [[100, 10, 102, 10], [99, 5, 102, 5]], cfg(episode_length=3), end_row=6,
                       raw_quotes=True)
    st = res.extra["episode_state"]
    assert st._fields[:3] == ("cash", "inventory", "mark") and len(st.n_fills) == len(res.episodes) == 2
    assert int(st.n_fills.sum()) == len(res.fills) == res.metrics["total_trades"]
    assert [int(n) for n in st.n_placed] == [m["n_orders"] for m in res.episode_metrics]


def test_no_import_circle_in_market():
    # every import inside cmm_lightning.market (module level or inside a function) points one way
    import ast
    from pathlib import Path

    import cmm_lightning.market as market

    root = Path(market.__file__).parent
    pkg = "cmm_lightning.market"
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root).with_suffix("").parts
        name = ".".join((pkg,) + (rel[:-1] if rel[-1] == "__init__" else rel))
        mods[name] = (f, rel[-1] == "__init__")
    graph = {m: set() for m in mods}
    for m, (f, is_pkg) in mods.items():
        here = m if is_pkg else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")
                    base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    state = {}

    def visit(m, path):
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, "import circle: " + " -> ".join(path + [t])
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "cmm_lightning.market.engine" not in graph["cmm_lightning.market.metrics"]

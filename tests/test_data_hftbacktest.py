"""``data.source=hftbacktest``: hftbacktest event files (``.npz``) read back into snapshot rows.

A Book converted with ``book_to_events`` and read back gives the same top levels and traded
volume at every distinct timestamp (the AMZN LOBSTER day when present, random books always);
hand-built events pin the event semantics (clears, snapshots, trade sides, lots, crossed books,
dropped rows, the clock); the accepted file layouts; bad files end in one line naming the file
and the event, exit 2; the smoke ``fit`` runs on a converted synthetic market. Needs NumPy only
(hftbacktest itself is never imported).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from cmm_lightning.config import load_config
from cmm_lightning.data import dataset_paths, load_book
from cmm_lightning.data.hft_events import (ADD_ORDER_EVENT, BUY_EVENT, DEPTH_BBO_EVENT, DEPTH_CLEAR_EVENT,
                                           DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT, EVENT_DTYPE, EXCH_EVENT,
                                           LOCAL_EVENT, SELL_EVENT, TRADE_EVENT, book_to_events)
from cmm_lightning.data.hftbacktest import read_hftbacktest
from cmm_lightning.data.lob import Book
from cmm_lightning.errors import CMMInputError

from .helpers import AMZN, FAST, ROOT, SMOKE
from .helpers.books import random_book

BOTH = EXCH_EVENT | LOCAL_EVENT
BID, ASK = DEPTH_EVENT | BUY_EVENT, DEPTH_EVENT | SELL_EVENT
BUY_TRADE, SELL_TRADE = TRADE_EVENT | BUY_EVENT, TRADE_EVENT | SELL_EVENT


def cfg(*overrides):
    return load_config([], list(overrides)).data


def events(*rows, flags=BOTH) -> np.ndarray:
    """``(ev, exch_ts, px, qty)`` rows -> an event array; ``flags`` (EXCH|LOCAL) added to every ``ev``
    that carries neither (give ``LOCAL_EVENT`` alone in ``ev`` for a local-only copy)."""
    out = np.zeros(len(rows), EVENT_DTYPE)
    for i, (ev, ts, px, qty) in enumerate(rows):
        out[i]["ev"] = ev if ev & BOTH else ev | flags
        out[i]["exch_ts"], out[i]["local_ts"], out[i]["px"], out[i]["qty"] = ts, ts, px, qty
    return out


def save(tmp_path, name: str, arr: np.ndarray):
    path = tmp_path / name
    np.savez_compressed(path, data=arr)
    return path


def read(tmp_path, arr, **kw) -> Book:
    kw = {"tick_size": 1.0, "levels": 3, **kw}
    return read_hftbacktest(save(tmp_path, "ev.npz", arr), **kw).validate()


BOOK = [(BID, 1, 100, 5), (BID, 1, 99, 6), (BID, 1, 98, 7), (ASK, 1, 101, 5), (ASK, 1, 102, 6), (ASK, 1, 103, 7)]


def by_timestamp(book: Book) -> dict:
    """What reading ``book_to_events(book)`` must give: one row per distinct timestamp with the last
    row's levels, the summed traded volume and the last trade's price and side. Row 0's own trade
    is not counted: ``book_to_events`` writes row 0 as the depth snapshot only."""
    ts = book.ts
    new = np.diff(ts) != 0
    last = np.r_[np.flatnonzero(new), book.n - 1]
    grp = np.r_[0, np.cumsum(new)]
    traded = (book.trade_side != 0) & (book.trade_sz > 0)
    traded[0] = False
    vol = np.bincount(grp, weights=np.where(traded, book.trade_sz, 0.0), minlength=len(last))
    lt = np.full(len(last), -1)
    lt[grp[traded]] = np.flatnonzero(traded)  # the last trading row of each timestamp wins
    return dict(ts=ts[last], bid_px=book.bid_px[last], bid_sz=book.bid_sz[last], ask_px=book.ask_px[last],
                ask_sz=book.ask_sz[last], trade_sz=vol, trade_px=np.where(lt >= 0, book.trade_px[lt], 0),
                trade_side=np.where(lt >= 0, book.trade_side[lt], 0))


def assert_same(got: Book, want: dict) -> None:
    assert got.n == len(want["ts"])
    for k in ("ts", "bid_px", "bid_sz", "ask_px", "ask_sz", "trade_px", "trade_side"):
        np.testing.assert_array_equal(getattr(got, k), want[k], err_msg=k)
    np.testing.assert_allclose(got.trade_sz, want["trade_sz"], rtol=1e-12, atol=0, err_msg="trade_sz")


# ------------------------------------------------------------------------------ round trips
@pytest.mark.skipif(not AMZN.is_dir(), reason=f"the AMZN LOBSTER day ({AMZN}) is not present (CI may lack it)")
def test_amzn_day_round_trip(tmp_path):
    """The AMZN day through book_to_events -> .npz -> data.source=hftbacktest: the LOBSTER reader's
    top 5 and traded volume at each of the 148,577 distinct timestamps (13,492 rows share one)."""
    from cmm_lightning.data.lobster import read_lobster

    day = read_lobster(AMZN, 5)
    counts = np.unique(day.ts, return_counts=True)[1]
    assert counts[counts > 1].sum() == 13_492  # rows that share their timestamp with another
    path = tmp_path / "amzn.npz"
    np.savez_compressed(path, data=book_to_events(day))
    t0 = time.perf_counter()
    got = load_book(cfg("data.source=hftbacktest", f"data.path={path}"))
    took = time.perf_counter() - t0
    print(f"read {len(np.load(path)['data']):,} events -> {got.n:,} rows in {took:.2f} s")
    want = by_timestamp(day)
    assert got.n == 148_577 and got.meta["dropped_rows"] == 0 and got.levels == 5
    assert_same(got, want)
    assert got.trade_sz.sum() == day.trade_sz[1:].sum()
    assert took < 30  # seconds or less (numba compiles on a cold cache); minutes would be a regression


@pytest.mark.parametrize("seed", [0, 1])
def test_random_book_round_trip_with_shared_timestamps(tmp_path, seed):
    """A random 3-level book (every third row shares a timestamp) reads back per timestamp; rows of
    one timestamp merge like the AMZN day's."""
    book = random_book(n=2000, levels=3, seed=seed)
    book = dataclasses.replace(book, ts=(np.arange(book.n) // 3) * 1_000_000 + 1_700_000_000_000_000_000)
    got = read_hftbacktest(save(tmp_path, "rb.npz", book_to_events(book)), tick_size=book.tick_size, levels=3)
    assert_same(got.validate(), by_timestamp(book))
    assert got.meta["allow_empty_levels"] and got.meta["event_index"].shape == (got.n,)


def test_synthetic_market_round_trip(tmp_path):
    """The embedded simulator's book (5 levels, gaps, fractional volumes) reads back exactly."""
    from cmm_lightning.data.synthetic import simulate

    book = simulate(n_snapshots=3000, levels=5, seed=3)
    got = read_hftbacktest(save(tmp_path, "syn.npz", book_to_events(book)), tick_size=book.tick_size, levels=5)
    assert_same(got.validate(), by_timestamp(book))


def test_interval_clock(tmp_path):
    """data.hftbacktest.interval_ns: row k at t_k = k·I (epoch multiples) holds the book after every
    event with t_{k-1} < exch_ts <= t_k; intervals without events repeat the book."""
    book = random_book(n=1500, levels=2, seed=4)
    book = dataclasses.replace(book, ts=book.ts * 3 + 123_457)  # 3 ms apart, off the clock's grid
    interval = 5_000_000
    got = read_hftbacktest(save(tmp_path, "clk.npz", book_to_events(book)), tick_size=book.tick_size, levels=2,
                           interval_ns=interval).validate()
    k = -(-book.ts // interval)  # the interval each row closes in
    t_k = np.arange(k[0], k[-1] + 1) * interval
    np.testing.assert_array_equal(got.ts, t_k)
    last = np.searchsorted(book.ts, t_k, side="right") - 1
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
        np.testing.assert_array_equal(getattr(got, name), getattr(book, name)[last], err_msg=name)
    sz = np.where(book.trade_side != 0, book.trade_sz, 0.0)
    sz[0] = 0.0
    np.testing.assert_allclose(got.trade_sz, np.bincount(k - k[0], weights=sz), rtol=1e-12)
    assert got.meta["interval_ns"] == interval


# ------------------------------------------------------------------------------ event semantics
def test_clears_snapshots_and_ignored_events(tmp_path):
    """DEPTH_CLEAR_EVENT as hftbacktest's clear_depth: BUY clears bids >= px, SELL asks <= px, NaN px the
    whole side, no side flag both sides; a snapshot after its clear replaces the side. LOCAL-only
    copies and DEPTH_BBO_EVENTs change nothing (and make no row)."""
    nan = float("nan")
    arr = events(*BOOK,
                 (DEPTH_CLEAR_EVENT | BUY_EVENT, 2, 99, 0),  # bids 100, 99 go; 98 stays
                 (LOCAL_EVENT | BID, 2, 500, 1),  # the local processor's copy: not the exchange's book
                 (DEPTH_CLEAR_EVENT | SELL_EVENT, 3, 102, 0),  # asks 101, 102 go
                 (DEPTH_BBO_EVENT | BUY_EVENT, 4, 90, 1),  # ignored, and no row at ts 4
                 (DEPTH_CLEAR_EVENT | BUY_EVENT, 5, nan, 0),  # every bid goes ...
                 (DEPTH_SNAPSHOT_EVENT | BUY_EVENT, 5, 100, 1), (DEPTH_SNAPSHOT_EVENT | BUY_EVENT, 5, 99, 2),
                 (DEPTH_CLEAR_EVENT, 6, 0, 0),  # both sides
                 (BID, 6, 50, 1), (ASK, 6, 60, 2))
    b = read(tmp_path, arr)
    np.testing.assert_array_equal(b.ts, [1, 2, 3, 5, 6])
    np.testing.assert_array_equal(b.bid_px, [[100, 99, 98], [98, 0, 0], [98, 0, 0], [100, 99, 0], [50, 0, 0]])
    np.testing.assert_array_equal(b.bid_sz, [[5, 6, 7], [7, 0, 0], [7, 0, 0], [1, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(b.ask_px, [[101, 102, 103], [101, 102, 103], [103, 0, 0], [103, 0, 0], [60, 0, 0]])
    np.testing.assert_array_equal(b.ask_sz[:, 0], [5, 5, 7, 7, 2])
    np.testing.assert_array_equal(b.meta["event_index"], [5, 6, 8, 12, 15])  # each row's last replayed event


def test_depth_updates_and_trades(tmp_path):
    """A level set to 0 is gone; trades add up per row; trade_side from the trade's flag: BUY_EVENT =
    buyer-initiated +1, SELL_EVENT -1, none 0; trade_px / trade_side are the row's last trade's."""
    arr = events(*BOOK,
                 (BID, 2, 100, 0), (ASK, 2, 101, 9),  # best bid removed; ask size changed
                 (BUY_TRADE, 3, 101, 3), (SELL_TRADE, 3, 99, 2),
                 (TRADE_EVENT, 4, 101, 1),
                 (BID, 5, 97, 4))
    b = read(tmp_path, arr)
    np.testing.assert_array_equal(b.bid_px[1:], [[99, 98, 0]] * 3 + [[99, 98, 97]])
    np.testing.assert_array_equal(b.ask_sz[1:, 0], [9, 9, 9, 9])
    np.testing.assert_array_equal(b.trade_sz, [0, 0, 5, 1, 0])
    np.testing.assert_array_equal(b.trade_px, [0, 0, 99, 101, 0])
    np.testing.assert_array_equal(b.trade_side, [0, 0, -1, 0, 0])
    buy = read(tmp_path, events(*BOOK, (BUY_TRADE, 2, 101, 4)))
    assert buy.trade_side[1] == 1 and buy.trade_px[1] == 101 and buy.trade_sz[1] == 4


def test_rows_before_the_book_has_both_sides_are_dropped(tmp_path):
    arr = events((BID, 1, 100, 5), (SELL_TRADE, 2, 100, 4), (ASK, 3, 102, 1), (BID, 4, 101, 1))
    b = read(tmp_path, arr)
    np.testing.assert_array_equal(b.ts, [3, 4])
    assert b.meta["dropped_rows"] == 2
    assert (b.trade_sz[0], b.trade_px[0], b.trade_side[0]) == (4, 100, -1)  # carried to the next row
    with pytest.raises(CMMInputError, match=r"never has both a bid and an ask"):
        read(tmp_path, events((BID, 1, 100, 5), (BID, 2, 99, 5)))


def test_lot_size_half_up(tmp_path):
    """data.hftbacktest.lot_size: a level is qty / lot rounded half-up (under half a lot: no level);
    a row's traded volume is its summed trade qty / lot rounded half-up."""
    arr = events((BID, 1, 100, 0.0015), (BID, 1, 99, 0.0004), (BID, 1, 98, 0.003), (ASK, 1, 101, 0.0025),
                 (BUY_TRADE, 2, 101, 0.0004), (BUY_TRADE, 2, 101, 0.0004),  # 0.8 lots -> 1
                 (SELL_TRADE, 3, 100, 0.0004))  # 0.4 lots -> 0: no trade
    b = read(tmp_path, arr, lot_size=0.001)
    np.testing.assert_array_equal(b.bid_px[0], [100, 98, 0])
    np.testing.assert_array_equal(b.bid_sz[0], [2, 3, 0])
    assert b.ask_sz[0, 0] == 3  # 0.0025 / 0.001 = 2.4999999999999996 in floats: still half-up
    np.testing.assert_array_equal(b.trade_sz, [0, 1, 0])
    np.testing.assert_array_equal(b.trade_side, [0, 1, 0])
    assert b.meta["size_unit"] == "lots"
    raw = read(tmp_path, arr)
    assert raw.bid_sz[0, 1] == 0.0004 and raw.meta["fractional_sizes"] and raw.meta["size_unit"] == "file"


def test_crossed_book_error_or_resolve(tmp_path):
    """A book crossed at the end of a timestamp is an error naming the event that crossed it; a cross
    undone within the timestamp is not; crossed=resolve keeps hftbacktest's rule (the latest update
    wins: the crossed levels of the other side go)."""
    cross = events(*BOOK, (BID, 2, 102, 1))
    with pytest.raises(CMMInputError, match=r"ev\.npz: event 6 \(DEPTH_EVENT, exch_ts 2\): crossed book .*"
                                            r"best bid 102 >= best ask 101"):
        read(tmp_path, cross)
    b = read(tmp_path, cross, crossed="resolve")
    np.testing.assert_array_equal(b.bid_px[1], [102, 100, 99])
    np.testing.assert_array_equal(b.ask_px[1], [103, 0, 0])
    b = read(tmp_path, events(*BOOK, (ASK, 2, 99, 1)), crossed="resolve")  # bids 100, 99 go
    np.testing.assert_array_equal(b.bid_px[1], [98, 0, 0])
    np.testing.assert_array_equal(b.ask_px[1], [99, 101, 102])
    transient = read(tmp_path, events(*BOOK, (BID, 2, 101, 1), (ASK, 2, 101, 0)))
    np.testing.assert_array_equal(transient.bid_px[1], [101, 100, 99])
    np.testing.assert_array_equal(transient.ask_px[1], [102, 103, 0])


def _tardis_files(d, latency: bool, seed: int = 0):
    """A tiny Tardis.dev Binance-futures day (trades + incremental L2 with two snapshots), written as
    the CSV files hftbacktest's tardis converter reads; ``latency``: local_timestamp after timestamp."""
    rng = np.random.default_rng(seed)
    t0, depth, mid = 1_704_067_200_000_000, [], 42000.0
    lag = np.random.default_rng(seed + 1)  # its own stream: the market is the same with or without latency
    lat = (lambda: int(lag.integers(5, 500))) if latency else (lambda: 0)

    def snapshot(t, mid):
        for k in range(20):
            depth.append((t, t + lat(), "true", "bid", mid - 0.1 * (k + 1), rng.uniform(0.001, 2)))
            depth.append((t, t + lat(), "true", "ask", mid + 0.1 * k, rng.uniform(0.001, 2)))

    t = t0
    snapshot(t, mid)
    for i in range(1500):
        t += int(rng.integers(1, 2000))
        bid = rng.random() < 0.5
        p = mid - 0.1 * int(rng.integers(1, 25)) if bid else mid + 0.1 * int(rng.integers(0, 25))
        qty = 0.0 if rng.random() < 0.3 else rng.uniform(0.001, 2)
        depth.append((t, t + lat(), "false", "bid" if bid else "ask", p, qty))
        if i == 700:  # a mid-day snapshot: clear + snapshot events, one tick higher
            t, mid = t + 10, mid + 0.5
            snapshot(t, mid)
    trades, t = [], t0
    for i in range(200):
        t += int(rng.integers(100, 10_000))
        buy = rng.random() < 0.5
        trades.append((t, t + lat(), i, "buy" if buy else "sell", 42000.0 if buy else 41999.9, rng.uniform(0.001, 0.5)))
    names = (d / "binance-futures_trades_2024-01-01_BTCUSDT.csv",
             d / "binance-futures_incremental_book_L2_2024-01-01_BTCUSDT.csv")
    with open(names[0], "w") as f:
        f.write("exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        f.writelines("binance-futures,BTCUSDT,%d,%d,%d,%s,%.1f,%.3f\n" % r for r in trades)
    with open(names[1], "w") as f:
        f.write("exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n")
        f.writelines("binance-futures,BTCUSDT,%d,%d,%s,%s,%.1f,%.3f\n" % r for r in depth)
    return [str(n) for n in names]


def test_tardis_converter_output_is_hftbacktests_depth(tmp_path):
    """Events written by hftbacktest's own tardis converter (clears, snapshots, EXCH/LOCAL split by
    correct_event_order): between every two sampled exchange timestamps our top 5 (lots) is
    hftbacktest's depth; with feed latency the exchange-side book is the same; trade sides follow
    the feed's aggressor."""
    pytest.importorskip("hftbacktest")
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest
    from hftbacktest.data.utils import tardis

    books = {}
    for latency in (False, True):
        d = tmp_path / f"latency{int(latency)}"
        d.mkdir()
        np_out = d / "btc.npz"
        tardis.convert(_tardis_files(d, latency), output_filename=str(np_out))
        books[latency] = read_hftbacktest(np_out, tick_size=0.1, levels=5, lot_size=0.001).validate()
    book, lagged = books[False], books[True]
    for k in ("ts", "bid_px", "bid_sz", "ask_px", "ask_sz", "trade_px", "trade_sz", "trade_side"):
        np.testing.assert_array_equal(getattr(lagged, k), getattr(book, k), err_msg=k)
    assert set(np.unique(book.trade_px[book.trade_side == 1])) == {420000}  # buyers lift the ask
    assert set(np.unique(book.trade_px[book.trade_side == -1])) == {419999}

    events = np.load(tmp_path / "latency0" / "btc.npz")["data"]
    asset = (BacktestAsset().data([events]).linear_asset(1.0).constant_order_latency(0, 0)
             .risk_adverse_queue_model().no_partial_fill_exchange().trading_value_fee_model(0.0, 0.0)
             .tick_size(0.1).lot_size(0.001))
    hbt = HashMapMarketDepthBacktest([asset])
    hbt.elapse(0)  # to the first event
    rows = np.sort(np.random.default_rng(1).choice(np.flatnonzero(np.diff(book.ts) >= 2), 120, replace=False))
    for r in rows:
        t = int(book.ts[r] + book.ts[r + 1]) // 2  # after row r's events, before row r+1's
        hbt.elapse(t - hbt.current_timestamp)
        depth = hbt.depth(0)
        theirs = []
        for best, step, qty_at in ((depth.best_bid_tick, -1, depth.bid_qty_at_tick),
                                   (depth.best_ask_tick, 1, depth.ask_qty_at_tick)):
            levels, tick = [], best
            while len(levels) < 5 and abs(tick - best) < 1000:
                if qty_at(tick) > 0:
                    levels.append((tick, round(qty_at(tick) / 0.001)))
                tick += step
            theirs.append(levels)
        ours = [[(int(p), int(q)) for p, q in zip(book.bid_px[r], book.bid_sz[r]) if q > 0],
                [(int(p), int(q)) for p, q in zip(book.ask_px[r], book.ask_sz[r]) if q > 0]]
        assert ours == theirs, (r, t)
    hbt.close()


# ------------------------------------------------------------------------------ layouts, days, config
def test_accepted_layouts(tmp_path):
    """``data=`` (the converters), another single key (np.savez), the one array with the event fields
    among several, a raw structured ``.npy`` and a dtype with only the fields the reader needs (found
    by name, any order) all read the same."""
    arr = events(*BOOK, (BUY_TRADE, 2, 101, 2), (BID, 2, 100, 3))
    want = read_hftbacktest(save(tmp_path, "a.npz", arr), tick_size=1.0, levels=3)
    np.savez(tmp_path / "b.npz", arr)
    np.savez_compressed(tmp_path / "c.npz", events=arr, tick=np.array([1.0]))
    np.save(tmp_path / "d.npy", arr)
    slim = np.zeros(len(arr), [("qty", "f8"), ("px", "f8"), ("exch_ts", "i8"), ("ev", "u8")])
    for k in slim.dtype.names:
        slim[k] = arr[k]
    np.savez_compressed(tmp_path / "e.npz", data=slim)
    for name in ("b.npz", "c.npz", "d.npy", "e.npz"):
        got = read_hftbacktest(tmp_path / name, tick_size=1.0, levels=3)
        for k in ("ts", "bid_px", "bid_sz", "ask_px", "ask_sz", "trade_px", "trade_sz", "trade_side"):
            np.testing.assert_array_equal(getattr(got, k), getattr(want, k), err_msg=f"{name} {k}")


def test_days_and_datasets(tmp_path):
    """A folder of .npz files: one dataset each for evaluate (sorted by name); data.path as the folder
    or a list reads them as days of one instrument."""
    book = random_book(n=1200, levels=2, seed=5)
    d = tmp_path / "days"
    d.mkdir()
    day = 86_400_000_000_000
    for k in (1, 0):
        part = book.slice(k * 600, (k + 1) * 600)
        part = dataclasses.replace(part, ts=part.ts + k * day, meta={})
        np.savez_compressed(d / f"day{k}.npz", data=book_to_events(part))
    (d / "notes.txt").write_text("not a day")
    paths = dataset_paths("hftbacktest", str(d))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["day0.npz", "day1.npz"]
    both = load_book(cfg("data.source=hftbacktest", f"data.path={d}", "data.levels=2"))
    assert both.n == 1200 and list(both.meta["day_start"]) == [0, 600]
    listed = load_book(cfg("data.source=hftbacktest", f"data.path=[{paths[0]},{paths[1]}]", "data.levels=2"))
    np.testing.assert_array_equal(listed.bid_px, both.bid_px)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMMInputError, match=r"empty: no hftbacktest file \(\*\.npz\)"):
        dataset_paths("hftbacktest", str(tmp_path / "empty"))


@pytest.mark.parametrize("override, pattern", [
    ("data.hftbacktest.interval_ns=0", r"data\.hftbacktest\.interval_ns must be >= 1"),
    ("data.hftbacktest.lot_size=-1", r"data\.hftbacktest\.lot_size must be a positive number"),
    ("data.hftbacktest.crossed=maybe", r"data\.hftbacktest\.crossed='maybe' is not one of error, resolve"),
])
def test_config_checks(override, pattern):
    with pytest.raises(CMMInputError, match=pattern):
        load_config([], ["data.source=hftbacktest", override])
    c = load_config([], ["data.source=hftbacktest"])
    assert OmegaConf.to_container(c.data.hftbacktest) == {"interval_ns": None, "lot_size": None, "crossed": "error"}


# ------------------------------------------------------------------------------ bad inputs
def _bad(name: str, tmp_path):
    """One malformed file -> (path, regex of the one-line error)."""
    good = list(BOOK)
    arrays = {
        "time_back": (events(*good, (BID, 0, 97, 1)), r"event 6 \(DEPTH_EVENT, exch_ts 0\): exch_ts goes back"),
        "crossed": (events(*good, (ASK, 2, 99, 1)), r"event 6 \(DEPTH_EVENT, exch_ts 2\): crossed book"),
        "unknown_kind": (events(*good[:3], (7 | BUY_EVENT, 1, 100, 1), *good[3:]),
                         r"event 3 \(kind 7.*unknown event kind 7"),
        "level3": (events(*good, (ADD_ORDER_EVENT | BUY_EVENT, 2, 100, 1)), r"event 6 \(ADD_ORDER_EVENT.*Level-3"),
        "off_grid": (events(*good[:4], (ASK, 1, 102.005, 1)), r"event 4 .*price 102\.005 is not on the tick grid"),
        "nan_qty": (events(*good[:2], (BID, 1, 97, float("nan"))), r"event 2 .*quantity nan is NaN"),
        "no_side": (events(*good, (DEPTH_EVENT, 2, 100, 1)), r"event 6 .*depth event without a side"),
        "negative_price": (events((SELL_TRADE, 1, -5, 1), *good), r"event 0 \(TRADE_EVENT.*price -5 is not positive"),
        "no_events": (np.zeros(0, EVENT_DTYPE), r"no events \(array 'data' is empty\)"),
        "v1_floats": (np.zeros((4, 6)), r"float64 of shape \(4, 6\), not hftbacktest's event array.*migration2"),
        "no_exchange": (events(*good, flags=LOCAL_EVENT), r"no exchange events"),
    }
    path = tmp_path / f"{name}.npz"
    if name in arrays:
        arr, pattern = arrays[name]
        np.savez_compressed(path, data=arr)
        return path, pattern
    if name == "empty":
        path.write_bytes(b"")
        return path, r"empty file"
    if name == "text":
        path.write_text("ts,bid\n1,2\n")
        return path, r"not a NumPy \.npz / \.npy file"
    if name == "wrong_keys":
        np.savez(path, prices=np.ones(3), sizes=np.ones(3))
        return path, r"no 'data' array \(arrays: 'prices', 'sizes'\)"
    if name == "wrong_fields":
        np.savez(path, data=np.zeros(3, [("ts", "i8"), ("px", "f8")]))
        return path, r"has fields ts, px but no ev, exch_ts, qty"
    raise KeyError(name)


BAD = ["time_back", "crossed", "unknown_kind", "level3", "off_grid", "nan_qty", "no_side", "negative_price",
       "no_events", "v1_floats", "no_exchange", "empty", "text", "wrong_keys", "wrong_fields"]


@pytest.mark.parametrize("name", BAD)
def test_bad_file_one_line(tmp_path, name):
    path, pattern = _bad(name, tmp_path)
    with pytest.raises(CMMInputError) as e:
        read_hftbacktest(path, tick_size=1.0 if name != "off_grid" else 0.01, levels=3)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert re.search(pattern, msg), msg


CLI_BAD = ["time_back", "crossed", "unknown_kind", "off_grid", "wrong_keys"]


def test_bad_files_through_the_cli_exit_2(tmp_path):
    """``prepare`` on bad event files: exit 2, ONE stderr line naming the file (and the event), no
    traceback, nothing written. The CLIs run side by side."""
    procs = {}
    for name in CLI_BAD:
        path, pattern = _bad(name, tmp_path)
        run = tmp_path / f"run_{name}"
        tick = "0.01" if name == "off_grid" else "1"
        cmd = [sys.executable, "-m", "cmm_lightning", "prepare", f"run.dir={run}", "data.source=hftbacktest",
               f"data.path={path}", f"data.tick_size={tick}", "data.levels=3"]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), path,
                       pattern, run)
    for name, (proc, path, pattern, run) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert str(path) in lines[0] and re.search(pattern, lines[0]), (name, lines[0])
        assert not (run / "data_summary.json").exists(), name


# ------------------------------------------------------------------------------ the pipeline
@pytest.mark.timeout(600)
def test_smoke_fit_on_converted_synthetic_events(tmp_path):
    """``fit --config conf/smoke.yaml data.source=hftbacktest data.path=<converted synthetic .npz>`` runs
    end to end (trimmed like the other fit tests: no RL, no MoE ablations, 2 epochs)."""
    from cmm_lightning.data.synthetic import simulate

    path = tmp_path / "synthetic_events.npz"
    np.savez_compressed(path, data=book_to_events(simulate(n_snapshots=3000, levels=5, seed=7)))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cmm_lightning", "fit", "--config", str(SMOKE), "data.source=hftbacktest",
           f"data.path={path}", f"run.dir={run}", f"run.cache_dir={tmp_path / 'cache'}", "logger.kind=none",
           *[o for o in FAST if not o.startswith("data.synthetic")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=580, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["source"] == str(path)
    assert (run / "checkpoints" / "cmm.pt").is_file()

"""LOBSTER reader: the real AMZN day, hand-written pairs with padding, any depth, errors."""

import time
from pathlib import Path

import numpy as np
import pytest

from cmm_lightning.data.lobster import read_lobster
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.errors import CMMInputError

from .helpers import AMZN

STEM = "TEST_2020-01-02_34200000_57600000"
DAY_NS = int(np.datetime64("2020-01-02", "ns").astype(np.int64))
PA, PB = 9999999999, -9999999999


def write_pair(folder: Path, ob_rows, msg_rows, depth: int, stem: str = STEM) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ob = folder / f"{stem}_orderbook_{depth}.csv"
    ob.write_text("".join(",".join(map(str, r)) + "\n" for r in ob_rows))
    (folder / f"{stem}_message_{depth}.csv").write_text("".join(",".join(map(str, r)) + "\n" for r in msg_rows))
    return ob


def tiny(folder: Path) -> Path:
    """Depth 3 with padded levels; row 3 has no bid at all and must be dropped."""
    ob = [
        [1000100, 10, 1000000, 5, 1000200, 3, 999900, 4, PA, 0, PB, 0],
        [1000100, 10, 1000000, 5, 1000200, 3, PB, 0, PA, 0, PB, 0],
        [1000100, 10, PB, 0, 1000200, 3, PB, 0, PA, 0, PB, 0],
        [1000100, 10, 999900, 7, 1000200, 3, PB, 0, PA, 0, PB, 0],
    ]
    msg = [
        ["34200.000000001", 1, 11, 4, 999900, 1],
        ["34200.5", 3, 11, 4, 999900, 1],
        ["34201", 4, 12, 5, 1000000, 1],  # executes the last bid: seller-initiated
        ["34202.1234567895", 1, 13, 7, 999900, 1],  # 10 decimals: rounds half up to ...790 ns
    ]
    return write_pair(folder, ob, msg, 3)


def test_tiny_pair_padding_drop_and_exact_times(tmp_path):
    ob = tiny(tmp_path / "d")
    for path in (ob, ob.parent / ob.name.replace("orderbook", "message"), ob.parent):
        b = read_lobster(path, levels=3).validate()
        assert b.n == 3 and b.meta["dropped_rows"] == 1 and b.meta["allow_empty_levels"]
        np.testing.assert_array_equal(b.meta["file_rows"], [1, 2, 4])
        np.testing.assert_array_equal(b.ts - DAY_NS, [34200_000000001, 34200_500000000, 34202_123456790])
        np.testing.assert_array_equal(b.ask_px, [[10001, 10002, 0]] * 3)
        np.testing.assert_array_equal(b.bid_px, [[10000, 9999, 0], [10000, 0, 0], [9999, 0, 0]])
        np.testing.assert_array_equal(b.bid_sz, [[5, 4, 0], [5, 0, 0], [7, 0, 0]])
        # the dropped execution's volume and side move to the next kept row
        np.testing.assert_array_equal(b.trade_sz, [0, 0, 5])
        np.testing.assert_array_equal(b.trade_side, [0, 0, -1])
        np.testing.assert_array_equal(b.trade_px, [0, 0, 10000])
        np.testing.assert_array_equal(b.meta["msg_type"], [1, 3, 1])
        assert b.tick_size == 0.01 and b.meta["ticker"] == "TEST" and b.meta["date"] == "2020-01-02"
    two = read_lobster(ob, levels=2)
    assert two.levels == 2 and two.bid_px.shape == (3, 2)
    with pytest.raises(CMMInputError, match=r"orderbook_3\.csv: the file has 3 levels, data.levels=4"):
        read_lobster(ob, levels=4)
    # with rows dropped, validation errors still name the file row
    bad = read_lobster(ob, levels=3)
    bad.bid_sz[2, 0] = -1
    with pytest.raises(CMMInputError, match=r"row 4: negative size"):
        bad.validate()


def to_lobster(book, folder: Path, depth: int) -> Path:
    """Write a Book as a LOBSTER pair (orderbook + message with executions where it traded)."""
    cols = []
    for k in range(depth):
        cols += [book.ask_px[:, k] * 100, book.ask_sz[:, k], book.bid_px[:, k] * 100, book.bid_sz[:, k]]
    ob = np.stack(cols, axis=1).astype(np.int64)
    ns = book.ts - book.ts[0] + 36_000 * 10**9
    times = [f"{t // 10**9}.{t % 10**9:09d}" for t in ns]
    traded = book.trade_sz > 0
    mtype = np.where(traded, 4, 1)
    direction = np.where(traded, -book.trade_side, 1)
    price = np.where(traded, book.trade_px, book.bid_px[:, 0]) * 100
    msg = [[t, ty, i, int(s) if s > 0 else 1, p, d]
           for i, (t, ty, s, p, d) in enumerate(zip(times, mtype, book.trade_sz, price, direction))]
    return write_pair(folder, ob.tolist(), msg, depth, stem="SYN_2021-03-04_0_0")


@pytest.mark.parametrize("depth,keep", [(1, 1), (10, 10), (10, 3)])
def test_any_depth_round_trip(tmp_path, depth, keep):
    src = simulate(300, levels=depth, seed=5)
    ob = to_lobster(src, tmp_path, depth)
    b = read_lobster(ob, levels=keep).validate()
    for f in ("bid_px", "ask_px", "bid_sz", "ask_sz"):
        np.testing.assert_array_equal(getattr(b, f), getattr(src, f)[:, :keep], err_msg=f)
    for f in ("trade_px", "trade_sz", "trade_side"):
        np.testing.assert_array_equal(getattr(b, f), getattr(src, f), err_msg=f)
    day = int(np.datetime64("2021-03-04", "ns").astype(np.int64))
    np.testing.assert_array_equal(b.ts, src.ts - src.ts[0] + 36_000 * 10**9 + day)
    assert b.meta["file_levels"] == depth


def test_errors_name_file_and_row(tmp_path):
    ob = tiny(tmp_path / "a")
    rows = [r.split(",") for r in ob.read_text().splitlines()]
    rows[1][4] = "1000250"  # off the $0.01 grid
    ob.write_text("".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(CMMInputError, match=r"orderbook_3\.csv: row 2: ask_price_2 1000250 is not a multiple of 100"):
        read_lobster(ob, levels=3)

    ob = tiny(tmp_path / "b")
    mp = ob.parent / ob.name.replace("orderbook", "message")
    lines = mp.read_text().splitlines()
    lines[3] = "34202.5,1,13,7,999950,1"  # a visible limit order off the grid
    mp.write_text("\n".join(lines) + "\n")
    with pytest.raises(CMMInputError, match=r"message_3\.csv: row 4: price 999950 is not a multiple"):
        read_lobster(ob, levels=3)
    lines[3] = "34202.5,5,0,7,999950,-1"  # a hidden execution at the midpoint is fine: rounded down (buy)
    mp.write_text("\n".join(lines) + "\n")
    b = read_lobster(ob, levels=3)
    assert b.meta["off_tick_hidden"] == 1 and b.trade_px[-1] == 9999 and b.trade_side[-1] == 1
    lines[3] = "9:30:02,1,13,7,999900,1"
    mp.write_text("\n".join(lines) + "\n")
    with pytest.raises(CMMInputError, match=r"message_3\.csv: row 4: time '9:30:02'"):
        read_lobster(ob, levels=3)

    ob = tiny(tmp_path / "c")
    tiny(tmp_path / "c2")
    (tmp_path / "c2" / f"{STEM}_orderbook_3.csv").rename(tmp_path / "c" / f"X{STEM}_orderbook_3.csv")
    with pytest.raises(CMMInputError, match=r"2 LOBSTER orderbook files"):
        read_lobster(tmp_path / "c", levels=3)
    with pytest.raises(CMMInputError, match=r"partner file Xtest|partner file X"):
        read_lobster(tmp_path / "c" / f"X{STEM}_orderbook_3.csv", levels=3)
    (tmp_path / "e").mkdir()
    with pytest.raises(CMMInputError, match=r"no LOBSTER orderbook file"):
        read_lobster(tmp_path / "e", levels=3)
    ob = tiny(tmp_path / "f")
    ob.write_text("")
    with pytest.raises(CMMInputError, match=r"orderbook_3\.csv: empty file"):
        read_lobster(ob, levels=3)


@pytest.mark.skipif(not AMZN.is_dir(), reason="../shared/data/lobster not present")
def test_amzn_day():
    t = time.perf_counter()
    b = read_lobster(AMZN, levels=5)
    seconds = time.perf_counter() - t
    b.validate()
    assert b.n == 155_935 - b.meta["dropped_rows"] and b.meta["dropped_rows"] == 0
    assert seconds < 10, seconds
    day = int(np.datetime64("2012-06-21", "ns").astype(np.int64))
    assert b.ts[0] == day + 34200_017459617
    assert b.ts[67822] == day + 43002_632812672  # '43002.632812672004' -> nearest ns, no float
    assert b.ts[-1] == day + 57599_959359650
    assert (b.trade_sz > 0).sum() == 11_419 == ((b.meta["msg_type"] == 4) | (b.meta["msg_type"] == 5)).sum()
    assert np.bincount(b.meta["msg_type"]).tolist() == [0, 77381, 450, 66685, 8974, 2445]
    assert (b.meta["msg_direction"] == -1).sum() == 79_350
    # row 1: a hidden execution of a sell limit order at $223.82 -> buyer-initiated
    assert b.trade_side[0] == 1 and b.trade_px[0] == 22382 and b.trade_sz[0] == 1
    assert b.ask_px[0].tolist() == [22395, 22399, 22400, 22425, 22440]
    assert b.meta["off_tick_hidden"] == 63
    assert b.spread.min() == 1 and np.median(b.spread) == 13 and b.spread.max() == 77

"""Generic snapshot tables (CSV / Parquet): parsing, trade inference, errors naming row + column."""

import numpy as np
import pytest

from cmm_lightning.data.table import read_table
from cmm_lightning.errors import CMMInputError

from .helpers.tables import BAD, book_frame, write_bad


@pytest.mark.parametrize("fmt,ts", [("csv", "ns"), ("csv", "iso"), ("parquet", "ns"), ("parquet", "seconds")])
def test_round_trip(tmp_path, fmt, ts):
    src, df = book_frame(ts=ts)
    path = tmp_path / f"book.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    b = read_table(path, fmt=fmt, tick_size=0.01, levels=2).validate()
    for f in ("bid_px", "ask_px", "bid_sz", "ask_sz", "trade_px", "trade_sz"):
        np.testing.assert_array_equal(getattr(b, f), getattr(src, f), err_msg=f)
    if ts == "seconds":
        np.testing.assert_allclose(b.ts - b.ts[0], src.ts - src.ts[0], atol=1e3)
    else:
        np.testing.assert_array_equal(b.ts, src.ts)
    # the simulator prints trades at the previous best: the inferred side is exactly right
    np.testing.assert_array_equal(b.trade_side[1:], src.trade_side[1:])
    assert b.row_offset == 1 and b.ts.dtype == np.int64


def test_trade_side_inference_and_optional_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "ts,bid_px_1,bid_sz_1,ask_px_1,ask_sz_1,last_px,volume,extra\n"
        "1,10.00,5,10.02,5,,0,x\n"
        "2,10.00,5,10.02,5,10.02,3,x\n"  # at the previous ask: buy
        "3,10.01,5,10.03,5,10.01,2,x\n"  # between the previous bid and ask: unknown
        "4,10.01,5,10.03,5,10.01,4,x\n"  # at the previous bid: sell
        "5,10.01,5,10.03,5,10.05,0,x\n"  # no volume: no trade side
    )
    b = read_table(p, fmt="csv", tick_size=0.01, levels=1).validate()
    assert b.trade_side.tolist() == [0, 1, 0, -1, 0]
    assert b.trade_px.tolist() == [0, 1002, 1001, 1001, 1005] and b.trade_sz.tolist() == [0, 3, 2, 4, 0]
    q = tmp_path / "q.csv"
    q.write_text("ts,bid_px_1,bid_sz_1,ask_px_1,ask_sz_1\n1,1.0,1,1.5,1\n2,1.25,1,1.5,2\n")
    b = read_table(q, fmt="csv", tick_size=0.25, levels=1).validate()
    assert b.bid_px.tolist() == [[4], [5]] and b.trade_sz.tolist() == [0, 0] and b.tick_size == 0.25


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_names_row_or_column(tmp_path, name):
    path = write_bad(tmp_path, name)
    with pytest.raises(CMMInputError, match=BAD[name][1]) as e:
        read_table(path, fmt="csv", tick_size=0.01, levels=2).validate()
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["empty", "header_only"])
def test_empty(tmp_path, name):
    with pytest.raises(CMMInputError, match=r"empty file"):
        read_table(write_bad(tmp_path, name), fmt="csv", tick_size=0.01, levels=1)


def test_parquet_errors_use_the_same_row_numbers(tmp_path):
    _, df = book_frame(n=60)
    df.loc[4, "bid_sz_1"] = np.nan
    df.to_parquet(tmp_path / "b.parquet")
    with pytest.raises(CMMInputError, match=r"b\.parquet: row 6: column 'bid_sz_1' is NaN"):
        read_table(tmp_path / "b.parquet", fmt="parquet", levels=2)
    with pytest.raises(CMMInputError, match=r"missing column 'bid_px_3'; closest existing column: 'bid_px_2'"):
        df.to_parquet(tmp_path / "c.parquet")
        read_table(tmp_path / "c.parquet", fmt="parquet", levels=3)

"""Generic snapshot tables (CSV / Parquet): parsing, trade inference, errors naming row + column."""

import numpy as np
import pandas as pd
import pytest

from cmm_lightning.data.synthetic import simulate
from cmm_lightning.data.table import read_table
from cmm_lightning.errors import CMMInputError


def book_frame(n=400, levels=2, seed=3, ts="ns"):
    """A synthetic book as a snapshot table in currency units (tick 0.01)."""
    b = simulate(n, levels=levels, seed=seed)
    df = {"ts": b.ts}
    for side in ("bid", "ask"):
        for i in range(levels):
            df[f"{side}_px_{i + 1}"] = getattr(b, f"{side}_px")[:, i] / 100
            df[f"{side}_sz_{i + 1}"] = getattr(b, f"{side}_sz")[:, i]
    df["last_px"] = np.where(b.trade_sz > 0, b.trade_px / 100, np.nan)
    df["volume"] = b.trade_sz
    df = pd.DataFrame(df)
    if ts == "iso":
        df["ts"] = pd.Series(pd.to_datetime(b.ts).strftime("%Y-%m-%dT%H:%M:%S.%f")) + pd.Series(
            b.ts % 1000).astype(str).str.zfill(3) + "Z"
    elif ts == "seconds":
        df["ts"] = (b.ts - b.ts[0]) / 1e9 + 1.5
    return b, df


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


BAD = {
    # name: (edit of the data rows -> csv text, expected message regex)
    "crossed": (lambda df: df.assign(bid_px_1=df.bid_px_1.where(df.index != 6, df.ask_px_1 + 0.01)),
                r"row 8: crossed book"),
    "negative_size": (lambda df: df.assign(ask_sz_2=df.ask_sz_2.where(df.index != 0, -3)),
                      r"row 2: negative size \(ask level 2\)"),
    "time_back": (lambda df: df.assign(ts=df.ts.where(df.index != 9, df.ts[8] - 1)), r"row 11: timestamp goes back"),
    "nan": (lambda df: df.assign(bid_sz_1=df.bid_sz_1.where(df.index != 4, np.nan)),
            r"row 6: column 'bid_sz_1' is NaN"),
    "missing_column": (lambda df: df.rename(columns={"ask_sz_1": "ask_sz1"}),
                       r"missing column 'ask_sz_1'; closest existing column: 'ask_sz1'"),
    "off_tick": (lambda df: df.assign(ask_px_2=df.ask_px_2.where(df.index != 2, df.ask_px_2 + 0.005)),
                 r"row 4: price \(column 'ask_px_2'\) [0-9.]+ is not on the tick grid"),
    "zero_size": (lambda df: df.assign(bid_sz_2=df.bid_sz_2.where(df.index != 3, 0)),
                  r"row 5: non-positive size \(bid level 2\)"),
    "bad_number": (lambda df: df.assign(bid_px_2=df.bid_px_2.astype(object).where(df.index != 1, "abc")),
                   r"row 3: column 'bid_px_2' is not a number \('abc'\)"),
    "bad_ts": (lambda df: df.assign(ts=df.ts.astype(object).where(df.index != 1, "yesterday")),
               r"row 3: column 'ts' value 'yesterday' is not a number"),
}


def write_bad(tmp_path, name):
    """The malformed CSV ``name`` of :data:`BAD` (also used by the CLI tests)."""
    path = tmp_path / f"{name}.csv"
    if name == "empty":
        path.write_text("")
    elif name == "header_only":
        path.write_text("ts,bid_px_1,bid_sz_1,ask_px_1,ask_sz_1\n")
    else:
        _, df = book_frame(n=60)
        BAD[name][0](df).to_csv(path, index=False)
    return path


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

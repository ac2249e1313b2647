"""A Book as a generic snapshot table (CSV / Parquet), and the malformed tables of the reader tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cmm_lightning.data.synthetic import simulate


def book_table(book) -> pd.DataFrame:
    """The book as a snapshot table in currency units (tick 0.01): ts, bid/ask px/sz per level,
    last_px (NaN without a trade), volume."""
    cols = {"ts": book.ts}
    for side in ("bid", "ask"):
        for i in range(book.levels):
            cols[f"{side}_px_{i + 1}"] = getattr(book, f"{side}_px")[:, i] / 100
            cols[f"{side}_sz_{i + 1}"] = getattr(book, f"{side}_sz")[:, i]
    cols["last_px"] = np.where(book.trade_sz > 0, book.trade_px / 100, np.nan)
    cols["volume"] = book.trade_sz
    return pd.DataFrame(cols)


def book_frame(n=400, levels=2, seed=3, ts="ns"):
    """A synthetic book and its snapshot table (:func:`book_table`); ``ts`` "ns" (int64), "iso"
    (ISO-8601 strings to the ns) or "seconds" (float seconds from 1.5)."""
    b = simulate(n, levels=levels, seed=seed)
    df = book_table(b)
    if ts == "iso":
        df["ts"] = pd.Series(pd.to_datetime(b.ts).strftime("%Y-%m-%dT%H:%M:%S.%f")) + pd.Series(
            b.ts % 1000).astype(str).str.zfill(3) + "Z"
    elif ts == "seconds":
        df["ts"] = (b.ts - b.ts[0]) / 1e9 + 1.5
    return b, df


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
    """The malformed CSV ``name`` of :data:`BAD`, or "empty" / "header_only"."""
    path = tmp_path / f"{name}.csv"
    if name == "empty":
        path.write_text("")
    elif name == "header_only":
        path.write_text("ts,bid_px_1,bid_sz_1,ask_px_1,ask_sz_1\n")
    else:
        _, df = book_frame(n=60)
        BAD[name][0](df).to_csv(path, index=False)
    return path

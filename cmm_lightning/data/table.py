"""Generic snapshot table (CSV or Parquet) -> Book.

Columns: ``ts, bid_px_1..L, bid_sz_1..L, ask_px_1..L, ask_sz_1..L`` and optionally
``last_px, volume`` (extra columns are ignored). Prices are currency units, turned into ticks
with ``tick_size`` (off the grid is an error). ``ts`` is int64 nanoseconds, float seconds, or a
datetime string (ISO 8601; time-zone aware values are converted to UTC).

Trades: ``trade_sz = volume`` (0 without the column); ``trade_px = last_px`` in ticks (0 where NaN
or absent); ``trade_side = +1`` if ``last_px >= previous best ask``, ``-1`` if ``<= previous best
bid``, else 0 (and 0 where nothing traded).

Error rows are 1-based file lines counting the header (data row ``k`` is line ``k + 1``); for
Parquet, which has no lines, the same numbering is used so a row means the same in both.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ..errors import CMMInputError
from .lob import DEFAULT_LEVELS, Book, check_tick_size, to_ticks

ROW_OFFSET = 1  # header line


def columns_for(levels: int) -> list[str]:
    """The required columns, in order."""
    return ["ts"] + [f"{side}_{k}_{i}" for side, k in (("bid", "px"), ("bid", "sz"), ("ask", "px"), ("ask", "sz"))
                     for i in range(1, levels + 1)]


def table_depth(columns) -> int:
    """Levels ``k`` for which ``bid_px_1..k, bid_sz_1..k, ask_px_1..k, ask_sz_1..k`` are all columns."""
    have, k = {str(c).strip() for c in columns}, 0
    while all(f"{side}_{k + 1}" in have for side in ("bid_px", "bid_sz", "ask_px", "ask_sz")):
        k += 1
    return k


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if not path.is_file():
        raise CMMInputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CMMInputError(f"{path}: empty file")
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, engine="pyarrow")
    except Exception as e:  # pyarrow / pandas parse errors of many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CMMInputError(f"{path}: cannot read as {fmt} ({first})") from None


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + ROW_OFFSET + 1


def _numeric(df: pd.DataFrame, cols: list[str], src: Path) -> np.ndarray:
    """[N, C] float64; a non-number or NaN is an error naming the first bad row and its column."""
    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        col = df[c]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            conv = pd.to_numeric(col, errors="coerce")
            bad = conv.isna().to_numpy() & col.notna().to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise CMMInputError(f"{src}: row {i + ROW_OFFSET + 1}: column '{c}' is not a number "
                                    f"({col.iloc[i]!r})")
            col = conv
        out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    nan = np.isnan(out)
    if nan.any():
        i = int(np.flatnonzero(nan.any(axis=1))[0])
        c = cols[int(np.flatnonzero(nan[i])[0])]
        raise CMMInputError(f"{src}: row {i + ROW_OFFSET + 1}: column '{c}' is NaN (missing value)")
    return out


def parse_ts(col: pd.Series, src: Path) -> np.ndarray:
    """int64 ns from int ns, float seconds or datetime strings; bad values name their row."""
    if pd.api.types.is_datetime64_any_dtype(col):
        dt = col.dt.tz_convert("UTC").dt.tz_localize(None) if getattr(col.dt, "tz", None) else col
        if dt.isna().any():
            raise CMMInputError(f"{src}: row {_first_row(dt.isna().to_numpy())}: column 'ts' is NaN (missing value)")
        return dt.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    if pd.api.types.is_integer_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy(dtype=np.float64)
        if np.isnan(v).any():
            raise CMMInputError(f"{src}: row {_first_row(np.isnan(v))}: column 'ts' is NaN (missing value)")
        return np.rint(v * 1e9).astype(np.int64)
    if col.isna().any():
        raise CMMInputError(f"{src}: row {_first_row(col.isna().to_numpy())}: column 'ts' is NaN (missing value)")
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():  # numbers stored as text
        return parse_ts(pd.to_numeric(col), src)
    if num.notna().mean() > 0.5:  # a numeric column with a few bad cells
        i = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise CMMInputError(f"{src}: row {i + ROW_OFFSET + 1}: column 'ts' value {col.iloc[i]!r} is not a number")
    dt = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CMMInputError(f"{src}: row {i + ROW_OFFSET + 1}: column 'ts' value {col.iloc[i]!r} is not "
                            "int ns, float seconds or an ISO datetime")
    return dt.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype(np.int64)


def read_table(path, fmt: str = "csv", tick_size: float = 0.01, levels: Optional[int] = 5) -> Book:
    """Read a snapshot table (see the module docstring) into a Book with ``row_offset = 1``.
    ``levels=None``: the table's depth (:func:`table_depth`), at most ``DEFAULT_LEVELS``."""
    if path is None:
        raise CMMInputError(f"data.path is required for data.source={fmt}")
    check_tick_size(tick_size)
    src = Path(path).expanduser()
    df = _read(src, fmt)
    if len(df.columns) == 0 or len(df) == 0:
        raise CMMInputError(f"{src}: empty file (no data rows)")
    df.columns = [str(c).strip() for c in df.columns]
    have = list(df.columns)
    depth = table_depth(have)
    if levels is None:
        levels = min(max(depth, 1), DEFAULT_LEVELS)
    known = set(columns_for(depth))
    for c in columns_for(levels):
        if c not in df.columns:
            typo = difflib.get_close_matches(c, [h for h in have if h not in known], n=1, cutoff=0.5)
            close = typo or difflib.get_close_matches(c, have, n=1, cutoff=0.5)
            hint = f"; closest existing column: '{close[0]}'" if close else f"; columns are {', '.join(have[:8])}"
            if depth >= 1 and not typo:  # the table is shallower than data.levels
                hint += (f"; the table has {depth} level{'s' if depth > 1 else ''} but data.levels={levels}: set "
                         f"data.levels={depth} or leave it unset")
            raise CMMInputError(f"{src}: missing column '{c}'{hint}")

    L, n = int(levels), len(df)
    ts = parse_ts(df["ts"], src)
    px_cols = [f"bid_px_{i}" for i in range(1, L + 1)] + [f"ask_px_{i}" for i in range(1, L + 1)]
    sz_cols = [f"bid_sz_{i}" for i in range(1, L + 1)] + [f"ask_sz_{i}" for i in range(1, L + 1)]
    px = _numeric(df, px_cols, src)
    sz = _numeric(df, sz_cols, src)
    ticks = to_ticks(px, tick_size, str(src), row_offset=ROW_OFFSET, columns=px_cols)
    bid_px, ask_px = ticks[:, :L], ticks[:, L:]

    volume = _numeric(df, ["volume"], src)[:, 0] if "volume" in df.columns else np.zeros(n)
    if "last_px" in df.columns:
        last = pd.to_numeric(df["last_px"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(last) & df["last_px"].notna().to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CMMInputError(f"{src}: row {i + ROW_OFFSET + 1}: column 'last_px' is not a number "
                                f"({df['last_px'].iloc[i]!r})")
        has = ~np.isnan(last)
        trade_px = np.where(has, to_ticks(np.where(has, last, 0.0), tick_size, str(src),
                                          row_offset=ROW_OFFSET, columns=["last_px"]), 0)
        if "volume" in df.columns:
            has &= volume > 0
    else:
        has, trade_px = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    prev_bid = np.concatenate([[np.iinfo(np.int64).min], bid_px[:-1, 0]])
    prev_ask = np.concatenate([[np.iinfo(np.int64).max], ask_px[:-1, 0]])
    side = np.where(has & (trade_px >= prev_ask), 1, np.where(has & (trade_px <= prev_bid), -1, 0)).astype(np.int8)
    return Book(ts=ts, bid_px=bid_px, bid_sz=sz[:, :L], ask_px=ask_px, ask_sz=sz[:, L:], trade_px=trade_px,
                trade_sz=volume, trade_side=side, tick_size=float(tick_size), source=str(src),
                row_offset=ROW_OFFSET)

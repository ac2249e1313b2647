"""LOBSTER reader: one orderbook + message file pair -> Book (any ticker, day, depth).

Files are ``TICKER_DATE_START_END_{orderbook|message}_LEVELS.csv`` without header; row ``i`` of the
message file is the event that turned the book into row ``i`` of the orderbook file.

* orderbook (N x 4L): per level ``ask_price, ask_size, bid_price, bid_size``; prices are
  dollars x 10000, so one US-equity tick ($0.01) is 100 units: ``ticks = price // 100``,
  ``tick_size = 0.01``. Padded empty levels (ask 9999999999, bid -9999999999, size 0) become
  price 0, size 0 and ``meta['allow_empty_levels'] = True``. Rows whose whole side is empty at
  level 1 are dropped (``meta['dropped_rows']``; their traded volume moves to the next kept row).
* message (N x 6): ``time, type, order_id, size, price, direction``. ``time`` (seconds after
  midnight, up to 9+ decimals) is parsed from its decimal string to int64 ns exactly (rounded to
  the nearest ns, never through float) and offset by the file name's date (epoch ns, exchange
  local time). Types 4/5 (visible/hidden executions) are the trades: ``trade_px = price``,
  ``trade_sz = size``, ``trade_side = -direction`` (a sell limit order executed = buyer-initiated).
  Hidden executions may print between ticks (midpoint); their tick price is rounded away from a
  fill (buys down, sells up) and counted in ``meta['off_tick_hidden']``.
* ``meta`` also keeps the per-row messages for the market engine's queue tracking:
  ``msg_type`` int8, ``msg_size`` float64, ``msg_price`` int64 ticks (0 for halts), ``msg_direction`` int8,
  ``msg_order_id`` int64.

Errors name the file, the 1-based row (the files have no header) and the column (1-based, with its
meaning): an empty cell, a cell that is not an integer, a row with the wrong number of columns, a
message type outside 1-7, a direction other than -1 / 1, a non-positive size or price of an order,
a time that goes back. A message-file problem names the message file, never the orderbook.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import CMMInputError
from .lob import DEFAULT_LEVELS, Book

PRICE_UNITS_PER_TICK = 100  # dollars x 10000 per $0.01 tick
PAD_ASK, PAD_BID = 9_999_999_999, -9_999_999_999
NAME = re.compile(r"^(?P<ticker>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_.*_(?P<kind>orderbook|message)_(?P<levels>\d+)\.csv$")
FIELDS = ("ask_price", "ask_size", "bid_price", "bid_size")
MSG_FIELDS = ("time", "type", "order_id", "size", "price", "direction")
MSG_TYPES = (1, 2, 3, 4, 5, 6, 7)  # submit, cancel (partial), delete, execute visible, execute hidden, cross, halt


def orderbook_fields(n_columns: int) -> list[str]:
    """Names of orderbook columns: ask_price_1, ask_size_1, bid_price_1, bid_size_1, ask_price_2, ..."""
    return [f"{FIELDS[j % 4]}_{j // 4 + 1}" for j in range(n_columns)]


def _col(j: int, names) -> str:
    """``column 3 (bid_price_1)``: 1-based column number and its meaning."""
    return f"column {j + 1} ({names[j]})" if j < len(names) else f"column {j + 1}"


def find_pair(path) -> tuple[Path, Path]:
    """``path`` = orderbook file, message file or a folder with exactly one pair -> (orderbook, message)."""
    if path is None:
        raise CMMInputError("data.path is required for data.source=lobster (orderbook, message file or folder)")
    p = Path(path).expanduser()
    if p.is_dir():
        books = sorted(p.glob("*_orderbook_*.csv"))
        if not books:
            raise CMMInputError(f"{p}: no LOBSTER orderbook file (*_orderbook_<levels>.csv) in this folder")
        if len(books) > 1:
            names = ", ".join(b.name for b in books[:4])
            raise CMMInputError(f"{p}: {len(books)} LOBSTER orderbook files ({names}); read_lobster reads one "
                                "pair: pass one file, or load the folder's days with data.load_book")
        p = books[0]
    if not p.is_file():
        raise CMMInputError(f"{p}: file not found")
    name = p.name
    if "_orderbook_" in name:
        other = p.with_name("_message_".join(name.rsplit("_orderbook_", 1)))
        book, msg = p, other
    elif "_message_" in name:
        other = p.with_name("_orderbook_".join(name.rsplit("_message_", 1)))
        book, msg = other, p
    else:
        raise CMMInputError(
            f"{p}: not a LOBSTER file name (expected TICKER_DATE_START_END_{{orderbook|message}}_LEVELS.csv)")
    if not other.is_file():
        raise CMMInputError(f"{p}: its LOBSTER partner file {other.name} is missing")
    return book, msg


def _partner(p: Path) -> Path:
    name = p.name
    if "_orderbook_" in name:
        return p.with_name("_message_".join(name.rsplit("_orderbook_", 1)))
    return p.with_name("_orderbook_".join(name.rsplit("_message_", 1)))


def pair_key(orderbook: Path) -> tuple[str, str, str]:
    """Sort key (ticker, date, file name) of an orderbook file; names LOBSTER does not use sort by name."""
    m = NAME.match(Path(orderbook).name)
    return (m["ticker"], m["date"], Path(orderbook).name) if m else ("", "", Path(orderbook).name)


def find_pairs(folder) -> list[tuple[Path, Path]]:
    """Every LOBSTER pair in ``folder`` (not its subfolders) -> [(orderbook, message)], sorted by
    ticker, then date (then file name). A file whose partner is missing, or a folder without any
    pair, is a CMMInputError naming it."""
    if folder is None:
        raise CMMInputError("data.path is required for data.source=lobster (orderbook, message file or folder)")
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise CMMInputError(f"{p}: not a folder" if p.exists() else f"{p}: folder not found")
    books = sorted(p.glob("*_orderbook_*.csv"))
    msgs = sorted(p.glob("*_message_*.csv"))
    for f in books + msgs:
        other = _partner(f)
        if not other.is_file():
            raise CMMInputError(f"{f}: its LOBSTER partner file {other.name} is missing")
    if not books:
        raise CMMInputError(f"{p}: no LOBSTER orderbook file (*_orderbook_<levels>.csv) in this folder")
    return [(b, _partner(b)) for b in sorted(books, key=pair_key)]


def _read_csv(path: Path, string_cols=(), names=()) -> pa.Table:
    """Headerless CSV -> Arrow table (columns f0, f1, ...); parse problems are CMMInputErrors that
    name the row (and the column, with its meaning from ``names``)."""
    if path.stat().st_size == 0:
        raise CMMInputError(f"{path}: empty file")
    try:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                              convert_options=pacsv.ConvertOptions(
                                  column_types={f"f{k}": pa.string() for k in string_cols}))
    except (pa.ArrowException, ValueError) as e:
        _locate_parse_error(path, names, string_cols)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CMMInputError(f"{path}: cannot parse as a LOBSTER CSV ({first})") from None


def _locate_parse_error(path: Path, names, string_cols) -> None:
    """After a failed parse: raise the error of the first row whose column count differs from row
    1's, or of the first cell that is not an integer (the error path only; a Python scan)."""
    width = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for r, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            n = line.count(",") + 1
            if width is None:
                width = n
            elif n != width:
                raise CMMInputError(f"{path}: row {r}: {n} columns, expected {width} like row 1")
    if width:
        _first_bad_cell(path, width, [k for k in range(width) if k not in string_cols], names)


def _first_bad_cell(path: Path, width: int, int_cols, names) -> None:
    """Raise the error of the first (row, then column) cell of ``int_cols`` that is empty or not an
    integer; return when there is none. Reads every column as text (the error path only)."""
    import pyarrow.compute as pc

    try:
        tab = pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                             convert_options=pacsv.ConvertOptions(
                                 column_types={f"f{k}": pa.string() for k in range(width)}))
    except (pa.ArrowException, ValueError):
        return
    best = None
    for k in int_cols:
        ok = pc.fill_null(pc.match_substring_regex(tab.column(k), r"^-?[0-9]+$"), False)
        bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        if len(bad) and (best is None or bad[0] < best[0]):
            best = (int(bad[0]), k)
    if best is not None:
        i, k = best
        v = tab.column(k)[i].as_py()
        what = "is empty" if v is None or not v.strip() else f"{v!r} is not an integer"
        raise CMMInputError(f"{path}: row {i + 1}: {_col(k, names)} {what}")


def _check_integers(path: Path, tab: pa.Table, cols, names) -> None:
    """Every column of ``cols`` integer without empty cells, else the first bad cell's error."""
    if any(not pa.types.is_integer(tab.schema.types[k]) or tab.column(k).null_count for k in cols):
        _first_bad_cell(path, tab.num_columns, list(cols), names)
        raise CMMInputError(f"{path}: columns {', '.join(_col(k, names) for k in cols)} must hold integers")


def parse_seconds_ns(times, source) -> np.ndarray:
    """Decimal strings of seconds (e.g. ``'43002.632812672004'``) -> int64 ns, exact, nearest ns.

    Works on the Arrow string buffer as an [N, width] byte matrix (no float, no Python loop):
    ``ns = whole·10^9 + round(first 10 fraction digits / 10)``.
    """
    arr = pa.chunked_array([times]) if isinstance(times, pa.Array) else times
    arr = arr.combine_chunks().cast(pa.large_string())
    n = len(arr)
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise CMMInputError(f"{source}: row {i + 1}: column 1 (time) is empty")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
    buf = arr.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None and buf.size else np.zeros(1, np.uint8)
    start, length = offsets[:-1], np.diff(offsets)
    pos = np.arange(max(int(length.max(initial=0)), 1))
    inside = pos[None, :] < length[:, None]
    ch = np.where(inside, data[np.minimum(start[:, None] + pos[None, :], len(data) - 1)], 0).astype(np.int64)
    is_dot, is_digit = ch == 46, (ch >= 48) & (ch <= 57)
    dot = np.where(is_dot.any(axis=1), is_dot.argmax(axis=1), length)
    ok = (is_digit | is_dot | ~inside).all(axis=1) & (is_dot.sum(axis=1) <= 1) & (dot >= 1) & (dot <= 12)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise CMMInputError(f"{source}: row {i + 1}: time {arr[i].as_py()!r} in column 1 is not seconds after "
                            "midnight")
    digit = ch - 48
    rows = np.arange(n)[:, None]

    def gather(idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.where(valid, digit[rows, np.clip(idx, 0, len(pos) - 1)], 0)

    k = np.arange(12)[None, :]  # whole seconds, least significant digit first
    whole = (gather(dot[:, None] - 1 - k, k < dot[:, None]) * 10 ** k).sum(axis=1)
    k = np.arange(10)[None, :]  # first 10 fraction digits, units of 1e-10 s
    frac = (gather(dot[:, None] + 1 + k, dot[:, None] + 1 + k < length[:, None]) * 10 ** (9 - k)).sum(axis=1)
    return whole * 1_000_000_000 + (frac + 5) // 10


def _off_grid(raw: np.ndarray, source: Path, names: list[str], columns: list[int]) -> None:
    bad = raw % PRICE_UNITS_PER_TICK != 0
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        j = int(np.flatnonzero(bad[i])[0])
        raise CMMInputError(
            f"{source}: row {i + 1}: {names[j]} {raw[i, j]} is not a multiple of {PRICE_UNITS_PER_TICK} "
            f"(column {columns[j] + 1}; LOBSTER prices are dollars x 10000 on a $0.01 grid)")


def _first_bad(path: Path, bad: np.ndarray, k: int, values: np.ndarray, problem: str) -> None:
    """Raise ``FILE: row R: column k+1 (name) VALUE problem`` for the first True of ``bad`` (message file)."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CMMInputError(f"{path}: row {i + 1}: {_col(k, MSG_FIELDS)} {values[i]} {problem}")


def read_lobster(path, levels: Optional[int] = 5) -> Book:
    """Read one LOBSTER pair (see the module docstring); keep the first ``levels`` levels (None: the
    file's depth, at most ``DEFAULT_LEVELS``)."""
    book_path, msg_path = find_pair(path)
    m = NAME.match(book_path.name)
    tab = _read_csv(book_path, names=orderbook_fields(4 * int(m["levels"]) if m else 400))
    names = orderbook_fields(tab.num_columns)
    if tab.num_columns % 4 != 0:
        raise CMMInputError(f"{book_path}: row 1: {tab.num_columns} columns; a LOBSTER orderbook row has 4 per level "
                            "(ask_price, ask_size, bid_price, bid_size)")
    _check_integers(book_path, tab, range(tab.num_columns), names)
    depth = tab.num_columns // 4
    if m and int(m["levels"]) != depth:
        raise CMMInputError(f"{book_path}: file name says {m['levels']} levels but rows have {depth} (x4 columns)")
    if levels is None:
        levels = min(depth, DEFAULT_LEVELS)
    if levels > depth:
        raise CMMInputError(f"{book_path}: the file has {depth} levels, data.levels={levels} asks for more")
    L = int(levels)
    ob = np.stack([tab.column(k).to_numpy() for k in range(4 * L)], axis=1).astype(np.int64)
    ask_raw, ask_sz, bid_raw, bid_sz = (ob[:, k::4] for k in range(4))

    msg = _read_csv(msg_path, string_cols=(0,), names=MSG_FIELDS)
    if msg.num_columns < 6:
        raise CMMInputError(f"{msg_path}: row 1: {msg.num_columns} columns, expected 6 "
                            f"({', '.join(MSG_FIELDS)})")
    _check_integers(msg_path, msg, range(1, 6), MSG_FIELDS)
    if msg.num_rows != len(ob):
        raise CMMInputError(f"{msg_path}: {msg.num_rows} rows but {book_path.name} has {len(ob)}; "
                            "row i of one file is the event of row i of the other")
    ts = parse_seconds_ns(msg.column(0), msg_path)
    back = np.flatnonzero(np.diff(ts) < 0)
    if len(back):
        i = int(back[0]) + 1
        raise CMMInputError(f"{msg_path}: row {i + 1}: time {msg.column(0)[i].as_py()} in column 1 is before "
                            f"row {i}'s {msg.column(0)[i - 1].as_py()}")
    if m:
        ts = ts + np.datetime64(m["date"], "ns").astype(np.int64)
    mtype, msize, mprice, mdir = (msg.column(k).to_numpy().astype(np.int64) for k in (1, 3, 4, 5))
    _first_bad(msg_path, ~np.isin(mtype, MSG_TYPES), 1, mtype, "is not a LOBSTER message type (1-7)")
    _first_bad(msg_path, (mdir != 1) & (mdir != -1), 5, mdir, "is not a LOBSTER direction (-1 sell, 1 buy)")
    _first_bad(msg_path, msize < 0, 3, msize, "is a negative size")
    _first_bad(msg_path, (msize == 0) & (mtype <= 5), 3, msize, "is not a positive size (an order or execution)")
    _first_bad(msg_path, (mprice <= 0) & (mtype != 7), 4, mprice, "is not a positive price")

    # --- book levels: padding -> 0, grid check, ticks
    pad_a, pad_b = ask_raw == PAD_ASK, bid_raw == PAD_BID
    px_names = [f"{f}_{k}" for k in range(1, L + 1) for f in ("ask_price", "bid_price")]
    px_cols = [4 * (k - 1) + c for k in range(1, L + 1) for c in (0, 2)]
    _off_grid(np.stack([np.where(pad_a, 0, ask_raw), np.where(pad_b, 0, bid_raw)], axis=2).reshape(len(ob), -1),
              book_path, px_names, px_cols)
    zero = np.stack([(ask_sz <= 0) & ~pad_a, (bid_sz <= 0) & ~pad_b], axis=2).reshape(len(ob), -1)
    if zero.any():
        i = int(np.flatnonzero(zero.any(axis=1))[0])
        j = int(np.flatnonzero(zero[i])[0])
        c = px_cols[j] + 1  # the size column right of the price
        raise CMMInputError(f"{book_path}: row {i + 1}: {_col(c, names)} {ob[i, c]} is not a positive size at a "
                            "non-empty level")
    ask_px = np.where(pad_a, 0, ask_raw // PRICE_UNITS_PER_TICK)
    bid_px = np.where(pad_b, 0, bid_raw // PRICE_UNITS_PER_TICK)
    ask_sz = np.where(pad_a, 0, ask_sz).astype(np.float64)
    bid_sz = np.where(pad_b, 0, bid_sz).astype(np.float64)

    # --- messages: ticks (hidden executions may be off-grid), trades
    is_exec = (mtype == 4) | (mtype == 5)
    side = np.where(is_exec, -mdir, 0).astype(np.int8)
    off = (mprice % PRICE_UNITS_PER_TICK != 0) & (mtype != 7)
    hard = off & (mtype != 5)
    if hard.any():
        i = int(np.flatnonzero(hard)[0])
        raise CMMInputError(f"{msg_path}: row {i + 1}: price {mprice[i]} is not a multiple of "
                            f"{PRICE_UNITS_PER_TICK} (column 5; LOBSTER prices are dollars x 10000 on a $0.01 grid)")
    # buys round down, sells up: an off-grid print never looks like it traded through a quote
    ticks = np.where(side < 0, -((-mprice) // PRICE_UNITS_PER_TICK), mprice // PRICE_UNITS_PER_TICK)
    ticks = np.where(mtype == 7, 0, ticks).astype(np.int64)
    trade_px = np.where(is_exec, ticks, 0).astype(np.int64)
    trade_sz = np.where(is_exec, msize, 0).astype(np.float64)

    meta = {
        "allow_empty_levels": True,
        "orderbook_file": str(book_path), "message_file": str(msg_path),
        "ticker": m["ticker"] if m else None, "date": m["date"] if m else None,
        "file_levels": depth, "off_tick_hidden": int(off.sum()),
        "msg_type": mtype.astype(np.int8), "msg_size": msize.astype(np.float64),
        "msg_price": ticks, "msg_direction": mdir.astype(np.int8),
        "msg_order_id": msg.column(2).to_numpy().astype(np.int64),
    }
    arrays = dict(ts=ts, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz,
                  trade_px=trade_px, trade_sz=trade_sz, trade_side=side)

    # --- drop rows with a whole side empty at level 1 (no mid); carry their volume forward
    drop = (bid_sz[:, 0] <= 0) | (ask_sz[:, 0] <= 0)
    meta["dropped_rows"] = int(drop.sum())
    if drop.any():
        keep = np.flatnonzero(~drop)
        if len(keep) == 0:
            raise CMMInputError(f"{book_path}: every row has an empty bid or ask side")
        target = np.searchsorted(keep, np.flatnonzero(drop))  # next kept row
        carry = target < len(keep)
        src, dst = np.flatnonzero(drop)[carry], keep[target[carry]]
        np.add.at(arrays["trade_sz"], dst, trade_sz[src])
        src = src[is_exec[src] & (side[dst] == 0)]  # a kept row without its own trade reports the carried one
        dst = keep[np.searchsorted(keep, src)]
        arrays["trade_px"][dst], arrays["trade_side"][dst] = trade_px[src], side[src]
        arrays = {k: v[keep] for k, v in arrays.items()}
        meta = {k: v[keep] if isinstance(v, np.ndarray) else v for k, v in meta.items()}
        meta["file_rows"] = keep + 1
    return Book(**arrays, tick_size=0.01, source=str(book_path), meta=meta)

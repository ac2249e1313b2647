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

Errors name the file and the 1-based row (the files have no header).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import CMMInputError
from .lob import Book

PRICE_UNITS_PER_TICK = 100  # dollars x 10000 per $0.01 tick
PAD_ASK, PAD_BID = 9_999_999_999, -9_999_999_999
NAME = re.compile(r"^(?P<ticker>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_.*_(?P<kind>orderbook|message)_(?P<levels>\d+)\.csv$")
FIELDS = ("ask_price", "ask_size", "bid_price", "bid_size")


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


def _read_csv(path: Path, string_cols=()) -> pa.Table:
    """Headerless CSV -> Arrow table (columns f0, f1, ...); parse problems are CMMInputErrors."""
    if path.stat().st_size == 0:
        raise CMMInputError(f"{path}: empty file")
    try:
        return pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                              convert_options=pacsv.ConvertOptions(
                                  column_types={f"f{k}": pa.string() for k in string_cols}))
    except (pa.ArrowException, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CMMInputError(f"{path}: cannot parse as a LOBSTER CSV ({first})") from None


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
        raise CMMInputError(f"{source}: row {i + 1}: time is missing")
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
        raise CMMInputError(f"{source}: row {i + 1}: time {arr[i].as_py()!r} is not seconds after midnight")
    digit = ch - 48
    rows = np.arange(n)[:, None]

    def gather(idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return np.where(valid, digit[rows, np.clip(idx, 0, len(pos) - 1)], 0)

    k = np.arange(12)[None, :]  # whole seconds, least significant digit first
    whole = (gather(dot[:, None] - 1 - k, k < dot[:, None]) * 10 ** k).sum(axis=1)
    k = np.arange(10)[None, :]  # first 10 fraction digits, units of 1e-10 s
    frac = (gather(dot[:, None] + 1 + k, dot[:, None] + 1 + k < length[:, None]) * 10 ** (9 - k)).sum(axis=1)
    return whole * 1_000_000_000 + (frac + 5) // 10


def _off_grid(raw: np.ndarray, source: Path, names: list[str]) -> None:
    bad = raw % PRICE_UNITS_PER_TICK != 0
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        j = int(np.flatnonzero(bad[i])[0])
        raise CMMInputError(
            f"{source}: row {i + 1}: {names[j]} {raw[i, j]} is not a multiple of {PRICE_UNITS_PER_TICK} "
            "(LOBSTER prices are dollars x 10000 on a $0.01 grid)")


def read_lobster(path, levels: int = 5) -> Book:
    """Read one LOBSTER pair (see the module docstring); keep the first ``levels`` levels."""
    book_path, msg_path = find_pair(path)
    m = NAME.match(book_path.name)
    tab = _read_csv(book_path)
    if tab.num_columns % 4 != 0 or not all(pa.types.is_integer(t) for t in tab.schema.types):
        raise CMMInputError(f"{book_path}: expected integer columns, 4 per level "
                            f"(ask_price, ask_size, bid_price, bid_size); got {tab.num_columns} columns "
                            f"of types {sorted(set(map(str, tab.schema.types)))}")
    depth = tab.num_columns // 4
    if m and int(m["levels"]) != depth:
        raise CMMInputError(f"{book_path}: file name says {m['levels']} levels but rows have {depth} (x4 columns)")
    if levels > depth:
        raise CMMInputError(f"{book_path}: the file has {depth} levels, data.levels={levels} asks for more")
    L = int(levels)
    ob = np.stack([tab.column(k).to_numpy() for k in range(4 * L)], axis=1).astype(np.int64)
    ask_raw, ask_sz, bid_raw, bid_sz = (ob[:, k::4] for k in range(4))

    msg = _read_csv(msg_path, string_cols=(0,))
    if msg.num_columns < 6:
        raise CMMInputError(f"{msg_path}: expected 6 columns (time, type, order_id, size, price, direction), "
                            f"got {msg.num_columns}")
    if msg.num_rows != len(ob):
        raise CMMInputError(f"{msg_path}: {msg.num_rows} rows but {book_path.name} has {len(ob)}")
    ts = parse_seconds_ns(msg.column(0), msg_path)
    if m:
        ts = ts + np.datetime64(m["date"], "ns").astype(np.int64)
    for k, name in ((1, "type"), (3, "size"), (4, "price"), (5, "direction")):
        if not pa.types.is_integer(msg.schema.types[k]):
            raise CMMInputError(f"{msg_path}: column {k + 1} ({name}) must hold integers, "
                                f"found {msg.schema.types[k]}")
    mtype, msize, mprice, mdir = (msg.column(k).to_numpy().astype(np.int64) for k in (1, 3, 4, 5))

    # --- book levels: padding -> 0, grid check, ticks
    pad_a, pad_b = ask_raw == PAD_ASK, bid_raw == PAD_BID
    names = [f"{f}_{k}" for k in range(1, L + 1) for f in ("ask_price", "bid_price")]
    _off_grid(np.stack([np.where(pad_a, 0, ask_raw), np.where(pad_b, 0, bid_raw)], axis=2).reshape(len(ob), -1),
              book_path, names)
    zero = ((ask_sz <= 0) & ~pad_a) | ((bid_sz <= 0) & ~pad_b)
    if zero.any():
        i = int(np.flatnonzero(zero.any(axis=1))[0])
        raise CMMInputError(f"{book_path}: row {i + 1}: non-positive size at a non-empty level")
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
                            f"{PRICE_UNITS_PER_TICK} (LOBSTER prices are dollars x 10000 on a $0.01 grid)")
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

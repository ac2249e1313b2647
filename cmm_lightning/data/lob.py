"""Snapshot arrays: the one in-memory form of a limit-order book, whatever its source.

Prices are integer ticks, timestamps int64 nanoseconds. Row ``i`` is the book after event or
snapshot ``i``; ``trade_*`` describe what traded between snapshot ``i-1`` and ``i``.
An empty book level (LOBSTER padding) has price 0 and size 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import CMMInputError

DEFAULT_LEVELS = 5  # data.levels when unset: synthetic books have 5; a file with fewer keeps its own depth


@dataclass
class Book:
    """Snapshot arrays of one book. ``meta`` holds source extras; any ndarray in it with N rows is
    per-row (cut by :meth:`slice`): LOBSTER's ``msg_type/msg_size/msg_price/msg_direction`` and
    ``file_rows`` (1-based file row of each element when rows were dropped). Flags:
    ``allow_empty_levels`` (padded deeper levels), ``dropped_rows`` (count).

    A book of several days of one instrument (:func:`concat_days`) also has ``meta['day_start']``
    (int64 [D], first row of each day, ``[0, ...]``), ``meta['day_names']`` and
    ``meta['day_sources']`` (lists of D strings); absent = one day. :meth:`slice` keeps them right."""

    ts: np.ndarray  # int64 [N] nanoseconds
    bid_px: np.ndarray  # int64 [N, L] ticks, level 1 = best
    bid_sz: np.ndarray  # float64 [N, L] shares
    ask_px: np.ndarray  # int64 [N, L] ticks
    ask_sz: np.ndarray  # float64 [N, L]
    trade_px: np.ndarray  # int64 [N] ticks of the (last) trade since the previous row, 0 if none
    trade_sz: np.ndarray  # float64 [N] volume traded since the previous row
    trade_side: np.ndarray  # int8 [N] +1 buyer-initiated (hit the ask), -1 seller-initiated, 0 none/unknown
    tick_size: float = 0.01  # currency per tick
    source: str = "memory"  # file path or generator description, used in error messages
    regime: Optional[np.ndarray] = None  # int8 [N] true regime (synthetic data only)
    row_offset: int = 0  # file row of element 0 (for error messages); header rows included
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ts)

    @property
    def levels(self) -> int:
        return self.bid_px.shape[1]

    @property
    def mid(self) -> np.ndarray:
        """Mid price in ticks (float64; x.5 when the spread is odd)."""
        return 0.5 * (self.bid_px[:, 0] + self.ask_px[:, 0])

    @property
    def spread(self) -> np.ndarray:
        """Best ask - best bid, in ticks (int64)."""
        return self.ask_px[:, 0] - self.bid_px[:, 0]

    def slice(self, start: int, stop: int) -> "Book":
        """Rows ``start:stop`` as a new Book sharing memory."""
        def cut(a):
            return None if a is None else a[start:stop]

        # per-row arrays in meta (LOBSTER messages, file rows) are cut along with the book
        meta = {k: cut(v) if isinstance(v, np.ndarray) and v.shape[:1] == (self.n,) else v
                for k, v in self.meta.items() if k not in DAY_META}
        if "day_start" in self.meta:  # the days that overlap rows start:stop, renumbered from 0
            lo, hi, _ = slice(start, stop).indices(self.n)
            ds = day_starts(self)
            first = max(int(np.searchsorted(ds, lo, side="right")) - 1, 0)
            inside = np.flatnonzero((ds > lo) & (ds < hi))
            meta["day_start"] = np.concatenate([[0], ds[inside] - lo]).astype(np.int64)
            days = [first] + inside.tolist()
            for k in ("day_names", "day_sources"):
                if self.meta.get(k) is not None:
                    meta[k] = [self.meta[k][d] for d in days]

        return Book(
            ts=cut(self.ts), bid_px=cut(self.bid_px), bid_sz=cut(self.bid_sz),
            ask_px=cut(self.ask_px), ask_sz=cut(self.ask_sz), trade_px=cut(self.trade_px),
            trade_sz=cut(self.trade_sz), trade_side=cut(self.trade_side),
            tick_size=self.tick_size, source=self.source, regime=cut(self.regime),
            row_offset=self.row_offset + start, meta=meta,
        )

    def validate(self) -> "Book":
        """Raise CMMInputError naming the source and the first offending row; return self."""
        validate_book(self)
        return self


DAY_META = ("day_start", "day_names", "day_sources")  # per-day meta (not per-row)
SUMMED_META = ("dropped_rows", "off_tick_hidden")  # per-day counts that add up in a multi-day book


def day_starts(book: Book) -> np.ndarray:
    """int64 [D] first row of each day of ``book`` (``meta['day_start']``; absent = one day, ``[0]``)."""
    ds = book.meta.get("day_start")
    return np.zeros(1, np.int64) if ds is None else np.asarray(ds, dtype=np.int64)


def day_of_row(book: Book, rows) -> np.ndarray:
    """Day index (0-based) of each row in ``rows``."""
    return np.searchsorted(day_starts(book), np.asarray(rows), side="right") - 1


def _day_label(b: Book) -> str:
    date = b.meta.get("date")
    if isinstance(date, str):
        return date
    return str(np.datetime64(int(b.ts[0]), "ns").astype("datetime64[D]"))


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return a is b


def concat_days(books, names=None) -> Book:
    """Several days of ONE instrument, in time order -> one Book with ``meta['day_start']``.

    Every day needs the tick size, number of levels and (LOBSTER) ``meta['ticker']`` of the first
    day, at least one row, and its first timestamp after the previous day's last; otherwise a
    one-line CMMInputError names the offending day's source. Snapshot arrays and per-row meta
    arrays (present in every day; ``file_rows`` is filled in from ``row_offset`` where a day has
    none) are concatenated, so errors keep naming the day's file row. ``regime`` is concatenated
    when every day has one. Other meta: flags are OR-ed, counts in ``SUMMED_META`` summed,
    values equal on every day kept, differing ones become a list (one per day).
    ``meta['day_start']`` = int64 first row of each day, ``meta['day_names']`` = ``names`` (one per
    book; default the LOBSTER date or the date of the day's first timestamp),
    ``meta['day_sources']`` = each day's ``source``. A book that is already multi-day brings its
    own days along. ``source`` = ``"<first> .. <last> (D days)"``.
    """
    books = list(books)
    if not books:
        raise CMMInputError("concat_days: no days to concatenate")
    if names is not None and len(names) != len(books):
        raise CMMInputError(f"concat_days: {len(names)} names for {len(books)} books")
    first = books[0]
    tick, ticker = float(first.tick_size), first.meta.get("ticker")
    for k, b in enumerate(books):
        if b.n == 0:
            raise CMMInputError(f"{b.source}: no rows (empty day)")
        if not np.isclose(float(b.tick_size), tick, rtol=1e-9, atol=0.0):
            raise CMMInputError(f"{b.source}: tick size {b.tick_size:g} differs from {tick:g} of the first day "
                                f"({first.source}); all days of one book need the same tick size")
        if b.levels != first.levels:
            raise CMMInputError(f"{b.source}: {b.levels} levels, the first day ({first.source}) has "
                                f"{first.levels}; all days of one book need the same data.levels")
        if b.meta.get("ticker") != ticker:
            raise CMMInputError(f"{b.source}: ticker {b.meta.get('ticker') or '(none)'} differs from "
                                f"{ticker or '(none)'} of the first day ({first.source}); one instrument "
                                "per book; evaluate reads each as its own dataset")
        if k and b.ts[0] <= books[k - 1].ts[-1]:
            raise CMMInputError(f"{b.source}: first timestamp {int(b.ts[0])} is not after the previous day's "
                                f"last {int(books[k - 1].ts[-1])} ({books[k - 1].source}); days must be "
                                "in time order, one instrument per book")

    def cat(name):
        return np.concatenate([getattr(b, name) for b in books])

    sizes = np.array([b.n for b in books], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    day_start, day_names, day_sources = [], [], []
    for k, b in enumerate(books):  # a loop over days, not rows
        day_start.append(offsets[k] + day_starts(b))
        if "day_start" in b.meta:
            d = len(day_starts(b))
            day_names += list(b.meta.get("day_names") or [_day_label(b)] * d)
            day_sources += list(b.meta.get("day_sources") or [b.source] * d)
        else:
            day_names.append(str(names[k]) if names is not None else _day_label(b))
            day_sources.append(b.source)

    def per_row(b: Book, key: str) -> bool:
        v = b.meta.get(key)
        return isinstance(v, np.ndarray) and v.shape[:1] == (b.n,)

    keys = list(dict.fromkeys(k for b in books for k in b.meta if k not in DAY_META))
    meta: dict = {}
    for key in keys:
        vals = [b.meta.get(key) for b in books]
        if key == "file_rows" or all(per_row(b, key) for b in books):
            if key == "file_rows":
                vals = [v if per_row(b, key) else b.row_offset + np.arange(b.n, dtype=np.int64) + 1
                        for b, v in zip(books, vals)]
            meta[key] = np.concatenate(vals)
        elif any(per_row(b, key) for b in books):
            continue  # a per-row array that some days lack cannot be a column of the whole book
        elif all(isinstance(v, (bool, np.bool_)) for v in vals):
            meta[key] = bool(any(vals))
        elif key in SUMMED_META and all(isinstance(v, (int, np.integer)) for v in vals):
            meta[key] = int(sum(vals))
        elif all(_same(v, vals[0]) for v in vals[1:]):
            meta[key] = vals[0]
        else:
            meta[key] = vals
    if "file_rows" not in meta:
        meta["file_rows"] = np.concatenate([b.row_offset + np.arange(b.n, dtype=np.int64) + 1 for b in books])
    meta["day_start"] = np.concatenate(day_start).astype(np.int64)
    meta["day_names"], meta["day_sources"] = day_names, day_sources
    regime = cat("regime") if all(b.regime is not None for b in books) else None
    last = books[-1]
    source = first.source if len(books) == 1 else f"{first.source} .. {last.source} ({len(day_names)} days)"
    return Book(ts=cat("ts"), bid_px=cat("bid_px"), bid_sz=cat("bid_sz"), ask_px=cat("ask_px"),
                ask_sz=cat("ask_sz"), trade_px=cat("trade_px"), trade_sz=cat("trade_sz"),
                trade_side=cat("trade_side"), tick_size=tick, source=source, regime=regime,
                row_offset=0, meta=meta)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def file_row(b: Book, i: int) -> int:
    """1-based file row of element ``i``: ``meta['file_rows']`` when rows were dropped, else offset."""
    rows = b.meta.get("file_rows")
    return int(rows[i]) if rows is not None else b.row_offset + i + 1


def validate_book(b: Book) -> None:
    """The input checks (docs/method.md, "Data"), vectorised; the error names the source and the FIRST offending row.

    Checks: NaN/inf sizes or volume, timestamps going back, negative sizes, non-positive sizes
    (zero allowed on deeper levels when ``meta['allow_empty_levels']``, LOBSTER padding), an empty
    best level, non-positive prices, a crossed or locked book, levels out of order, negative
    traded volume or trade price. Row numbers are 1-based file rows (see :func:`file_row`).
    """
    src = b.source
    if b.n == 0:
        raise CMMInputError(f"{src}: no rows (empty file)")
    n = b.n
    checks: list[tuple[np.ndarray, object]] = []  # (bad-row mask [N], message or fn(i) -> message)

    def add(mask: np.ndarray, what) -> None:
        mask = np.asarray(mask)
        checks.append((mask.reshape(n, -1).any(axis=1) if mask.ndim > 1 else mask, what))

    def per_level(bid_bad: np.ndarray, ask_bad: np.ndarray, what: str) -> None:
        """A check on [N, L] bid/ask masks; the message names the first bad side and level."""
        def msg(i: int) -> str:
            side, bad = ("bid", bid_bad[i]) if bid_bad[i].any() else ("ask", ask_bad[i])
            return f"{what} ({side} level {_first(bad) + 1})"
        add(bid_bad | ask_bad, msg)

    for name in ("bid_sz", "ask_sz", "trade_sz"):
        add(~np.isfinite(getattr(b, name)), f"{name} is NaN or infinite")
    back = np.zeros(n, dtype=bool)
    back[1:] = np.diff(b.ts) < 0
    add(back, lambda i: f"timestamp goes back in time ({b.ts[i - 1]} -> {b.ts[i]})")
    per_level(b.bid_sz < 0, b.ask_sz < 0, "negative size")
    empty_bid, empty_ask = b.bid_sz == 0, b.ask_sz == 0
    if not b.meta.get("allow_empty_levels", False):
        per_level(empty_bid, empty_ask, "non-positive size")
    add(empty_bid[:, 0] | empty_ask[:, 0], "empty best level (no bid or no ask)")
    per_level((b.bid_px <= 0) & ~empty_bid, (b.ask_px <= 0) & ~empty_ask, "non-positive price")
    live = ~empty_bid[:, 0] & ~empty_ask[:, 0]
    add(live & (b.bid_px[:, 0] >= b.ask_px[:, 0]),
        lambda i: f"crossed book (best bid {b.bid_px[i, 0]} >= best ask {b.ask_px[i, 0]} ticks)")
    if b.levels > 1:
        bid_order = (np.diff(b.bid_px, axis=1) >= 0) & ~empty_bid[:, 1:]
        ask_order = (np.diff(b.ask_px, axis=1) <= 0) & ~empty_ask[:, 1:]
        def order_msg(i: int) -> str:
            side, bad, way = ("bid", bid_order[i], "below") if bid_order[i].any() else ("ask", ask_order[i], "above")
            k = _first(bad) + 2
            return f"price levels out of order ({side} level {k} is not strictly {way} level {k - 1})"
        add(bid_order | ask_order, order_msg)
    add(b.trade_sz < 0, "negative traded volume")
    add(b.trade_px < 0, "negative trade price")

    firsts = [(_first(m), what) for m, what in checks if m.any()]
    if firsts:
        i, what = min(firsts, key=lambda t: t[0])
        msg = what(i) if callable(what) else what
        if b.meta.get("day_sources") is not None:  # a multi-day book: name the day's own file
            src = b.meta["day_sources"][int(day_of_row(b, i))]
        raise CMMInputError(f"{src}: row {file_row(b, i)}: {msg}")


def check_tick_size(tick_size) -> float:
    """``data.tick_size`` as a positive finite float, else a CMMInputError naming the key."""
    try:
        tick = float(tick_size)
    except (TypeError, ValueError):
        tick = float("nan")
    if not (np.isfinite(tick) and tick > 0):
        raise CMMInputError(f"data.tick_size must be a positive number (currency per tick, e.g. 0.01), got {tick_size}")
    return tick


def to_ticks(prices: np.ndarray, tick_size: float, source: str, row_offset: int = 0,
             what: str = "price", columns: Optional[list] = None) -> np.ndarray:
    """Currency prices -> int64 ticks; an off-grid or non-finite price is a CMMInputError.

    ``prices`` is [N] or [N, C]; with ``columns`` (C names) the error names the column too.
    The error names the first offending row (``row_offset + i + 1``).
    """
    check_tick_size(tick_size)
    prices = np.asarray(prices, dtype=np.float64)
    flat = prices.reshape(len(prices), -1)

    def fail(bad: np.ndarray, problem: str) -> None:
        i = _first(bad.any(axis=1))
        j = _first(bad[i])
        col = f" (column '{columns[j]}')" if columns is not None else ""
        raise CMMInputError(f"{source}: row {row_offset + i + 1}: {what}{col} {flat[i, j]:.10g} {problem}")

    bad = ~np.isfinite(flat)
    if bad.any():
        fail(bad, "is NaN or infinite")
    ticks = np.rint(flat / tick_size)
    off = np.abs(ticks * tick_size - flat) > 1e-6 * np.maximum(1.0, np.abs(flat))
    if off.any():
        fail(off, f"is not on the tick grid (data.tick_size={tick_size})")
    return ticks.astype(np.int64).reshape(prices.shape)

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


@dataclass
class Book:
    """Snapshot arrays of one book. ``meta`` holds source extras; any ndarray in it with N rows is
    per-row (cut by :meth:`slice`): LOBSTER's ``msg_type/msg_size/msg_price/msg_direction`` and
    ``file_rows`` (1-based file row of each element when rows were dropped). Flags:
    ``allow_empty_levels`` (padded deeper levels), ``dropped_rows`` (count)."""

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
                for k, v in self.meta.items()}

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


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def file_row(b: Book, i: int) -> int:
    """1-based file row of element ``i``: ``meta['file_rows']`` when rows were dropped, else offset."""
    rows = b.meta.get("file_rows")
    return int(rows[i]) if rows is not None else b.row_offset + i + 1


def validate_book(b: Book) -> None:
    """The DESIGN §2 checks, vectorised; the error names the source and the FIRST offending row.

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
        raise CMMInputError(f"{src}: row {file_row(b, i)}: {msg}")


def to_ticks(prices: np.ndarray, tick_size: float, source: str, row_offset: int = 0,
             what: str = "price", columns: Optional[list] = None) -> np.ndarray:
    """Currency prices -> int64 ticks; an off-grid or non-finite price is a CMMInputError.

    ``prices`` is [N] or [N, C]; with ``columns`` (C names) the error names the column too.
    The error names the first offending row (``row_offset + i + 1``).
    """
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

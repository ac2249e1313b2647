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

        return Book(
            ts=cut(self.ts), bid_px=cut(self.bid_px), bid_sz=cut(self.bid_sz),
            ask_px=cut(self.ask_px), ask_sz=cut(self.ask_sz), trade_px=cut(self.trade_px),
            trade_sz=cut(self.trade_sz), trade_side=cut(self.trade_side),
            tick_size=self.tick_size, source=self.source, regime=cut(self.regime),
            row_offset=self.row_offset + start, meta=dict(self.meta),
        )

    def validate(self) -> "Book":
        """Raise CMMInputError naming the source and the first offending row; return self."""
        validate_book(self)
        return self


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_book(b: Book) -> None:
    """The DESIGN §2 checks, vectorised. Row numbers are 1-based file rows (``row_offset`` added)."""
    src = b.source
    if b.n == 0:
        raise CMMInputError(f"{src}: no rows (empty file)")

    def fail(i: int, what: str) -> None:
        raise CMMInputError(f"{src}: row {b.row_offset + i + 1}: {what}")

    for name in ("bid_sz", "ask_sz", "trade_sz"):
        arr = getattr(b, name)
        bad = ~np.isfinite(arr)
        if bad.any():
            i = _first(bad.reshape(len(arr), -1).any(axis=1))
            fail(i, f"{name} is NaN or infinite")
    dt = np.diff(b.ts)
    if (dt < 0).any():
        i = _first(dt < 0) + 1
        fail(i, f"timestamp goes back in time ({b.ts[i - 1]} -> {b.ts[i]})")
    empty_bid = b.bid_sz <= 0
    empty_ask = b.ask_sz <= 0
    if (b.bid_sz < 0).any() or (b.ask_sz < 0).any():
        bad = (b.bid_sz < 0).any(axis=1) | (b.ask_sz < 0).any(axis=1)
        fail(_first(bad), "negative size")
    padded_ok = b.meta.get("allow_empty_levels", False)
    if not padded_ok and (empty_bid.any() or empty_ask.any()):
        bad = empty_bid.any(axis=1) | empty_ask.any(axis=1)
        fail(_first(bad), "non-positive size")
    if empty_bid[:, 0].any() or empty_ask[:, 0].any():
        fail(_first(empty_bid[:, 0] | empty_ask[:, 0]), "empty best level (no bid or no ask)")
    bad_px = ((b.bid_px <= 0) & ~empty_bid) | ((b.ask_px <= 0) & ~empty_ask)
    if bad_px.any():
        fail(_first(bad_px.any(axis=1)), "non-positive price")
    crossed = b.bid_px[:, 0] >= b.ask_px[:, 0]
    if crossed.any():
        i = _first(crossed)
        fail(i, f"crossed book (best bid {b.bid_px[i, 0]} >= best ask {b.ask_px[i, 0]} ticks)")
    if b.levels > 1:
        bid_order = (np.diff(b.bid_px, axis=1) >= 0) & ~empty_bid[:, 1:]
        ask_order = (np.diff(b.ask_px, axis=1) <= 0) & ~empty_ask[:, 1:]
        bad = bid_order.any(axis=1) | ask_order.any(axis=1)
        if bad.any():
            fail(_first(bad), "price levels not strictly ordered away from the best price")
    if (b.trade_sz < 0).any():
        fail(_first(b.trade_sz < 0), "negative traded volume")


def to_ticks(prices: np.ndarray, tick_size: float, source: str, row_offset: int = 0,
             what: str = "price") -> np.ndarray:
    """Currency prices -> int64 ticks; an off-grid or non-finite price is a CMMInputError."""
    prices = np.asarray(prices, dtype=np.float64)
    bad = ~np.isfinite(prices)
    if bad.any():
        i = _first(bad.reshape(len(prices), -1).any(axis=1))
        raise CMMInputError(f"{source}: row {row_offset + i + 1}: {what} is NaN or infinite")
    ticks = np.rint(prices / tick_size)
    off = np.abs(ticks * tick_size - prices) > 1e-6 * np.maximum(1.0, np.abs(prices))
    if off.any():
        flat = off.reshape(len(prices), -1)
        i = _first(flat.any(axis=1))
        val = prices.reshape(len(prices), -1)[i][flat[i]][0]
        raise CMMInputError(
            f"{source}: row {row_offset + i + 1}: {what} {val} is not on the tick grid "
            f"(data.tick_size={tick_size})"
        )
    return ticks.astype(np.int64)

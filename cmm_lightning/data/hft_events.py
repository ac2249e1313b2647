"""
`hftbacktest <https://github.com/nkaz001/hftbacktest>`_ (the ``hftbacktest`` wheel, 2.4.x) replays
market data from ONE NumPy structured array of events, ``hftbacktest.types.event_dtype``
(``align=True``: 64 bytes, the Rust ``Event`` struct, ``#[repr(C, align(64))]``):

============ ===== ====================================================================
field        type  meaning
============ ===== ====================================================================
``ev``       u8    event kind (low bits) | flags (high bits), below
``exch_ts``  i8    exchange timestamp, ns: when the event happens at the exchange
``local_ts`` i8    local timestamp, ns: when the trader receives it (feed latency)
``px``       f8    price in currency (not ticks)
``qty``      f8    depth event: the level's new total size (0 = the level is gone);
                   trade event: the traded size
``order_id`` u8    Level-3 (market-by-order) feeds only; 0 here
``ival``     i8    reserved; 0
``fval``     f8    reserved; 0
============ ===== ====================================================================

Kinds (``hftbacktest/types.py``; https://hftbacktest.readthedocs.io/en/latest/data.html):
``DEPTH_EVENT`` 1 (one price level's size), ``TRADE_EVENT`` 2, ``DEPTH_CLEAR_EVENT`` 3,
``DEPTH_SNAPSHOT_EVENT`` 4, ``DEPTH_BBO_EVENT`` 5, and the Level-3 ``ADD_ORDER_EVENT`` 10,
``CANCEL_ORDER_EVENT`` 11, ``MODIFY_ORDER_EVENT`` 12, ``FILL_EVENT`` 13. Flags:
``EXCH_EVENT`` 1 << 31 (the exchange processor handles it at ``exch_ts``), ``LOCAL_EVENT``
1 << 30 (the local processor handles it at ``local_ts``), ``BUY_EVENT`` 1 << 29 and
``SELL_EVENT`` 1 << 28 (a depth event's side, bid or ask; a trade's initiator, buyer or seller).
Both processors must see their events in time order (``hftbacktest.data.validate_event_order``).

The constants and :data:`EVENT_DTYPE` are written out here, so this module needs NumPy only;
``tests/test_hft_agreement.py`` checks them against the installed hftbacktest.

:func:`book_to_events` converts a Book (e.g. LOBSTER's: one row per message) into such an array
(the LOBSTER -> hftbacktest converter of the agreement check and of the reader's round-trip test);
``data/hftbacktest.py`` reads such an array back (``data.source=hftbacktest``).
"""

from __future__ import annotations

import numpy as np

from .lob import Book

# ----------------------------------------------------------------------------- the event format
DEPTH_EVENT = 1
TRADE_EVENT = 2
DEPTH_CLEAR_EVENT = 3
DEPTH_SNAPSHOT_EVENT = 4
DEPTH_BBO_EVENT = 5
ADD_ORDER_EVENT = 10
CANCEL_ORDER_EVENT = 11
MODIFY_ORDER_EVENT = 12
FILL_EVENT = 13

EXCH_EVENT = 1 << 31
LOCAL_EVENT = 1 << 30
BUY_EVENT = 1 << 29
SELL_EVENT = 1 << 28

EVENT_DTYPE = np.dtype([("ev", "u8"), ("exch_ts", "i8"), ("local_ts", "i8"), ("px", "f8"), ("qty", "f8"),
                        ("order_id", "u8"), ("ival", "i8"), ("fval", "f8")], align=True)

# the four event codes a Book produces, by kind index 0..3 (see _row_events)
_CODES = np.array([EXCH_EVENT | LOCAL_EVENT | DEPTH_EVENT | BUY_EVENT,    # 0: bid level
                   EXCH_EVENT | LOCAL_EVENT | DEPTH_EVENT | SELL_EVENT,   # 1: ask level
                   EXCH_EVENT | LOCAL_EVENT | TRADE_EVENT | BUY_EVENT,    # 2: buyer-initiated trade
                   EXCH_EVENT | LOCAL_EVENT | TRADE_EVENT | SELL_EVENT],  # 3: seller-initiated trade
                  np.uint64)


# ----------------------------------------------------------------------------- Book -> events
def _side_diff(pp, pq, cp, cq):
    """One side of rows [m] against their previous rows: ``(removed [m, L], changed [m, L])``.

    removed[:, i]: previous level i (size > 0) whose price no current level (size > 0) has.
    changed[:, j]: current level j (size > 0) that is new, or whose size differs from the previous
    level at its price (the first such level)."""
    match = (pp[:, :, None] == cp[:, None, :]) & (pq[:, :, None] > 0) & (cq[:, None, :] > 0)  # [m, i, j]
    removed = (pq > 0) & ~match.any(2)
    first = match.argmax(1)  # [m, j]: the previous level at level j's price, where there is one
    same = match.any(1) & (np.take_along_axis(pq, first, 1) == cq)
    return removed, (cq > 0) & ~same


def _row_events(ts, bid_px, bid_sz, ask_px, ask_sz, trade_px, trade_sz, trade_side, first: bool):
    """Events of rows 1.. of the given arrays (row 0 is the previous row; with ``first`` it is the
    book's row 0 and its full depth comes first) as ``(code, ts, px_ticks, qty)``, in order."""
    m, L = bid_px.shape[0] - 1, bid_px.shape[1]
    cur, prev = slice(1, None), slice(None, -1)
    removed_b, changed_b = _side_diff(bid_px[prev], bid_sz[prev], bid_px[cur], bid_sz[cur])
    removed_a, changed_a = _side_diff(ask_px[prev], ask_sz[prev], ask_px[cur], ask_sz[cur])
    trade = (trade_side[cur] != 0) & (trade_sz[cur] > 0)
    # one row = 1 + 4L slots: trade, bid removals, ask removals, bid changes, ask changes
    kind = np.empty((m, 1 + 4 * L), np.int8)
    kind[:, 0] = np.where(trade_side[cur] > 0, 2, 3)
    kind[:, 1:1 + L], kind[:, 1 + L:1 + 2 * L] = 0, 1
    kind[:, 1 + 2 * L:1 + 3 * L], kind[:, 1 + 3 * L:] = 0, 1
    px = np.concatenate([trade_px[cur, None], bid_px[prev], ask_px[prev], bid_px[cur], ask_px[cur]], 1)
    qty = np.concatenate([trade_sz[cur, None], np.zeros((m, 2 * L)), bid_sz[cur], ask_sz[cur]], 1)
    keep = np.concatenate([trade[:, None], removed_b, removed_a, changed_b, changed_a], 1)
    rows = np.broadcast_to(ts[cur, None], keep.shape)
    out = [_CODES[kind[keep]], rows[keep], px[keep], qty[keep]]
    if first:  # the snapshot: every non-empty level of row 0, bids then asks
        nb, na = bid_sz[0] > 0, ask_sz[0] > 0
        snap = [np.repeat(_CODES[:2], [nb.sum(), na.sum()]), np.full(nb.sum() + na.sum(), ts[0]),
                np.concatenate([bid_px[0][nb], ask_px[0][na]]), np.concatenate([bid_sz[0][nb], ask_sz[0][na]])]
        out = [np.concatenate([s, o]) for s, o in zip(snap, out)]
    return out


def book_to_events(book: Book, chunk_rows: int = 1 << 16) -> np.ndarray:
    """A Book -> hftbacktest's event array (:data:`EVENT_DTYPE`), ``local_ts = exch_ts`` (no feed
    latency), prices in currency (ticks x ``book.tick_size``).

    Row 0 is a full depth snapshot: one ``DEPTH_EVENT`` per non-empty level, bids then asks. Each
    later row r gives, all stamped ``ts[r]``:

    1. one ``TRADE_EVENT`` when the row carries a trade (``trade_side`` != 0 and ``trade_sz`` > 0;
       ``trade_side`` +1, buyer-initiated, is ``BUY_EVENT``), e.g. LOBSTER's executions (types 4, 5);
    2. the depth diff between rows r-1 and r: first every level that left the L visible levels
       (``qty`` 0; bids, then asks), then every level that is new or whose size changed (bids, then
       asks; each side in level order).

    The trade comes before the depth so that hftbacktest's risk-averse queue does not count an
    execution twice (trade: ``queue -= size``, depth: ``queue = min(queue, level size)``); removals
    come before additions so that no transient state inside a row crosses the book. Rows are
    converted ``chunk_rows`` at a time (memory ~ 25 x (1 + 4L) bytes per row of a chunk).
    """
    n = book.n
    if n == 0:
        return np.zeros(0, EVENT_DTYPE)
    arrays = [np.asarray(a) for a in (book.ts, book.bid_px, book.bid_sz, book.ask_px, book.ask_sz,
                                      book.trade_px, book.trade_sz, book.trade_side)]
    parts = []
    for a in range(0, max(n - 1, 1), chunk_rows):  # rows a+1 .. b of the book, with row a before them
        b = min(a + chunk_rows, n - 1)
        parts.append(_row_events(*(x[a:b + 1] for x in arrays), first=a == 0))
    code, ts, px, qty = (np.concatenate(p) for p in zip(*parts))
    ev = np.zeros(len(code), EVENT_DTYPE)
    ev["ev"], ev["exch_ts"], ev["local_ts"] = code, ts, ts
    ev["px"] = px * book.tick_size
    ev["qty"] = qty
    return ev

"""``data.source=hftbacktest``: hftbacktest event files (.npz / .npy) read into a :class:`~cmm_lightning.data.lob.Book`.

The event format (fields, kinds, flags) is described in ``hft_events.py``. :func:`read_hftbacktest`
replays the exchange-side depth with a numba loop, one row per exchange timestamp or per clock
interval (its docstring has the rules; :func:`load_events` the accepted file layouts). Reading
needs NumPy and numba, never hftbacktest. Bad input is one :class:`~cmm_lightning.errors.CMMInputError`
line naming the file and the event index.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import CMMInputError
from .hft_events import (ADD_ORDER_EVENT, BUY_EVENT, CANCEL_ORDER_EVENT, DEPTH_BBO_EVENT, DEPTH_CLEAR_EVENT,
                         DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT, EXCH_EVENT, FILL_EVENT, MODIFY_ORDER_EVENT, SELL_EVENT,
                         TRADE_EVENT)
from .lob import DEFAULT_LEVELS, Book

# ----------------------------------------------------------------------------- events -> Book (the reader)
# data.source=hftbacktest: an event file (.npz as hftbacktest's converters write it) -> snapshot rows.
NPZ_KEY = "data"  # np.savez_compressed(out, data=events): every hftbacktest converter
EVENT_FIELDS = ("ev", "exch_ts", "px", "qty")  # the fields the reader needs, found by name
KIND_MASK = 0xFF  # ev & 0xff is the kind (hftbacktest's Event::is)
KIND_NAMES = {DEPTH_EVENT: "DEPTH_EVENT", TRADE_EVENT: "TRADE_EVENT", DEPTH_CLEAR_EVENT: "DEPTH_CLEAR_EVENT",
              DEPTH_SNAPSHOT_EVENT: "DEPTH_SNAPSHOT_EVENT", DEPTH_BBO_EVENT: "DEPTH_BBO_EVENT",
              ADD_ORDER_EVENT: "ADD_ORDER_EVENT", CANCEL_ORDER_EVENT: "CANCEL_ORDER_EVENT",
              MODIFY_ORDER_EVENT: "MODIFY_ORDER_EVENT", FILL_EVENT: "FILL_EVENT"}
L3_KINDS = (ADD_ORDER_EVENT, CANCEL_ORDER_EVENT, MODIFY_ORDER_EVENT, FILL_EVENT)
CROSSED = ("error", "resolve")  # data.hftbacktest.crossed
MAX_ROWS = 20_000_000  # data.hftbacktest.interval_ns giving more snapshot rows than this is an error
GRID_TOL = 1e-3  # ticks: a price farther than this from the tick grid is off-grid
LOT_EPS = 1e-9  # lots: half-up rounding tolerance for float noise (2.4999999999999996 lots -> 3)
_MAX_TICKS = float(2 ** 53)  # beyond this a tick count is no longer an exact float
_OP_SET, _OP_CLEAR, _OP_CLEAR_ALL, _OP_TRADE = 0, 1, 2, 3  # kernel ops

_LAYOUT = ("hftbacktest's event array: a 1-D structured array with fields ev, exch_ts, local_ts, px, qty, "
           "order_id, ival, fval (hftbacktest.types.event_dtype), saved as np.savez_compressed(out, data=events)")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _has_event_fields(dtype: np.dtype) -> bool:
    return dtype.names is not None and all(f in dtype.names for f in EVENT_FIELDS)


def _check_event_array(arr: np.ndarray, src, what: str) -> None:
    """``arr`` is an event array (fields by name, any alignment), else a one-line CMMInputError."""
    names = arr.dtype.names
    if names is None:
        hint = ("; an hftbacktest v1 file ([N, 6] floats)? convert it with "
                "hftbacktest.data.utils.migration2.convert") if arr.ndim == 2 and arr.shape[1] == 6 else ""
        raise CMMInputError(f"{src}: {what} is {arr.dtype} of shape {arr.shape}, not {_LAYOUT}{hint}")
    missing = [f for f in EVENT_FIELDS if f not in names]
    if missing:
        raise CMMInputError(f"{src}: {what} has fields {', '.join(names)} but no {', '.join(missing)}: not {_LAYOUT}")
    if arr.ndim != 1:
        raise CMMInputError(f"{src}: {what} has shape {arr.shape}; an event array is 1-D")
    for f, kinds in (("ev", "iu"), ("exch_ts", "iu"), ("px", "fiu"), ("qty", "fiu")):
        if arr.dtype[f].kind not in kinds:
            want = "an integer" if kinds == "iu" else "a number"
            raise CMMInputError(f"{src}: {what}: field '{f}' is {arr.dtype[f]}, not {want} ({_LAYOUT})")
    if len(arr) == 0:
        raise CMMInputError(f"{src}: no events ({what} is empty)")


def load_events(path) -> np.ndarray:
    """The event array of one hftbacktest file, checked (:func:`read_hftbacktest` lists the layouts).

    ``.npz``: the array under ``data`` (what hftbacktest's converters write), else the file's only
    array, else its only array with the event fields; ``.npy`` (``np.save(out, events)``): the array.
    Fields are found by name, so the packed (``align=False``) layout reads too. Never unpickles."""
    from pathlib import Path

    p = Path(str(path)).expanduser()
    if not p.exists():
        raise CMMInputError(f"{p}: file not found")
    if not p.is_file():
        raise CMMInputError(f"{p}: not a file")
    if p.stat().st_size == 0:
        raise CMMInputError(f"{p}: empty file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
        raise CMMInputError(f"{p}: not a NumPy .npz / .npy file (it starts with {magic!r}); expected {_LAYOUT}")
    try:
        obj = np.load(p, allow_pickle=False)
    except Exception as e:  # not NumPy (pickle refused, bad zip, truncated header): many exception types
        raise CMMInputError(f"{p}: cannot read as an hftbacktest .npz/.npy event file ({_first_line(e)})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        _check_event_array(obj, p, "the array")
        return obj
    with obj:
        keys = list(obj.files)
        try:
            if NPZ_KEY in keys or len(keys) == 1:
                key = NPZ_KEY if NPZ_KEY in keys else keys[0]
                arr = obj[key]
            else:
                found = {k: obj[k] for k in keys}
                fit = [k for k, a in found.items() if _has_event_fields(a.dtype)]
                if len(fit) != 1:
                    have = ", ".join(f"'{k}'" for k in keys) or "none"
                    raise CMMInputError(f"{p}: no '{NPZ_KEY}' array (arrays: {have}) and "
                                        f"{'several' if fit else 'none'} with the event fields; expected {_LAYOUT}")
                key, arr = fit[0], found[fit[0]]
        except CMMInputError:
            raise
        except Exception as e:  # a damaged member (CRC, truncated stream), or an object array
            raise CMMInputError(f"{p}: cannot read the arrays of this .npz ({_first_line(e)})") from None
    _check_event_array(arr, p, f"array '{key}'")
    return arr


def _rebuild_book(op, side, idx, qty, tpx, row, uniq, resolve,
                  bid_px, bid_sz, ask_px, ask_sz, vol, last_px, last_side, err):  # pragma: no cover - jit
    """Replay the exchange events into per-price arrays (prices = indices into ``uniq``, sorted
    ticks) and write the top L levels of each side after the last event of each row.

    op 0: set level ``idx`` of ``side`` (+1 bid, -1 ask) to ``qty`` (0 removes it); op 1: clear one
    side up to a price (bid: indices >= idx, ask: indices <= idx, hftbacktest's clear_depth); op 2:
    clear a whole side (side 0: both); op 3: a trade (``vol[row] += qty``; px / side of the last
    trade with qty > 0). ``resolve``: a level set through the other side's best removes the crossed
    levels of the other side (hftbacktest's depth: the latest update wins); else a book still
    crossed at a row's end stops the replay: ``err = [first event of the crossing, row, bid, ask]``."""
    n = op.shape[0]
    n_rows, L = bid_px.shape
    K = uniq.shape[0]
    bid = np.zeros(K)
    ask = np.zeros(K)
    bb = -1  # best bid index (-1: none); bid[bb] > 0
    ba = K  # best ask index (K: none); ask[ba] > 0
    crossed_from = -1
    e = 0
    for r in range(n_rows):
        while e < n and row[e] == r:
            o = op[e]
            s = side[e]
            if o == 3:
                q = qty[e]
                vol[r] += q
                if q > 0:
                    last_px[r] = tpx[e]
                    last_side[r] = s
            elif o == 0:
                i = idx[e]
                q = qty[e]
                if s > 0:
                    bid[i] = q
                    if q > 0:
                        if i > bb:
                            bb = i
                        if resolve and ba < K and i >= ba:
                            while ba <= i:
                                ask[ba] = 0.0
                                ba += 1
                            while ba < K and ask[ba] <= 0:
                                ba += 1
                    elif i == bb:
                        while bb >= 0 and bid[bb] <= 0:
                            bb -= 1
                else:
                    ask[i] = q
                    if q > 0:
                        if i < ba:
                            ba = i
                        if resolve and bb >= 0 and i <= bb:
                            while bb >= i:
                                bid[bb] = 0.0
                                bb -= 1
                            while bb >= 0 and bid[bb] <= 0:
                                bb -= 1
                    elif i == ba:
                        while ba < K and ask[ba] <= 0:
                            ba += 1
            elif o == 1:
                i = idx[e]
                if s > 0:  # bids at or above the price
                    if bb >= i:
                        for j in range(max(i, 0), bb + 1):
                            bid[j] = 0.0
                        bb = i - 1
                        while bb >= 0 and bid[bb] <= 0:
                            bb -= 1
                else:  # asks at or below the price
                    if ba <= i:
                        for j in range(ba, min(i, K - 1) + 1):
                            ask[j] = 0.0
                        ba = i + 1
                        while ba < K and ask[ba] <= 0:
                            ba += 1
            else:
                if s >= 0:
                    bid[:] = 0.0
                    bb = -1
                if s <= 0:
                    ask[:] = 0.0
                    ba = K
            if bb >= 0 and ba < K and bb >= ba:
                if crossed_from < 0:
                    crossed_from = e
            else:
                crossed_from = -1
            e += 1
        if crossed_from >= 0:
            err[0] = crossed_from
            err[1] = r
            err[2] = uniq[bb]
            err[3] = uniq[ba]
            return
        j = bb
        lv = 0
        while lv < L and j >= 0:
            if bid[j] > 0:
                bid_px[r, lv] = uniq[j]
                bid_sz[r, lv] = bid[j]
                lv += 1
            j -= 1
        j = ba
        lv = 0
        while lv < L and j < K:
            if ask[j] > 0:
                ask_px[r, lv] = uniq[j]
                ask_sz[r, lv] = ask[j]
                lv += 1
            j += 1


@functools.cache
def _rebuild_kernel():
    """:func:`_rebuild_book` compiled on first use (cached on disk by numba)."""
    from numba import njit

    return njit(cache=True)(_rebuild_book)


def _half_up(x: np.ndarray) -> np.ndarray:
    """Whole lots, half-up (with :data:`LOT_EPS` for float noise)."""
    return np.floor(x + 0.5 + LOT_EPS)


def read_hftbacktest(path, tick_size: float = 0.01, levels: int | None = DEFAULT_LEVELS,
                     interval_ns: int | None = None, lot_size: float | None = None,
                     crossed: str = "error") -> Book:
    """One hftbacktest event file -> a Book (``data.source=hftbacktest``; README, "Bring hftbacktest data").

    **Layouts** (:func:`load_events`): ``.npz`` with the event array under ``data`` (every
    hftbacktest converter: ``np.savez_compressed(out, data=events)``), or as the file's only array
    / only array with the event fields (older files, ``np.savez(out, events)``); ``.npy`` holding
    the raw structured array. Fields by name (``ev, exch_ts, px, qty``; aligned or packed).
    hftbacktest v1 ``[N, 6]`` float files, pickles and Level-3 (market-by-order) events are errors.

    **The book** is hftbacktest's exchange-side depth: only events flagged ``EXCH_EVENT`` are
    replayed (the ``LOCAL_EVENT``-only copies that ``correct_event_order`` adds are the same
    events seen by the trader later), in file order, at ``exch_ts``. ``DEPTH_EVENT`` and
    ``DEPTH_SNAPSHOT_EVENT`` set one level (``BUY_EVENT`` bid, ``SELL_EVENT`` ask) to ``qty``, 0
    removes it (hftbacktest's processors treat both kinds alike; a snapshot replaces the side
    because the converters put a ``DEPTH_CLEAR_EVENT`` before it). ``DEPTH_CLEAR_EVENT`` with
    ``BUY_EVENT`` removes every bid at or above ``px``, with ``SELL_EVENT`` every ask at or below
    ``px`` (``clear_depth``); a non-finite ``px`` clears the whole side, no side flag both sides.
    ``DEPTH_BBO_EVENT`` is ignored (hftbacktest's backtest ignores it too). The file starts from
    an empty book.

    **Rows**: one per distinct exchange timestamp (after all its events), or with ``interval_ns``
    one per interval of the clock: row ``k`` is stamped ``t_k = k·interval_ns`` (multiples of the
    interval since the epoch) and holds the book after every event with ``t_{k-1} < exch_ts <= t_k``
    (an interval without events repeats the book). The top ``levels`` levels of each side, prices
    in ticks of ``tick_size``; missing levels are price 0, size 0 (``meta['allow_empty_levels']``).
    Rows without a bid or an ask (before the book is built) are dropped
    (``meta['dropped_rows']``), their trades carried to the next row.

    **Trades** (``TRADE_EVENT``): ``trade_sz`` = the row's summed ``qty``; ``trade_px`` / ``trade_side``
    of the row's last trade: ``BUY_EVENT`` = the buyer initiated (+1, lifted the ask), ``SELL_EVENT``
    = the seller (-1), no flag = 0 (unknown).

    **Sizes**: ``lot_size`` None keeps ``qty`` as it is (shares, contracts, coins; float). With
    ``lot_size`` sizes are whole lots: a level is ``qty / lot_size`` rounded half-up (a level under
    half a lot is gone, as in hftbacktest's depth), a row's traded volume is its summed trade
    ``qty / lot_size`` rounded half-up (small prints add up instead of vanishing); use the
    exchange's lot (order-quantity step) and ``market.lot_size=1``.

    **Errors** (CMMInputError, one line): ``FILE: event I (KIND, exch_ts T): what``, I the 0-based
    index into the array: an unknown kind, Level-3 kinds, a depth or trade event with both side
    flags or a depth event with none, exchange timestamps going back, a NaN / infinite / non-positive
    / off-grid price, a NaN / infinite / negative quantity, a book crossed at the end of a row
    (``crossed='error'``; ``'resolve'`` applies hftbacktest's rule instead: a level set through
    the other side's best removes the crossed levels). Also: missing, empty or unreadable files,
    wrong keys or dtype, no exchange events, a book that never has both sides.
    """
    from pathlib import Path

    from .lob import check_tick_size

    if path is None:
        raise CMMInputError("data.path is required for data.source=hftbacktest (.npz event files or their folder)")
    tick = check_tick_size(tick_size)
    if crossed not in CROSSED:
        raise CMMInputError(f"data.hftbacktest.crossed={crossed!r} is not one of {', '.join(CROSSED)}")
    L = DEFAULT_LEVELS if levels is None else int(levels)
    src = Path(str(path)).expanduser()
    events = load_events(src)
    code = events["ev"].astype(np.uint64)
    ts = events["exch_ts"].astype(np.int64)
    px = events["px"].astype(np.float64)
    qty = events["qty"].astype(np.float64)
    kind = (code & np.uint64(KIND_MASK)).astype(np.int64)
    exch = (code & np.uint64(EXCH_EVENT)) != 0
    buy = (code & np.uint64(BUY_EVENT)) != 0
    sell = (code & np.uint64(SELL_EVENT)) != 0
    is_set = exch & ((kind == DEPTH_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT))
    is_trade = exch & (kind == TRADE_EVENT)
    is_clear = exch & (kind == DEPTH_CLEAR_EVENT)
    priced = is_set | is_trade
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x = px / tick
        off = np.abs(x - np.rint(x)) > GRID_TOL

    # ---- event checks, vectorised; the first offending event (lowest index) is reported
    checks: list = []  # (mask [n], fn(i) -> message)
    known = np.isin(kind, list(KIND_NAMES))
    checks.append((~known, lambda i: f"unknown event kind {kind[i]} (ev=0x{int(code[i]):x}; hftbacktest kinds "
                                     "are 1-5 and 10-13)"))
    checks.append((np.isin(kind, L3_KINDS), lambda i: "Level-3 (market-by-order) events are not supported: "
                                                      "data.source=hftbacktest reads Level-2 depth and trade events"))
    checks.append((exch & (buy & sell) & (kind <= DEPTH_SNAPSHOT_EVENT),
                   lambda i: "both BUY_EVENT and SELL_EVENT flags are set"))
    checks.append((is_set & ~buy & ~sell, lambda i: "depth event without a side (BUY_EVENT: bid, SELL_EVENT: ask)"))
    ex = np.flatnonzero(exch)
    back = np.zeros(len(code), bool)
    back[ex[1:][np.diff(ts[ex]) < 0]] = True
    prev_ex = np.empty(len(code), np.int64)
    prev_ex[ex[1:]] = ex[:-1]
    checks.append((back, lambda i: f"exch_ts goes back in time (event {prev_ex[i]} was at {ts[prev_ex[i]]}); "
                                   "exchange events must be in exch_ts order (hftbacktest.data.validate_event_order)"))
    checks.append((priced & ~np.isfinite(px), lambda i: f"price {px[i]} is NaN or infinite"))
    checks.append((priced & np.isfinite(px) & (px <= 0), lambda i: f"price {px[i]:.10g} is not positive"))
    checks.append(((priced | (is_clear & np.isfinite(px))) & np.isfinite(px) & (off | (np.abs(x) > _MAX_TICKS)),
                   lambda i: f"price {px[i]:.10g} is not on the tick grid (data.tick_size={tick:g})"))
    checks.append((priced & ~np.isfinite(qty), lambda i: f"quantity {qty[i]} is NaN or infinite"))
    checks.append((priced & np.isfinite(qty) & (qty < 0), lambda i: f"quantity {qty[i]:.10g} is negative"))

    def fail(i: int, what: str):
        name = KIND_NAMES.get(int(kind[i]), f"kind {int(kind[i])}")
        raise CMMInputError(f"{src}: event {i} ({name}, exch_ts {int(ts[i])}): {what}")

    firsts = [(int(np.argmax(m)), fn) for m, fn in checks if m.any()]
    if firsts:
        i, fn = min(firsts, key=lambda t: t[0])
        fail(i, fn(i))
    used = np.flatnonzero(is_set | is_trade | is_clear)
    if not exch.any():
        raise CMMInputError(f"{src}: no exchange events (no event has the EXCH_EVENT flag); run the array through "
                            "hftbacktest.data.correct_event_order, as hftbacktest's converters do")
    if len(used) == 0:
        raise CMMInputError(f"{src}: no depth or trade events among the {len(ex)} exchange events")

    # ---- kernel inputs: one entry per replayed event
    t, side = ts[used], np.where(buy[used], 1, np.where(sell[used], -1, 0)).astype(np.int8)
    s_set, s_trade, s_clear = is_set[used], is_trade[used], is_clear[used]
    ticks = np.zeros(len(used), np.int64)
    fin = np.isfinite(x[used])
    ticks[fin] = np.rint(np.clip(x[used][fin], -_MAX_TICKS, _MAX_TICKS)).astype(np.int64)
    q = qty[used]
    if lot_size is not None:
        q = q / float(lot_size)
        q = np.where(s_set, _half_up(q), q)  # trades: summed per row first, rounded below
    uniq, inv = np.unique(ticks[s_set], return_inverse=True)
    idx = np.zeros(len(used), np.int64)
    idx[s_set] = inv
    op = np.full(len(used), _OP_SET, np.int8)
    op[s_trade] = _OP_TRADE
    whole = s_clear & (~fin | (side == 0))
    op[s_clear & ~whole] = _OP_CLEAR
    op[whole] = _OP_CLEAR_ALL
    bid_clear, ask_clear = s_clear & ~whole & (side > 0), s_clear & ~whole & (side < 0)
    idx[bid_clear] = np.searchsorted(uniq, ticks[bid_clear], side="left")  # first bid index >= px
    idx[ask_clear] = np.searchsorted(uniq, ticks[ask_clear], side="right") - 1  # last ask index <= px
    tpx = np.where(s_trade, ticks, 0)

    # ---- rows: distinct exchange timestamps, or the clock
    if interval_ns is None:
        row = np.concatenate([[0], np.cumsum(np.diff(t) != 0)]).astype(np.int64)
        n_rows = int(row[-1]) + 1
        row_ts = t[np.concatenate([[0], np.flatnonzero(np.diff(t) != 0) + 1])]
    else:
        step = int(interval_ns)
        if step < 1:
            raise CMMInputError(f"data.hftbacktest.interval_ns must be >= 1 or null, got {interval_ns}")
        end = -((-t) // step)  # ceil(t / step): the interval each event closes in
        row = end - end[0]
        n_rows = int(row[-1]) + 1
        if n_rows > MAX_ROWS:
            raise CMMInputError(f"{src}: data.hftbacktest.interval_ns={step} gives {n_rows:,} rows over "
                                f"{int(t[-1] - t[0])} ns of events (at most {MAX_ROWS:,}); use a longer interval")
        row_ts = (end[0] + np.arange(n_rows, dtype=np.int64)) * step

    bid_px, ask_px = np.zeros((n_rows, L), np.int64), np.zeros((n_rows, L), np.int64)
    bid_sz, ask_sz = np.zeros((n_rows, L)), np.zeros((n_rows, L))
    vol, last_px, last_side = np.zeros(n_rows), np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int8)
    err = np.full(4, -1, np.int64)
    if len(uniq) == 0:
        uniq = np.zeros(1, np.int64)  # no depth events: an empty book (every row dropped below)
    _rebuild_kernel()(op, side, idx, np.ascontiguousarray(q, np.float64), tpx, row, uniq, crossed == "resolve",
                      bid_px, bid_sz, ask_px, ask_sz, vol, last_px, last_side, err)
    if err[0] >= 0:
        i = int(used[err[0]])
        fail(i, f"crossed book at exch_ts {int(row_ts[err[1]])} (best bid {err[2]} >= best ask {err[3]} ticks, "
                f"from this event on); data.hftbacktest.crossed=resolve applies hftbacktest's rule instead")

    if lot_size is not None:
        vol = _half_up(vol)
    traded = vol > 0
    last_px, last_side = np.where(traded, last_px, 0), np.where(traded, last_side, 0).astype(np.int8)
    last_event = used[np.searchsorted(row, np.arange(n_rows), side="right") - 1]
    arrays = dict(ts=row_ts, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz,
                  trade_px=last_px, trade_sz=vol, trade_side=last_side)
    meta = {"allow_empty_levels": True, "event_file": str(src), "n_events": int(len(events)),
            "interval_ns": None if interval_ns is None else int(interval_ns),
            "lot_size": None if lot_size is None else float(lot_size),
            "size_unit": "file" if lot_size is None else "lots",
            "fractional_sizes": bool(lot_size is None and np.any(q[s_set | s_trade] % 1 != 0)),
            "event_index": last_event.astype(np.int64)}

    # ---- rows without a bid or an ask (the book not built yet): dropped, their trades carried on
    drop = (bid_sz[:, 0] <= 0) | (ask_sz[:, 0] <= 0)
    meta["dropped_rows"] = int(drop.sum())
    if drop.all():
        raise CMMInputError(f"{src}: the book never has both a bid and an ask ({n_rows} snapshot times, "
                            f"{int(s_set.sum())} depth events)")
    if drop.any():
        keep, gone = np.flatnonzero(~drop), np.flatnonzero(drop)
        target = np.searchsorted(keep, gone)  # the next kept row
        carry = target < len(keep)
        src_rows, dst = gone[carry], keep[target[carry]]
        np.add.at(arrays["trade_sz"], dst, vol[src_rows])
        has = traded[src_rows]
        src_rows, dst = src_rows[has], dst[has]
        late = np.zeros(n_rows, np.int64) - 1  # the last dropped row with a trade before each kept row
        np.maximum.at(late, dst, src_rows)
        take = (late >= 0) & ~traded  # a kept row without its own trade reports the carried one
        arrays["trade_px"][take], arrays["trade_side"][take] = last_px[late[take]], last_side[late[take]]
        arrays = {kk: v[keep] for kk, v in arrays.items()}
        meta["event_index"] = meta["event_index"][keep]
    return Book(**arrays, tick_size=tick, source=str(src), meta=meta)

"""Compiled market-making engine: one event loop over snapshots, two doors.

The fill model (formulas: the README section "Market making: quotes, fill model and metrics") is
conservative and deterministic, in the spirit of hftbacktest's risk-averse queue model.
Our orders never move the replayed book.

* An order decided at row ``d`` becomes active at row ``a`` = ``d + market.latency`` or, when
  ``market.latency_ns > 0``, the first row with ``ts[a] >= ts[d] + latency_ns`` (always ``a > d``).
  Cancels (a replaced or withdrawn quote) take effect at the same row ``a``.
* On arrival it sees the book of row ``a-1``: queue ahead ``Q`` = displayed size at its price
  (0 when it improves the best); a bid at or above the best ask is a taker order or, with
  ``post_only``, rejected. A taker bid walks the asks of row ``a-1`` up to its price (each level:
  ``min(left, displayed)`` at that level's price, taker fee); the rest rests at ``P``, queue 0.
* At every row ``r`` it is active, a bid at ``P`` with ``n`` shares left fills
    - all ``n`` if a trade prints below ``P`` (traded through) or the best ask ``<= P`` (crossed;
      a taker's remainder only once a row since its arrival showed the best ask ``> P``: the
      replayed book still shows the levels it took),
    - ``min(n, V - Q)`` if ``V`` shares trade at ``P`` on the bid side and ``V > Q``; else ``Q -= V``.
  Trades come from ``trade_px/trade_sz/trade_side``, or from LOBSTER execution messages
  (types 4, 5) when the book carries them. Cancellations never shrink ``Q``.  Asks mirror bids.

State lives in small numpy arrays (see the ``F_*``, ``I_*`` layouts) so that the same row loop
(:func:`_run`) serves :func:`run_engine` (the whole backtest in numba, one call per episode) and
:class:`Engine` (a gymnasium env submits quotes and advances rows once per action, for many
environments at once).
Internally prices are ticks and cash is ticks x shares; the wrappers report currency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ..errors import CMMInputError
from .episodes import episode_bounds, resolve_episode_length
from .quoting import (EPS, P_DEPTHCAP, P_HFT, P_LAT, P_LATNS, P_LIMIT, P_LOT, P_MAKER, P_MSGS,
                      P_PARTIAL, P_POSTONLY, P_RESPNS, P_TAKER, P_TICK, _limit_raw, params, quote)

# float state  [NF]
F_CASH, F_INV, F_BSZ, F_BQ, F_ASZ, F_AQ, F_FEES, F_VOL, F_QUOTED, F_LFS0, F_LFS1 = range(11)
NF = 11  # F_LFS0/1: size of the last fill per side (the trader's view of inventory, hftbacktest model)
# int state  [NI]
(I_BPX, I_APX, I_NFILL, I_NPLACED, I_NFILLED, I_BHIT, I_AHIT, I_ROW,
 I_PH0, I_PC0, I_PH1, I_PC1, I_NLOG, I_LFT0, I_LFT1, I_QR0, I_QR1, I_TK0, I_TK1) = range(19)
NI = 19  # I_NFILL counts this account's fills, I_NLOG the rows written to the fills log,
# I_LFT0/1 the exchange time of the last fill per side, I_QR0/1 the last row the depth cap saw,
# I_TK0/1 the crossed-rule guard of a taker's remainder: first row not yet scanned (0 = none)
# pending orders per side: a FIFO ring (activation rows are non-decreasing)
PEND_CAP = 64
NEVER = np.iinfo(np.int64).max  # activation row of an empty FIFO
# what an order reaching the exchange does (see _arrive)
GONE, KEEP, REJECT, TAKE, REST = range(5)
# fills log columns: int64 [n, 4] and float64 [n, 3]
L_ROW, L_TS, L_SIDE, L_PX = range(4)
L_SIZE, L_FEE, L_TAKER = range(3)
# per-episode outputs [E, NE]
(E_CASH, E_INV, E_MARK, E_FEES, E_VOL, E_QUOTED, E_NFILL, E_NPLACED, E_NFILLED) = range(9)
NE = 9


# --------------------------------------------------------------------------- kernels
# One compiled loop (:func:`_loop`) does rows, order activations and decisions with the book as
# separate local arrays. Numba reference-counts an array (an atomic increment and decrement, ~10 ns)
# whenever it takes it out of a tuple, passes it to an inlined helper whose control flow it cannot
# see through (a loop with an early return), or reassigns it in a loop. So in the hot path the
# book is never a tuple, helpers that take arrays are straight-line (or take scalars), the queue
# ahead of a new order is read from the book only when a print first needs it, and the fills log
# is grown between calls of the loop (:func:`_run`), never inside it. The common row costs a few
# loads: matching (:func:`_match`) runs only when something printed at or through one of our
# prices or the opposite best reached it; fills go through :func:`_log_fill`. Both doors
# (run_backtest; Engine and rl.py via advance / decide / submit) run this same loop.
@njit(cache=True, inline="always")
def level_size(px, sz, r, price, is_bid, unknown):
    """Displayed size at ``price`` on one side of snapshot ``r`` (``px``/``sz`` are [N, L]; no row
    views, which cost reference counting in the hot loop).

    0 when ``price`` improves the best, falls in a gap between occupied levels, or lies beyond
    the last level of a book that shows all its levels (padding); ``unknown`` when it lies beyond
    the deepest level of a full view: ``inf`` in the design model (no at-price fill is ever
    assumed), 0 in the hftbacktest model (its depth map drops a level that leaves the view).
    """
    if is_bid:
        if price > px[r, 0]:
            return 0.0
    elif price < px[r, 0]:
        return 0.0
    for k in range(px.shape[1]):
        if sz[r, k] <= 0:
            return 0.0
        p = px[r, k]
        if p == price:
            return sz[r, k]
        if (is_bid and p < price) or ((not is_bid) and p > price):
            return 0.0
    return unknown


@njit(cache=True, inline="always")
def _room(levels):
    """Most fills between two checks of the log's size (one row, or one decision): every order
    in flight (``PEND_CAP`` per side) may take, walking up to ``levels`` levels, then two matches."""
    return 2 * PEND_CAP * levels + 4


@njit(cache=True)
def _grow(log_i, log_f, n, room):
    """The fills log (``n`` rows used) with ``room`` more rows free (x2 when short)."""
    if log_i.shape[0] == 0 or n + room <= log_i.shape[0]:
        return log_i, log_f
    gi = np.zeros((2 * log_i.shape[0] + room, 4), np.int64)
    gf = np.zeros((gi.shape[0], 3), np.float64)
    gi[: log_i.shape[0]] = log_i
    gf[: log_f.shape[0]] = log_f
    return gi, gf


@njit(cache=True)
def _log_fill(fs, is_, side, row, ts, px, size, fee_per_share, taker, log_i, log_f):
    """Book one fill into cash/inventory and (when enabled) the fills log, which has room
    (:func:`_run` grows it between calls of :func:`_loop`). An ordinary call (not inlined): fills
    are rare."""
    fee = fee_per_share * size
    if side == 0:
        fs[F_CASH] -= px * size + fee
        fs[F_INV] += size
    else:
        fs[F_CASH] += px * size - fee
        fs[F_INV] -= size
    fs[F_FEES] += fee
    fs[F_VOL] += size
    fs[F_LFS0 + side] = size
    is_[I_LFT0 + side] = ts
    n = is_[I_NLOG]
    if log_i.shape[0] > 0:
        log_i[n, L_ROW] = row
        log_i[n, L_TS] = ts
        log_i[n, L_SIDE] = 1 if side == 0 else -1
        log_i[n, L_PX] = px
        log_f[n, L_SIZE] = size
        log_f[n, L_FEE] = fee
        log_f[n, L_TAKER] = 1.0 if taker else 0.0
    is_[I_NFILL] += 1
    is_[I_NLOG] = n + 1


@njit(cache=True, inline="always")
def _depth_cap(bpx, bsz, apx, asz, prm, fs, is_, side, r):
    """``Q = min(Q, displayed size at P)`` over rows ``is_[I_QR0+side]+1 .. r`` (depth cap: the
    risk-averse queue shrinks with the displayed size). Applied lazily, when a print at our price
    needs ``Q``: the min over the skipped rows is the same number the per-row rule gives."""
    unknown = 0.0 if prm[P_HFT] > 0 else np.inf
    Q = F_BQ + 2 * side
    P = is_[I_BPX + side]
    q = fs[Q]
    for k in range(is_[I_QR0 + side] + 1, r + 1):
        if side == 0:
            q = min(q, level_size(bpx, bsz, k, P, True, unknown))
        else:
            q = min(q, level_size(apx, asz, k, P, False, unknown))
    fs[Q] = q
    if r > is_[I_QR0 + side]:
        is_[I_QR0 + side] = r


@njit(cache=True, inline="always")
def _left_since(bpx, apx, is_, side, r):
    """Whether the opposite best moved strictly beyond our price ``P`` (ask ``> P`` for a bid) at a
    row ``g .. r-1``, ``g = is_[I_TK0+side]`` the first row not yet scanned, when the best of row
    ``r`` has reached ``P`` again. The guard of a taker's remainder: until then the book still
    shows the levels it took (our orders never move the replayed book) and the crossed rule would
    fill it again against them. Clears the guard when it returns True, else moves it past ``r``
    (each row is scanned once). One exit, no early return: inlining it costs no reference counting."""
    P = is_[I_BPX + side]
    k = is_[I_TK0 + side]
    while k < r and ((apx[k, 0] <= P) if side == 0 else (bpx[k, 0] >= P)):
        k += 1
    is_[I_TK0 + side] = 0 if k < r else r + 1
    return k < r


@njit(cache=True)
def _take(ts, bpx, bsz, apx, asz, fee, fs, is_, side, x, log_i, log_f):
    """A taker order on ``side`` reaching the exchange at row ``x``, booked as resting at its
    limit ``P`` with ``n`` shares (queue 0, :func:`_book_arrival`), walks the opposite side of
    the book it saw, row ``x - 1``: at each level ``k`` priced at or better than ``P``
    (``p_k <= P`` for a bid, ``p_k >= P`` for an ask) it fills ``f_k = min(n, s_k)`` at ``p_k``,
    taker fee, ``n -= f_k``; it stops at the first level beyond ``P``, an empty level (size 0,
    padding), the last level, or ``n = 0``. What is left rests at ``P`` (:func:`_left_since`).
    One fill in the log per level; an order with a fill counts as filled. An ordinary call (not
    inlined): takers are rare."""
    SZ = F_BSZ + 2 * side
    P = is_[I_BPX + side]
    n0 = fs[SZ]
    n = n0
    for k in range(bpx.shape[1]):
        p = apx[x - 1, k] if side == 0 else bpx[x - 1, k]
        s = asz[x - 1, k] if side == 0 else bsz[x - 1, k]
        if n <= 0 or s <= 0 or (p > P if side == 0 else p < P):
            break
        f = min(n, s)
        _log_fill(fs, is_, side, x, ts[x], p, f, fee, True, log_i, log_f)
        n -= f
    fs[SZ] = n
    if n < n0:
        is_[I_BHIT + side] = 1
        is_[I_NFILLED] += 1


@njit(cache=True, inline="always")
def _match(ts, bpx, bsz, apx, asz, prm, fs, is_, side, r, tp, tv, sd, msg, log_i, log_f):
    """Fills of our resting order on ``side`` caused by event/snapshot ``r``, whose print is
    ``tp`` (ticks, 0 = none), ``tv`` shares, ``sd`` (trade_side: aggressor sign; or with ``msg``
    the LOBSTER direction of the executed resting order, 1 = a buy).

    hftbacktest model: only a print whose aggressor hits our side fills us (a seller for a bid),
    an at-price print fills the whole order once ``V - Q >= lot``, unseen levels count as empty."""
    hft = prm[P_HFT] > 0
    cap = prm[P_DEPTHCAP] > 0
    SZ = F_BSZ + 2 * side
    Q = F_BQ + 2 * side
    P = is_[I_BPX + side]
    rem = fs[SZ]
    if np.isnan(fs[Q]):  # first print that needs it: queue ahead = displayed size at P on arrival
        unknown = 0.0 if hft else np.inf
        if side == 0:
            fs[Q] = level_size(bpx, bsz, is_[I_QR0], P, True, unknown)
        else:
            fs[Q] = level_size(apx, asz, is_[I_QR1], P, False, unknown)
    if cap:  # the rows skipped since the last match: Q as the per-row rule leaves it at r - 1
        _depth_cap(bpx, bsz, apx, asz, prm, fs, is_, side, r - 1)
    through = False
    V = 0.0
    if msg:  # LOBSTER: executions of visible (4) or hidden (5) orders
        if side == 0:
            if tp < P and (sd == 1 or not hft):
                through = True
            elif tp == P and sd == 1:
                V = tv
        else:
            if tp > P and (sd == -1 or not hft):
                through = True
            elif tp == P and sd == -1:
                V = tv
    elif tv > 0:
        if side == 0:
            if 0 < tp < P and (sd < 0 or not hft):
                through = True
            elif tp == P and (sd < 0 or (sd == 0 and not hft)):
                V = tv
        else:
            if tp > P and (sd > 0 or not hft):
                through = True
            elif tp == P and (sd > 0 or (sd == 0 and not hft)):
                V = tv
    fill = 0.0
    if through:
        fill = rem
    elif V > 0:
        if (V >= fs[Q] + prm[P_LOT]) if hft else (V > fs[Q]):
            fill = min(rem, V - fs[Q]) if prm[P_PARTIAL] > 0 else rem
            fs[Q] = 0.0
        else:
            fs[Q] -= V
    crossed = apx[r, 0] <= P if side == 0 else bpx[r, 0] >= P
    if crossed and is_[I_TK0 + side] > 0:  # a taker's remainder: not against the levels it took
        crossed = _left_since(bpx, apx, is_, side, r)
    if crossed:
        fill = rem  # crossed by the opposite best
    if fill > 0:
        _log_fill(fs, is_, side, r, ts[r], P, fill, prm[P_MAKER], False, log_i, log_f)
        fs[SZ] = rem - fill
        if is_[I_BHIT + side] == 0:
            is_[I_BHIT + side] = 1
            is_[I_NFILLED] += 1
    if cap and fs[SZ] > 0:
        _depth_cap(bpx, bsz, apx, asz, prm, fs, is_, side, r)
    return


@njit(cache=True, inline="always")
def activation_row(ts, timed, strict, latns, lat, d, t):
    """Row at which an order decided at time ``t >= ts[d]`` after row ``d`` is live (may be
    ``len(ts)``: never): ``d + latency`` snapshots, or with ``latency_ns`` the first row with
    ``ts >= t + latency_ns``; in the hftbacktest model the first row with ``ts > t + latency_ns``
    (market data stamped at the arrival time is processed before the order): ``timed`` =
    ``latency_ns > 0`` or that model, ``strict`` = that model, ``latns``/``lat`` the latencies.
    One exit (no return inside a loop), so that inlining it costs no reference counting."""
    if not timed:
        return d + max(1, lat)
    ta = t + latns
    n = ts.shape[0]
    a = d + 1
    stop = min(n, d + 9)
    while a < stop and (ts[a] < ta or (ts[a] == ta and strict)):  # usually within a few rows: scan
        a += 1
    if a == stop:  # then bisect the rest
        hi = n
        while a < hi:
            mid = (a + hi) >> 1
            if ts[mid] < ta or (ts[mid] == ta and strict):
                a = mid + 1
            else:
                hi = mid
    return a


@njit(cache=True, inline="always")
def trader_inventory(prm, fs, is_, t):
    """Inventory as the trader knows it at time ``t`` -> (known, bid worst case, ask worst case).

    Design model: all three are the inventory. hftbacktest model: a fill reaches the trader
    ``response_latency_ns`` after it happens, so known = inventory - fills not yet reported; a
    side is quoted only if its worst case stays inside the limit should every order of that side
    that may still fill do so (the resting one being replaced, or one filled but not reported):
    bid worst = inventory + unreported sells + resting bid, ask worst = inventory - unreported
    buys - resting ask. Exact when decisions are >= entry + response latency apart (then at most
    one order per side is in flight, and only the last fill per side can be unreported)."""
    inv = fs[F_INV]
    if prm[P_HFT] <= 0:
        return inv, inv, inv
    return _inventories(np.int64(prm[P_RESPNS]), inv, fs[F_LFS0], is_[I_LFT0], fs[F_LFS1], is_[I_LFT1],
                        fs[F_BSZ], fs[F_ASZ], t)


@njit(cache=True, inline="always")
def _inventories(resp, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t):
    """:func:`trader_inventory` in the hftbacktest model, from scalars: inventory, last fill size
    and time per side, resting sizes."""
    unk_b = lfs0 if lft0 + resp > t else 0.0
    unk_a = lfs1 if lft1 + resp > t else 0.0
    return inv - unk_b + unk_a, inv + unk_a + bsz, inv - unk_b - asz


@njit(cache=True, inline="always")
def side_limits(prm, inv_bid, inv_ask, bp, bsz, ap, asz):
    """The inventory rule with each side's worst-case inventory (a no-op in the design model)."""
    return _side_limits(prm[P_LIMIT], inv_bid, inv_ask, bp, bsz, ap, asz)


@njit(cache=True, inline="always")
def _side_limits(limit, inv_bid, inv_ask, bp, bsz, ap, asz):
    if not (inv_bid + bsz <= limit + EPS):
        bsz = 0.0
    if not (inv_ask - asz >= -limit - EPS):
        asz = 0.0
    return bp, bsz, ap, asz


@njit(cache=True, inline="always")
def _submit(ts, prm, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t):
    """Send quotes decided at time ``t`` after row ``d``: both sides (size 0 = withdraw) join the
    pending FIFO."""
    a = activation_row(ts, prm[P_LATNS] > 0 or prm[P_HFT] > 0, prm[P_HFT] > 0, np.int64(prm[P_LATNS]),
                       np.int64(prm[P_LAT]), d, t)
    _push(is_, pi, pf, a, bid_px, bid_sz, ask_px, ask_sz)


@njit(cache=True, inline="always")
def _push(is_, pi, pf, a, bid_px, bid_sz, ask_px, ask_sz):
    """Both sides' orders, live from row ``a``, join the pending FIFO."""
    for side in range(2):
        h = is_[I_PH0 + 2 * side]
        c = is_[I_PC0 + 2 * side]
        if c >= PEND_CAP:
            raise ValueError("more than 64 orders in flight on one side: latency >> decision interval")
        k = (h + c) % PEND_CAP
        pi[side, k, 0] = a
        pi[side, k, 1] = bid_px if side == 0 else ask_px
        pf[side, k] = bid_sz if side == 0 else ask_sz
        is_[I_PC0 + 2 * side] = c + 1


@njit(cache=True, inline="always")
def _arrive(hft, post_only, side, px, size, sz, P, opp):
    """What an order (``px``, ``size``) reaching the exchange on ``side`` does, our resting order
    there being (``P``, ``sz``) and ``opp`` the opposite best of the book it sees: GONE (size 0:
    the side is withdrawn), KEEP (design model: same price, size not increased: a modify that keeps
    queue priority), REJECT (it would take, post-only), TAKE (a taker order: it walks the opposite
    side, :func:`_take`), REST (a new order at the back of the queue). All but KEEP cancel the
    resting order."""
    what = REST
    if size <= 0:
        what = GONE
    elif not hft and sz > 0 and P == px and size <= sz + EPS:
        what = KEEP
    elif (px >= opp) if side == 0 else (px <= opp):
        what = REJECT if post_only else TAKE
    return what


@njit(cache=True, inline="always")
def _book_arrival(fs, is_, side, what, px, size, prev):
    """Book what an order (``px``, ``size``) reaching the exchange on ``side`` does (:func:`_arrive`):
    KEEP resizes the resting order, anything else cancels it; TAKE and REST count as placed orders
    and rest at ``px``. A REST order waits at the back of the queue: it saw the book of row
    ``prev``, whose displayed size at ``px`` :func:`_match` reads as the queue ahead when a print
    first needs it (NaN until then). A TAKE order has queue 0 (nothing shows at ``px`` on its own
    side: the book was uncrossed) and the crossed-rule guard from row ``prev + 1``; the caller
    walks the book with it (:func:`_take`). Straight-line code: inlining it costs no reference
    counting."""
    fs[F_BSZ + 2 * side] = 0.0 if what == GONE or what == REJECT else size
    if what == TAKE or what == REST:
        is_[I_NPLACED] += 1
        fs[F_QUOTED] += size
        is_[I_BPX + side] = px
        is_[I_BHIT + side] = 0
        is_[I_QR0 + side] = prev
        fs[F_BQ + 2 * side] = 0.0 if what == TAKE else np.nan
    if what != KEEP:
        is_[I_TK0 + side] = prev + 1 if what == TAKE else 0


@njit(cache=True)
def _run(ts, bpx, bsz, apx, asz, tpx, tsz, tsd, mt, mp, ms, md, prm, fs, is_, pi, pf, r1,
         dec_rows, dec_ts, sig, raw, j0, j1, send, qout, log_i, log_f, eq, inv, base):
    """THE loop, one account: rows ``is_[I_ROW] .. r1-1`` and the decisions ``j0 .. j1-1``
    (:func:`_loop`), growing the fills log whenever the loop stops for room.
    Returns ``(log_i, log_f, next decision)``."""
    j = j0
    while True:
        j = _loop(ts, bpx, bsz, apx, asz, tpx, tsz, tsd, mt, mp, ms, md, prm, fs, is_, pi, pf, r1,
                  dec_rows, dec_ts, sig, raw, j, j1, send, qout, log_i, log_f, eq, inv, base)
        if j >= 0:
            return log_i, log_f, j
        j = -j - 1
        log_i, log_f = _grow(log_i, log_f, is_[I_NLOG], _room(bpx.shape[1]))


@njit(cache=True)
def _loop(ts, bpx, bsz, apx, asz, tpx, tsz, tsd, mt, mp, ms, md, prm, fs, is_, pi, pf, r1,
          dec_rows, dec_ts, sig, raw, j0, j1, send, qout, log_i, log_f, eq, inv, base):
    """Rows ``is_[I_ROW] .. r1-1`` and the decisions ``j0 .. j1-1`` of one account.

    Decision ``j`` (quotes decided at time ``dec_ts[j]`` after row ``d = dec_rows[j]`` from
    ``sig[j]`` = (m̂, ŝ, v̂, η) or, with ``raw``, the quotes) is taken once row ``d`` is processed
    (or when no rows are left): orders still in flight that reach the exchange before row
    ``d + 1`` are placed first (as row ``d + 1`` would; this keeps the FIFO short when many clock
    decisions fall between two rows). The design model decides on the inventory before them; the
    hftbacktest model after them (its trader knows they arrived: they count as resting). Its
    quotes (inventory rule applied) go to ``qout[j]`` when ``qout`` has that row, and with
    ``send`` into the pending FIFO.

    Row ``r``: orders due at ``r`` become live, each live side is matched, then equity (currency:
    ticks x ``prm[P_TICK]``) / inventory are written at ``r - base`` when ``eq`` is non-empty. The
    pre-filter: a live bid at ``P`` can only fill if a print at ``<= P`` or the best ask ``<= P``
    occurs (asks mirror), so the common row skips :func:`_match`, which reads the queue ahead on
    arrival (left NaN by the placement) and catches the depth cap up over the skipped rows.

    Returns the next decision; or, when the fills log (non-empty) has less than ``_room(L)`` rows
    free (``L`` book levels), ``-(next decision) - 1`` with ``is_[I_ROW]`` at the next row:
    :func:`_run` grows the log and calls again (an array reassigned inside the loop would be
    reference-counted on every iteration)."""
    msg = prm[P_MSGS] > 0
    hft = prm[P_HFT] > 0
    post_only = prm[P_POSTONLY] > 0
    taker_fee = prm[P_TAKER]
    resp, limit = np.int64(prm[P_RESPNS]), prm[P_LIMIT]
    timed, latns, lat = prm[P_LATNS] > 0 or hft, np.int64(prm[P_LATNS]), np.int64(prm[P_LAT])
    rec, tick = eq.shape[0] > 0, prm[P_TICK]
    nlog, room = log_i.shape[0], _room(bpx.shape[1])  # nlog 0: no log
    r = is_[I_ROW]
    j = j0
    d, t = np.int64(0), np.int64(0)
    known, inv_b, inv_a = 0.0, 0.0, 0.0
    tk_side = 0
    due = NEVER  # the earliest activation row in the pending FIFOs
    for side in range(2):
        if is_[I_PC0 + 2 * side] > 0:
            due = min(due, pi[side, is_[I_PH0 + 2 * side], 0])
    while True:
        dec = j < j1 and (dec_rows[j] < r or r >= r1)
        if not dec and r >= r1:
            break
        if is_[I_NLOG] + room > nlog > 0:
            is_[I_ROW] = r
            return -j - 1
        x = r  # orders due at row x reach the exchange now (they see row x - 1)
        if dec:
            d, t = dec_rows[j], dec_ts[j]
            x = d + 1
            known = inv_b = inv_a = fs[F_INV]
        while due <= x:  # a taker order stops the pass; it walks the book below, then the pass resumes
            took = False
            for side in range(2):
                h = is_[I_PH0 + 2 * side]
                c = is_[I_PC0 + 2 * side]
                while c > 0 and pi[side, h, 0] <= x:  # FIFO: activation rows are non-decreasing
                    px = pi[side, h, 1]
                    size = pf[side, h]
                    h = (h + 1) % PEND_CAP
                    c -= 1
                    opp = apx[x - 1, 0] if side == 0 else bpx[x - 1, 0]
                    what = _arrive(hft, post_only, side, px, size, fs[F_BSZ + 2 * side], is_[I_BPX + side], opp)
                    _book_arrival(fs, is_, side, what, px, size, x - 1)
                    if what == TAKE:  # taker: walks the opposite side of row x - 1 (_take)
                        tk_side, took = side, True
                        break
                is_[I_PH0 + 2 * side] = h
                is_[I_PC0 + 2 * side] = c
                if took:
                    break
            due = NEVER
            for side in range(2):
                if is_[I_PC0 + 2 * side] > 0:
                    due = min(due, pi[side, is_[I_PH0 + 2 * side], 0])
            if took:  # filled out here: a call inside the FIFO loop slows every pass (~15%)
                _take(ts, bpx, bsz, apx, asz, taker_fee, fs, is_, tk_side, x, log_i, log_f)
        if dec:
            while True:  # decision j, then (a burst, see below) the next ones at row d
                if hft:
                    known, inv_b, inv_a = _inventories(resp, fs[F_INV], fs[F_LFS0], is_[I_LFT0], fs[F_LFS1],
                                                       is_[I_LFT1], fs[F_BSZ], fs[F_ASZ], t)
                if raw:
                    bp, bs, ap, as_ = _limit_raw(limit, known, np.int64(sig[j, 0]), sig[j, 1],
                                                 np.int64(sig[j, 2]), sig[j, 3])
                else:
                    bp, bs, ap, as_ = quote(prm, bpx[d, 0], apx[d, 0], known, sig[j, 0], sig[j, 1], sig[j, 2],
                                            sig[j, 3])
                bp, bs, ap, as_ = _side_limits(limit, inv_b, inv_a, bp, bs, ap, as_)
                if qout.shape[0] > j:
                    qout[j, 0] = bp
                    qout[j, 1] = bs
                    qout[j, 2] = ap
                    qout[j, 3] = as_
                j += 1
                if not send:
                    break
                a = activation_row(ts, timed, hft, latns, lat, d, t)
                # a burst (clock decisions between two rows): when these orders arrive before row x, the
                # FIFO is empty and the next decision comes first, its activation pass would place just
                # them: do it here, without the FIFO round trip, unless one would take (the pass logs it)
                wb, wa = TAKE, TAKE
                if a <= x and j < j1 and dec_rows[j] == d and is_[I_PC0] == 0 and is_[I_PC1] == 0:
                    wb = _arrive(hft, post_only, 0, bp, bs, fs[F_BSZ], is_[I_BPX], apx[x - 1, 0])
                    wa = _arrive(hft, post_only, 1, ap, as_, fs[F_ASZ], is_[I_APX], bpx[x - 1, 0])
                if wb == TAKE or wa == TAKE:
                    _push(is_, pi, pf, a, bp, bs, ap, as_)
                    due = min(due, a)
                    break
                for side in range(2):
                    what, px, size = (wb, bp, bs) if side == 0 else (wa, ap, as_)
                    _book_arrival(fs, is_, side, what, px, size, x - 1)  # never TAKE here
                t = dec_ts[j]
                known = inv_b = inv_a = fs[F_INV]
            continue
        live_b = fs[F_BSZ] > 0
        live_a = fs[F_ASZ] > 0
        if live_b or live_a:
            if msg:  # LOBSTER: executions of visible (4) or hidden (5) orders
                m = mt[r]
                traded = m == 4 or m == 5
                tp = mp[r]
                tv = ms[r]
                sd = np.int64(md[r])
            else:
                tv = tsz[r]
                traded = tv > 0
                tp = tpx[r]
                sd = np.int64(tsd[r])
            if live_b and (apx[r, 0] <= is_[I_BPX] or (traded and tp <= is_[I_BPX])):
                _match(ts, bpx, bsz, apx, asz, prm, fs, is_, 0, r, tp, tv, sd, msg, log_i, log_f)
            if live_a and (bpx[r, 0] >= is_[I_APX] or (traded and tp >= is_[I_APX])):
                _match(ts, bpx, bsz, apx, asz, prm, fs, is_, 1, r, tp, tv, sd, msg, log_i, log_f)
        if rec:
            eq[r - base] = (fs[F_CASH] + fs[F_INV] * 0.5 * (bpx[r, 0] + apx[r, 0])) * tick
            inv[r - base] = fs[F_INV]
        r += 1
    is_[I_ROW] = r
    return j


# the doors of rl.py / Engine: the same loop, with the book as the tuple of book_arrays()
@njit(cache=True, inline="always")
def advance(bk, prm, fs, is_, pi, pf, r1, log_i, log_f, eq, inv, base):
    """Process rows ``is_[I_ROW] .. r1-1`` (no decisions); write equity (currency) / inventory at
    ``row - base`` when ``eq`` is non-empty. Returns the (possibly grown) fills log."""
    no_i = np.zeros(0, np.int64)
    no_q = np.zeros((0, 4))
    log_i, log_f, _ = _run(bk[0], bk[1], bk[2], bk[3], bk[4], bk[5], bk[6], bk[7], bk[8], bk[9], bk[10], bk[11],
                           prm, fs, is_, pi, pf, r1, no_i, no_i, no_q, False, 0, 0, False, no_q, log_i, log_f,
                           eq, inv, base)
    return log_i, log_f


@njit(cache=True, inline="always")
def decide(bk, prm, fs, is_, pi, pf, d, t, s0, s1, s2, s3, raw, log_i, log_f):
    """Quotes decided at time ``t`` after row ``d`` (already processed) from signals (m̂, ŝ, v̂, η)
    or ``raw`` quotes, inventory rule applied, as :func:`_run` decides; not sent (see
    :func:`submit`). -> (bid_px, bid_sz, ask_px, ask_sz, log_i, log_f)."""
    dec = np.full(1, d, np.int64)
    dts = np.full(1, t, np.int64)
    sig = np.empty((1, 4))
    sig[0, 0], sig[0, 1], sig[0, 2], sig[0, 3] = s0, s1, s2, s3
    q = np.zeros((1, 4))
    log_i, log_f, _ = _run(bk[0], bk[1], bk[2], bk[3], bk[4], bk[5], bk[6], bk[7], bk[8], bk[9], bk[10], bk[11],
                           prm, fs, is_, pi, pf, is_[I_ROW], dec, dts, sig, raw, 0, 1, False, q, log_i, log_f,
                           np.zeros(0), np.zeros(0), 0)
    return np.int64(q[0, 0]), q[0, 1], np.int64(q[0, 2]), q[0, 3], log_i, log_f


@njit(cache=True, inline="always")
def submit(bk, prm, fs, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t):
    """:func:`_submit` with the book tuple."""
    _submit(bk[0], prm, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t)


@njit(cache=True, inline="always")
def reset(fs, is_, row):
    fs[:] = 0.0
    is_[:] = 0
    is_[I_ROW] = row


@njit(cache=True)
def run_engine(bk, prm, dec_rows, sig, raw, ep_start, ep_end, dec_lo, dec_hi, log_i, log_f, eq, inv, base,
               dec_ts):
    """The whole backtest in numba: one :func:`_run` per episode.

    Episode ``e`` covers rows [ep_start[e], ep_end[e]) and decisions dec_lo[e]..dec_hi[e]-1; it
    starts flat and ends marked to the mid of its last row. ``sig[j]`` = (m̂, ŝ, v̂, η) or, with
    ``raw``, quotes (bid_px, bid_sz, ask_px, ask_sz), decided at time ``dec_ts[j]`` after row
    ``dec_rows[j]``. Returns (per-episode [E, NE], log_i, log_f).
    """
    bpx, apx = bk[1], bk[3]
    fs = np.zeros(NF)
    is_ = np.zeros(NI, np.int64)
    pi = np.zeros((2, PEND_CAP, 2), np.int64)
    pf = np.zeros((2, PEND_CAP))
    out = np.zeros((ep_start.shape[0], NE))
    no_q = np.zeros((0, 4))
    for e in range(ep_start.shape[0]):
        nlog = is_[I_NLOG]
        reset(fs, is_, ep_start[e])
        is_[I_NLOG] = nlog  # one fills log across episodes
        log_i, log_f, _ = _run(bk[0], bk[1], bk[2], bk[3], bk[4], bk[5], bk[6], bk[7], bk[8], bk[9], bk[10],
                               bk[11], prm, fs, is_, pi, pf, ep_end[e], dec_rows, dec_ts, sig, raw, dec_lo[e],
                               dec_hi[e], True, no_q, log_i, log_f, eq, inv, base)
        last = ep_end[e] - 1
        out[e, E_CASH] = fs[F_CASH]
        out[e, E_INV] = fs[F_INV]
        out[e, E_MARK] = 0.5 * (bpx[last, 0] + apx[last, 0])
        out[e, E_FEES] = fs[F_FEES]
        out[e, E_VOL] = fs[F_VOL]
        out[e, E_QUOTED] = fs[F_QUOTED]
        out[e, E_NFILL] = is_[I_NFILL]
        out[e, E_NPLACED] = is_[I_NPLACED]
        out[e, E_NFILLED] = is_[I_NFILLED]
    return out, log_i, log_f


# ------------------------------------------------------------------ batched (gym env)
@njit(cache=True)
def quote_many(bk, prm, FS, IS, rows, sig):
    """Quotes [E, 4] for every env from signals [E, 4] at its decision row (time ``ts[row]``)."""
    out = np.zeros((rows.shape[0], 4))
    for e in range(rows.shape[0]):
        d = rows[e]
        known, inv_b, inv_a = trader_inventory(prm, FS[e], IS[e], bk[0][d])
        bp, bs, ap, as_ = quote(prm, bk[1][d, 0], bk[3][d, 0], known,
                                sig[e, 0], sig[e, 1], sig[e, 2], sig[e, 3])
        bp, bs, ap, as_ = side_limits(prm, inv_b, inv_a, bp, bs, ap, as_)
        out[e, 0] = bp
        out[e, 1] = bs
        out[e, 2] = ap
        out[e, 3] = as_
    return out


@njit(cache=True)
def submit_many(bk, prm, FS, IS, PI, PF, rows, quotes, raw):
    for e in range(rows.shape[0]):
        bp, bs, ap, as_ = np.int64(quotes[e, 0]), quotes[e, 1], np.int64(quotes[e, 2]), quotes[e, 3]
        t = bk[0][rows[e]]
        if raw:
            known, inv_b, inv_a = trader_inventory(prm, FS[e], IS[e], t)
            bp, bs, ap, as_ = _limit_raw(prm[P_LIMIT], known, bp, bs, ap, as_)
            bp, bs, ap, as_ = side_limits(prm, inv_b, inv_a, bp, bs, ap, as_)
        submit(bk, prm, FS[e], IS[e], PI[e], PF[e], rows[e], bp, bs, ap, as_, t)


@njit(cache=True)
def advance_many(bk, prm, FS, IS, PI, PF, r1):
    no_i = np.zeros((0, 4), np.int64)
    no_f = np.zeros((0, 3))
    no_eq = np.zeros(0)
    for e in range(r1.shape[0]):
        advance(bk, prm, FS[e], IS[e], PI[e], PF[e], r1[e], no_i, no_f, no_eq, no_eq, 0)


@njit(cache=True)
def reset_many(FS, IS, rows, mask):
    for e in range(rows.shape[0]):
        if mask[e]:
            reset(FS[e], IS[e], rows[e])


# ------------------------------------------------------------------ python side
def book_arrays(book) -> tuple:
    """The Book as the tuple of contiguous, fixed-dtype arrays the kernels take.

    LOBSTER books may carry ``meta['msg_type'|'msg_price'|'msg_size'|'msg_direction']`` per row;
    then executions drive the at-price queue, otherwise trade_px / trade_sz / trade_side do.
    """
    c = np.ascontiguousarray
    meta = getattr(book, "meta", None) or {}
    if "msg_type" in meta:
        msgs = (c(meta["msg_type"], np.int8), c(meta["msg_price"], np.int64),
                c(meta["msg_size"], np.float64), c(meta["msg_direction"], np.int8))
    else:
        msgs = (np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8))
    return (c(book.ts, np.int64), c(book.bid_px, np.int64), c(book.bid_sz, np.float64),
            c(book.ask_px, np.int64), c(book.ask_sz, np.float64), c(book.trade_px, np.int64),
            c(book.trade_sz, np.float64), c(book.trade_side, np.int8)) + msgs


FILL_DTYPE = np.dtype([("row", np.int64), ("ts", np.int64), ("side", np.int8), ("price", np.int64),
                       ("size", np.float64), ("fee", np.float64), ("taker", np.bool_)])


def fills_table(log_i: np.ndarray, log_f: np.ndarray, n: int, tick_size: float) -> np.ndarray:
    """Structured array (row, ts, side ±1, price ticks, size, fee currency, taker)."""
    out = np.zeros(n, FILL_DTYPE)
    out["row"], out["ts"] = log_i[:n, L_ROW], log_i[:n, L_TS]
    out["side"], out["price"] = log_i[:n, L_SIDE], log_i[:n, L_PX]
    out["size"], out["fee"] = log_f[:n, L_SIZE], log_f[:n, L_FEE] * tick_size
    out["taker"] = log_f[:n, L_TAKER] > 0
    return out


class Engine:
    """Stateful door to the same kernels, for ``n_envs`` independent accounts on one book.

    Protocol (what a gymnasium env does per action): ``reset(rows)`` puts each env flat at its
    start row; ``submit(rows, quotes|signals)`` sends quotes decided after row ``rows[e]`` (the
    env must have advanced through that row: ``advance(rows + 1)``); ``advance(r1)`` processes
    rows up to ``r1 - 1``. ``equity()`` marks to the mid of the last processed row, in currency.
    With ``n_envs == 1`` and ``log_fills`` the fills are logged exactly as in ``run_backtest``.
    """

    def __init__(self, book, cfg=None, n_envs: int = 1, log_fills: bool = False):
        self.book, self.tick = book, float(book.tick_size)
        self.bk = book_arrays(book)
        self.prm = params(cfg, self.tick, has_messages=self.bk[8].shape[0] > 0)
        self.n_envs = n_envs
        self.FS = np.zeros((n_envs, NF))
        self.IS = np.zeros((n_envs, NI), np.int64)
        self.PI = np.zeros((n_envs, 2, PEND_CAP, 2), np.int64)
        self.PF = np.zeros((n_envs, 2, PEND_CAP))
        self.log_fills = log_fills and n_envs == 1
        self._log_i = np.zeros((256 if self.log_fills else 0, 4), np.int64)
        self._log_f = np.zeros((self._log_i.shape[0], 3))

    def _rows(self, rows) -> np.ndarray:
        return np.broadcast_to(np.asarray(rows, np.int64), (self.n_envs,)).copy()

    def reset(self, rows, mask=None) -> None:
        rows = self._rows(rows)
        mask = np.ones(self.n_envs, np.bool_) if mask is None else np.asarray(mask, np.bool_)
        reset_many(self.FS, self.IS, rows, mask)
        self.PI[mask] = 0
        self.PF[mask] = 0
        if self.log_fills and mask[0]:
            self._log_i[:] = 0

    def quotes(self, rows, signals) -> np.ndarray:
        """[E, 4] quotes (bid_px, bid_sz, ask_px, ask_sz) from signals [E, 4] (m̂, ŝ, v̂, η)."""
        sig = np.ascontiguousarray(np.broadcast_to(np.asarray(signals, np.float64), (self.n_envs, 4)))
        return quote_many(self.bk, self.prm, self.FS, self.IS, self._rows(rows), sig)

    def submit(self, rows, quotes=None, signals=None) -> np.ndarray:
        """Send raw ``quotes`` (inventory rule only) or quotes built from ``signals``; returns them."""
        rows = self._rows(rows)
        if (self.IS[:, I_ROW] != rows + 1).any():
            raise ValueError("submit(rows): advance each env through its decision row first")
        raw = quotes is not None
        q = np.ascontiguousarray(np.broadcast_to(np.asarray(quotes, np.float64), (self.n_envs, 4))) if raw \
            else self.quotes(rows, signals)
        submit_many(self.bk, self.prm, self.FS, self.IS, self.PI, self.PF, rows, q, raw)
        return q

    def advance(self, r1) -> None:
        r1 = np.minimum(self._rows(r1), self.book.n)
        if self.log_fills:
            self._log_i, self._log_f = advance(self.bk, self.prm, self.FS[0], self.IS[0], self.PI[0],
                                               self.PF[0], int(r1[0]), self._log_i, self._log_f,
                                               np.zeros(0), np.zeros(0), 0)
        else:
            advance_many(self.bk, self.prm, self.FS, self.IS, self.PI, self.PF, r1)

    @property
    def row(self) -> np.ndarray:
        """Next row to process, per env."""
        return self.IS[:, I_ROW].copy()

    @property
    def inventory(self) -> np.ndarray:
        return self.FS[:, F_INV].copy()

    @property
    def cash(self) -> np.ndarray:
        """Cash in currency (fees included)."""
        return self.FS[:, F_CASH] * self.tick

    def equity(self) -> np.ndarray:
        """Cash + inventory x mid of the last processed row, currency."""
        last = np.maximum(self.IS[:, I_ROW] - 1, 0)
        mid = 0.5 * (self.bk[1][last, 0] + self.bk[3][last, 0])
        return (self.FS[:, F_CASH] + self.FS[:, F_INV] * mid) * self.tick

    def fills(self) -> np.ndarray:
        if not self.log_fills:
            raise ValueError("Engine(log_fills=True, n_envs=1) keeps the fills log")
        return fills_table(self._log_i, self._log_f, int(self.IS[0, I_NLOG]), self.tick)

    def counters(self) -> dict:
        """Per-env counts: fills, placed orders, orders with a fill, volume, fees (currency)."""
        return {"n_fills": self.IS[:, I_NFILL].copy(), "n_orders": self.IS[:, I_NPLACED].copy(),
                "n_filled_orders": self.IS[:, I_NFILLED].copy(), "volume": self.FS[:, F_VOL].copy(),
                "fees": self.FS[:, F_FEES] * self.tick}


# ------------------------------------------------------------------ the backtest
def default_end_row(decision_rows: np.ndarray, n_rows: int) -> int:
    """Last decision + the median decision interval (its quotes rest that long), capped at N."""
    d = np.asarray(decision_rows)
    step = int(np.median(np.diff(d))) if len(d) > 1 else 1
    return int(min(n_rows, d[-1] + max(step, 1)))


@dataclass
class BacktestResult:
    """Per-row paths over rows ``rows`` (currency), the fills log and the metrics."""

    rows: np.ndarray  # int64 [R] book rows start .. end-1
    ts: np.ndarray  # int64 [R]
    equity: np.ndarray  # float64 [R] cash + inventory x mid, currency (0 at each episode start)
    inventory: np.ndarray  # float64 [R] shares
    fills: np.ndarray  # structured FILL_DTYPE [n_fills]
    decision_rows: np.ndarray  # int64 [D]
    episodes: np.ndarray  # int64 [E, 2] (first row, end row)
    episode_metrics: list  # one dict per episode
    metrics: dict  # aggregate: mean over episodes, '<name>_std', n_episodes
    quotes_raw: bool = False
    extra: dict = field(default_factory=dict)

    def step_equity(self, e: int) -> np.ndarray:
        """Equity of episode ``e`` at its decision rows and, last, marked at its end row."""
        s, t = self.episodes[e]
        d = self.decision_rows[(self.decision_rows >= s) & (self.decision_rows < t)]
        base = self.rows[0]
        return np.concatenate([self.equity[d - base], self.equity[[t - 1 - base]]])

    def cumulative_equity(self) -> np.ndarray:
        """Per-row equity with each episode offset by the PnL of the episodes before it."""
        out = self.equity.copy()
        base, carry = int(self.rows[0]), 0.0
        for s, t in self.episodes:
            out[s - base:t - base] += carry
            carry = out[t - 1 - base]
        return out


@njit(cache=True)
def _check_decisions(dec, dts, ts):
    """0 if the ``D >= 1`` decisions are valid; else 1 if the times ``dts`` are not strictly
    increasing, else 2: a row lies outside the book ``ts``, the rows decrease (or, with no times,
    repeat), or a time precedes its row's. ``dts`` empty: rows only. One branch-free pass."""
    n = ts.shape[0]
    bad_t, bad_r = False, False
    pd = dec[0]
    if dts.shape[0] > 0:
        pt = dts[0] - 1
        for k in range(dec.shape[0]):
            d, t = dec[k], dts[k]
            bad_r |= (d < pd) | (d < 0) | (d >= n) | (t < ts[min(max(d, 0), n - 1)])
            bad_t |= t <= pt
            pd, pt = d, t
    else:
        pd -= 1
        for k in range(dec.shape[0]):
            d = dec[k]
            bad_r |= (d <= pd) | (d < 0) | (d >= n)
            pd = d
    return 1 if bad_t else (2 if bad_r else 0)


def run_backtest(book, decision_rows, signals, market_cfg=None, episode_length=None, end_row=None,
                 raw_quotes: bool = False, decision_ts=None, metrics: bool = True, episodes=None) -> BacktestResult:
    """Replay ``book`` with quotes decided after each of ``decision_rows`` (increasing).

    ``decision_ts`` (int64 ns, strictly increasing, ``>= ts[decision_rows]``) puts decisions on a
    clock instead of at row times, e.g. every 100 ms as hftbacktest's ``elapse`` does (then a row
    may carry several decisions); latency in ns counts from it. ``metrics=False`` skips the
    episode metrics (``res.metrics`` stays empty), e.g. for throughput benchmarks.
    ``res.decision_rows`` and ``res.extra['decision_ts']`` are views of the inputs when these are
    contiguous int64 (no copy).

    ``signals`` [D, 4] = (m̂, ŝ, v̂, η) per decision (quoting.py), or with ``raw_quotes`` the quotes
    themselves (bid_px ticks, bid_size, ask_px ticks, ask_size; the inventory rule still applies).
    Rows [decision_rows[0], end_row) are cut into episodes of ``episode_length`` (rows, a
    duration such as "30min", "auto" = ``market_cfg.n_episodes`` equal parts, None = one episode;
    default ``market_cfg.episode_length``; see ``episodes.py``), or ``episodes`` [E, 2] gives them
    (first row, end row); each starts flat and is marked to mid at its last row (an episode without
    a decision is dropped). All numbers in currency (ticks x ``book.tick_size``).
    """
    from .metrics import summarize_episodes

    dec = np.ascontiguousarray(decision_rows, np.int64)
    sig = np.ascontiguousarray(signals, np.float64)
    if dec.ndim != 1 or len(dec) == 0:
        raise CMMInputError("backtest: need at least one decision row")
    if sig.shape != (len(dec), 4):
        raise CMMInputError(f"backtest: signals must be [D, 4] with D={len(dec)}, got {sig.shape}")
    bk = book_arrays(book)
    if decision_ts is None:
        if _check_decisions(dec, bk[0][:0], bk[0]) != 0:
            raise CMMInputError("backtest: decision rows must be strictly increasing and inside the book")
        dts = bk[0][dec]
    else:
        dts = np.ascontiguousarray(decision_ts, np.int64)
        bad = 1 if dts.shape != dec.shape else _check_decisions(dec, dts, bk[0])
        if bad == 1:
            raise CMMInputError("backtest: decision_ts must be strictly increasing, one per decision row")
        if bad == 2:
            raise CMMInputError("backtest: decision rows must be non-decreasing, inside the book and "
                                "not after their decision_ts")
    if episode_length is None:
        episode_length = getattr(market_cfg, "episode_length", None) if market_cfg is not None else None
    end = default_end_row(dec, book.n) if end_row is None else int(min(end_row, book.n))
    keep = int(np.searchsorted(dec, end))  # sorted: the decisions before the end row are a prefix
    dec, sig, dts = dec[:keep], sig[:keep], dts[:keep]
    if episodes is not None:
        eps = np.asarray(episodes, np.int64).reshape(-1, 2)
    else:
        n_eps = int(getattr(market_cfg, "n_episodes", 20) if market_cfg is not None else 20)
        eps = episode_bounds(int(dec[0]), end, resolve_episode_length(episode_length, end - int(dec[0]), n_eps),
                             ts=bk[0])
    lo = np.searchsorted(dec, eps[:, 0])
    hi = np.searchsorted(dec, eps[:, 1])
    has = hi > lo
    eps, lo, hi = eps[has], lo[has], hi[has]

    prm = params(market_cfg, float(book.tick_size), has_messages=bk[8].shape[0] > 0)
    base = int(eps[0, 0])
    R = int(eps[-1, 1]) - base
    eq, inv = np.zeros(R), np.zeros(R)
    log_i, log_f = np.zeros((1024, 4), np.int64), np.zeros((1024, 3))
    out, log_i, log_f = run_engine(bk, prm, dec, sig, bool(raw_quotes), eps[:, 0].copy(), eps[:, 1].copy(),
                                   lo.astype(np.int64), hi.astype(np.int64), log_i, log_f, eq, inv, base, dts)
    tick = float(book.tick_size)
    n_fills = int(out[:, E_NFILL].sum())
    fills = fills_table(log_i, log_f, n_fills, tick)
    rows = np.arange(base, base + R, dtype=np.int64)
    res = BacktestResult(rows=rows, ts=bk[0][base:base + R], equity=eq, inventory=inv, fills=fills,
                         decision_rows=dec, episodes=eps, episode_metrics=[], metrics={},
                         quotes_raw=bool(raw_quotes))
    res.extra["episode_state"] = out
    res.extra["tick_size"] = tick
    res.extra["decision_ts"] = dts
    if metrics:
        res.episode_metrics, res.metrics = summarize_episodes(res)
    return res

"""What the exchange does with our orders, the same in every fill model: the pending FIFO and the
activation row, booking an arrival, the taker walk, matching a resting order against a row
(through the model's ``print_fill``, then the crossed rule and its guard), the depth cap, and
booking fills into the account and the fills log (README, "Market making: quotes, fill model and
metrics"). Our orders never move the replayed book.

Helpers here are inlined into the loop (``loop.py``) unless said otherwise; those that take
arrays are straight-line or take the book as separate arrays (see the note in ``loop.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..quoting import EPS, P_DEPTHCAP, P_LAT, P_LATNS, P_LOT, P_MAKER, P_MODEL, P_PARTIAL
from . import model as M
from .state import (F_BQ, F_BSZ, F_CASH, F_FEES, F_INV, F_LFS0, F_QUOTED, F_VOL, GONE, I_BHIT, I_BPX,
                    I_LFT0, I_NFILL, I_NFILLED, I_NLOG, I_NPLACED, I_PC0, I_PH0, I_QR0, I_QR1, I_TK0, KEEP,
                    L_FEE, L_PX, L_ROW, L_SIDE, L_SIZE, L_TAKER, L_TS, PEND_CAP, REJECT, REST, TAKE)


@njit(cache=True, inline="always")
def level_size(px, sz, r, price, is_bid, unknown):
    """Displayed size at ``price`` on one side of snapshot ``r`` (``px``/``sz`` are [N, L]; no row
    views, which cost reference counting in the hot loop).

    0 when ``price`` improves the best, falls in a gap between occupied levels, or lies beyond
    the last level of a book that shows all its levels (padding); ``unknown`` when it lies beyond
    the deepest level of a full view (the fill model's ``UNSEEN_QUEUE``).
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
def activation_row(ts, timed, strict, latns, lat, d, t):
    """Row at which an order decided at time ``t >= ts[d]`` after row ``d`` is live (may be
    ``len(ts)``: never): ``d + latency`` snapshots, or when ``timed`` the first row with
    ``ts >= t + latency_ns`` (``ts > t + latency_ns`` when ``strict``: market data stamped at the
    arrival time is processed before the order); ``timed``/``strict`` from the fill model (its
    ``ALWAYS_NS`` or ``market.latency_ns > 0``; its ``STRICT_ARRIVAL``),
    ``latns``/``lat`` the latencies. One exit (no return inside a loop), so that inlining it costs
    no reference counting."""
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
def side_limits(limit, inv_bid, inv_ask, bp, bsz, ap, asz):
    """The inventory rule with each side's worst-case inventory (the fill model's
    ``trader_inventory``; a no-op when both are the inventory the quote was built on)."""
    if not (inv_bid + bsz <= limit + EPS):
        bsz = 0.0
    if not (inv_ask - asz >= -limit - EPS):
        asz = 0.0
    return bp, bsz, ap, asz


# ------------------------------------------------------------------ orders in flight, arrivals
@njit(cache=True, inline="always")
def arrive(keeps, post_only, side, px, size, sz, P, opp):
    """What an order (``px``, ``size``) reaching the exchange on ``side`` does, our resting order
    there being (``P``, ``sz``) and ``opp`` the opposite best of the book it sees: GONE (size 0:
    the side is withdrawn), KEEP (a re-quote at the same price with a size not larger than what is
    left, when the fill model's exchange modifies orders in place: ``keeps``, its
    ``MODIFY_KEEPS_QUEUE``; the order keeps its queue position), REJECT (it would take,
    post-only), TAKE (a taker order: it walks the opposite side, :func:`take`), REST (a new order
    at the back of the queue). All but KEEP cancel the resting order."""
    what = REST
    if size <= 0:
        what = GONE
    elif keeps and sz > 0 and P == px and size <= sz + EPS:
        what = KEEP
    elif (px >= opp) if side == 0 else (px <= opp):
        what = REJECT if post_only else TAKE
    return what


@njit(cache=True, inline="always")
def submit(ts, prm, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t):
    """Send quotes decided at time ``t`` after row ``d``: both sides (size 0 = withdraw) join the
    pending FIFO."""
    always_ns, strict, _, _ = M.constants(np.int64(prm[P_MODEL]))
    timed = prm[P_LATNS] > 0 or always_ns
    a = activation_row(ts, timed, strict, np.int64(prm[P_LATNS]), np.int64(prm[P_LAT]), d, t)
    push(is_, pi, pf, a, bid_px, bid_sz, ask_px, ask_sz)


@njit(cache=True, inline="always")
def push(is_, pi, pf, a, bid_px, bid_sz, ask_px, ask_sz):
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
def book_arrival(fs, is_, side, what, px, size, prev):
    """Book what an order (``px``, ``size``) reaching the exchange on ``side`` does (the model's
    ``arrive``): KEEP resizes the resting order, anything else cancels it; TAKE and REST count as
    placed orders and rest at ``px``. A REST order waits at the back of the queue: it saw the book
    of row ``prev``, whose displayed size at ``px`` :func:`match` reads as the queue ahead when a
    print first needs it (NaN until then). A TAKE order has queue 0 (nothing shows at ``px`` on its
    own side: the book was uncrossed) and the crossed-rule guard from row ``prev + 1``; the caller
    walks the book with it (:func:`take`). Straight-line code: inlining it costs no reference
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


# ------------------------------------------------------------------ fills
@njit(cache=True, inline="always")
def room(levels):
    """Most fills between two checks of the log's size (one row, or one decision): every order
    in flight (``PEND_CAP`` per side) may take, walking up to ``levels`` levels, then two matches."""
    return 2 * PEND_CAP * levels + 4


@njit(cache=True)
def grow(log_i, log_f, n, room):
    """The fills log (``n`` rows used) with ``room`` more rows free (x2 when short)."""
    if log_i.shape[0] == 0 or n + room <= log_i.shape[0]:
        return log_i, log_f
    gi = np.zeros((2 * log_i.shape[0] + room, 4), np.int64)
    gf = np.zeros((gi.shape[0], 3), np.float64)
    gi[: log_i.shape[0]] = log_i
    gf[: log_f.shape[0]] = log_f
    return gi, gf


@njit(cache=True)
def log_fill(fs, is_, side, row, ts, px, size, fee_per_share, taker, log_i, log_f):
    """Book one fill into cash/inventory and (when enabled) the fills log, which has room
    (``loop._run`` grows it between calls of ``loop._loop``). An ordinary call (not inlined):
    fills are rare."""
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


@njit(cache=True)
def take(ts, bpx, bsz, apx, asz, fee, fs, is_, side, x, log_i, log_f):
    """A taker order on ``side`` reaching the exchange at row ``x``, booked as resting at its
    limit ``P`` with ``n`` shares (queue 0, :func:`book_arrival`), walks the opposite side of
    the book it saw, row ``x - 1``: at each level ``k`` priced at or better than ``P``
    (``p_k <= P`` for a bid, ``p_k >= P`` for an ask) it fills ``f_k = min(n, s_k)`` at ``p_k``,
    taker fee, ``n -= f_k``; it stops at the first level beyond ``P``, an empty level (size 0,
    padding), the last level, or ``n = 0``. What is left rests at ``P`` (:func:`left_since`).
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
        log_fill(fs, is_, side, x, ts[x], p, f, fee, True, log_i, log_f)
        n -= f
    fs[SZ] = n
    if n < n0:
        is_[I_BHIT + side] = 1
        is_[I_NFILLED] += 1


@njit(cache=True, inline="always")
def depth_cap(bpx, bsz, apx, asz, unknown, fs, is_, side, r):
    """``Q = min(Q, displayed size at P)`` over rows ``is_[I_QR0+side]+1 .. r`` (depth cap: the
    risk-averse queue shrinks with the displayed size). Applied lazily, when a print at our price
    needs ``Q``: the min over the skipped rows is the same number the per-row rule gives.
    ``unknown``: the fill model's ``UNSEEN_QUEUE``."""
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
def left_since(bpx, apx, is_, side, r):
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


@njit(cache=True, inline="always")
def match(ts, bpx, bsz, apx, asz, prm, fs, is_, side, r, tp, tv, sd, msg, unknown, log_i, log_f):
    """Fills of our resting order on ``side`` caused by event/snapshot ``r``, whose print is
    ``tp`` (ticks, 0 = none), ``tv`` shares, ``sd`` (trade_side: aggressor sign; or with ``msg``
    the LOBSTER direction of the executed resting order, 1 = a buy): the queue ahead on arrival
    (read now if no print needed it yet; ``unknown`` the fill model's ``UNSEEN_QUEUE``), the depth
    cap over the skipped rows, the fill model's ``print_fill``, then the crossed rule (the opposite
    best at or through ``P``: all of it)."""
    model = np.int64(prm[P_MODEL])
    cap = prm[P_DEPTHCAP] > 0
    SZ = F_BSZ + 2 * side
    Q = F_BQ + 2 * side
    P = is_[I_BPX + side]
    rem = fs[SZ]
    if np.isnan(fs[Q]):  # first print that needs it: queue ahead = displayed size at P on arrival
        if side == 0:
            fs[Q] = level_size(bpx, bsz, is_[I_QR0], P, True, unknown)
        else:
            fs[Q] = level_size(apx, asz, is_[I_QR1], P, False, unknown)
    if cap:  # the rows skipped since the last match: Q as the per-row rule leaves it at r - 1
        depth_cap(bpx, bsz, apx, asz, unknown, fs, is_, side, r - 1)
    fill, q = M.print_fill(model, side, msg, tp, tv, sd, P, rem, fs[Q], prm[P_LOT], prm[P_PARTIAL] > 0)
    fs[Q] = q
    crossed = apx[r, 0] <= P if side == 0 else bpx[r, 0] >= P
    if crossed and is_[I_TK0 + side] > 0:  # a taker's remainder: not against the levels it took
        crossed = left_since(bpx, apx, is_, side, r)
    if crossed:
        fill = rem  # crossed by the opposite best
    if fill > 0:
        log_fill(fs, is_, side, r, ts[r], P, fill, prm[P_MAKER], False, log_i, log_f)
        fs[SZ] = rem - fill
        if is_[I_BHIT + side] == 0:
            is_[I_BHIT + side] = 1
            is_[I_NFILLED] += 1
    if cap and fs[SZ] > 0:
        depth_cap(bpx, bsz, apx, asz, unknown, fs, is_, side, r)
    return


__all__ = ["activation_row", "level_size", "side_limits"]

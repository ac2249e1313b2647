"""THE compiled event loop (:func:`_loop`, one account) and the doors that run it: the whole
backtest (:func:`run_engine`, one call per episode) and the stepping kernels of ``Engine`` and
``rl_env.py`` (:func:`advance`, :func:`decide`, :func:`submit` and their batched forms).

Arguments come grouped as tuples: ``bk`` the book (``book_arrays``: ts, bid_px, bid_sz, ask_px,
ask_sz, trade_px, trade_sz, trade_side, msg_type, msg_price, msg_size, msg_direction), ``acct``
one account (``fs, is_, pi, pf``, see ``state.py``), ``decs`` the decisions (rows, times, signals
or quotes, the quotes written back), ``rec`` the per-row equity and inventory written (empty: none).

Performance. Numba reference-counts an array (an atomic increment and decrement, ~10 ns) whenever
it takes it out of a tuple, passes it to an inlined helper whose control flow it cannot see
through (a loop with an early return), or reassigns it in a loop. So :func:`_loop` unpacks its
tuples once, before the row loop, and in the hot path the book is separate local arrays; helpers
that take arrays are straight-line (or take scalars), the queue ahead of a new order is read from
the book only when a print first needs it, and the fills log is grown between calls of the loop
(:func:`_run`), never inside it. The common row costs a few loads: matching
(``exchange.match``) runs only when something printed at or through one of our prices or the
opposite best reached it; fills go through ``exchange.log_fill``. The fill model's constants are
read once per call (``model.constants``) and passed on as scalars (see ``model.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..quoting import (P_LAT, P_LATNS, P_LIMIT, P_MODEL, P_MSGS, P_POSTONLY, P_RESPNS, P_TAKER, P_TICK,
                       _limit_raw, quote)
from . import model as M
from .exchange import (activation_row, arrive, book_arrival, grow, match, push, room, side_limits, submit as _submit,
                       take)
from .state import (E_CASH, E_FEES, E_INV, E_MARK, E_NFILL, E_NFILLED, E_NPLACED, E_QUOTED, E_VOL, F_ASZ,
                    F_BSZ, F_CASH, F_FEES, F_INV, F_LFS0, F_LFS1, F_QUOTED, F_VOL, I_APX, I_BPX, I_LFT0,
                    I_LFT1, I_NFILL, I_NFILLED, I_NLOG, I_NPLACED, I_PC0, I_PC1, I_PH0, I_ROW, NE, NEVER, NF,
                    NI, PEND_CAP, TAKE, reset, restart)


@njit(cache=True)
def _run(bk, prm, acct, r1, decs, j0, j1, raw, send, log_i, log_f, rec, base):
    """THE loop, one account: rows ``is_[I_ROW] .. r1-1`` and the decisions ``j0 .. j1-1``
    (:func:`_loop`), growing the fills log whenever the loop stops for room.
    Returns ``(log_i, log_f, next decision)``."""
    j = j0
    levels = bk[1].shape[1]
    while True:
        j = _loop(bk, prm, acct, r1, decs, j, j1, raw, send, log_i, log_f, rec, base)
        if j >= 0:
            return log_i, log_f, j
        j = -j - 1
        log_i, log_f = grow(log_i, log_f, acct[1][I_NLOG], room(levels))


@njit(cache=True)
def _loop(bk, prm, acct, r1, decs, j0, j1, raw, send, log_i, log_f, rec, base):
    """Rows ``is_[I_ROW] .. r1-1`` and the decisions ``j0 .. j1-1`` of one account.

    Decision ``j`` (quotes decided at time ``dec_ts[j]`` after row ``d = dec_rows[j]`` from
    ``sig[j]`` = (m̂, ŝ, v̂, η) or, with ``raw``, the quotes) is taken once row ``d`` is processed
    (or when no rows are left): orders still in flight that reach the exchange before row
    ``d + 1`` are placed first (as row ``d + 1`` would; this keeps the FIFO short when many clock
    decisions fall between two rows). The trader decides on the fill model's
    ``trader_inventory``: the design model on the inventory before them, the hftbacktest model
    after them (its trader knows they arrived: they count as resting). Its quotes (inventory rule
    applied) go to ``qout[j]`` when ``qout`` has that row, and with ``send`` into the pending FIFO.

    Row ``r``: orders due at ``r`` become live, each live side is matched, then equity (currency:
    ticks x ``prm[P_TICK]``) / inventory are written at ``r - base`` when ``eq`` is non-empty. The
    pre-filter: a live bid at ``P`` can only fill if a print at ``<= P`` or the best ask ``<= P``
    occurs (asks mirror), so the common row skips ``match``, which reads the queue ahead on
    arrival (left NaN by the placement) and catches the depth cap up over the skipped rows.

    Returns the next decision; or, when the fills log (non-empty) has less than ``room(L)`` rows
    free (``L`` book levels), ``-(next decision) - 1`` with ``is_[I_ROW]`` at the next row:
    :func:`_run` grows the log and calls again (an array reassigned inside the loop would be
    reference-counted on every iteration)."""
    ts, bpx, bsz, apx, asz, tpx, tsz, tsd, mt, mp, ms, md = bk
    fs, is_, pi, pf = acct
    dec_rows, dec_ts, sig, qout = decs
    eq, inv = rec
    model = np.int64(prm[P_MODEL])
    msg = prm[P_MSGS] > 0
    post_only = prm[P_POSTONLY] > 0
    taker_fee = prm[P_TAKER]
    resp, limit = np.int64(prm[P_RESPNS]), prm[P_LIMIT]
    always_ns, strict, keeps, unknown = M.constants(model)  # the fill model's rules for the run
    timed = prm[P_LATNS] > 0 or always_ns
    latns, lat = np.int64(prm[P_LATNS]), np.int64(prm[P_LAT])
    rec_on, tick = eq.shape[0] > 0, prm[P_TICK]
    nlog, free = log_i.shape[0], room(bpx.shape[1])  # nlog 0: no log
    r = is_[I_ROW]
    j = j0
    d, t = np.int64(0), np.int64(0)
    inv0 = 0.0
    tk_side = 0
    due = NEVER  # the earliest activation row in the pending FIFOs
    for side in range(2):
        if is_[I_PC0 + 2 * side] > 0:
            due = min(due, pi[side, is_[I_PH0 + 2 * side], 0])
    while True:
        dec = j < j1 and (dec_rows[j] < r or r >= r1)
        if not dec and r >= r1:
            break
        if is_[I_NLOG] + free > nlog > 0:
            is_[I_ROW] = r
            return -j - 1
        x = r  # orders due at row x reach the exchange now (they see row x - 1)
        if dec:
            d, t = dec_rows[j], dec_ts[j]
            x = d + 1
            inv0 = fs[F_INV]
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
                    what = arrive(keeps, post_only, side, px, size, fs[F_BSZ + 2 * side], is_[I_BPX + side], opp)
                    book_arrival(fs, is_, side, what, px, size, x - 1)
                    if what == TAKE:  # taker: walks the opposite side of row x - 1 (take)
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
                take(ts, bpx, bsz, apx, asz, taker_fee, fs, is_, tk_side, x, log_i, log_f)
        if dec:
            while True:  # decision j, then (a burst, see below) the next ones at row d
                known, inv_b, inv_a = M.trader_inventory(model, resp, inv0, fs[F_INV], fs[F_LFS0], is_[I_LFT0],
                                                         fs[F_LFS1], is_[I_LFT1], fs[F_BSZ], fs[F_ASZ], t)
                if raw:
                    bp, bs, ap, as_ = _limit_raw(limit, known, np.int64(sig[j, 0]), sig[j, 1],
                                                 np.int64(sig[j, 2]), sig[j, 3])
                else:
                    bp, bs, ap, as_ = quote(prm, bpx[d, 0], apx[d, 0], known, sig[j, 0], sig[j, 1], sig[j, 2],
                                            sig[j, 3])
                bp, bs, ap, as_ = side_limits(limit, inv_b, inv_a, bp, bs, ap, as_)
                if qout.shape[0] > j:
                    qout[j, 0] = bp
                    qout[j, 1] = bs
                    qout[j, 2] = ap
                    qout[j, 3] = as_
                j += 1
                if not send:
                    break
                a = activation_row(ts, timed, strict, latns, lat, d, t)
                # a burst (clock decisions between two rows): when these orders arrive before row x, the
                # FIFO is empty and the next decision comes first, its activation pass would place just
                # them: do it here, without the FIFO round trip, unless one would take (the pass logs it)
                wb, wa = TAKE, TAKE
                if a <= x and j < j1 and dec_rows[j] == d and is_[I_PC0] == 0 and is_[I_PC1] == 0:
                    wb = arrive(keeps, post_only, 0, bp, bs, fs[F_BSZ], is_[I_BPX], apx[x - 1, 0])
                    wa = arrive(keeps, post_only, 1, ap, as_, fs[F_ASZ], is_[I_APX], bpx[x - 1, 0])
                if wb == TAKE or wa == TAKE:
                    push(is_, pi, pf, a, bp, bs, ap, as_)
                    due = min(due, a)
                    break
                for side in range(2):
                    what, px, size = (wb, bp, bs) if side == 0 else (wa, ap, as_)
                    book_arrival(fs, is_, side, what, px, size, x - 1)  # never TAKE here
                t = dec_ts[j]
                inv0 = fs[F_INV]
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
                match(ts, bpx, bsz, apx, asz, prm, fs, is_, 0, r, tp, tv, sd, msg, unknown, log_i, log_f)
            if live_a and (bpx[r, 0] >= is_[I_APX] or (traded and tp >= is_[I_APX])):
                match(ts, bpx, bsz, apx, asz, prm, fs, is_, 1, r, tp, tv, sd, msg, unknown, log_i, log_f)
        if rec_on:
            eq[r - base] = (fs[F_CASH] + fs[F_INV] * 0.5 * (bpx[r, 0] + apx[r, 0])) * tick
            inv[r - base] = fs[F_INV]
        r += 1
    is_[I_ROW] = r
    return j


# ------------------------------------------------------------------ doors (Engine, rl_env.py)
@njit(cache=True, inline="always")
def advance(bk, prm, fs, is_, pi, pf, r1, log_i, log_f, eq, inv, base):
    """Process rows ``is_[I_ROW] .. r1-1`` (no decisions); write equity (currency) / inventory at
    ``row - base`` when ``eq`` is non-empty. Returns the (possibly grown) fills log."""
    no_i = np.zeros(0, np.int64)
    no_q = np.zeros((0, 4))
    log_i, log_f, _ = _run(bk, prm, (fs, is_, pi, pf), r1, (no_i, no_i, no_q, no_q), 0, 0, False, False,
                           log_i, log_f, (eq, inv), base)
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
    no_eq = np.zeros(0)
    log_i, log_f, _ = _run(bk, prm, (fs, is_, pi, pf), is_[I_ROW], (dec, dts, sig, q), 0, 1, raw, False,
                           log_i, log_f, (no_eq, no_eq), 0)
    return np.int64(q[0, 0]), q[0, 1], np.int64(q[0, 2]), q[0, 3], log_i, log_f


@njit(cache=True, inline="always")
def submit(bk, prm, fs, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t):
    """Send quotes decided at time ``t`` after row ``d`` (``exchange.submit`` with the book tuple)."""
    _submit(bk[0], prm, is_, pi, pf, d, bid_px, bid_sz, ask_px, ask_sz, t)


@njit(cache=True, inline="always")
def trader_inventory(prm, fs, is_, t):
    """Inventory as the trader knows it at time ``t`` -> (known, bid worst case, ask worst case):
    the fill model's ``trader_inventory`` on this account."""
    return M.trader_inventory(np.int64(prm[P_MODEL]), np.int64(prm[P_RESPNS]), fs[F_INV], fs[F_INV], fs[F_LFS0],
                              is_[I_LFT0], fs[F_LFS1], is_[I_LFT1], fs[F_BSZ], fs[F_ASZ], t)


@njit(cache=True)
def run_engine(bk, prm, dec_rows, sig, raw, ep_start, ep_end, dec_lo, dec_hi, log_i, log_f, eq, inv, base,
               dec_ts):
    """The whole backtest in numba: one :func:`_run` per episode.

    Episode ``e`` covers rows [ep_start[e], ep_end[e]) and decisions dec_lo[e]..dec_hi[e]-1; it
    starts flat and ends marked to the mid of its last row. ``sig[j]`` = (m̂, ŝ, v̂, η) or, with
    ``raw``, quotes (bid_px, bid_sz, ask_px, ask_sz), decided at time ``dec_ts[j]`` after row
    ``dec_rows[j]``. Returns (per-episode [E, NE] with the columns of ``EpisodeState``, log_i, log_f).
    """
    bpx, apx = bk[1], bk[3]
    fs = np.zeros(NF)
    is_ = np.zeros(NI, np.int64)
    pi = np.zeros((2, PEND_CAP, 2), np.int64)
    pf = np.zeros((2, PEND_CAP))
    out = np.zeros((ep_start.shape[0], NE))
    decs = (dec_rows, dec_ts, sig, np.zeros((0, 4)))
    for e in range(ep_start.shape[0]):
        restart(fs, is_, ep_start[e])  # one fills log across episodes
        log_i, log_f, _ = _run(bk, prm, (fs, is_, pi, pf), ep_end[e], decs, dec_lo[e], dec_hi[e], raw, True,
                               log_i, log_f, (eq, inv), base)
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
        bp, bs, ap, as_ = side_limits(prm[P_LIMIT], inv_b, inv_a, bp, bs, ap, as_)
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
            bp, bs, ap, as_ = side_limits(prm[P_LIMIT], inv_b, inv_a, bp, bs, ap, as_)
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

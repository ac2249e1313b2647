"""The hftbacktest fill model as one fused numba loop: a speed reference, not used by the pipeline.

Same rules as ``cmm_lightning.market.engine`` with ``market.fill_model=hftbacktest`` (and it
agrees with it and with hftbacktest fill for fill on the AMZN day), written as a single loop
over rows with the decision clock merged in, scalars for state and no array views or tuple
unpacking in the loop. ``hft_compare.py`` times it beside the engine to show how much of the
engine's time is structure (per-call reference counting of the arrays it passes around) rather
than fill-model work. Requires entry + response latency <= the decision interval.
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _qty_at(px, sz, r, p):
    for j in range(px.shape[1]):
        if sz[r, j] > 0 and px[r, j] == p:
            return sz[r, j]
    return 0.0


@njit(cache=True)
def hft_kernel(ts, bid_px, bid_sz, ask_px, ask_sz, trade_px, trade_sz, trade_side,
               dec_t, q_bid, q_ask, q_bsz, q_asz, entry, resp, limit, lot,
               f_ts, f_side, f_px, f_qty):
    n = ts.shape[0]
    K = dec_t.shape[0]
    live = np.zeros(2, np.bool_)
    P = np.zeros(2, np.int64)
    q = np.zeros(2, np.float64)
    qty = np.zeros(2, np.float64)
    acc = np.zeros(2, np.bool_)      # order of the previous decision accepted by the exchange
    filled = np.zeros(2, np.bool_)   # ... and filled
    fill_t = np.zeros(2, np.int64)
    nf = 0
    fk = 0
    pos_known = 0.0
    k = 0
    for r in range(n):
        while k < K and dec_t[k] + entry < ts[r]:
            tk = dec_t[k]
            while fk < nf and f_ts[fk] + resp <= tk:
                pos_known += f_qty[fk] if f_side[fk] > 0 else -f_qty[fk]
                fk += 1
            for s in range(2):
                open_s = 0.0
                if acc[s] and not (filled[s] and fill_t[s] + resp <= tk):
                    open_s = qty[s]
                live[s] = False  # cancel arrives with the new quote
                sz = q_bsz[k] if s == 0 else q_asz[k]
                acc[s] = False
                filled[s] = False
                if sz <= 0:
                    continue
                signed_pos = pos_known if s == 0 else -pos_known
                if signed_pos + open_s + sz > limit:
                    continue
                p = q_bid[k] if s == 0 else q_ask[k]
                if s == 0:
                    if p >= ask_px[r - 1, 0]:
                        continue  # GTX would take: expired
                    q[s] = _qty_at(bid_px, bid_sz, r - 1, p)
                else:
                    if p <= bid_px[r - 1, 0]:
                        continue
                    q[s] = _qty_at(ask_px, ask_sz, r - 1, p)
                live[s] = True
                acc[s] = True
                P[s] = p
                qty[s] = sz
            k += 1
        for s in range(2):
            if not live[s]:
                continue
            fill = False
            if s == 0:
                if trade_side[r] < 0 and trade_sz[r] > 0:
                    if P[0] > trade_px[r]:
                        fill = True
                    elif P[0] == trade_px[r]:
                        q[0] -= trade_sz[r]
                        fill = q[0] <= -lot
                if not fill:
                    q[0] = min(q[0], _qty_at(bid_px, bid_sz, r, P[0]))
                    fill = ask_px[r, 0] <= P[0]
            else:
                if trade_side[r] > 0 and trade_sz[r] > 0:
                    if P[1] < trade_px[r]:
                        fill = True
                    elif P[1] == trade_px[r]:
                        q[1] -= trade_sz[r]
                        fill = q[1] <= -lot
                if not fill:
                    q[1] = min(q[1], _qty_at(ask_px, ask_sz, r, P[1]))
                    fill = bid_px[r, 0] >= P[1]
            if fill:
                live[s] = False
                filled[s] = True
                fill_t[s] = ts[r]
                f_ts[nf] = ts[r]
                f_side[nf] = 1 if s == 0 else -1
                f_px[nf] = P[s]
                f_qty[nf] = qty[s]
                nf += 1
    return nf


def run_fused(book, interval_ns=100_000_000, size=100.0, limit=500.0, entry_ns=1_000_000,
              resp_ns=1_000_000, lot=1.0, **_):
    """Fixed-spread policy (hft_common.py) through the fused loop -> fills sorted by (ts, side)."""
    from hft_common import decision_grid

    ts = book.ts
    dec_t, rk = decision_grid(ts, interval_ns)
    K = len(dec_t)
    q_bid = book.bid_px[rk, 0] - 1
    q_ask = book.ask_px[rk, 0] + 1
    sz = np.full(K, size)
    cap = K * 2 + 4
    f_ts = np.zeros(cap, np.int64); f_side = np.zeros(cap, np.int8)
    f_px = np.zeros(cap, np.int64); f_qty = np.zeros(cap, np.float64)
    nf = hft_kernel(ts, book.bid_px, book.bid_sz, book.ask_px, book.ask_sz, book.trade_px, book.trade_sz,
                    book.trade_side, dec_t, q_bid, q_ask, sz, sz, entry_ns, resp_ns, limit, lot,
                    f_ts, f_side, f_px, f_qty)
    from hft_common import FILL_DTYPE

    out = np.zeros(nf, FILL_DTYPE)
    out["ts"], out["side"], out["px"], out["qty"] = f_ts[:nf], f_side[:nf], f_px[:nf], f_qty[:nf]
    return np.sort(out, order=["ts", "side"])

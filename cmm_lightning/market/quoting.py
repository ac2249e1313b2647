"""Quoting rule (docs/method.md, "Quoting rule"): per-decision signals -> passive bid/ask quotes, in integer ticks.

Signals per decision are ``(m̂, ŝ, v̂, η)``: predicted mid move (ticks), predicted spread (ticks),
size (shares) and inventory skew (ticks per share). With ``q`` the inventory and ``c`` =
``market.spread_mult``::

    p   = mid + m̂ − η·q                       reservation price
    δ   = max(1 tick, c·ŝ/2)                  half-spread
    bid = min(⌊p − δ⌋, best_ask − 1)          never through the opposite best: always passive
    ask = max(⌈p + δ⌉, best_bid + 1)
    n   = clip(⌊v̂ / lot⌋·lot, min_size, max_size)
    bid size = n if q + n ≤ limit else 0;  ask size = n if q − n ≥ −limit else 0 (side not quoted)

Avellaneda–Stoikov is the same formula with η = γσ²(T−t) and ŝ = [γσ²(T−t) + (2/γ)ln(1+γ/k)]/c
per decision (see policies.py). The kernel is numba-compiled; :func:`quotes_np` is its
vectorised NumPy twin for inspection and tests.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# engine parameter vector [NP] (float64, built by engine.params): the quoting part first, then the
# fill model (P_MODEL: its id, market.fill_model), then the tick size (currency per tick: the
# engine's equity path is written in currency)
(P_C, P_MIN, P_MAX, P_LIMIT, P_LOT, P_MAKER, P_TAKER, P_LAT, P_LATNS, P_POSTONLY,
 P_PARTIAL, P_DEPTHCAP, P_MSGS, P_MODEL, P_RESPNS, P_TICK) = range(16)
NP = 16
EPS = 1e-9  # floor/ceil tolerance: p − δ = 99.999999999 still quotes 100


@njit(cache=True, inline="always")
def quote(prm, best_bid, best_ask, inv, m_hat, s_hat, v_hat, eta):
    """The quoting rule (docs/method.md, "Quoting rule"), in ticks -> (bid_px, bid_sz, ask_px, ask_sz).

    p = mid + m̂ − η·q;  δ = max(1, c·ŝ/2);  bid = ⌊p − δ⌋ ≤ best_ask − 1;  ask = ⌈p + δ⌉ ≥ best_bid + 1;
    size = v̂ rounded down to lots, clipped to [min_size, max_size]; a side whose full fill would
    take |q| beyond the limit is not quoted (size 0). NaN signals: no quotes.
    """
    if math.isnan(m_hat) or math.isnan(s_hat) or math.isnan(v_hat) or math.isnan(eta):
        return 0, 0.0, 0, 0.0
    mid = 0.5 * (best_bid + best_ask)
    p = mid + m_hat - eta * inv
    delta = max(1.0, prm[P_C] * s_hat / 2.0)
    bp = min(np.int64(math.floor(p - delta + EPS)), best_ask - 1)
    ap = max(np.int64(math.ceil(p + delta - EPS)), best_bid + 1)
    lot = prm[P_LOT]
    size = math.floor(v_hat / lot + EPS) * lot
    size = min(max(size, prm[P_MIN]), prm[P_MAX])
    bsz = size if (inv + size <= prm[P_LIMIT] + EPS and bp > 0) else 0.0
    asz = size if inv - size >= -prm[P_LIMIT] - EPS else 0.0
    return bp, bsz, ap, asz


@njit(cache=True, inline="always")
def _limit_raw(limit, inv, bp, bsz, ap, asz):
    """Raw quotes: only the inventory rule applies (``limit`` = market.inventory_limit)."""
    if not (inv + bsz <= limit + EPS) or bp <= 0:
        bsz = 0.0
    if not (inv - asz >= -limit - EPS):
        asz = 0.0
    return bp, bsz, ap, asz


def quotes_np(prm: np.ndarray, best_bid, best_ask, inv, signals) -> np.ndarray:
    """Vectorised :func:`quote` over arrays: returns [D, 4] (bid_px, bid_sz, ask_px, ask_sz)."""
    best_bid, best_ask = np.asarray(best_bid, np.int64), np.asarray(best_ask, np.int64)
    inv = np.asarray(inv, np.float64)
    s = np.asarray(signals, np.float64)
    m, sh, v, eta = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    ok = ~np.isnan(s).any(axis=1)
    p = 0.5 * (best_bid + best_ask) + m - eta * inv
    delta = np.maximum(1.0, prm[P_C] * sh / 2.0)
    with np.errstate(invalid="ignore"):
        bp = np.minimum(np.floor(p - delta + EPS), best_ask - 1)
        ap = np.maximum(np.ceil(p + delta - EPS), best_bid + 1)
        n = np.clip(np.floor(v / prm[P_LOT] + EPS) * prm[P_LOT], prm[P_MIN], prm[P_MAX])
    bsz = np.where(ok & (inv + n <= prm[P_LIMIT] + EPS) & (bp > 0), n, 0.0)
    asz = np.where(ok & (inv - n >= -prm[P_LIMIT] - EPS), n, 0.0)
    out = np.stack([np.where(ok, bp, 0), bsz, np.where(ok, ap, 0), asz], axis=1)
    return out

"""The design fill model (``market.fill_model=design``, the default): conservative and
deterministic, in the spirit of hftbacktest's risk-averse queue model (README, "Market making:
quotes, fill model and metrics", sections Latency and Fills).

* An order decided at row ``d`` becomes active at row ``a`` = ``d + market.latency`` or, when
  ``market.latency_ns > 0``, the first row with ``ts[a] >= ts[d] + latency_ns`` (always ``a > d``).
  Cancels (a replaced or withdrawn quote) take effect at the same row ``a``.
* On arrival it sees the book of row ``a-1``: queue ahead ``Q`` = displayed size at its price
  (0 when it improves the best, ``inf`` beyond the deepest level of a full view); a bid at or
  above the best ask is a taker order or, with ``post_only``, rejected. A re-quote at the same
  price with a size not larger than what is left keeps its queue position (a modify down).
* At every row ``r`` it is active, a bid at ``P`` with ``n`` shares left fills
    - all ``n`` if a trade prints below ``P`` (traded through) or the best ask ``<= P`` (crossed),
    - ``min(n, V - Q)`` if ``V`` shares trade at ``P`` on the bid side (a seller-initiated or
      unsigned print) and ``V > Q``; else ``Q -= V``.
  Trades come from ``trade_px/trade_sz/trade_side``, or from LOBSTER execution messages
  (types 4, 5) when the book carries them. Cancellations never shrink ``Q``. Asks mirror bids.
* The trader decides on the inventory after all fills up to row ``d``.

The rules every model shares (the taker walk, the crossed rule and its guard, the depth cap,
fees, the fills log) are in ``exchange.py``; this file holds what the models disagree on, behind
the functions every fill model implements (see ``model.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...errors import CMMInputError
from ..quoting import P_LAT, P_LATNS

# the rules that hold for a whole run (read once per loop call, ``model.constants``)
ALWAYS_NS = False  # latency in snapshots (market.latency) unless market.latency_ns > 0
STRICT_ARRIVAL = False  # an order due at time T is live from the first row with ts >= T
MODIFY_KEEPS_QUEUE = True  # a re-quote at the same price, size not increased, keeps its queue position
UNSEEN_QUEUE = np.inf  # queue ahead beyond the deepest level of a full view: unknown, never an at-price fill


def configure(prm: np.ndarray, cfg) -> None:
    """Set / check this model's options in the parameter vector ``prm`` (``cfg``: the MarketConfig)."""
    if prm[P_LATNS] <= 0 and prm[P_LAT] < 1:
        raise CMMInputError(f"config: market.latency={cfg.latency} must be >= 1 snapshot "
                            "(a decision sees row d; acting on row d itself would look ahead)")


@njit(cache=True, inline="always")
def print_fill(side, msg, tp, tv, sd, P, rem, q, lot, partial):
    """Fill of our order on ``side`` (price ``P``, ``rem`` shares left, queue ahead ``q``) by the
    print of one row -> (fill, q). The print: ``tp`` ticks (0 = none), ``tv`` shares, ``sd`` the
    aggressor sign (trade_side; 0 = unsigned), or with ``msg`` a LOBSTER execution whose ``sd`` is
    the direction of the executed resting order (1 = a buy). Traded through (any side): all of
    ``rem``; at ``P`` on our side: ``min(rem, V - q)`` (``rem`` without ``partial``) once
    ``V > q``, which empties the queue, else ``q - V``."""
    through = False
    V = 0.0
    if msg:
        if side == 0:
            if tp < P:
                through = True
            elif tp == P and sd == 1:
                V = tv
        else:
            if tp > P:
                through = True
            elif tp == P and sd == -1:
                V = tv
    elif tv > 0:
        if side == 0:
            if 0 < tp < P:
                through = True
            elif tp == P and sd <= 0:
                V = tv
        else:
            if tp > P:
                through = True
            elif tp == P and sd >= 0:
                V = tv
    fill = 0.0
    if through:
        fill = rem
    elif V > 0:
        if V > q:
            fill = min(rem, V - q) if partial else rem
            q = 0.0
        else:
            q -= V
    return fill, q


@njit(cache=True, inline="always")
def trader_inventory(resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t):
    """The inventory the trader decides on -> (known, bid worst case, ask worst case): all three
    are ``inv0``, the inventory when the decision is taken (before the orders due at the next row
    reach the exchange). The other arguments are those of the hftbacktest model."""
    return inv0, inv0, inv0

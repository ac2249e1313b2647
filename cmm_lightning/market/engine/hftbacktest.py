"""The hftbacktest fill model (``market.fill_model=hftbacktest``): hftbacktest 2.4's
``RiskAdverseQueueModel`` + ``NoPartialFillExchange`` with GTX (post-only) quotes and constant
order latency, fill for fill (docs/hft_agreement.md; README, "Market making: quotes, fill model
and metrics").

Where it differs from the design model (``design.py``):

* Latency is always in ns: an order sent at time ``t`` is live from the first row with
  ``ts > t + latency_ns`` (market data stamped at its arrival time is processed before it).
* Every re-quote is a cancel plus a new order (no modify that keeps queue priority); a crossing
  order is rejected (post-only); the queue ahead is capped by the displayed size every row
  (depth cap); a price beyond the deepest level of a full view has queue 0 (its depth map drops a
  level that leaves the view).
* Only a print whose aggressor hits our side fills us (a seller for a bid; an unsigned print
  fills no one); an at-price print fills the whole order (no partial fills) once ``V - Q >= lot``.
* A fill reaches the trader ``market.response_latency_ns`` after it happens: the trader decides
  on the inventory it knows, and quotes a side only if its worst case stays inside the limit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...errors import CMMInputError
from ..quoting import P_DEPTHCAP, P_LATNS, P_PARTIAL, P_POSTONLY, P_RESPNS

# the rules that hold for a whole run (read once per loop call, ``model.constants``)
ALWAYS_NS = True  # latency always in ns (market.latency_ns, 0 allowed)
STRICT_ARRIVAL = True  # live from the first row with ts > T: data stamped T is processed first
MODIFY_KEEPS_QUEUE = False  # every re-quote is a cancel plus a new order at the back of the queue
UNSEEN_QUEUE = 0.0  # queue ahead beyond the deepest level of a full view: 0 (its depth map drops it)


def configure(prm: np.ndarray, cfg) -> None:
    """Set this model's options in the parameter vector ``prm`` and check its latencies."""
    # risk_adverse_queue_model + no_partial_fill_exchange + GTX quotes
    prm[P_POSTONLY], prm[P_PARTIAL], prm[P_DEPTHCAP] = 1.0, 0.0, 1.0
    if prm[P_LATNS] < 0 or prm[P_RESPNS] < 0:
        raise CMMInputError("config: market.latency_ns and market.response_latency_ns must be >= 0")


@njit(cache=True, inline="always")
def print_fill(side, msg, tp, tv, sd, P, rem, q, lot, partial):
    """Fill of our order on ``side`` (price ``P``, ``rem`` left, queue ahead ``q``) by the print
    of one row -> (fill, q); arguments as in ``design.print_fill``. Only a print whose aggressor
    hits our side counts (``sd < 0`` for a bid; with ``msg``, an execution of a resting order on
    our side): through ``P``: all of ``rem``; at ``P``: ``min(rem, V - q)`` (``rem`` without
    ``partial``) once ``V >= q + lot``, which empties the queue, else ``q - V``."""
    through = False
    V = 0.0
    if msg:
        if side == 0:
            if tp < P and sd == 1:
                through = True
            elif tp == P and sd == 1:
                V = tv
        else:
            if tp > P and sd == -1:
                through = True
            elif tp == P and sd == -1:
                V = tv
    elif tv > 0:
        if side == 0:
            if 0 < tp < P and sd < 0:
                through = True
            elif tp == P and sd < 0:
                V = tv
        else:
            if tp > P and sd > 0:
                through = True
            elif tp == P and sd > 0:
                V = tv
    fill = 0.0
    if through:
        fill = rem
    elif V > 0:
        if V >= q + lot:
            fill = min(rem, V - q) if partial else rem
            q = 0.0
        else:
            q -= V
    return fill, q


@njit(cache=True, inline="always")
def trader_inventory(resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t):
    """Inventory as the trader knows it at time ``t`` -> (known, bid worst case, ask worst case).

    A fill reaches the trader ``resp`` ns after it happens, so known = inventory - fills not yet
    reported; a side is quoted only if its worst case stays inside the limit should every order
    of that side that may still fill do so (the resting one being replaced, or one filled but not
    reported): bid worst = inventory + unreported sells + resting bid, ask worst = inventory -
    unreported buys - resting ask. ``inv`` the inventory now (``inv0`` is unused), ``lfs0/1`` and
    ``lft0/1`` the last fill's size and time per side, ``bsz``/``asz`` the resting sizes. Exact
    when decisions are >= entry + response latency apart (then at most one order per side is in
    flight, and only the last fill per side can be unreported)."""
    unk_b = lfs0 if lft0 + resp > t else 0.0
    unk_a = lfs1 if lft1 + resp > t else 0.0
    return inv - unk_b + unk_a, inv + unk_a + bsz, inv - unk_b - asz

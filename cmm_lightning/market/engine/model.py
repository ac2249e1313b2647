"""The fill models by id, and the one place the compiled engine picks a model's rules.

Every fill model is a module of this package (``design.py``, ``hftbacktest.py``) with the same
members:

    ALWAYS_NS, STRICT_ARRIVAL            how latency makes the activation row (exchange.activation_row)
    MODIFY_KEEPS_QUEUE                   a re-quote at the same price, no larger: modified in place?
    UNSEEN_QUEUE                         queue ahead at a price beyond the deepest visible level
    configure(prm, cfg)                  Python: set / check its options in the parameter vector
    print_fill(side, msg, tp, tv, sd, P, rem, q, lot, partial) -> (fill, q)   matching one print
    trader_inventory(resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t)   the trader's view

Their names and ids are registered once, in ``cmm_lightning.registry.FILL_MODELS`` (checked at
config load without importing numba); :data:`MODELS` gives each id its module, and ``params``
writes the id to ``prm[P_MODEL]``. Numba cannot take a model's functions as runtime values
without giving up inlining and its on-disk cache, so the compiled code branches on the id, here
and nowhere else, once per member: :func:`constants` (read once per loop call and passed on as
scalars: an inlined call with arguments inside the pass over pending orders cost the
hftbacktest model ~25%), :func:`trader_inventory` (inlined, once per decision) and
:func:`print_fill` (an ordinary call: matching is the rare path, and inlining it into both
sides' matching made the cold compile ~20% longer). Each branch is a compare on a value that is
constant over the run, as the ``if hft`` flags it replaces were.

A new fill model ``mine``: write ``engine/mine.py`` with the members above; register
``"mine": <next id>`` in ``registry.FILL_MODELS``; here, import it, add ``MINE`` and its entry in
:data:`MODELS`, and an ``if model == MINE:`` branch to each of the three functions below.
Numba's on-disk cache keys a compiled function on its own file only: after editing a model file
(or this one, or ``quoting.py``), delete the cache (``find cmm_lightning -name '*.nb[ic]'
-delete``), or the compiled loop keeps the old rules.
"""

from __future__ import annotations

from numba import njit

from ...registry import FILL_MODELS
from . import design, hftbacktest

DESIGN, HFTBACKTEST = FILL_MODELS.spec("design"), FILL_MODELS.spec("hftbacktest")  # the ids
MODELS = {DESIGN: design, HFTBACKTEST: hftbacktest}  # id -> module


# ---------------------------------------------------------------- compiled dispatch (model id)
@njit(cache=True, inline="always")
def constants(model):
    """-> (ALWAYS_NS, STRICT_ARRIVAL, MODIFY_KEEPS_QUEUE, UNSEEN_QUEUE) of the model."""
    if model == HFTBACKTEST:
        return (hftbacktest.ALWAYS_NS, hftbacktest.STRICT_ARRIVAL, hftbacktest.MODIFY_KEEPS_QUEUE,
                hftbacktest.UNSEEN_QUEUE)
    return design.ALWAYS_NS, design.STRICT_ARRIVAL, design.MODIFY_KEEPS_QUEUE, design.UNSEEN_QUEUE


@njit(cache=True)
def print_fill(model, side, msg, tp, tv, sd, P, rem, q, lot, partial):
    """The model's ``print_fill`` (an ordinary call, see above)."""
    if model == HFTBACKTEST:
        return hftbacktest.print_fill(side, msg, tp, tv, sd, P, rem, q, lot, partial)
    return design.print_fill(side, msg, tp, tv, sd, P, rem, q, lot, partial)


@njit(cache=True, inline="always")
def trader_inventory(model, resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t):
    """The model's ``trader_inventory``."""
    if model == HFTBACKTEST:
        return hftbacktest.trader_inventory(resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t)
    return design.trader_inventory(resp, inv0, inv, lfs0, lft0, lfs1, lft1, bsz, asz, t)


__all__ = ["DESIGN", "FILL_MODELS", "HFTBACKTEST", "MODELS"]

"""Book builders: one random book for every test that needs a random market, one L=1 book by hand."""

from __future__ import annotations

import numpy as np

from cmm_lightning.data.lob import Book


def make_book(bid, ask, bsz=50.0, asz=50.0, trades=None, ts=None, tick=1.0, meta=None) -> Book:
    """An L=1 book by hand: best bid / ask per row (ticks), sizes (scalars or per row), ``trades`` =
    {row: (price, size, side)}; ``ts`` defaults to 10 ns per row; tick 1 (currency = ticks)."""
    n = len(bid)
    tpx, tsz, tsd = np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int8)
    for r, (p, s, sd) in (trades or {}).items():
        tpx[r], tsz[r], tsd[r] = p, s, sd
    col = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (n,)).reshape(n, 1).copy()  # noqa: E731
    return Book(ts=np.arange(n, dtype=np.int64) * 10 if ts is None else np.asarray(ts, np.int64),
                bid_px=col(bid, np.int64), bid_sz=col(bsz, np.float64), ask_px=col(ask, np.int64),
                ask_sz=col(asz, np.float64), trade_px=tpx, trade_sz=tsz, trade_side=tsd, tick_size=tick,
                meta=meta or {})


def random_book(n: int = 3000, levels: int = 2, seed: int = 0, *, spell: int = 250, push: float = 0.45,
                coupled: bool = True, tick_size: float = 0.01) -> Book:
    """A random-walk book with structure to learn, 1 ms per row, validated.

    * volatility spells of ``spell`` rows cycle calm / normal / volatile: the best bid moves ±1 tick
      with probability 0.1 / 0.35 / 0.8;
    * the level-1 imbalance of the previous row pushes the move: up with probability
      0.5 + ``push`` x imbalance (``push=0``: the moves are a fair coin, unpredictable);
    * the spread is 1-3 ticks, wider in volatile spells; deeper levels 1 tick apart; sizes 5-59 at
      level 1, 5-79 deeper;
    * trade volume per row is Poisson with mean 2 / 6 / 15 by spell, of a random aggressor that
      prints at the best ask (buyer) or best bid (seller), one tick through it 1 time in 4.

    ``coupled=False``: spread and volume do not follow the spells (the normal spell's law all the
    time), so that within a volatility regime the mid, spread and volume targets are independent.
    """
    rng = np.random.default_rng(seed)
    phase = (np.arange(n) // spell) % 3  # calm / normal / volatile spells
    p_move = np.array([0.1, 0.35, 0.8])[phase]
    law = phase if coupled else np.ones(n, np.int64)  # the spell the spread and volume follow
    b1 = rng.integers(5, 60, n).astype(float)
    a1 = rng.integers(5, 60, n).astype(float)
    imb = (b1 - a1) / (b1 + a1)
    move = rng.random(n) < p_move
    up = rng.random(n) < 0.5 + push * np.roll(imb, 1)
    bid = 10_000 + np.cumsum(np.where(move, np.where(up, 1, -1), 0))
    spread = 1 + (rng.random(n) < 0.3 + 0.2 * law) + (rng.random(n) < 0.1 * law)
    bid_px = bid[:, None] - np.arange(levels)[None, :]
    ask_px = (bid + spread)[:, None] + np.arange(levels)[None, :]
    bid_sz = np.concatenate([b1[:, None], rng.integers(5, 80, (n, levels - 1))], 1).astype(float)
    ask_sz = np.concatenate([a1[:, None], rng.integers(5, 80, (n, levels - 1))], 1).astype(float)
    trade_sz = rng.poisson(np.array([2.0, 6.0, 15.0])[law]).astype(float)
    side = np.sign(rng.standard_normal(n)).astype(np.int8) * (trade_sz > 0)
    through = rng.random(n) < 0.25
    trade_px = np.where(side > 0, ask_px[:, 0], bid_px[:, 0]) + through * side
    return Book(ts=np.arange(n, dtype=np.int64) * 1_000_000, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px,
                ask_sz=ask_sz, trade_px=np.where(side != 0, trade_px, 0).astype(np.int64), trade_sz=trade_sz,
                trade_side=side, tick_size=tick_size, source=f"random_book(seed={seed})").validate()

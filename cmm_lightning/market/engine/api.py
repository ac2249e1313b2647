"""The Python doors to the compiled loop: :func:`run_backtest` (a whole backtest, one compiled
call) and :class:`Engine` (gymnasium envs submit quotes and advance rows once per action, for many
accounts at once), with the book packing (:func:`book_arrays`) and the result
(:class:`BacktestResult`). Both report currency (ticks x ``book.tick_size``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ...errors import CMMInputError
from ..episodes import episode_bounds, resolve_episode_length
from .loop import advance, advance_many, quote_many, reset_many, run_engine, submit_many
from .parameters import params
from .state import (F_CASH, F_FEES, F_INV, F_VOL, I_NFILL, I_NFILLED, I_NLOG, I_NPLACED, I_ROW, NF, NI,
                    PEND_CAP, episode_state, fills_table)


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

    @property
    def n_logged(self) -> np.ndarray:
        """Rows written to the fills log, per env (a log the caller keeps, as rl_env.py does)."""
        return self.IS[:, I_NLOG].copy()

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
    from ..metrics import summarize_episodes  # metrics imports nothing of the engine

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
    st = episode_state(out)
    n_fills = int(st.n_fills.sum())
    fills = fills_table(log_i, log_f, n_fills, tick)
    rows = np.arange(base, base + R, dtype=np.int64)
    res = BacktestResult(rows=rows, ts=bk[0][base:base + R], equity=eq, inventory=inv, fills=fills,
                         decision_rows=dec, episodes=eps, episode_metrics=[], metrics={},
                         quotes_raw=bool(raw_quotes))
    res.extra["episode_state"] = st
    res.extra["tick_size"] = tick
    res.extra["decision_ts"] = dts
    if metrics:
        res.episode_metrics, res.metrics = summarize_episodes(res)
    return res

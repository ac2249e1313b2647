"""The engine's state layout: one account in two small vectors, its orders in flight, the fills
log and the per-episode record, with the named accessors the rest of the package reads.

    fs  float64 [NF]            cash, inventory, resting sizes, queues ahead, fees, volume, ...
    is_ int64   [NI]            resting prices, counters, the next row, FIFO heads, log length, ...
    pi  int64   [2, PEND_CAP, 2]  orders in flight per side: (activation row, price), a FIFO ring
    pf  float64 [2, PEND_CAP]     their sizes

Prices are ticks, cash is ticks x shares (the Python doors convert to currency). A gymnasium
env holds ``n_envs`` accounts as ``[n_envs, NF]`` ... arrays and passes rows of them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# float state [NF]. F_LFS0/1: size of the last fill per side (the trader's view of inventory,
# hftbacktest model)
F_CASH, F_INV, F_BSZ, F_BQ, F_ASZ, F_AQ, F_FEES, F_VOL, F_QUOTED, F_LFS0, F_LFS1 = range(11)
NF = 11
# int state [NI]. I_NFILL counts this account's fills, I_NLOG the rows written to the fills log,
# I_LFT0/1 the exchange time of the last fill per side, I_QR0/1 the last row the depth cap saw,
# I_TK0/1 the crossed-rule guard of a taker's remainder: first row not yet scanned (0 = none)
(I_BPX, I_APX, I_NFILL, I_NPLACED, I_NFILLED, I_BHIT, I_AHIT, I_ROW,
 I_PH0, I_PC0, I_PH1, I_PC1, I_NLOG, I_LFT0, I_LFT1, I_QR0, I_QR1, I_TK0, I_TK1) = range(19)
NI = 19
# pending orders per side: a FIFO ring (activation rows are non-decreasing)
PEND_CAP = 64
NEVER = np.iinfo(np.int64).max  # activation row of an empty FIFO
# what an order reaching the exchange does (a fill model's ``arrive``)
GONE, KEEP, REJECT, TAKE, REST = range(5)
# fills log columns: int64 [n, 4] and float64 [n, 3]
L_ROW, L_TS, L_SIDE, L_PX = range(4)
L_SIZE, L_FEE, L_TAKER = range(3)


class EpisodeState(NamedTuple):
    """Each episode's account at its end row, one ``[E]`` array per field (engine units: ticks,
    ticks x shares). ``run_backtest`` puts it in ``res.extra['episode_state']``."""

    cash: np.ndarray  # fees included
    inventory: np.ndarray  # shares
    mark: np.ndarray  # mid of the episode's last row
    fees: np.ndarray
    volume: np.ndarray  # shares filled
    quoted: np.ndarray  # shares of the orders placed
    n_fills: np.ndarray  # fills (a partial fill counts one)
    n_placed: np.ndarray  # orders that reached the exchange (resting or taking)
    n_filled: np.ndarray  # of those, orders with at least one fill


# per-episode outputs [E, NE] of the compiled backtest: the columns of EpisodeState
(E_CASH, E_INV, E_MARK, E_FEES, E_VOL, E_QUOTED, E_NFILL, E_NPLACED, E_NFILLED) = range(9)
NE = len(EpisodeState._fields)


def episode_state(out: np.ndarray) -> EpisodeState:
    """The [E, NE] array of the compiled backtest as named columns (views)."""
    return EpisodeState(*(out[:, k] for k in range(NE)))


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


# ---------------------------------------------------------------- accessors (numba and Python)
@njit(cache=True, inline="always")
def reset(fs, is_, row):
    """Flat at ``row``: no cash, no position, no order, counters and the fills log at 0."""
    fs[:] = 0.0
    is_[:] = 0
    is_[I_ROW] = row


@njit(cache=True, inline="always")
def restart(fs, is_, row):
    """:func:`reset`, but the fills log keeps counting (one log across episodes)."""
    nlog = is_[I_NLOG]
    reset(fs, is_, row)
    is_[I_NLOG] = nlog


@njit(cache=True, inline="always")
def cash(fs):
    """Cash, ticks x shares (fees included)."""
    return fs[F_CASH]


@njit(cache=True, inline="always")
def inventory(fs):
    """Position, shares."""
    return fs[F_INV]


@njit(cache=True, inline="always")
def equity(fs, mid):
    """Cash + inventory x ``mid``, ticks x shares."""
    return fs[F_CASH] + fs[F_INV] * mid


@njit(cache=True, inline="always")
def n_logged(is_):
    """Rows written to the fills log."""
    return is_[I_NLOG]


__all__ = ["EpisodeState", "FILL_DTYPE", "NE", "NF", "NI", "PEND_CAP", "cash", "episode_state", "equity",
           "fills_table", "inventory", "n_logged", "reset", "restart"]

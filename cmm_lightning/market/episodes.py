"""Episodes: the backtested rows cut into consecutive segments, each traded from flat and marked
to mid at its end (README, "Episodes and the mark to mid").

``market.episode_length`` says how long one is:

    null / 0     one episode (the whole split)
    int          that many book rows
    "30min"      a duration of exchange time (any pandas Timedelta string: "90s", "5min", "1h");
                 episode k covers the rows with ts in [t0 + k·D, t0 + (k+1)·D), t0 = ts[first row]
    "auto"       the test split in ``market.n_episodes`` parts of equal rows (resolved once per run
                 by :func:`resolve_episode_length`, so that val, test and the RL agents use the same
                 length in rows)

Episodes are the unit of the uncertainty estimates (bootstrap CIs and paired tests over episodes).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CMMInputError


def parse_duration_ns(value: str) -> int:
    """"30min" -> 1_800_000_000_000 (ns); a one-line error naming the key otherwise."""
    import pandas as pd

    try:
        ns = int(pd.Timedelta(str(value)).value)
    except (ValueError, TypeError):
        ns = 0
    if ns <= 0:
        raise CMMInputError(f"config: market.episode_length={value!r} is not a positive number of rows, "
                            "a duration such as '30min', 'auto' or null")
    return ns


def check_episode_length(value) -> None:
    """Validate a ``market.episode_length`` value (config load)."""
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if isinstance(value, str):
        parse_duration_ns(value)
        return
    raise CMMInputError(f"config: market.episode_length={value!r} is not a positive number of rows, "
                        "a duration such as '30min', 'auto' or null")


def resolve_episode_length(value, test_rows: int, n_episodes: int):
    """``"auto"`` -> rows = ⌈test_rows / n_episodes⌉; anything else unchanged."""
    if value != "auto":
        return value
    if n_episodes < 1:
        raise CMMInputError(f"config: market.n_episodes={n_episodes} must be >= 1")
    return max(1, math.ceil(int(test_rows) / int(n_episodes)))


def episode_bounds(start_row: int, end_row: int, episode_length=None, ts=None, cuts=None) -> np.ndarray:
    """[E, 2] (first row, end row) of consecutive episodes covering rows [start_row, end_row).

    ``episode_length``: None / 0 (one episode), rows (int) or a duration string (needs ``ts``,
    the book's int64 ns timestamps); see the module docstring. ``cuts``: rows that also start an
    episode (a multi-day book's day starts: no episode is held overnight)."""
    start_row, end_row = int(start_row), int(end_row)
    if episode_length is None or episode_length == 0:
        starts = np.array([start_row], np.int64)
    elif isinstance(episode_length, str):
        if ts is None:
            raise ValueError("episode_bounds: a duration needs the book's timestamps (ts)")
        span = np.asarray(ts[start_row:end_row], np.int64)
        dur = parse_duration_ns(episode_length)
        k = (span - span[0]) // dur  # episode index of every row
        starts = start_row + np.flatnonzero(np.r_[True, np.diff(k) > 0])
    else:
        if int(episode_length) < 1:
            raise CMMInputError(f"config: market.episode_length={episode_length} must be >= 1 row")
        starts = np.arange(start_row, end_row, int(episode_length), dtype=np.int64)
    if cuts is not None:
        cuts = np.asarray(cuts, np.int64)
        starts = np.union1d(starts, cuts[(cuts > start_row) & (cuts < end_row)])
    return np.stack([starts, np.r_[starts[1:], end_row]], axis=1).astype(np.int64)


def typical_rows(bounds: np.ndarray) -> int:
    """Median rows per episode (the RL agents' training segment and AS's horizon H)."""
    return max(1, int(np.median(bounds[:, 1] - bounds[:, 0])))


__all__ = ["check_episode_length", "episode_bounds", "parse_duration_ns", "resolve_episode_length", "typical_rows"]

"""Windows, targets, regimes and chronological splits (DESIGN §2), all vectorised.

A window ends at snapshot ``e`` (the decision time) and holds snapshots ``e-T+1 .. e``.
Per-snapshot features (F = 4L + 3): bid and ask price offsets from the *window's current mid*
in ticks (L each), log1p bid and ask sizes (L each), log1p traded volume, trade side, and the
level-1 imbalance (b1 - a1) / (b1 + a1). Empty (padded) levels read as 0.

Targets at horizon h, in ticks:  mid = m[e+h] - m[e];  spread = mean(s[e+1 .. e+h]);
volume = log(1 + Σ traded volume over e+1 .. e+h).  Regime = tercile of the window's realised
volatility sqrt(Σ Δm²), cut points fit on the train split only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import CMMInputError
from .lob import Book

TASKS = ("mid", "spread", "volume")
REGIMES = ("calm", "normal", "volatile")
SPLITS = ("train", "val", "test")


def snapshot_features(book: Book) -> np.ndarray:
    """[N, 4L+3] float32 per-snapshot features; prices are absolute ticks here (0 where empty)."""
    empty_b, empty_a = book.bid_sz <= 0, book.ask_sz <= 0
    b1, a1 = book.bid_sz[:, 0], book.ask_sz[:, 0]
    cols = [
        np.where(empty_b, np.nan, book.bid_px),
        np.where(empty_a, np.nan, book.ask_px),
        np.log1p(book.bid_sz),
        np.log1p(book.ask_sz),
        np.log1p(book.trade_sz)[:, None],
        book.trade_side.astype(np.float64)[:, None],
        ((b1 - a1) / np.maximum(b1 + a1, 1e-12))[:, None],
    ]
    return np.concatenate(cols, axis=1)


def feature_names(levels: int) -> list[str]:
    names = [f"bid_px_{i}" for i in range(1, levels + 1)] + [f"ask_px_{i}" for i in range(1, levels + 1)]
    names += [f"bid_logsz_{i}" for i in range(1, levels + 1)] + [f"ask_logsz_{i}" for i in range(1, levels + 1)]
    return names + ["log_volume", "trade_side", "imbalance_1"]


@dataclass
class WindowSet:
    """All windows of one book. Index arrays are positions into ``end`` (window ids)."""

    book: Book
    window: int  # T
    horizon: int  # h
    end: np.ndarray  # int64 [W] last snapshot of each window (the decision time)
    targets: np.ndarray  # float32 [W, 3] (mid, spread, volume)
    realized_vol: np.ndarray  # float32 [W]
    regime: np.ndarray  # int64 [W] 0 calm, 1 normal, 2 volatile
    split: np.ndarray  # int8 [W] 0 train, 1 val, 2 test, -1 in a gap (unused)
    regime_cuts: np.ndarray  # float64 [2] volatility cut points (train only)
    boundaries: dict = field(default_factory=dict)  # split -> [first_end, last_end] snapshot ids
    _snap: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        return 4 * self.book.levels + 3

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def inputs(self, idx: np.ndarray) -> np.ndarray:
        """[B, T, F] float32 model inputs for windows ``idx`` (vectorised gather)."""
        if self._snap is None:
            self._snap = snapshot_features(self.book)
        L = self.book.levels
        rows = self.end[idx, None] + np.arange(-self.window + 1, 1)[None, :]  # [B, T]
        x = self._snap[rows]  # [B, T, F] float64
        mid_now = self.book.mid[self.end[idx]][:, None, None]
        x[..., : 2 * L] -= mid_now
        return np.nan_to_num(x, nan=0.0).astype(np.float32)

    def fingerprint(self) -> str:
        """Hash of the book contents and the window spec: a changed key never reuses caches."""
        h = hashlib.sha256()
        b = self.book
        for arr in (b.ts, b.bid_px, b.bid_sz, b.ask_px, b.ask_sz, b.trade_px, b.trade_sz, b.trade_side, self.end):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(f"T={self.window};h={self.horizon};tick={b.tick_size}".encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        out = {
            "n_snapshots": int(self.book.n),
            "levels": int(self.book.levels),
            "tick_size": float(self.book.tick_size),
            "n_windows": {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)},
            "window": self.window,
            "horizon": self.horizon,
            "split_boundaries": self.boundaries,
            "regime_cuts": [float(c) for c in self.regime_cuts],
            "regime_counts": {
                s: {r: int(((self.split == i) & (self.regime == k)).sum()) for k, r in enumerate(REGIMES)}
                for i, s in enumerate(SPLITS)
            },
            "targets": {},
        }
        if "dropped_rows" in self.book.meta:
            out["dropped_rows"] = int(self.book.meta["dropped_rows"])
        train = self.split == 0
        for k, t in enumerate(TASKS):
            col = self.targets[train, k]
            out["targets"][t] = {
                "mean": float(col.mean()), "std": float(col.std()),
                "min": float(col.min()), "max": float(col.max()),
            }
        return out


def make_windows(book: Book, window: int = 32, horizon: int = 10, stride: int = 1,
                 split=(0.7, 0.15, 0.15), gap: int | None = None,
                 max_windows: int | None = None) -> WindowSet:
    """Cut ``book`` into windows with targets, regimes and chronological splits.

    Splits are contiguous in time with ``gap >= horizon`` snapshots between the last window
    end of one split and the first of the next, so no train target overlaps a later split.
    """
    gap = horizon if gap is None else gap
    if gap < horizon:
        raise CMMInputError(f"data.gap={gap} must be at least data.horizon={horizon}")
    T, h, N = window, horizon, book.n
    end = np.arange(T - 1, N - h, stride, dtype=np.int64)
    if max_windows is not None:
        end = end[-max_windows:]
    if len(end) < 30:
        raise CMMInputError(
            f"{book.source}: only {N} snapshots, {len(end)} windows of T={T}, h={h}, stride={stride}; "
            "need at least 30"
        )
    mid, spread = book.mid, book.spread.astype(np.float64)
    # prefix sums give every horizon statistic in O(N)
    cs_spread = np.concatenate([[0.0], np.cumsum(spread)])
    cs_vol = np.concatenate([[0.0], np.cumsum(book.trade_sz)])
    dm2 = np.concatenate([[0.0], np.diff(mid) ** 2])
    cs_dm2 = np.concatenate([[0.0], np.cumsum(dm2)])
    targets = np.stack(
        [
            mid[end + h] - mid[end],
            (cs_spread[end + h + 1] - cs_spread[end + 1]) / h,
            np.log1p(cs_vol[end + h + 1] - cs_vol[end + 1]),
        ],
        axis=1,
    ).astype(np.float32)
    # realised vol over the window's T-1 mid changes: rows e-T+2 .. e
    rv = np.sqrt(cs_dm2[end + 1] - cs_dm2[end - T + 2]).astype(np.float32)

    fr = np.asarray(split, dtype=np.float64)
    fr = fr / fr.sum()
    span_lo, span_hi = end[0], end[-1]
    cut1 = span_lo + fr[0] * (span_hi - span_lo)
    cut2 = span_lo + (fr[0] + fr[1]) * (span_hi - span_lo)
    split_id = np.full(len(end), -1, dtype=np.int8)
    split_id[end < cut1] = 0
    val = (end >= cut1 + gap) & (end < cut2)
    split_id[val] = 1
    split_id[end >= cut2 + gap] = 2
    for i, name in enumerate(SPLITS):
        if not (split_id == i).any():
            raise CMMInputError(f"{book.source}: split '{name}' is empty; use more data or change data.split")
    train = split_id == 0
    cuts = np.quantile(rv[train], [1 / 3, 2 / 3])
    # rv <= cut goes to the lower regime: a window with no mid move (rv = 0) is always calm
    regime = np.searchsorted(cuts, rv, side="left").astype(np.int64)
    bounds = {
        s: [int(end[split_id == i][0]), int(end[split_id == i][-1])] for i, s in enumerate(SPLITS)
    }
    return WindowSet(book=book, window=T, horizon=h, end=end, targets=targets, realized_vol=rv,
                     regime=regime, split=split_id, regime_cuts=cuts, boundaries=bounds)

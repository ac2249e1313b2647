"""Windows, targets, regimes and chronological splits (docs/method.md, "Windows and targets"), all vectorised.

A window ends at snapshot ``e`` (the decision time) and holds snapshots ``e-T+1 .. e``.
Per-snapshot features (F = 4L + 3): bid and ask price offsets from the *window's current mid*
in ticks (L each), log1p bid and ask sizes (L each), log1p traded volume, trade side, and the
level-1 imbalance (b1 - a1) / (b1 + a1). Empty (padded) levels read as 0.

Targets at horizon h, in ticks:  mid = m[e+h] - m[e];  spread = mean(s[e+1 .. e+h]);
volume = log(1 + Σ traded volume over e+1 .. e+h).  Regime = tercile of the window's realised
volatility sqrt(Σ Δm²), cut points fit on the train split only.

Several days (``book.meta['day_start']``, see :func:`cmm_lightning.data.lob.concat_days`): windows
never span days — each day has its own stride grid ``s+T-1, s+T-1+stride, ...`` from its first row
``s``, and a window is kept only when its input rows ``e-T+1 .. e`` and target rows ``.. e+h`` lie
in that day, so every statistic is computed within one day. ``split_by="day"`` makes the last day
the test split, the day before it val, all earlier days train (the walk-forward unit).

Two implementations of the one input contract (the window ending at row ``e``, float32 [T, F]):

* :meth:`WindowSet.inputs` — the batched, vectorised NumPy path (training, evaluation): per-snapshot
  features of the whole book once (:func:`snapshot_features`, float64), then a gather per batch.
* :func:`window_from_book` — the per-decision compiled path (numba ``@njit(cache=True)``, callable
  from other numba code): one window written straight from the book arrays (:func:`book_arrays`)
  into a preallocated flat float32 [T·F] buffer, nothing computed for rows outside the window. It
  computes in float64 exactly as the NumPy path does and casts to float32 last, so the two agree
  bit for bit (tests/test_book_decision.py). The one possible source of difference is ``log1p``:
  NumPy's SIMD ``log1p`` and libm's may differ by 1 ulp in float64, which the float32 cast absorbs
  (no difference seen over millions of values; a flip needs the float64 value within 1 ulp of a
  float32 rounding boundary).

This is the CMM's whole decision input from the same data the teacher renders its prompt from
(``cmm_lightning.fused_kernel.book_decision``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ..errors import CMMInputError
from .lob import Book, day_starts

SPLIT_BY = ("fraction", "day")
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


def book_arrays(book: Book) -> tuple:
    """``(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side)``: the arrays :func:`window_from_book`
    reads, in its argument order (no copies)."""
    return book.bid_px, book.bid_sz, book.ask_px, book.ask_sz, book.trade_sz, book.trade_side


@njit(cache=True, nogil=True)
def window_from_book(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side, e, T, out):  # pragma: no cover - jit
    """Model input window ending at book row ``e`` (rows ``e-T+1 .. e``) → ``out`` float32 flat [T·F].

    ``out`` (F = 4L + 3, snapshot-major: element ``t·F + f`` is feature ``f`` of row ``e-T+1+t``)
    equals ``WindowSet.inputs(np.array([i]))[0].reshape(-1)`` for the window ``i`` with
    ``end[i] == e``, bit for bit: prices in ticks from the mid of row ``e`` (0 where the level is
    empty, size <= 0), log1p sizes, log1p traded volume, trade side, level-1 imbalance
    (b1 − a1) / max(b1 + a1, 1e-12); float64 arithmetic, NaN → 0, cast to float32 last. Pass a
    C-contiguous [T, F] buffer as ``buf.reshape(-1)``. Returns ``out``. ``e`` is taken as given
    (any row with ``T - 1 <= e < N``): pass window ends (``WindowSet.end``), which never span days.
    """
    n, L = bid_px.shape
    F = 4 * L + 3
    if e < T - 1 or e >= n:
        raise IndexError("window_from_book: row e must satisfy T - 1 <= e < number of book rows")
    if out.shape[0] != T * F:
        raise ValueError("window_from_book: out must be a flat float32 buffer of T * (4 * levels + 3)")
    mid = 0.5 * (bid_px[e, 0] + ask_px[e, 0])
    nan = np.nan
    k = 0
    for r in range(e - T + 1, e + 1):
        for j in range(L):  # bid price offsets
            v = float(bid_px[r, j]) - mid if bid_sz[r, j] > 0 or bid_sz[r, j] != bid_sz[r, j] else nan
            out[k] = np.float32(0.0 if v != v else v)
            k += 1
        for j in range(L):  # ask price offsets
            v = float(ask_px[r, j]) - mid if ask_sz[r, j] > 0 or ask_sz[r, j] != ask_sz[r, j] else nan
            out[k] = np.float32(0.0 if v != v else v)
            k += 1
        for j in range(L):
            v = np.log1p(float(bid_sz[r, j]))
            out[k] = np.float32(0.0 if v != v else v)
            k += 1
        for j in range(L):
            v = np.log1p(float(ask_sz[r, j]))
            out[k] = np.float32(0.0 if v != v else v)
            k += 1
        v = np.log1p(float(trade_sz[r]))
        out[k] = np.float32(0.0 if v != v else v)
        out[k + 1] = np.float32(float(trade_side[r]))
        b1, a1 = float(bid_sz[r, 0]), float(ask_sz[r, 0])
        den = b1 + a1
        if den < 1e-12:  # np.maximum: a NaN sum stays NaN
            den = 1e-12
        v = (b1 - a1) / den
        out[k + 2] = np.float32(0.0 if v != v else v)
        k += 3
    return out


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
    day: np.ndarray | None = None  # int64 [W] day of each window (index into book.meta['day_start'])
    split_by: str = "fraction"  # how ``split`` was assigned: fraction | day

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
        n_days = len(day_starts(self.book))
        if n_days > 1 or self.split_by != "fraction":
            names = self.book.meta.get("day_names") or [str(d) for d in range(n_days)]
            day = np.zeros(len(self.end), np.int64) if self.day is None else self.day
            out["split_by"] = self.split_by
            out["days"] = {
                "count": n_days, "names": list(names), "first_row": day_starts(self.book).tolist(),
                "n_windows": np.bincount(day, minlength=n_days).tolist(),
                "split": {s: sorted({names[d] for d in day[self.split == i]}) for i, s in enumerate(SPLITS)},
            }
        train = self.split == 0
        for k, t in enumerate(TASKS):
            col = self.targets[train, k]
            out["targets"][t] = {
                "mean": float(col.mean()), "std": float(col.std()),
                "min": float(col.min()), "max": float(col.max()),
            }
        return out


def window_ends(n: int, window: int, horizon: int, stride: int = 1, day_start=None) -> np.ndarray:
    """int64 window ends of a book of ``n`` rows whose days start at rows ``day_start`` (None: one day).

    Day ``[s, s')`` contributes ``s+T-1, s+T-1+stride, ... < s'-h``: the window's inputs and targets
    lie in the day. One day gives ``arange(T-1, n-h, stride)``. Vectorised over days and rows.
    """
    ds = np.zeros(1, np.int64) if day_start is None else np.asarray(day_start, dtype=np.int64)
    stops = np.append(ds[1:], np.int64(n))
    first = ds + (window - 1)
    counts = np.maximum(0, -((first - (stops - horizon)) // stride))  # ceil((stop - h - first) / stride)
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(first, counts) + stride * k


def make_windows(book: Book, window: int = 32, horizon: int = 10, stride: int = 1,
                 split=(0.7, 0.15, 0.15), gap: int | None = None,
                 max_windows: int | None = None, split_by: str = "fraction", day_start=None) -> WindowSet:
    """Cut ``book`` into windows with targets, regimes and chronological splits.

    ``split_by="fraction"``: splits are contiguous in time (``split`` fractions of the span of
    window ends) with ``gap >= horizon`` snapshots between the last window end of one split and
    the first of the next, so no train target overlaps a later split. ``split_by="day"``: the last
    day is test, the one before val, all earlier train (needs >= 3 days; no gap is needed since no
    window spans days). ``day_start`` (default ``book.meta['day_start']``, absent = one day): the
    first row of each day; windows never span days (see :func:`window_ends`).
    """
    gap = horizon if gap is None else gap
    if gap < horizon:
        raise CMMInputError(f"data.gap={gap} must be at least data.horizon={horizon}")
    if split_by not in SPLIT_BY:
        raise CMMInputError(f"data.split_by={split_by!r} is not one of {', '.join(SPLIT_BY)}")
    if max_windows is not None and max_windows < 1:
        raise CMMInputError(f"data.max_windows must be >= 1 or null (every window), got {max_windows}")
    fr = np.asarray(split, dtype=np.float64).reshape(-1)
    if len(fr) != 3 or not np.isfinite(fr).all() or (fr <= 0).any():
        raise CMMInputError(f"data.split={list(split)} must be three positive fractions (train, val, test) that "
                            "sum to 1")
    if abs(fr.sum() - 1.0) > 1e-6:
        raise CMMInputError(f"data.split={list(split)} sums to {fr.sum():.6g}; the train, val and test fractions "
                            "must sum to 1")
    T, h, N = window, horizon, book.n
    ds = day_starts(book) if day_start is None else np.asarray(day_start, dtype=np.int64)
    n_days = len(ds)
    if split_by == "day" and n_days < 3:
        raise CMMInputError(f"{book.source}: data.split_by=day needs at least 3 days (train, val, test), "
                            f"the book has {n_days}; use data.split_by=fraction or more days")
    end = window_ends(N, T, h, stride, ds if n_days > 1 else None)
    if max_windows is not None:
        end = end[-max_windows:]
    if len(end) < 30:
        days = f" in {n_days} days" if n_days > 1 else ""
        raise CMMInputError(
            f"{book.source}: only {N} snapshots{days}, {len(end)} windows of T={T}, h={h}, stride={stride}; "
            "need at least 30"
        )
    day = np.searchsorted(ds, end, side="right").astype(np.int64) - 1
    mid, spread = book.mid, book.spread.astype(np.float64)
    # prefix sums give every horizon statistic in O(N); a window's rows lie in one day
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

    split_id = np.full(len(end), -1, dtype=np.int8)
    if split_by == "day":
        split_id[:] = np.where(day == n_days - 1, 2, np.where(day == n_days - 2, 1, 0))
    else:
        fr = fr / fr.sum()  # exactly 1 (the check above allows float rounding)
        span_lo, span_hi = end[0], end[-1]
        cut1 = span_lo + fr[0] * (span_hi - span_lo)
        cut2 = span_lo + (fr[0] + fr[1]) * (span_hi - span_lo)
        split_id[end < cut1] = 0
        val = (end >= cut1 + gap) & (end < cut2)
        split_id[val] = 1
        split_id[end >= cut2 + gap] = 2
    for i, name in enumerate(SPLITS):
        if not (split_id == i).any():
            if split_by == "day":
                names = book.meta.get("day_names") or [str(d) for d in range(n_days)]
                which = {0: "the days before the last two", 1: f"day {names[-2]}", 2: f"day {names[-1]}"}[i]
                raise CMMInputError(f"{book.source}: split '{name}' ({which}) has no window of T={T}, h={h} "
                                    f"(data.split_by=day); use longer days or a smaller data.window")
            raise CMMInputError(f"{book.source}: split '{name}' is empty; use more data or change data.split")
    train = split_id == 0
    cuts = np.quantile(rv[train], [1 / 3, 2 / 3])
    # rv <= cut goes to the lower regime: a window with no mid move (rv = 0) is always calm
    regime = np.searchsorted(cuts, rv, side="left").astype(np.int64)
    bounds = {
        s: [int(end[split_id == i][0]), int(end[split_id == i][-1])] for i, s in enumerate(SPLITS)
    }
    return WindowSet(book=book, window=T, horizon=h, end=end, targets=targets, realized_vol=rv,
                     regime=regime, split=split_id, regime_cuts=cuts, boundaries=bounds, day=day,
                     split_by=split_by)


def check_learnable(w: WindowSet) -> None:
    """A book the pipeline cannot learn from is a one-line CMMInputError naming its file, at
    ``prepare`` rather than as a crash in the probe: the mid never moves, a target (mid, spread,
    volume) is the same in every train or val window (nothing to fit, R² undefined), or the
    realised volatility is the same in every train window (no calm / normal / volatile regimes)."""
    b = w.book
    src = b.source
    mid = b.mid
    if np.ptp(mid) == 0:
        raise CMMInputError(f"{src}: the mid price never moves ({b.n:,} rows, all at {mid[0] * b.tick_size:g}): "
                            "every target and every regime would be the same; nothing to learn or quote")
    hints = {
        "mid": f"the mid does not move within h={w.horizon} snapshots of any such window",
        "spread": "the spread is always the same",
        "volume": ("nothing traded: the table has no 'volume' column or it is all 0" if not (b.trade_sz > 0).any()
                   else f"nothing traded within h={w.horizon} snapshots of any such window"),
    }
    for split in ("train", "val"):
        idx = w.indices(split)
        for k, task in enumerate(TASKS):
            col = w.targets[idx, k]
            if len(col) and col.min() == col.max():
                raise CMMInputError(f"{src}: target '{task}' is {float(col[0]):g} in every one of the {len(col):,} "
                                    f"{split} windows ({hints[task]}); a constant target cannot be learned or probed")
    rv = w.realized_vol[w.indices("train")]
    if len(rv) and rv.min() == rv.max():
        raise CMMInputError(f"{src}: the realised volatility is {float(rv[0]):g} in every train window; the calm / "
                            "normal / volatile regimes cannot be cut")

"""The embedded synthetic market: reproducible, valid, regime-switching, with a real OFI signal."""

import time

import numpy as np
import pytest

from cmm_lightning.data.synthetic import regime_path, simulate
from cmm_lightning.data.windows import make_windows

FIELDS = ("ts", "bid_px", "bid_sz", "ask_px", "ask_sz", "trade_px", "trade_sz", "trade_side", "regime")


@pytest.fixture(scope="module")
def book():
    return simulate(40_000).validate()


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = simulate(5_000, seed=3), simulate(5_000, seed=3), simulate(5_000, seed=4)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert not np.array_equal(a.mid, c.mid)
    assert not np.array_equal(a.bid_sz, c.bid_sz)


def test_book_invariants(book):
    assert book.ts.dtype == np.int64 and (np.diff(book.ts) > 0).all()  # strictly increasing ns
    for a in (book.bid_px, book.ask_px, book.trade_px):
        assert a.dtype == np.int64  # on the tick grid by construction
    assert (book.spread >= 1).all()  # never crossed or locked
    assert (np.diff(book.bid_px, axis=1) < 0).all() and (np.diff(book.ask_px, axis=1) > 0).all()
    assert (book.bid_sz > 0).all() and (book.ask_sz > 0).all()
    assert (book.bid_sz == np.rint(book.bid_sz)).all()
    traded = book.trade_sz > 0
    assert ((book.trade_side != 0) == traded).all() and ((book.trade_px > 0) == traded).all()
    # a trade prints at the previous best on its side
    i = np.flatnonzero(traded & (np.arange(book.n) > 0))
    buy = book.trade_side[i] > 0
    np.testing.assert_array_equal(book.trade_px[i[buy]], book.ask_px[i[buy] - 1, 0])
    np.testing.assert_array_equal(book.trade_px[i[~buy]], book.bid_px[i[~buy] - 1, 0])
    # mean inter-arrival ~100 ms
    assert 50e6 < np.diff(book.ts).mean() < 150e6


def test_three_regimes_with_increasing_vol_spread_and_volume(book):
    r = book.regime
    counts = np.bincount(r, minlength=3)
    assert (counts > 0.15 * book.n).all(), counts
    dm = np.diff(book.mid)
    vol = [dm[r[1:] == k].std() for k in range(3)]
    spread = [book.spread[r == k].mean() for k in range(3)]
    volume = [book.trade_sz[r == k].mean() for k in range(3)]
    assert vol[0] < vol[1] < vol[2], vol
    assert spread[0] < spread[1] < spread[2], spread
    assert 1.0 <= spread[0] <= 2.0  # calm: 1-2 ticks
    assert volume[0] < volume[1] < volume[2], volume
    # spells are geometric with the configured mean
    spells = np.diff(np.flatnonzero(np.diff(regime_path(200_000, 500, np.random.default_rng(0))) != 0))
    assert 400 < spells.mean() < 600
    # windows' realised-vol regimes mostly agree with the true regime
    w = make_windows(book, 32, 10, 5)
    assert (book.regime[w.end] == w.regime).mean() > 0.6
    for s in ("train", "val", "test"):  # every split sees every regime
        assert (np.bincount(w.regime[w.indices(s)], minlength=3) > 50).all()


def test_imbalance_predicts_next_mid_moves(book):
    h = 10
    imb = (book.bid_sz[:, 0] - book.ask_sz[:, 0]) / (book.bid_sz[:, 0] + book.ask_sz[:, 0])
    move = book.mid[h:] - book.mid[:-h]
    x = imb[:-h]
    n = len(x)

    def corr_t(a, b):
        r = np.corrcoef(a, b)[0, 1]
        return r, r * np.sqrt((n - 2) / (1 - r * r))

    r, t = corr_t(x, move)
    assert r > 0.1 and t > 5, (r, t)
    r0, _ = corr_t(np.random.default_rng(0).permutation(x), move)
    assert abs(r0) < 0.03, r0
    # the past move does not explain it away: imbalance is a leading, not a lagging, signal
    past = np.concatenate([np.zeros(h), book.mid[h:-h] - book.mid[:-2 * h]])
    assert abs(np.corrcoef(past, move)[0, 1]) < r / 2
    # deeper levels carry the signal too
    deep = book.bid_sz[:, 1:].sum(1) - book.ask_sz[:, 1:].sum(1)
    assert corr_t(deep[:-h], move)[0] > 0.05


def _ridge_r2(w, lambdas=(1.0, 10.0, 100.0, 1000.0, 10000.0)):
    """Closed-form ridge on the flattened standardized window, best val R² per task."""
    X = w.inputs(np.arange(len(w.end))).reshape(len(w.end), -1).astype(np.float64)
    tr, va = w.indices("train"), w.indices("val")
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-9
    Z = (X - mu) / sd
    Y = w.targets.astype(np.float64)
    ym = Y[tr].mean(0)
    G, rhs = Z[tr].T @ Z[tr], Z[tr].T @ (Y[tr] - ym)
    best = np.full(3, -np.inf)
    for lam in lambdas:
        pred = Z[va] @ np.linalg.solve(G + lam * np.eye(len(G)), rhs) + ym
        r2 = 1 - ((Y[va] - pred) ** 2).sum(0) / ((Y[va] - Y[va].mean(0)) ** 2).sum(0)
        best = np.maximum(best, r2)
    return list(best)


def test_default_tasks_are_learnable(book):
    """A ridge on the raw window reads mid moderately (0.1-0.3), spread and volume clearly."""
    w = make_windows(book, 32, 10, 5)
    r2 = _ridge_r2(w)
    assert 0.08 < r2[0] < 0.4, r2
    assert r2[1] > 0.5 and r2[2] > 0.2, r2
    # spread and volume targets are regime-dependent (realised-vol regimes, val split)
    va = w.indices("val")
    for k in (1, 2):
        means = [w.targets[va][w.regime[va] == g, k].mean() for g in range(3)]
        assert means[0] < means[1] < means[2], (k, means)


def test_fast_and_positive_over_a_million_snapshots():
    simulate(1_000)  # compiled kernels loaded
    best = min(_timed(lambda: simulate(100_000)) for _ in range(3))
    assert best < 1.0, best
    big = simulate(1_000_000, seed=1)
    assert big.mid.min() > 0.5 * 100.0 / 0.01 and big.mid.max() < 1.5 * 100.0 / 0.01
    # even a 50-tick stock never reaches zero (reflecting floor), and stays a valid book
    low = simulate(200_000, start_price=0.5, seed=2).validate()
    assert (low.bid_px[:, -1] > 0).all()


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

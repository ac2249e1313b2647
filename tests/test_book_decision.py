"""Book rows → predictions, compiled: the window equals ``WindowSet.inputs`` bit for bit, and
``decide_book`` equals ``decide`` on that window (the like-for-like latency path)."""

import numpy as np
import pytest
import torch
from numba import njit

from cmm_lightning.data.lob import Book
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.data.windows import book_arrays, make_windows, window_from_book
from cmm_lightning.export import book_decision_latency_us, random_cmm
from cmm_lightning.fused_kernel import book_decision

pytestmark = pytest.mark.usefixtures("one_thread")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _assert_windows_equal(w, ids):
    arrs = book_arrays(w.book)
    T, F = w.window, w.n_features
    want = w.inputs(ids)
    buf = np.empty(T * F, np.float32)
    for k, i in enumerate(ids):
        got = window_from_book(*arrs, w.end[i], T, buf)
        assert got is buf
        np.testing.assert_array_equal(_bits(buf), _bits(want[k].reshape(-1)), err_msg=f"window {i}")


@pytest.fixture(scope="module")
def synthetic():
    return make_windows(simulate(n_snapshots=3000, levels=5, seed=3), window=32, horizon=10, stride=1)


def padded_book(levels: int = 6, n: int = 2500, seed: int = 11) -> Book:
    """LOBSTER-like: deeper levels often empty (price 0, size 0), the best level never."""
    b = simulate(n_snapshots=n, levels=levels, seed=seed)
    rng = np.random.default_rng(seed)
    bid_px, bid_sz, ask_px, ask_sz = (a.copy() for a in (b.bid_px, b.bid_sz, b.ask_px, b.ask_sz))
    depth_b = rng.integers(1, levels + 1, n)  # levels kept per row and side
    depth_a = rng.integers(1, levels + 1, n)
    lv = np.arange(levels)[None, :]
    gone_b, gone_a = lv >= depth_b[:, None], lv >= depth_a[:, None]
    bid_px[gone_b], bid_sz[gone_b], ask_px[gone_a], ask_sz[gone_a] = 0, 0.0, 0, 0.0
    out = Book(ts=b.ts, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz, trade_px=b.trade_px,
               trade_sz=b.trade_sz, trade_side=b.trade_side, tick_size=b.tick_size, source="padded",
               meta={"allow_empty_levels": True})
    assert gone_b.any() and gone_a.any() and (gone_b & ~gone_b[:, :1]).any()
    return out.validate()


def test_window_equals_inputs_on_the_synthetic_market(synthetic):
    w = synthetic
    ids = np.random.default_rng(0).choice(len(w.end), 400, replace=False)
    _assert_windows_equal(w, np.concatenate([[0, len(w.end) - 1], ids]))  # first / last windows too


def test_window_equals_inputs_with_padded_empty_levels():
    w = make_windows(padded_book(), window=16, horizon=5, stride=1)
    ids = np.random.default_rng(1).choice(len(w.end), 400, replace=False)
    _assert_windows_equal(w, ids)
    x = w.inputs(ids)  # the padded levels really read 0 in both
    L = w.book.levels
    assert (x[..., 1:L] == 0).any() and (x[..., 2 * L + 1:3 * L] == 0).any()


def test_window_rejects_rows_without_a_full_window(synthetic):
    arrs, T = book_arrays(synthetic.book), synthetic.window
    buf = np.empty(T * synthetic.n_features, np.float32)
    for bad in (T - 2, synthetic.book.n):
        with pytest.raises(IndexError):
            window_from_book(*arrs, bad, T, buf)
    with pytest.raises(ValueError):
        window_from_book(*arrs, T, T, buf[:-1])


def test_decide_book_equals_decide_on_the_window(synthetic):
    w = synthetic
    m = random_cmm(window=w.window, n_features=w.n_features)
    ids = np.random.default_rng(2).choice(len(w.end), 64, replace=False)
    out = np.empty(3, np.float32)
    arrs = book_arrays(w.book)
    for i in ids:
        want = m.decide(w.inputs(np.array([i]))[0])
        np.testing.assert_array_equal(_bits(m.decide_book(w.book, w.end[i])), _bits(want))
        assert m.decide_book(arrs, int(w.end[i]), out) is out
        np.testing.assert_array_equal(_bits(out), _bits(want))
    # and the torch forward agrees to float tolerance
    x = torch.from_numpy(w.inputs(ids[:8]))
    got = np.stack([m.decide_book(w.book, w.end[i]) for i in ids[:8]])
    np.testing.assert_allclose(got, m(x).numpy(), rtol=1e-4, atol=1e-4)


def test_book_decision_is_callable_from_numba(synthetic):
    """The hftbacktest-bridge use: an @njit loop calling book_decision with *kernel_args()."""
    w = synthetic
    m = random_cmm(window=w.window, n_features=w.n_features)

    @njit
    def loop(bp, bs, ap, az, ts, tsd, rows, T, weights, scratch, out):
        for j in range(rows.shape[0]):
            book_decision(bp, bs, ap, az, ts, tsd, rows[j], T, *weights, scratch, out[j])

    rows = w.end[np.random.default_rng(4).choice(len(w.end), 16, replace=False)]
    out = np.empty((len(rows), 3), np.float32)
    loop(*book_arrays(w.book), rows, w.window, m.kernel_args(),
         np.empty(w.window * w.n_features, np.float32), out)
    want = np.stack([m.decide_book(w.book, r) for r in rows])
    np.testing.assert_array_equal(_bits(out), _bits(want))


@pytest.mark.parametrize("encoder", ["gru"])
def test_other_encoders_fall_back_to_forward_on_the_compiled_window(synthetic, encoder):
    w = synthetic
    m = random_cmm(n_students=3, window=w.window, n_features=w.n_features, encoder=encoder)
    with pytest.raises(ValueError):
        m.kernel_args()
    ids = np.random.default_rng(5).choice(len(w.end), 8, replace=False)
    want = m(torch.from_numpy(w.inputs(ids))).numpy()
    out = np.empty(3, np.float32)
    for k, i in enumerate(ids):
        np.testing.assert_allclose(m.decide_book(w.book, w.end[i]), want[k], rtol=1e-4, atol=1e-5)
        assert m.decide_book(w.book, w.end[i], out) is out  # batch 1 both: the same forward, same window
        np.testing.assert_allclose(out, m.decide(w.inputs(np.array([i]))[0]), rtol=1e-6, atol=0)


def test_book_decision_latency_is_positive_and_finite(synthetic):
    w = synthetic
    m = random_cmm(window=w.window, n_features=w.n_features)
    med, p10 = book_decision_latency_us(m, w.book, w.end[w.indices("test")[:8]], calls=300, warmup=30)
    assert np.isfinite(med) and np.isfinite(p10) and 0 < p10 <= med

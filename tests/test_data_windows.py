"""Windows, targets, regimes, splits, validation and the LOBDataModule."""

import numpy as np
import pytest
import torch

from cmm_lightning.data.datamodule import LOBDataModule, with_teacher
from cmm_lightning.data.lob import Book, to_ticks, validate_book
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.data.windows import make_windows
from cmm_lightning.errors import CMMInputError


def flat_book(n=200, levels=2):
    """A hand-made book: mid walks +1 tick every 3rd row, spread alternates 2/3, volume = row % 4."""
    i = np.arange(n)
    bid = 1000 + i // 3
    spread = 2 + (i % 2)
    bid_px = bid[:, None] - np.arange(levels)[None, :]
    ask_px = (bid + spread)[:, None] + np.arange(levels)[None, :]
    sz = np.full((n, levels), 10.0)
    sz[:, 0] = 10 + i % 5
    return Book(ts=i.astype(np.int64) * 1000, bid_px=bid_px, bid_sz=sz, ask_px=ask_px, ask_sz=sz.copy() + 1,
                trade_px=np.zeros(n, np.int64), trade_sz=(i % 4).astype(float), trade_side=np.zeros(n, np.int8))


def test_targets_inputs_and_realised_vol_by_hand():
    b = flat_book()
    T, h = 8, 4
    w = make_windows(b, window=T, horizon=h, stride=3)
    mid, spread = b.mid, b.spread
    for k, e in enumerate(w.end[:20]):
        assert w.targets[k, 0] == pytest.approx(mid[e + h] - mid[e])
        assert w.targets[k, 1] == pytest.approx(spread[e + 1: e + h + 1].mean())
        assert w.targets[k, 2] == pytest.approx(np.log1p(b.trade_sz[e + 1: e + h + 1].sum()), rel=1e-6)
        assert w.realized_vol[k] == pytest.approx(np.sqrt((np.diff(mid[e - T + 1: e + 1]) ** 2).sum()), rel=1e-6)
    x = w.inputs(np.array([0, 5]))
    assert x.shape == (2, T, 4 * 2 + 3) and x.dtype == np.float32
    e = w.end[5]
    np.testing.assert_allclose(x[1, -1, :2], b.bid_px[e] - mid[e])  # bid levels relative to the current mid
    np.testing.assert_allclose(x[1, 0, 2:4], b.ask_px[e - T + 1] - mid[e])  # earlier rows: same reference mid
    np.testing.assert_allclose(x[1, -1, 4:6], np.log1p(b.bid_sz[e]), rtol=1e-6)
    np.testing.assert_allclose(x[1, :, 8], np.log1p(b.trade_sz[e - T + 1: e + 1]), rtol=1e-6)
    b1, a1 = b.bid_sz[e, 0], b.ask_sz[e, 0]
    assert x[1, -1, 10] == pytest.approx((b1 - a1) / (b1 + a1))


def test_no_look_ahead_across_splits():
    b = simulate(6_000, seed=1)
    for h, stride, gap in ((10, 5, None), (7, 1, 20), (25, 3, None)):
        w = make_windows(b, window=16, horizon=h, stride=stride, gap=gap)
        ends = [w.end[w.indices(s)] for s in ("train", "val", "test")]
        for early, late in ((0, 1), (1, 2), (0, 2)):
            # every target horizon of the earlier split ends before the later split's first decision
            assert ends[early].max() + h < ends[late].min()
        # changing everything after the train split leaves train inputs and targets untouched
        cut = ends[0].max() + h + 1
        c = simulate(6_000, seed=1)
        c.bid_px[cut:] += 50
        c.ask_px[cut:] += 57
        c.trade_sz[cut:] *= 9
        w2 = make_windows(c, window=16, horizon=h, stride=stride, gap=gap)
        tr = w.indices("train")
        np.testing.assert_array_equal(w.targets[tr], w2.targets[tr])
        np.testing.assert_array_equal(w.inputs(tr[-50:]), w2.inputs(tr[-50:]))
        assert not np.array_equal(w.targets[w.indices("val")], w2.targets[w.indices("val")])


def test_regime_cuts_fit_on_train_only():
    b = simulate(8_000, seed=2)
    w = make_windows(b, window=32, horizon=10, stride=5)
    start = w.end[w.indices("train")].max() + 1  # first row no train window sees
    c = simulate(8_000, seed=2)
    rng = np.random.default_rng(0)
    jump = np.cumsum(rng.integers(-3, 4, size=b.n))  # a much wilder market after train
    jump[:start] = 0
    c.bid_px += jump[:, None]
    c.ask_px += jump[:, None]
    c.bid_px += 10_000
    c.ask_px += 10_000
    w2 = make_windows(c, window=32, horizon=10, stride=5)
    np.testing.assert_array_equal(w.regime_cuts, w2.regime_cuts)
    tr = w.indices("train")
    np.testing.assert_array_equal(w.regime[tr], w2.regime[tr])
    assert (w2.regime[w2.indices("test")] == 2).mean() > 0.9  # test is volatile under the train cuts
    # train terciles are balanced by construction
    counts = np.bincount(w.regime[tr], minlength=3)
    assert counts.min() > 0.3 * len(tr)


def test_zero_volatility_windows_are_calm():
    b = flat_book(400)
    b.bid_px[:] = 1000 - np.arange(2)[None, :]
    b.ask_px[:] = 1002 + np.arange(2)[None, :]
    b.ask_px[200:] += np.arange(200)[:, None] % 2  # some wiggle later on
    w = make_windows(b, window=8, horizon=4, stride=1)
    assert (w.regime[w.realized_vol == 0] == 0).all()


def test_window_errors():
    b = flat_book(40)
    with pytest.raises(CMMInputError, match="need at least 30"):
        make_windows(b, window=8, horizon=4, stride=2)
    with pytest.raises(CMMInputError, match="gap=2 must be at least data.horizon=4"):
        make_windows(flat_book(), window=8, horizon=4, gap=2)


def test_validate_reports_the_first_offending_row_with_offsets():
    b = flat_book(50)
    b.bid_sz[30, 1] = np.nan
    b.bid_px[12, 0] = b.ask_px[12, 0]  # locked/crossed earlier than the NaN
    with pytest.raises(CMMInputError, match=r"^memory: row 13: crossed book"):
        validate_book(b)
    b.row_offset = 1  # a CSV header
    with pytest.raises(CMMInputError, match=r"row 14: crossed"):
        validate_book(b)
    b.meta["file_rows"] = np.arange(50) * 2 + 7  # rows dropped by a reader
    with pytest.raises(CMMInputError, match=r"row 31: crossed"):
        validate_book(b)
    s = b.slice(10, 20)  # per-row meta is cut along
    assert s.meta["file_rows"][0] == 27 and s.n == 10
    with pytest.raises(CMMInputError, match=r"row 31: crossed"):
        validate_book(s)

    cases = {
        "ask level 2": lambda c: c.ask_sz.__setitem__((4, 1), -1),
        "time": lambda c: c.ts.__setitem__(4, c.ts[3] - 1),
        "out of order": lambda c: c.bid_px.__setitem__((4, 1), c.bid_px[4, 0]),
        "non-positive price": lambda c: (c.bid_px.__setitem__((4, slice(None)), [0, -1])),
        "negative traded volume": lambda c: c.trade_sz.__setitem__(4, -2),
        "trade_sz is NaN": lambda c: c.trade_sz.__setitem__(4, np.inf),
    }
    for what, edit in cases.items():
        c = flat_book(50)
        edit(c)
        with pytest.raises(CMMInputError, match=r"row 5: .*" + what):
            validate_book(c)

    # padded (empty) deeper levels are fine only when the source allows them; an empty best level never
    c = flat_book(50)
    c.bid_px[7, 1], c.bid_sz[7, 1] = 0, 0
    with pytest.raises(CMMInputError, match=r"row 8: non-positive size \(bid level 2\)"):
        validate_book(c)
    c.meta["allow_empty_levels"] = True
    validate_book(c)
    c.ask_sz[9, 0] = 0
    with pytest.raises(CMMInputError, match=r"row 10: empty best level"):
        validate_book(c)
    with pytest.raises(CMMInputError, match="empty file"):
        validate_book(flat_book(50).slice(0, 0))


def test_to_ticks_names_row_and_column():
    px = np.array([[1.00, 1.01], [1.02, 1.035]])
    np.testing.assert_array_equal(to_ticks(px[:1], 0.01, "f.csv"), [[100, 101]])
    with pytest.raises(CMMInputError, match=r"f\.csv: row 3: price \(column 'b'\) 1.035 is not on the tick grid"):
        to_ticks(px, 0.01, "f.csv", row_offset=1, columns=["a", "b"])
    np.testing.assert_array_equal(to_ticks(np.array([0.5, 1.25]), 0.25, "x"), [2, 5])


def test_datamodule_batches_regimes_and_teacher_rows():
    w = make_windows(simulate(6_000, seed=3), window=16, horizon=5, stride=2)
    dm = LOBDataModule(w, batch_size=64, seed=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (64, 16, 4 * 5 + 3) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (64, 3) and batch["regime"].dtype == torch.int64
    idx = batch["index"].numpy()
    assert (w.split[idx] == 0).all()
    np.testing.assert_array_equal(batch["y"].numpy(), w.targets[idx])
    np.testing.assert_array_equal(batch["x"].numpy(), w.inputs(idx))
    again = next(iter(LOBDataModule(w, batch_size=64, seed=1).train_dataloader()))
    np.testing.assert_array_equal(again["index"], batch["index"])  # seeded shuffle
    val = torch.cat([b["index"] for b in dm.val_dataloader()]).numpy()
    np.testing.assert_array_equal(val, w.indices("val"))  # in order, complete

    calm = LOBDataModule(w, batch_size=32, regime=0)
    ids = torch.cat([b["index"] for b in calm.train_dataloader()]).numpy()
    assert (w.regime[ids] == 0).all() and len(ids) == ((w.split == 0) & (w.regime == 0)).sum()

    # teacher features: row k of the memmap belongs to window teacher_ids[k]
    cached = np.concatenate([w.indices("train")[::3], w.indices("val")])[::-1].copy()
    feats = np.zeros((len(cached), 3, 4), dtype=np.float16)
    feats[:, 0, 0] = cached  # planted: the window id (exact in fp16 below 2048)
    feats = feats[cached < 2048]
    cached = cached[cached < 2048]
    dm = LOBDataModule(w, batch_size=50, teacher=feats, teacher_ids=cached)
    seen = []
    for b in dm.train_dataloader():  # every train window; features (and mask 1) where cached, else zeros
        assert b["teacher"].shape[1:] == (3, 4) and b["teacher"].dtype == torch.float32
        have = np.isin(b["index"].numpy(), cached)
        np.testing.assert_array_equal(b["teacher_mask"].numpy(), have.astype(np.float32))
        np.testing.assert_array_equal(b["teacher"][:, 0, 0].numpy(), np.where(have, b["index"].numpy(), 0))
        sub = with_teacher(b)
        np.testing.assert_array_equal(sub["teacher"][:, 0, 0].numpy(), sub["index"].numpy())
        seen.append(b["index"].numpy())
    assert np.sort(np.concatenate(seen)).tolist() == w.indices("train").tolist()
    only = LOBDataModule(w, batch_size=50, teacher=feats, teacher_ids=cached, teacher_only=True)
    assert len(only.split_ids("train")) == np.isin(w.indices("train"), cached).sum()

"""Several days of one instrument: multi-day books, windows that never span days, split by day,
LOBSTER / table folders of many days, and the single-day path unchanged bit for bit."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmm_lightning.config import load_config
from cmm_lightning.data import build_windows, concat_days, dataset_paths, day_of_row, load_book, make_windows
from cmm_lightning.data.lob import day_starts
from cmm_lightning.data.lobster import find_pairs, read_lobster
from cmm_lightning.data.synthetic import DAY_NS, simulate, simulate_days
from cmm_lightning.errors import CMMInputError

from .helpers import AMZN
from .helpers.tables import book_frame

STEM = "34200000_57600000"
T, H, STRIDE = 32, 10, 5


def cfg(*overrides):
    return load_config([], list(overrides)).data


def assert_within_days(w):
    """Every window's input rows e-T+1..e and target rows ..e+h lie in the day of its end."""
    d_first = day_of_row(w.book, w.end - w.window + 1)
    d_last = day_of_row(w.book, w.end + w.horizon)
    np.testing.assert_array_equal(d_first, d_last)
    np.testing.assert_array_equal(w.day, d_first)


# ----------------------------------------------------------------- synthetic days
def test_synthetic_days_concatenate_seeded_days():
    b = simulate_days(3, n_snapshots=3000, seed=4, levels=3).validate()
    assert b.n == 9000 and b.meta["day_start"].tolist() == [0, 3000, 6000]
    assert b.meta["day_start"].dtype == np.int64
    assert b.meta["day_names"] == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert (np.diff(b.ts) > 0).all()
    first = simulate(3000, seed=4, levels=3)
    for f in ("ts", "bid_px", "ask_px", "bid_sz", "trade_sz", "regime"):
        np.testing.assert_array_equal(getattr(b, f)[:3000], getattr(first, f), err_msg=f)
    # day 2 is seed 5, one calendar day later, starting from day 1's last mid (within a tick)
    second = simulate(3000, seed=5, levels=3, start_price=float(b.mid[2999]) * 0.01)
    np.testing.assert_array_equal(b.ts[3000:6000], second.ts + DAY_NS)
    np.testing.assert_array_equal(b.bid_sz[3000:6000], second.bid_sz)
    np.testing.assert_array_equal(b.bid_px[3000:6000], second.bid_px)
    assert abs(b.mid[3000] - b.mid[2999]) <= 1.0
    assert b.meta["imbalance_latent"].shape == (9000,)
    # days=1 is exactly the one-day simulator (no day meta) and load_book follows data.synthetic.days
    one = load_book(cfg("data.synthetic.n_snapshots=3000"))
    assert "day_start" not in one.meta
    three = load_book(cfg("data.synthetic.n_snapshots=3000", "data.synthetic.days=3", "data.levels=3",
                          "data.synthetic.seed=4"))
    np.testing.assert_array_equal(three.bid_px, b.bid_px)
    np.testing.assert_array_equal(three.meta["day_start"], b.meta["day_start"])


@pytest.mark.parametrize("stride", [1, 5, 7])
def test_no_window_spans_a_day(stride):
    b = simulate_days(3, n_snapshots=2000, seed=1)
    w = make_windows(b, window=T, horizon=H, stride=stride)
    assert_within_days(w)
    starts = np.append(day_starts(b), b.n)
    # each day keeps its own stride grid from its first row: the windows of the day alone
    expected = np.concatenate([s + np.arange(T - 1, e - s - H, stride) for s, e in zip(starts[:-1], starts[1:])])
    np.testing.assert_array_equal(w.end, expected)
    if stride == 1:  # all (and only) the windows inside one day
        e = np.arange(T - 1, b.n - H)
        np.testing.assert_array_equal(w.end, e[day_of_row(b, e - T + 1) == day_of_row(b, e + H)])
    # targets and realised vol as within a day
    mid = b.mid
    for k in np.flatnonzero(np.isin(w.end - day_starts(b)[w.day], [T - 1, T - 1 + stride]))[:6]:
        e = w.end[k]
        assert w.targets[k, 0] == pytest.approx(mid[e + H] - mid[e])
        assert w.realized_vol[k] == pytest.approx(np.sqrt((np.diff(mid[e - T + 1: e + 1]) ** 2).sum()), rel=1e-6)
    # fraction split on a multi-day book: cut by window end rows as for one day
    fr = np.array([0.7, 0.15, 0.15])
    lo, hi = w.end[0], w.end[-1]
    c1, c2 = lo + fr[0] * (hi - lo), lo + fr[:2].sum() * (hi - lo)
    np.testing.assert_array_equal(w.split == 0, w.end < c1)
    np.testing.assert_array_equal(w.split == 1, (w.end >= c1 + H) & (w.end < c2))
    np.testing.assert_array_equal(w.split == 2, w.end >= c2 + H)


def test_split_by_day_and_regime_cuts_from_train_days():
    b = simulate_days(4, n_snapshots=2500, seed=2)
    w = make_windows(b, window=T, horizon=H, stride=STRIDE, split_by="day")
    assert_within_days(w)
    np.testing.assert_array_equal(w.split, np.select([w.day <= 1, w.day == 2], [0, 1], 2))
    assert (w.split >= 0).all()  # no gap windows: days separate the splits
    for i, s in enumerate(("train", "val", "test")):
        assert w.boundaries[s] == [int(w.end[w.split == i][0]), int(w.end[w.split == i][-1])]
    assert w.boundaries["train"][0] == T - 1 and w.boundaries["train"][1] < 5000 - H
    assert w.boundaries["val"][0] == 5000 + T - 1 and w.boundaries["test"][0] == 7500 + T - 1
    np.testing.assert_array_equal(w.regime_cuts, np.quantile(w.realized_vol[w.split == 0], [1 / 3, 2 / 3]))
    s = w.summary()
    assert s["split_by"] == "day" and s["days"]["count"] == 4
    assert s["days"]["split"] == {"train": b.meta["day_names"][:2], "val": [b.meta["day_names"][2]],
                                  "test": [b.meta["day_names"][3]]}
    # a much wilder market on the val and test days: cuts, train regimes and train targets unchanged
    c = simulate_days(4, n_snapshots=2500, seed=2)
    jump = np.cumsum(np.random.default_rng(0).integers(-4, 5, size=c.n))
    jump[:5000] = 0
    c.bid_px += jump[:, None] + 10_000
    c.ask_px += jump[:, None] + 10_000
    w2 = make_windows(c, window=T, horizon=H, stride=STRIDE, split_by="day")
    np.testing.assert_array_equal(w.regime_cuts, w2.regime_cuts)
    tr = w.indices("train")
    np.testing.assert_array_equal(w.regime[tr], w2.regime[tr])
    np.testing.assert_array_equal(w.targets[tr], w2.targets[tr])
    assert (w2.regime[w2.indices("test")] == 2).mean() > 0.9
    # through the config
    wc = build_windows(cfg("data.synthetic.n_snapshots=2500", "data.synthetic.days=4", "data.synthetic.seed=2",
                           "data.split_by=day"))
    np.testing.assert_array_equal(wc.end, w.end)
    np.testing.assert_array_equal(wc.split, w.split)


def test_slice_of_a_multi_day_book_keeps_its_days():
    b = simulate_days(3, n_snapshots=1000, seed=6)
    s = b.slice(1500, 2600)
    assert s.meta["day_start"].tolist() == [0, 500] and s.meta["day_names"] == b.meta["day_names"][1:]
    assert s.meta["file_rows"][0] == 501  # row 501 of day 2's (virtual) file
    one = b.slice(2000, 2500)
    assert one.meta["day_start"].tolist() == [0] and one.meta["day_names"] == [b.meta["day_names"][2]]
    # validation of a concatenated book names the day's own source and file row
    b.bid_sz[2003, 0] = -1
    with pytest.raises(CMMInputError, match=r"^synthetic\(seed=8, .*day 3/3\): row 4: negative size"):
        b.validate()


# ----------------------------------------------------------------- AMZN: four parts as four days
@pytest.mark.skipif(not AMZN.is_dir(), reason="../shared/data/lobster not present")
def test_amzn_parts_as_days_match_each_part_alone():
    b = read_lobster(AMZN, levels=5).validate()
    cuts = np.linspace(0, b.n, 5).astype(int)
    parts = [b.slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]
    with pytest.raises(CMMInputError, match="is not after the previous day's last"):
        concat_days(parts[::-1])
    days = concat_days(parts, names=["p1", "p2", "p3", "p4"]).validate()
    assert days.meta["day_start"].tolist() == cuts[:-1].tolist() and days.meta["day_names"] == ["p1", "p2", "p3", "p4"]
    np.testing.assert_array_equal(days.meta["file_rows"], np.arange(b.n) + 1)
    for k in ("msg_type", "msg_price", "msg_order_id"):
        np.testing.assert_array_equal(days.meta[k], b.meta[k])
    assert days.meta["ticker"] == "AMZN" and days.meta["dropped_rows"] == 0
    w = make_windows(days, window=T, horizon=H, stride=STRIDE)
    assert_within_days(w)
    for d, (part, lo) in enumerate(zip(parts, cuts)):
        alone = make_windows(part, window=T, horizon=H, stride=STRIDE)
        mine = w.day == d
        np.testing.assert_array_equal(w.end[mine] - lo, alone.end)
        np.testing.assert_array_equal(w.targets[mine], alone.targets)
        np.testing.assert_array_equal(w.realized_vol[mine], alone.realized_vol)
        np.testing.assert_array_equal(w.inputs(np.flatnonzero(mine)[:40]), alone.inputs(np.arange(40)))
    wd = make_windows(days, window=T, horizon=H, stride=STRIDE, split_by="day")
    assert set(wd.day[wd.split == 0]) == {0, 1} and set(wd.day[wd.split == 2]) == {3}


# ----------------------------------------------------------------- single day: unchanged bit for bit
def _hash(w) -> str:
    h = hashlib.sha256()
    for a in (w.end, w.targets, w.realized_vol, w.regime, w.split, w.regime_cuts):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# fingerprint, hash(end, targets, realised vol, regime, split, cuts), boundaries: recorded with the code
# before multi-day support
BEFORE = {
    "synthetic": ("1f413805e2036023", "78afc1e956bc899e",
                  {"train": [31, 27996], "val": [28011, 33991], "test": [34006, 39986]}),
    "amzn": ("20a4ae65c6dab396", "1e5f9a56ee9a5801",
             {"train": [31, 109151], "val": [109166, 132536], "test": [132551, 155921]}),
}


@pytest.mark.parametrize("name", ["synthetic", "amzn"])
def test_single_day_windows_unchanged(name):
    if name == "amzn" and not AMZN.is_dir():
        pytest.skip("../shared/data/lobster not present")
    data = cfg() if name == "synthetic" else cfg("data.source=lobster", f"data.path={AMZN}")
    w = build_windows(data)
    assert "day_start" not in w.book.meta
    fp, h, bounds = BEFORE[name]
    assert (w.fingerprint(), _hash(w), w.boundaries) == (fp, h, bounds)
    np.testing.assert_array_equal(w.end, np.arange(T - 1, w.book.n - H, STRIDE))
    assert "days" not in w.summary()
    # an explicit one-day day_start changes nothing either
    w1 = make_windows(w.book, window=T, horizon=H, stride=STRIDE, day_start=[0])
    assert _hash(w1) == h


# ----------------------------------------------------------------- LOBSTER folders
def amzn_copy(folder: Path, ticker: str, date: str, rows: int = 3000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("orderbook", "message"):
        src = AMZN / f"AMZN_2012-06-21_{STEM}_{kind}_5.csv"
        with open(src) as f:
            head = [next(f) for _ in range(rows)]
        (folder / f"{ticker}_{date}_{STEM}_{kind}_5.csv").write_text("".join(head))
    return folder / f"{ticker}_{date}_{STEM}_orderbook_5.csv"


needs_amzn = pytest.mark.skipif(not AMZN.is_dir(), reason="../shared/data/lobster not present")


@needs_amzn
def test_lobster_folder_of_two_days(tmp_path):
    d = tmp_path / "amzn"
    ob2 = amzn_copy(d, "AMZN", "2012-06-25")
    ob1 = amzn_copy(d, "AMZN", "2012-06-22")
    assert find_pairs(d) == [(ob1, ob1.with_name(ob1.name.replace("orderbook", "message"))),
                             (ob2, ob2.with_name(ob2.name.replace("orderbook", "message")))]
    assert dataset_paths("lobster", str(d)) == [str(ob1), str(ob2)]
    assert dataset_paths("lobster", str(ob2)) == [str(ob2)]
    b = load_book(cfg("data.source=lobster", f"data.path={d}"))
    one = read_lobster(ob1, levels=5)
    assert b.n == 6000 and b.meta["day_start"].tolist() == [0, 3000]
    assert b.meta["day_names"] == ["2012-06-22", "2012-06-25"] and b.meta["ticker"] == "AMZN"
    assert b.meta["day_sources"] == [str(ob1), str(ob2)]
    np.testing.assert_array_equal(b.ts[3000:] - b.ts[:3000], 3 * DAY_NS)
    np.testing.assert_array_equal(b.bid_px[:3000], one.bid_px)
    np.testing.assert_array_equal(b.meta["msg_order_id"][3000:], one.meta["msg_order_id"])
    assert b.meta["off_tick_hidden"] == 2 * one.meta["off_tick_hidden"]
    # a list of files (or of folders) loads the same book
    same = load_book(cfg("data.source=lobster", f"data.path=[{ob1},{ob2}]"))
    np.testing.assert_array_equal(same.ts, b.ts)
    w = build_windows(cfg("data.source=lobster", f"data.path={d}"))
    assert_within_days(w)
    assert len(w.end) == 2 * len(range(T - 1, 3000 - H, STRIDE))
    assert w.summary()["days"]["names"] == ["2012-06-22", "2012-06-25"]
    # days out of order in a list: one-line error naming the file
    with pytest.raises(CMMInputError, match=r"2012-06-22.*is not after the previous day's last") as e:
        load_book(cfg("data.source=lobster", f"data.path=[{ob2},{ob1}]"))
    assert "\n" not in str(e.value)
    # split_by=day needs 3 days
    with pytest.raises(CMMInputError, match=r"data\.split_by=day needs at least 3 days .* has 2") as e:
        build_windows(cfg("data.source=lobster", f"data.path={d}", "data.split_by=day"))
    assert "\n" not in str(e.value)


@needs_amzn
def test_lobster_folder_of_two_tickers(tmp_path):
    d = tmp_path / "mixed"
    a1 = amzn_copy(d, "AMZN", "2012-06-22", rows=500)
    m1 = amzn_copy(d, "MSFT", "2012-06-21", rows=500)
    a0 = amzn_copy(d, "AMZN", "2012-06-21", rows=500)
    assert [ob for ob, _ in find_pairs(d)] == [a0, a1, m1]  # ticker, then date
    assert dataset_paths("lobster", d) == [str(a0), str(a1), str(m1)]
    for path in (str(d), f"[{a0},{m1}]"):
        with pytest.raises(CMMInputError, match=r"2 tickers \(AMZN, MSFT\): one instrument per book; evaluate "
                                                r"reads each as its own dataset") as e:
            load_book(cfg("data.source=lobster", f"data.path={path}"))
        assert "\n" not in str(e.value)
    # concat_days itself checks the ticker of each day
    with pytest.raises(CMMInputError, match=r"MSFT.*ticker MSFT differs from AMZN"):
        concat_days([read_lobster(a0), read_lobster(m1)])
    with pytest.raises(CMMInputError, match=r"a second LOBSTER file for AMZN on 2012-06-21"):
        load_book(cfg("data.source=lobster", f"data.path=[{a0},{a0}]"))


def test_find_pairs_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMMInputError, match="no LOBSTER orderbook file"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(CMMInputError, match="folder not found"):
        find_pairs(tmp_path / "nope")
    d = tmp_path / "half"
    d.mkdir()
    (d / f"X_2020-01-02_{STEM}_orderbook_1.csv").write_text("1,1,1,1\n")
    (d / f"X_2020-01-03_{STEM}_orderbook_1.csv").write_text("1,1,1,1\n")
    (d / f"X_2020-01-02_{STEM}_message_1.csv").write_text("1,1,1,1,1,1\n")
    (d / f"X_2020-01-04_{STEM}_message_1.csv").write_text("1,1,1,1,1,1\n")
    with pytest.raises(CMMInputError, match=r"X_2020-01-03_\S+_orderbook_1\.csv: its LOBSTER partner file "
                                            r"X_2020-01-03_\S+_message_1\.csv is missing"):
        find_pairs(d)
    (d / f"X_2020-01-03_{STEM}_orderbook_1.csv").unlink()
    with pytest.raises(CMMInputError, match=r"X_2020-01-04_\S+_message_1\.csv: its LOBSTER partner"):
        dataset_paths("lobster", d)
    with pytest.raises(CMMInputError, match=r"nope: file or folder not found"):
        dataset_paths("csv", [str(tmp_path / "nope")])
    assert dataset_paths("synthetic", None) == [None]


# ----------------------------------------------------------------- tables, bad inputs
def test_table_folder_of_days_and_mixed_tick_sizes(tmp_path):
    d = tmp_path / "tables"
    d.mkdir()
    for k, seed in enumerate((3, 4, 5)):
        _, df = book_frame(n=400, seed=seed)
        df["ts"] = df["ts"] + k * DAY_NS
        df.to_csv(d / f"day{k}.csv", index=False)
    (d / "notes.txt").write_text("not a table")
    assert dataset_paths("csv", str(d)) == [str(d / f"day{k}.csv") for k in range(3)]
    assert dataset_paths("csv", str(d / "day1.csv")) == [str(d / "day1.csv")]
    data = cfg("data.source=csv", f"data.path={d}", "data.levels=2", "data.window=8", "data.horizon=4",
               "data.stride=2", "data.split_by=day")
    w = build_windows(data)
    assert w.book.meta["day_start"].tolist() == [0, 400, 800]
    assert w.book.meta["day_sources"] == [str(d / f"day{k}.csv") for k in range(3)]
    np.testing.assert_array_equal(w.split, w.day)  # 3 days: train, val, test
    # a bad row of day 2 names day 2's file and its file row (header counted)
    _, df = book_frame(n=400, seed=4)
    df.loc[9, "bid_sz_1"] = -5
    df["ts"] = df["ts"] + DAY_NS
    df.to_csv(d / "day1.csv", index=False)
    with pytest.raises(CMMInputError, match=r"day1\.csv: row 11: negative size"):
        load_book(data)

    a, b = simulate(300, seed=1), simulate(300, seed=2)
    b.ts = b.ts + DAY_NS
    b.tick_size, b.source = 0.05, "b.csv"
    with pytest.raises(CMMInputError, match=r"^b\.csv: tick size 0\.05 differs from 0\.01") as e:
        concat_days([a, b])
    assert "\n" not in str(e.value)
    c = simulate(300, levels=3, seed=2)
    c.ts, c.source = c.ts + DAY_NS, "c.csv"
    with pytest.raises(CMMInputError, match=r"^c\.csv: 3 levels, the first day .* has 5"):
        concat_days([a, c])
    with pytest.raises(CMMInputError, match=r"data\.split_by=day needs at least 3 days .* has 2"):
        make_windows(concat_days([a, simulate_days(2, 300, seed=9).slice(300, 600)]), window=8, horizon=4,
                     split_by="day")
    with pytest.raises(CMMInputError, match=r"data\.split_by=day needs at least 3 days .* has 1"):
        make_windows(a, window=8, horizon=4, split_by="day")
    three = simulate_days(3, 300, seed=1)
    short = concat_days([three.slice(0, 300), three.slice(300, 310), three.slice(600, 900)])
    with pytest.raises(CMMInputError, match=r"split 'val' \(day 2024-01-03\) has no window of T=8, h=4") as e:
        make_windows(short, window=8, horizon=4, split_by="day")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,msg", [
    ("data.split_by=days", r"data\.split_by='days' is not one of fraction, day"),
    ("data.synthetic.days=0", r"data\.synthetic\.days must be >= 1"),
    ("data.path=[]", r"data\.path is an empty list"),
    ("data.path=[a,3]", r"data\.path must be a file or folder path or a list of them, got 3"),
])
def test_config_errors(override, msg):
    with pytest.raises(CMMInputError, match=msg) as e:
        load_config([], [override])
    assert "\n" not in str(e.value)


def test_cli_split_by_day(tmp_path):
    """``prepare`` with 3 synthetic days split by day works; with 2 days it exits 2 with one line."""
    procs = {}
    for days in (2, 3):
        run = tmp_path / f"run{days}"
        cmd = [sys.executable, "-m", "cmm_lightning", "prepare", f"run.dir={run}", "data.split_by=day",
               f"data.synthetic.days={days}", "data.synthetic.n_snapshots=2000"]
        procs[days] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), run)
    ok, run = procs[3]
    out, err = ok.communicate(timeout=180)
    assert ok.returncode == 0, err
    s = json.loads((run / "data_summary.json").read_text())
    assert s["split_by"] == "day" and s["days"]["count"] == 3 and s["n_snapshots"] == 6000
    assert s["split_boundaries"]["val"][0] == 2000 + T - 1 and s["split_boundaries"]["test"][0] == 4000 + T - 1
    bad, run = procs[2]
    _, err = bad.communicate(timeout=180)
    lines = err.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(r"data\.split_by=day needs at least 3 days", lines[0])
    assert not (run / "data_summary.json").exists()

"""``python -m cmm_lightning prepare`` on every source, and malformed files end with exit 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import AMZN
from .helpers.tables import BAD, book_frame, write_bad


def prepare(tmp_path, *overrides):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cmm_lightning", "prepare", f"run.dir={run}", *overrides],
                          capture_output=True, text=True, timeout=120)
    return proc, run


def summary_ok(run: Path) -> dict:
    s = json.loads((run / "data_summary.json").read_text())
    assert all(s["n_windows"][k] > 0 for k in ("train", "val", "test"))
    b = s["split_boundaries"]
    assert b["train"][1] < b["val"][0] <= b["val"][1] < b["test"][0]
    assert len(s["regime_cuts"]) == 2 and s["regime_cuts"][0] <= s["regime_cuts"][1]
    assert set(s["targets"]) == {"mid", "spread", "volume"}
    assert (run / "config.yaml").is_file()
    return s


def test_prepare_synthetic_default(tmp_path):
    proc, run = prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = summary_ok(run)
    assert s["n_snapshots"] == 40_000 and s["horizon"] == 10 and s["window"] == 32
    assert sum(s["n_windows"].values()) == len(range(31, 40_000 - 10, 5)) - 4  # 2 gaps of 10 snapshots, stride 5
    assert "windows: train" in proc.stdout


@pytest.mark.skipif(not AMZN.is_dir(), reason="../shared/data/lobster not present")
def test_prepare_lobster_day(tmp_path):
    proc, run = prepare(tmp_path, "data.source=lobster", f"data.path={AMZN}")
    assert proc.returncode == 0, proc.stderr
    s = summary_ok(run)
    assert s["n_snapshots"] == 155_935
    assert s["targets"]["spread"]["mean"] > 5  # AMZN 2012 quotes ~13 ticks wide


def test_prepare_csv(tmp_path):
    _, df = book_frame(n=600, ts="iso")
    df.to_csv(tmp_path / "book.csv", index=False)
    proc, run = prepare(tmp_path, "data.source=csv", f"data.path={tmp_path / 'book.csv'}", "data.levels=2")
    assert proc.returncode == 0, proc.stderr
    assert summary_ok(run)["n_snapshots"] == 600


MALFORMED = ["crossed", "negative_size", "time_back", "nan", "missing_column", "off_tick", "empty"]


def test_malformed_exit_2_one_line(tmp_path):
    """Each malformed table: exit 2, ONE stderr line naming file + row/column, no traceback, nothing written."""
    procs = {}
    for name in MALFORMED:  # run the CLIs side by side
        path = write_bad(tmp_path, name)
        run = tmp_path / f"run_{name}"
        cmd = [sys.executable, "-m", "cmm_lightning", "prepare", f"run.dir={run}", "data.source=csv",
               f"data.path={path}", "data.levels=2"]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), path, run)
    for name, (proc, path, run) in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert str(path) in lines[0], (name, lines[0])
        assert re.search(BAD[name][1] if name in BAD else "empty file", lines[0]), (name, lines[0])
        assert not (run / "data_summary.json").exists(), name

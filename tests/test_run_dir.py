"""A run folder reused by later commands: the report never mixes two configs, earlier logs survive,
and two processes never write one folder at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cmm_lightning.locks import hold

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "conf" / "smoke.yaml"), "data.synthetic.n_snapshots=3000", "teacher.max_windows=96",
        "probe.min_windows=5"]


def _cli(*args, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cmm_lightning", *args, *TINY, f"run.cache_dir={cache}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_report_blocks_follow_their_inputs_and_logs_survive(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    p = _cli("probe", f"run.dir={run}", cache=cache)
    assert p.returncode == 0, p.stderr[-3000:]
    first = _report(run)
    assert {"data", "teacher", "probe", "inputs"} <= set(first)
    assert (run / "logs" / "probe" / "metrics.csv").is_file()

    # the same command again: every block kept, a new log folder beside the first one
    p = _cli("probe", f"run.dir={run}", cache=cache)
    assert p.returncode == 0 and "probe: reusing" in p.stdout
    again = _report(run)
    assert again["data"] == first["data"] and again["inputs"] == first["inputs"]
    assert again["probe"]["plan"] == first["probe"]["plan"] and again["teacher"]["cache_hit"]
    assert (run / "logs" / "probe" / "metrics.csv").is_file() and (run / "logs" / "probe-1" / "metrics.csv").is_file()

    # a changed probe config: the probe block is recomputed, the data and teacher blocks kept
    p = _cli("probe", f"run.dir={run}", "probe.grouping=profile", cache=cache)
    assert p.returncode == 0, p.stderr[-3000:]
    changed = _report(run)
    assert changed["teacher"]["fingerprint"] == first["teacher"]["fingerprint"]
    assert changed["inputs"]["teacher"] == first["inputs"]["teacher"] and changed["inputs"]["probe"] != first["inputs"]["probe"]

    # a changed window: the data block is new and nothing downstream of it survives
    p = _cli("prepare", f"run.dir={run}", "data.window=16", cache=cache)
    assert p.returncode == 0, p.stderr[-3000:]
    last = _report(run)
    assert set(last) == {"run_dir", "data", "inputs", "timings_s"}
    assert last["inputs"]["data"] != first["inputs"]["data"]
    assert sorted(os.listdir(run / "logs")) == ["probe", "probe-1", "probe-2"]  # nothing deleted


def test_a_second_process_on_the_same_run_dir_exits_2_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with hold(run):  # this test process holds the folder, as a running fit would
        p = _cli("prepare", f"run.dir={run}", cache=tmp_path / "cache")
    assert p.returncode == 2 and p.stdout == ""
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"error: run.dir {run} is in use by pid {os.getpid()} on ")
    assert not (run / "config.yaml").exists() and not (run / "report.json").exists()  # nothing written
    p = _cli("prepare", f"run.dir={run}", cache=tmp_path / "cache")  # released: the next one runs
    assert p.returncode == 0, p.stderr[-3000:]


def test_a_teacher_cache_entry_is_written_by_one_process_at_a_time(tmp_path):
    """A second process needing a cache entry that another one is writing waits, then uses it."""
    import threading

    from cmm_lightning.config import load_config
    from cmm_lightning.data import build_windows
    from cmm_lightning.teacher.cache import default_ids, teacher_fingerprint

    cache = tmp_path / "cache"
    cfg = load_config([TINY[1]], TINY[2:] + [f"run.cache_dir={cache}"])
    w = build_windows(cfg.data)
    fp = teacher_fingerprint(cfg, w, cache, default_ids(w, cfg.teacher.max_windows))
    entry = cache / "teacher" / fp
    proc = {}
    with hold(entry, "teacher cache entry"):  # as if another run were writing it
        t = threading.Thread(target=lambda: proc.update(p=_cli("cache-teacher", f"run.dir={tmp_path / 'run'}",
                                                                 cache=cache)))
        t.start()
        t.join(timeout=15)
        assert t.is_alive()  # it waits (the lock is held) instead of writing beside us
    t.join(timeout=280)
    p = proc["p"]
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"teacher cache entry {entry} is being written by pid {os.getpid()}" in p.stdout
    assert "cache miss" in p.stdout and (entry / "features.npy").is_file()

"""`fit` killed after the students resumes at the MoE: the stages already done are reused, not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import FAST, SMOKE

STUDENTS = ("layer", "task", "data")


def _fit(run_dir: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cmm_lightning", "fit", "--config", str(SMOKE),
           f"run.dir={run_dir}", f"run.cache_dir={cache}", "logger.kind=none", *FAST]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _stamp(path: Path) -> tuple:
    return path.stat().st_mtime_ns, path.read_bytes()


@pytest.mark.timeout(900)
def test_fit_killed_after_the_students_resumes_at_the_moe(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    ckpt = run_dir / "checkpoints"
    proc = _fit(run_dir, cache)
    deadline = time.monotonic() + 600
    while not (ckpt / "data" / "done.json").is_file():  # the last student module has finished
        assert proc.poll() is None, f"fit ended before the students were done:\n{proc.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "the students took over 10 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no report written at exit
    first, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (ckpt / "moe_hajek_gate" / "done.json").is_file(), "killed too late: the MoE had finished"
    assert all((ckpt / d / "done.json").is_file() for d in STUDENTS)
    before = {d: _stamp(ckpt / d / "best.ckpt") for d in STUDENTS}

    proc = _fit(run_dir, cache)
    second, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, second[-4000:]
    # every stage up to the students reused, the students' checkpoints untouched, the MoE trained now
    assert "cache hit" in second and "probe: reusing" in second
    for d in STUDENTS:
        assert f"{d}: reusing {ckpt / d / 'best.ckpt'}" in second
        assert _stamp(ckpt / d / "best.ckpt") == before[d]
    assert "moe_hajek_gate: reusing" not in second
    done = json.loads((ckpt / "moe_hajek_gate" / "done.json").read_text())
    assert done["trained"] and done["epochs"] >= 1
    report = json.loads((run_dir / "report.json").read_text())
    assert len(report["students"]) == 9 and report["moe"]["mode"] == "hajek_gate"
    assert set(report["moe"]["test"]) == {"mid", "spread", "volume"}

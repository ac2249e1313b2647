"""``evaluate`` on two tiny synthetic markets (CLI, as a user runs it), and what every ``fit`` it
runs must show: equal calibration budgets, the val backtest logged every epoch of every student
module and MoE, CIs and paired verdicts; a rerun reuses every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmm_lightning.report import policies

from .helpers import ROOT, SMOKE

TINY = ["evaluate.synthetic_seeds=[7,8]", "data.synthetic.n_snapshots=4000", "moe.ablations=false",
        "rl.timesteps=128", "rl.crossfit_folds=2", "students.max_epochs=2", "moe.max_epochs=2"]


def _evaluate(out: Path, cache: Path) -> str:
    cmd = [sys.executable, "-m", "cmm_lightning", "evaluate", "--config", str(SMOKE),
           f"run.dir={out}", f"run.cache_dir={cache}", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p.stdout


def _logged_epochs(csv: Path, stage: str) -> tuple[list, list]:
    """(epochs with a val loss, epochs with a val backtest) of one logged stage."""
    d = pd.read_csv(csv)
    loss, bt = f"{stage}/val/loss", f"{stage}/backtest/pnlmap"
    return sorted(d.loc[d[loss].notna(), "epoch"].astype(int)), sorted(d.loc[d[bt].notna(), "epoch"].astype(int))


@pytest.mark.timeout(900)
def test_evaluate_two_synthetic_markets_pools_them_and_reruns_cheaply(tmp_path):
    out, cache = tmp_path / "eval", tmp_path / "cache"
    text = _evaluate(out, cache)
    ev = json.loads((out / "evaluation.json").read_text())
    assert list(ev["datasets"]) == ["synthetic_seed7", "synthetic_seed8"]
    pooled = {p: m for p, m in ev["pooled"].items() if p != "paired"}
    assert {"cmm", "cmm_no_teacher", "single_student_kd", "fixed_spread", "avellaneda_stoikov", "rl_ppo",
            "cmm_rl"} <= set(pooled)
    for p, m in pooled.items():
        lo, hi = m["ci"]
        assert lo <= m["pnlmap"] <= hi and m["n_datasets"] == 2, p
        assert m["n_episodes"] == sum(ev["datasets"][d][p]["n_episodes"] for d in ev["datasets"])
        # pooled = the mean of the datasets' PnLMAP: each dataset weighs the same
        assert m["pnlmap"] == pytest.approx(sum(ev["datasets"][d][p]["pnlmap"] for d in ev["datasets"]) / 2, rel=1e-9)
    for b, r in ev["pooled"]["paired"].items():
        assert sum(r["datasets"].values()) == 2 and r["verdict"] in ("ahead", "behind", "indistinguishable")
        assert 0 <= r["p_value"] <= 1 and r["p_holm"] >= r["p_value"]
    assert "POOLED" in text and "synthetic_seed7" in text

    for ds in ("synthetic_seed7", "synthetic_seed8"):
        run = out / ds / "seed0"
        report = json.loads((run / "report.json").read_text())
        bt = report["backtest"]
        # equal tuning: Avellaneda-Stoikov and CMM get the same number of calibration backtests
        n = {p: m["calibration"].get("n_backtests") for p, m in policies(bt).items()}
        assert n["cmm"] == n["avellaneda_stoikov"] == n["fixed_spread"] == n["cmm_no_teacher"] == 27
        assert bt["calibration"]["n_backtests_per_policy"] == {"prediction": 27, "fixed_spread": 27,
                                                               "avellaneda_stoikov": 27}
        assert set(bt["cmm"]["knobs"]) == {"spread_mult", "eta", "size_scale"}
        assert set(bt["avellaneda_stoikov"]["knobs"]) == {"gamma_mult", "size_scale"}
        assert bt["cmm"]["n_episodes"] == 20 and len(bt["cmm"]["per_episode"]["epnl"]) == 20
        assert set(bt["paired"]) == set(policies(bt)) - {"cmm"}
        assert "teacher_probe" in bt["teacher"] and 0 < bt["teacher"]["coverage"]["fraction"] < 1
        assert set(report["gains"]) == {"information", "distillation"}
        # the val backtest is logged at every epoch of every student module and MoE
        csv = run / "logs" / "fit" / "metrics.csv"
        stages = [f"student/{d}" for d in ("layer", "task", "data", "no_teacher_layer", "no_teacher_task",
                                           "no_teacher_data", "single_student_kd")]
        stages += ["moe/hajek_gate", "moe/no_teacher_hajek_gate"]
        for stage in stages:
            loss_epochs, bt_epochs = _logged_epochs(csv, stage)
            assert bt_epochs == loss_epochs and len(bt_epochs) >= 1, stage

    again = _evaluate(out, cache)  # everything reused: no student, MoE or agent trains again
    assert again.count("reusing") >= 2 * 17  # per market: 7 student modules, 2 MoEs, 2 folds x 4, the probe
    ev2 = json.loads((out / "evaluation.json").read_text())
    assert ev2["pooled"]["cmm"] == ev["pooled"]["cmm"]

"""Test-blind selection: train fits, val chooses, test only reports (README, "Selection discipline").

The smoke ``fit`` runs twice on the same book, the second time with every row after the last
validation window's targets perturbed (blocks of rows permuted, sizes doubled): rows that only
test windows and test targets read. Everything chosen or trained — the probe plan and readout,
every student, MoE, cross-fitted fold and single-student checkpoint, the exported CMM, the RL
agents, every policy's calibrated quoting knobs — must be the same values after loading; the test
metrics must differ (the perturbation reached the test split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmm_lightning.config import load_config
from cmm_lightning.data import build_windows
from cmm_lightning.data.synthetic import simulate

from .helpers import ROOT, SMOKE
from .helpers.tables import book_table


def perturb_after(df: pd.DataFrame, cut: int, seed: int = 0, block: int = 40) -> pd.DataFrame:
    """Rows ``cut..`` with their contents permuted in blocks and sizes doubled (``ts`` kept)."""
    out = df.copy()
    rows = np.arange(cut, len(df))
    blocks = np.array_split(rows, max(1, len(rows) // block))
    order = np.concatenate([blocks[i] for i in np.random.default_rng(seed).permutation(len(blocks))])
    body = [c for c in df.columns if c != "ts"]
    out.loc[cut:, body] = df.loc[order, body].to_numpy()
    sizes = [c for c in body if "_sz_" in c or c == "volume"]
    out.loc[cut:, sizes] = out.loc[cut:, sizes] * 2
    return out


def _fit(run_dir: Path, data: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cmm_lightning", "fit", "--config", str(SMOKE), "data.source=parquet",
           f"data.path={data}", f"run.dir={run_dir}", f"run.cache_dir={cache}", "logger.kind=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def _checkpoints(run_dir: Path) -> dict[str, dict]:
    """Every trained weight of a run, loaded: {relative path: state dict}."""
    out = {}
    for path in sorted(run_dir.rglob("best.ckpt")):
        out[str(path.relative_to(run_dir))] = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    out["cmm.pt"] = torch.load(run_dir / "checkpoints" / "cmm.pt", map_location="cpu", weights_only=True)["state_dict"]
    from safetensors.torch import load_file

    for path in sorted((run_dir / "rl").glob("*.safetensors")):
        out[path.name] = load_file(str(path))
    return out


def _chosen(report: dict) -> dict:
    """What the run chose on val: the probe plan and every policy's knobs and calibration score."""
    from cmm_lightning.report import policies

    bt = report["backtest"]
    tables = {"test": bt, **({"teacher": bt["teacher"]} if "teacher" in bt else {})}
    return {"plan": report["probe"]["plan"],
            "r2_val": {t: s["r2_val"] for t, s in report["probe"]["summary"].items()},
            "knobs": {f"{tab}/{p}": (m["knobs"], m["calibration"]) for tab, b in tables.items()
                      for p, m in policies(b).items()}}


@pytest.mark.timeout(600)
def test_everything_chosen_or_trained_is_blind_to_the_test_split(tmp_path):
    cfg = load_config([str(SMOKE)])
    book = simulate(n_snapshots=cfg.data.synthetic.n_snapshots, levels=cfg.data.levels, seed=cfg.data.synthetic.seed)
    w = build_windows(cfg.data, book)
    cut = int(w.boundaries["val"][1] + w.horizon + 1)  # after the last val window's targets
    assert w.boundaries["test"][0] - w.window + 1 < cut < book.n  # test windows read both sides of it
    df = book_table(book)
    clean, moved = tmp_path / "clean.parquet", tmp_path / "moved.parquet"
    df.to_parquet(clean)
    perturb_after(df, cut).to_parquet(moved)

    procs = {name: _fit(tmp_path / name, path, tmp_path / f"cache_{name}") for name, path in
             (("clean", clean), ("moved", moved))}
    for name, p in procs.items():  # both fits run side by side (one thread each)
        out, _ = p.communicate(timeout=560)
        assert p.returncode == 0, f"{name}:\n{out[-4000:]}"

    a, b = (_checkpoints(tmp_path / n) for n in ("clean", "moved"))
    assert a.keys() == b.keys()
    assert {"checkpoints/layer/best.ckpt", "checkpoints/moe_hajek_gate/best.ckpt", "cmm.pt", "rl_ppo.safetensors",
            "cmm_rl.safetensors", "no_teacher/checkpoints/data/best.ckpt", "single_student_kd/checkpoints/layer/best.ckpt",
            "crossfit/fold0/checkpoints/task/best.ckpt"} <= a.keys(), sorted(a)
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}: {k} differs: it saw the test split"
    for n in ("readout.npz",):
        za, zb = np.load(tmp_path / "clean" / "probe" / n), np.load(tmp_path / "moved" / "probe" / n)
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=f"probe/{n}: {k}")

    ra, rb = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("clean", "moved"))
    assert _chosen(ra) == _chosen(rb)
    # ... and the test split did change: reported test numbers differ
    assert ra["moe"]["test"] != rb["moe"]["test"]
    assert ra["backtest"]["cmm"]["per_episode"]["epnl"] != rb["backtest"]["cmm"]["per_episode"]["epnl"]

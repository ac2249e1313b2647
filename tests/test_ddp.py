"""Several processes: the smoke pipeline on 2 CPU processes (gloo, Lightning's own DDP launcher)
against the same pipeline on 1 process, plus the pieces that make that work.

The 2-process run logs to W&B offline, so the same run also checks the dashboard contents: one
run folder (rank 0 only) with the config, every stage's metrics, images, table and artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmm_lightning.data.datamodule import GlobalBatchSampler, LOBDataModule

from .helpers import FAST, SMOKE
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


# ------------------------------------------------------------------------------------------ unit level
def test_global_batches_split_over_ranks():
    """Rank r of W gets rows r::W of each global batch: a partition, equal step counts, no padding."""
    for n, bs, world in ((1000, 128, 2), (1000, 128, 3), (257, 128, 2), (129, 128, 4), (5, 2, 2)):
        one = GlobalBatchSampler(n, bs, shuffle=True, seed=3)
        parts = [GlobalBatchSampler(n, bs, shuffle=True, seed=3, rank=r, world_size=world) for r in range(world)]
        per_rank = [list(p) for p in parts]
        assert len({len(b) for b in per_rank}) == 1 and all(len(p) == len(b) for p, b in zip(parts, per_rank))
        for step, glob in enumerate(parts[0].global_batches()):
            shards = [per_rank[r][step] for r in range(world)]
            assert all(len(s) > 0 for s in shards)
            assert sorted(sum(shards, [])) == sorted(glob.tolist())  # the global batch, each row once
        flat = sorted(i for b in per_rank for s in b for i in s)
        assert flat == list(range(n))  # every window exactly once per epoch
        # the same permutation and cuts as one process (a tail shorter than W joins the batch before)
        np.testing.assert_array_equal(np.concatenate(one.global_batches()), np.concatenate(parts[0].global_batches()))
        k = len(parts[0]) - 1
        assert [len(b) for b in one.global_batches()][:k] == [len(b) for b in parts[0].global_batches()][:k]
    s = GlobalBatchSampler(100, 10, shuffle=True, seed=0)
    e0 = list(s)
    assert list(s) == e0  # deterministic
    s.set_epoch(1)  # Lightning calls this every epoch
    assert list(s) != e0 and sorted(sum(list(s), [])) == list(range(100))
    assert list(GlobalBatchSampler(7, 3)) == [[0, 1, 2], [3, 4, 5], [6]]  # 1 process: plain batches in order
    assert isinstance(s, torch.utils.data.DistributedSampler)  # so Lightning does not wrap it again


def test_datamodule_shards_only_inside_a_running_trainer():
    from lightning.pytorch.trainer.states import TrainerStatus

    from cmm_lightning.data.synthetic import simulate
    from cmm_lightning.data.windows import make_windows

    w = make_windows(simulate(3000, seed=1), window=8, horizon=4, stride=4)
    dm = LOBDataModule(w, batch_size=32, seed=0)

    class FakeTrainer:  # what the datamodule asks of a Trainer
        def __init__(self, rank, status):
            self.global_rank, self.world_size = rank, 2
            self.state = type("S", (), {"status": status})()

    full = [b["index"].tolist() for b in dm.val_dataloader()]
    halves = []
    for rank in (0, 1):
        dm.trainer = FakeTrainer(rank, TrainerStatus.RUNNING)
        halves.append([b["index"].tolist() for b in dm.val_dataloader()])
    assert len(halves[0]) == len(halves[1]) == len(full)
    assert [sorted(a + b) for a, b in zip(*halves)] == [sorted(f) for f in full]
    dm.trainer = FakeTrainer(1, TrainerStatus.FINISHED)  # after fit: statistics/evaluation see everything
    assert [b["index"].tolist() for b in dm.val_dataloader()] == full


def test_other_ranks_write_nothing(tmp_path, monkeypatch, capsys):
    """A process with LOCAL_RANK=1 (what Lightning's launcher sets) runs the stage, writes no file, prints nothing."""
    from cmm_lightning import pipeline
    from cmm_lightning.config import load_config

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(pipeline.RUN_DIR_ENV, str(tmp_path / "shared"))
    cfg = load_config([str(SMOKE)], ["data.synthetic.n_snapshots=3000"])
    pipeline.run("prepare", cfg)
    assert cfg.run.dir == str(tmp_path / "shared")  # the folder rank 0 handed down
    assert list((tmp_path / "shared").iterdir()) == []
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("LOCAL_RANK")
    cfg = load_config([str(SMOKE)], ["data.synthetic.n_snapshots=3000",
                                                              f"run.dir={tmp_path / 'zero'}"])
    pipeline.run("prepare", cfg)
    assert {p.name for p in (tmp_path / "zero").iterdir()} == {"config.yaml", "data_summary.json", "report.json",
                                                        ".lock"}  # the run folder's lock (rank 0 holds it)
    assert "prepared 3,000 snapshots" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 2 processes vs 1
def _fit(tmp: Path, name: str, extra: list[str], run_dir: bool = True) -> subprocess.Popen:
    """``fit`` in its own working folder ``tmp/name``; without ``run_dir`` it picks ``runs/<time>`` there."""
    cwd = tmp / name
    cwd.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
           "WANDB_DATA_DIR": str(tmp / "wandb-data"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config")}
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "cmm_lightning", "fit", "--config", str(SMOKE),
           *([f"run.dir={cwd / 'run'}"] if run_dir else []), f"run.cache_dir={tmp / ('cache-' + name)}", *FAST,
           *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"one": (run dir, output), "two": ...}: the 1- and 2-process fits, run side by side."""
    tmp = tmp_path_factory.mktemp("ddp")
    # the 2-process run names no run.dir: rank 0 picks runs/<time>, the process it launches must follow
    procs = {"one": _fit(tmp, "one", ["logger.kind=none"]),
             "two": _fit(tmp, "two", [*DDP, "logger.kind=wandb", "logger.tags=[ddp]"], run_dir=False)}
    out = {}
    for name, p in procs.items():
        text, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{text[-6000:]}"
        dirs = [tmp / name / "run"] if name == "one" else list((tmp / name / "runs").iterdir())
        out[name] = (dirs[0], text)
        out[f"{name}_dirs"] = dirs
    out["tmp"] = tmp
    return out


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.mark.timeout(1200)
def test_ddp_teacher_features_identical(runs):
    tmp = runs["tmp"]
    (one,), (two,) = ([p for p in (tmp / f"cache-{n}" / "teacher").iterdir() if p.is_dir()] for n in ("one", "two"))
    assert one.name == two.name  # same fingerprint: devices do not change what the features are
    np.testing.assert_array_equal(np.load(one / "features.npy"), np.load(two / "features.npy"))
    np.testing.assert_array_equal(np.load(one / "ids.npy"), np.load(two / "ids.npy"))
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    assert not list(two.glob("shards-*"))  # merged by rank 0, shards removed


@pytest.mark.timeout(1200)
def test_ddp_matches_one_process(runs):
    r1, r2 = _report(runs["one"][0]), _report(runs["two"][0])
    assert r1["data"] == r2["data"] and r1["probe"]["plan"] == r2["probe"]["plan"]
    assert r2["teacher"]["fingerprint"] == r1["teacher"]["fingerprint"]
    # same global batches, gradients averaged over the 2 halves: the same fit up to float order and
    # the ratio losses (nmse, regime-masked means) being taken per half
    for t in ("mid", "spread", "volume"):
        assert abs(r1["moe"]["test"][t]["r2"] - r2["moe"]["test"][t]["r2"]) < 0.05, t
    diffs = [abs(r1["students"][n]["test"][t]["r2"] - r2["students"][n]["test"][t]["r2"])
             for n in r1["students"] for t in ("mid", "spread", "volume")]
    assert np.median(diffs) < 0.03
    for regime, w in r1["moe"]["weights"].items():
        for s, v in w.items():
            assert abs(v - r2["moe"]["weights"][regime][s]) < 0.05, (regime, s)
    # the CMM predictions themselves: nearly the same function
    from cmm_lightning.config import load_config
    from cmm_lightning.data import build_windows
    from cmm_lightning.export import load_cmm

    cfg = load_config([str(SMOKE)], FAST)
    w = build_windows(cfg.data)
    x = torch.from_numpy(w.inputs(w.indices("test")))
    with torch.no_grad():
        p1, p2 = (load_cmm(d / "checkpoints" / "cmm.pt")(x).numpy() for d in (runs["one"][0], runs["two"][0]))
    for k in range(3):
        assert np.corrcoef(p1[:, k], p2[:, k])[0, 1] > 0.99
    # policies that do not learn trade identically (calibrated alike on val); every policy's metrics
    # are computed once, on rank 0; teacher_probe trades in the teacher table
    for table, p in (("test", "fixed_spread"), ("test", "avellaneda_stoikov"), ("teacher", "teacher_probe")):
        b1, b2 = (r1["backtest"], r2["backtest"]) if table == "test" else (r1["backtest"]["teacher"],
                                                                          r2["backtest"]["teacher"])
        assert b1[p]["knobs"] == b2[p]["knobs"]
        for k in ("epnl", "map", "pnlmap", "sharpe", "max_drawdown", "n_trades", "fill_rate", "n_episodes"):
            assert b1[p][k] == pytest.approx(b2[p][k], rel=1e-9, abs=1e-12), (p, k)
    assert r2["backtest"]["cmm"]["n_episodes"] == r1["backtest"]["cmm"]["n_episodes"]


@pytest.mark.timeout(1200)
def test_ddp_only_rank_zero_writes(runs):
    (d1, _), (d2, out2) = runs["one"], runs["two"]
    assert out2.count("cmm_lightning fit finished") == 1  # one summary: rank 1 prints nothing
    assert "Initializing distributed: GLOBAL_RANK: 1" in out2  # (Lightning's log line: 2 processes ran)
    assert len(runs["two_dirs"]) == 1  # rank 1 wrote into rank 0's runs/<time>, made no folder of its own
    listing = {p.relative_to(d2).as_posix().split("/")[0] for p in d2.iterdir()}
    assert listing == {p.name for p in d1.iterdir()} | {"wandb"}
    assert len(list((d2 / "wandb").glob("offline-run-*"))) == 1  # one W&B run, not one per rank
    for dim in ("layer", "task", "data", "moe_hajek_gate"):
        assert json.loads((d2 / "checkpoints" / dim / "done.json").read_text())["trained"]


@pytest.mark.timeout(1200)
def test_ddp_wandb_offline_run_holds_the_dashboard(runs):
    from cmm_lightning.loggers import read_offline_run

    d2 = runs["two"][0]
    report = _report(d2)
    (folder,) = (d2 / "wandb").glob("offline-run-*")
    assert report["logger"]["kind"] == "wandb" and report["logger"]["sync"] == f"wandb sync {folder}"
    got = read_offline_run(folder)
    assert got["run"]["tags"] == ["ddp"] and got["run"]["project"] == "cmm_lightning"
    cfg = got["config"]
    assert cfg["trainer"]["devices"] == 2 and cfg["trainer"]["strategy"] == "ddp"  # the resolved config
    assert cfg["data"]["synthetic"]["n_snapshots"] == 3000 and "students_layer" in cfg  # + each stage's hparams
    keys = set().union(*got["history"])
    students = list(report["students"])
    want = {"teacher/windows_per_s", "teacher/world_size", "probe/best_layer/mid", "probe/summary/spread/r2",
            "student/layer/val/loss", "student/data/train/loss_epoch", "moe/hajek_gate/val/loss",
            "moe/hajek_gate/test/mid/r2", "moe/hajek_gate/weights/calm/task_mid", "latency_us/cmm"}
    want |= {f"student/{n}/test/mid/r2" for n in students} | {f"student/{n}/mid_r2" for n in students}
    from cmm_lightning.report import policies

    want |= {f"backtest/{p}/{m}" for p in policies(report["backtest"]) for m in ("epnl", "map", "pnlmap", "sharpe")}
    want |= {"student/layer/backtest/pnlmap", "moe/hajek_gate/backtest/pnlmap"}  # the val backtest, every epoch
    assert want <= keys, sorted(want - keys)
    row = next(h for h in got["history"] if "backtest/cmm/pnlmap" in h)
    assert row["backtest/cmm/pnlmap"] == pytest.approx(report["backtest"]["cmm"]["pnlmap"])
    teacher = next(h for h in got["history"] if "teacher/world_size" in h)
    assert teacher["teacher/world_size"] == 2
    media = got["media"]
    for key in [f"probe/heatmap_{r}" for r in ("calm", "normal", "volatile", "all")] + ["backtest/equity"]:
        assert any(m.startswith(f"media/images/{key}_") and m.endswith(".png") for m in media), key
    table = next(m for m in media if m.startswith("media/table/backtest/results"))
    t = json.loads((folder / "files" / table).read_text())
    assert t["columns"][:3] == ["policy", "epnl", "map"]
    assert sorted(r[0] for r in t["data"]) == sorted(policies(report["backtest"]))
    assert {r[0]: r[1] for r in t["data"]}["cmm"] == pytest.approx(report["backtest"]["cmm"]["epnl"])
    (model,) = [a for a in got["artifacts"] if a["type"] == "model"]
    assert model["files"] == ["cmm.pt"] and model["name"] == f"cmm-{d2.name}"
    assert model["metadata"]["students"] == students
    assert got["summary"]["moe/test/mid/r2"] == pytest.approx(report["moe"]["test"]["mid"]["r2"])

"""W&B logging: offline by default, stage prefixes, and an offline run folder read back without syncing.

The whole pipeline's W&B output (config, every stage's metrics, heatmaps, equity curve, results
table, model artifact) is checked on a real 2-process run in ``test_ddp.py``; these tests pin the
pieces on their own, fast.
"""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

wandb = pytest.importorskip("wandb")

from cmm_lightning.config import load_config  # noqa: E402
from cmm_lightning.loggers import (StageLogger, build_logger, finish, log_image_files, log_model_artifact,  # noqa: E402
                                   log_results_table, log_scalars, logger_summary, moe_logger,
                                   read_offline_run, student_logger)


class Recorder:
    """A stand-in run logger that records what it is sent."""

    def __init__(self):
        self.metrics, self.images, self.hparams = [], [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params):
        self.hparams.append(params)

    def log_image(self, key, images, step=None):
        self.images.append(key)

    def save(self):
        pass


def test_stage_prefixes():
    base = Recorder()
    lg = student_logger(base, "layer")
    lg.log_metrics({"train/loss": 1.0, "val/loss": 2.0, "student/layer_deep/mid_r2": 0.5, "probe/layer_deep/cka": 0.1,
                    "epoch": 3})
    assert base.metrics[-1] == {"student/layer/train/loss": 1.0, "student/layer/val/loss": 2.0,
                                "student/layer_deep/mid_r2": 0.5, "probe/layer_deep/cka": 0.1, "epoch": 3}
    lg.log_image(key="probe/students", images=[])
    assert base.images == ["probe/students/layer"]
    lg.log_hyperparams({"plan": {"groups": [[0]]}})
    assert base.hparams[-1] == {"students_layer": {"plan": {"groups": [[0]]}}}  # nested: run config stays on top

    m = moe_logger(base, "hajek_gate")
    m.log_metrics({"val/loss": 0.3, "moe/kappa": 1.5, "moe/weight_calm/task_mid": 0.2})
    assert base.metrics[-1] == {"moe/hajek_gate/val/loss": 0.3, "moe/hajek_gate/kappa": 1.5,
                                "moe/hajek_gate/weight_calm/task_mid": 0.2}
    # loggers without images stay without (callers test with hasattr)
    plain = StageLogger(type("P", (), {"log_metrics": lambda *a, **k: None, "save": lambda self: None})(), "x", str)
    assert not hasattr(plain, "log_image")
    assert student_logger(False, "layer") is False


def test_log_scalars_flattens_numbers_only():
    base = Recorder()
    log_scalars(base, "backtest", {"cmm": {"epnl": 1.5, "n_trades": 3, "name": "x", "nan": float("nan")},
                                   "hit": True})
    assert base.metrics == [{"backtest/cmm/epnl": 1.5, "backtest/cmm/n_trades": 3.0, "backtest/hit": 1.0}]


def test_offline_without_credentials(tmp_path, monkeypatch):
    """No API key, no netrc → offline run folder, no prompt, no network; everything readable back."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    cfg = load_config(overrides=["logger.kind=wandb", "logger.project=cmm-test", "logger.tags=[smoke,unit]"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = build_logger(cfg, run_dir)
    assert os.environ["WANDB_MODE"] in ("offline", "dryrun")  # Lightning spells it dryrun
    log_scalars(logger, "teacher", {"windows_per_s": 12.5})
    log_scalars(logger, "backtest", {"cmm": {"epnl": -3.0, "pnlmap": 0.25}})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [1, 0])
    png = tmp_path / "heat.png"
    fig.savefig(png)
    plt.close(fig)
    log_image_files(logger, {"probe/heatmap_calm": png})
    log_results_table(logger, "backtest/results", {"cmm": {"epnl": -3.0, "pnlmap": 0.25}}, ("epnl", "pnlmap"))
    model = tmp_path / "cmm.pt"
    model.write_bytes(b"weights")
    log_model_artifact(logger, model, "cmm-unit", metadata={"moe_mode": "hajek_gate"})
    summary = logger_summary(logger)
    finish(logger)
    assert wandb.run is None

    assert summary["kind"] == "wandb" and summary["offline"] and summary["sync"].startswith("wandb sync ")
    folder = run_dir / "wandb" / os.path.basename(summary["dir"])
    assert folder.is_dir() and folder.name.startswith("offline-run-")
    got = read_offline_run(folder)
    assert got["config"]["logger"]["project"] == "cmm-test"  # the resolved config
    assert got["config"]["students"]["encoder"] == cfg.students.encoder
    keys = set().union(*got["history"])
    assert {"teacher/windows_per_s", "backtest/cmm/epnl", "probe/heatmap_calm/_type", "backtest/results/_type"} <= keys
    row = next(h for h in got["history"] if "backtest/cmm/pnlmap" in h)
    assert row["backtest/cmm/pnlmap"] == pytest.approx(0.25)
    assert any(m.startswith("media/images/probe/heatmap_calm") and m.endswith(".png") for m in got["media"])
    table = next(m for m in got["media"] if m.startswith("media/table/backtest/results"))
    import json

    t = json.loads((folder / "files" / table).read_text())
    assert t["columns"] == ["policy", "epnl", "pnlmap"] and t["data"] == [["cmm", -3.0, 0.25]]
    art = next(a for a in got["artifacts"] if a["type"] == "model")
    assert art["name"] == "cmm-unit" and art["files"] == ["cmm.pt"] and art["metadata"]["moe_mode"] == "hajek_gate"
    assert got["run"]["project"] == "cmm-test" and got["run"]["tags"] == ["smoke", "unit"]
    assert got["run"]["name"] == "run" and OmegaConf.to_container(cfg.logger.tags) == ["smoke", "unit"]


def test_offline_run_reader_rejects_other_files(tmp_path):
    (tmp_path / "run-x.wandb").write_bytes(b"not a log")
    (tmp_path / "files").mkdir()
    with pytest.raises(ValueError, match="not a W&B run log"):
        read_offline_run(tmp_path)

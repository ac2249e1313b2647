"""BacktestCallback with a dummy LightningModule: logs exactly the backtest of its val predictions."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from cmm_lightning.callbacks.backtest import BacktestCallback
from cmm_lightning.config import MarketConfig
from cmm_lightning.data.datamodule import LOBDataModule
from cmm_lightning.data.windows import make_windows
from cmm_lightning.market import predictions, run_backtest, train_volume_ref

from .helpers import quiet_trainer
from .helpers.books import random_book


class Dummy(L.LightningModule):
    def __init__(self, n_features):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(n_features, 3)

    def predict_windows(self, x):
        return self.lin(x[:, -1])

    def training_step(self, batch, i):
        return ((self.predict_windows(batch["x"]) - batch["y"]) ** 2).mean()

    def validation_step(self, batch, i):
        self.log("val_loss", ((self.predict_windows(batch["x"]) - batch["y"]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class ImageLogger(Logger):
    def __init__(self):
        super().__init__()
        self.images, self.metrics = [], []

    name, version = "img", 0

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *a, **k):
        pass

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0]))


def test_callback_logs_the_backtest_of_val_predictions():
    book = random_book()
    w = make_windows(book, window=8, horizon=4, stride=4)
    cfg = MarketConfig(base_size=20, min_size=5, max_size=60, inventory_limit=200, latency=1)
    cb = BacktestCallback(market_cfg=cfg)
    lg = ImageLogger()
    model = Dummy(w.n_features)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, logger=lg, callbacks=[cb], accelerator="cpu",
                            enable_checkpointing=False)
    trainer.fit(model, datamodule=LOBDataModule(w, batch_size=64))

    # recompute by hand from the final module (validation ran after the last training epoch)
    idx = w.indices("val")
    with torch.no_grad():
        preds = model.predict_windows(torch.from_numpy(w.inputs(idx))).double().numpy()
    res = run_backtest(book, w.end[idx], predictions(preds, cfg, train_volume_ref(w)), cfg)
    assert len(cb.history) == 2 and res.metrics["n_episodes"] == cfg.n_episodes  # episode_length "auto"
    want = {k: res.metrics[k] for k in ("epnl", "map", "sharpe", "max_drawdown", "n_trades")}
    em = res.episode_metrics  # PnLMAP pooled over the episodes: ΣEPnL / Σ max(MAP, 1)
    want["pnlmap"] = sum(e["epnl"] for e in em) / sum(max(e["map"], 1.0) for e in em)
    for k, v in want.items():
        assert float(trainer.callback_metrics[f"backtest/{k}"]) == np.float32(v)
        assert cb.history[-1][f"backtest/{k}"] == pytest.approx(v, rel=1e-12)
    assert res.metrics["n_trades"] > 0
    assert np.array_equal(cb.last_result.fills, res.fills)
    key, img = lg.images[-1]
    assert key == "backtest/equity" and img.ndim == 3 and img.shape[2] == 3 and len(lg.images) == 2


def test_callback_with_explicit_inputs():
    book = random_book(2000, seed=3)
    w = make_windows(book, window=8, horizon=4, stride=4)
    idx = w.indices("test")
    cfg = MarketConfig(base_size=20, min_size=5, max_size=60)
    cb = BacktestCallback(book=book, decision_rows=w.end[idx], market_cfg=cfg, inputs=w.inputs(idx),
                          volume_ref=30.0, log_figure=False)
    model = Dummy(w.n_features)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], accelerator="cpu",
                            enable_checkpointing=False)
    trainer.fit(model, datamodule=LOBDataModule(w, batch_size=64))
    with torch.no_grad():
        preds = model.predict_windows(torch.from_numpy(w.inputs(idx))).double().numpy()
    res = run_backtest(book, w.end[idx], predictions(preds, cfg, 30.0), cfg)
    assert cb.last_result.metrics == res.metrics

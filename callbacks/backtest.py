"""BacktestCallback: each validation epoch, trade the module's current predictions (README,
"Market making"). ``fit`` attaches it to every student module and every MoE.

Contract with the module: ``pl_module.predict_windows(x: Tensor[B, T, F]) -> Tensor[B, 3]``
(mid move, spread, log1p volume in target units). The callback turns them into signals with
``market.policies.predictions`` (the market config's quoting knobs: calibration needs trained
models), replays the validation windows the Trainer's datamodule serves (``split_ids``: for the
stacked MoE, the val half it does not fit on) through the compiled engine and logs
``backtest/{epnl,map,pnlmap,sharpe,max_drawdown,n_trades,fill_rate}`` (means over episodes;
``pnlmap`` pooled, ΣEPnL / Σ max(MAP, 1)) plus an equity-curve figure on loggers that take images
(TensorBoard ``add_figure``, W&B ``log_image``).
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import numpy as np
import torch

from cmm_lightning.market.calibrate import pooled_pnlmap
from cmm_lightning.market.engine import BacktestResult, run_backtest
from cmm_lightning.market.policies import equity_figure, predictions, train_volume_ref

LOGGED = ("epnl", "map", "pnlmap", "sharpe", "max_drawdown", "n_trades", "fill_rate")


class BacktestCallback(L.Callback):
    """Backtest the validation split every ``every_n_epochs`` validation epochs.

    Give either ``inputs`` [D, T, F] with ``decision_rows`` [D] (and ``book``), or nothing and the
    callback reads ``trainer.datamodule.windows`` (the ``split`` windows' inputs and end rows).
    """

    def __init__(self, book=None, decision_rows=None, market_cfg=None, inputs: Optional[np.ndarray] = None,
                 volume_ref: Optional[float] = None, split: str = "val", every_n_epochs: int = 1,
                 batch_size: int = 1024, log_figure: bool = True, prefix: str = "backtest/"):
        super().__init__()
        self.book, self.decision_rows, self.cfg = book, decision_rows, market_cfg
        self.inputs, self.volume_ref, self.split = inputs, volume_ref, split
        self.every_n_epochs, self.batch_size = max(1, every_n_epochs), batch_size
        self.log_figure, self.prefix = log_figure, prefix
        self.last_result: Optional[BacktestResult] = None
        self.last_figure = None
        self.history: list[dict] = []

    def _resolve(self, trainer) -> None:
        if self.inputs is not None and self.decision_rows is not None and self.book is not None:
            return
        w = getattr(getattr(trainer, "datamodule", None), "windows", None)
        if w is None:
            raise ValueError("BacktestCallback: pass book, decision_rows and inputs, or use a datamodule "
                             "with a .windows WindowSet")
        dm = trainer.datamodule
        idx = dm.split_ids(self.split) if hasattr(dm, "split_ids") else w.indices(self.split)
        self.book = w.book if self.book is None else self.book
        self.decision_rows = w.end[idx] if self.decision_rows is None else self.decision_rows
        self.inputs = w.inputs(idx) if self.inputs is None else self.inputs
        if self.volume_ref is None:
            self.volume_ref = train_volume_ref(w)

    @torch.no_grad()
    def predict(self, pl_module) -> np.ndarray:
        out = []
        for i in range(0, len(self.inputs), self.batch_size):
            x = torch.as_tensor(np.asarray(self.inputs[i:i + self.batch_size]), device=pl_module.device)
            out.append(pl_module.predict_windows(x).detach().float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._resolve(trainer)
        was_training = pl_module.training
        pl_module.eval()
        preds = self.predict(pl_module)
        pl_module.train(was_training)
        sig = predictions(preds, self.cfg, self.volume_ref)
        res = run_backtest(self.book, self.decision_rows, sig, self.cfg)
        self.last_result = res
        em = res.episode_metrics
        vals = {f"{self.prefix}{k}": float(res.metrics[k]) for k in LOGGED}
        vals[f"{self.prefix}pnlmap"] = pooled_pnlmap([e["epnl"] for e in em], [e["map"] for e in em])
        self.history.append(vals)
        pl_module.log_dict(vals, on_step=False, on_epoch=True, sync_dist=False)
        if self.log_figure:
            self._log_figure(trainer, res)

    def _log_figure(self, trainer, res: BacktestResult) -> None:
        loggers = [lg for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")
                   or hasattr(lg, "log_image")]
        if not loggers or not trainer.is_global_zero:
            return
        fig = equity_figure({"model": res})
        self.last_figure = fig
        key, step = f"{self.prefix}equity", trainer.global_step
        for lg in loggers:
            if hasattr(lg, "log_image"):  # W&B and friends: an RGB array
                fig.canvas.draw()
                img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
                lg.log_image(key=key, images=[img], step=step)
            else:  # TensorBoard
                lg.experiment.add_figure(key, fig, global_step=step, close=False)

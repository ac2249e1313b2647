"""StudentProbeCallback: the fluorescent probe run on the students while they train (docs/method.md, "Probe").

Every validation epoch it collects each student's hidden features h on the val loader and
fits the same closed-form ridge probe as the teacher's (``cmm_lightning.probe.ridge``) for the
three tasks, on the val windows in time order: fit on the first half, λ on the third quarter,
R² on the last quarter. With the teacher slice each student regresses, it also reports the
linear CKA between h and that slice. Logged: ``probe/<student>/<task>_r2``,
``probe/<student>/<task>_F`` (F across students: max(0, R²) / best student's R² for that
task), ``probe/<student>/cka``, and a bar chart to loggers that take images.

Contract with the student LightningModules:
    pl_module.student_names: list[str]                          S names
    pl_module.hidden_and_slices(batch) -> (h [S, B, d], slices [S, B, D] | None)
"""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch

from cmm_lightning.data.datamodule import with_teacher
from cmm_lightning.data.windows import TASKS
from cmm_lightning.config import ProbeConfig
from cmm_lightning.probe.plan import fluorescence
from cmm_lightning.probe.plots import log_figure, student_bars
from cmm_lightning.probe.ridge import fit_ridge, linear_cka, r2_score

__all__ = ["StudentProbeCallback", "linear_cka", "probe_students"]


def probe_students(h: torch.Tensor, y: torch.Tensor, slices: Optional[torch.Tensor] = None,
                   lambdas: Optional[Sequence[float]] = None) -> dict:
    """Probe S students at once. h [S, n, d], y [n, k], slices [S, n, D] | None, rows in time
    order. Returns {"r2": [S, k], "F": [S, k], "cka": [S] (NaN without slices)} as numpy."""
    n = len(y)
    a, b = n // 2, (3 * n) // 4
    fit = fit_ridge(h[:, :a], y[:a], h[:, a:b], y[a:b], ProbeConfig().lambdas if lambdas is None else lambdas)
    r2 = r2_score(y[b:], fit.predict(h[:, b:])).numpy()
    cka = np.full(len(h), np.nan)
    if slices is not None:
        cka = np.array([linear_cka(h[s], slices[s]) for s in range(len(h))])
    return {"r2": r2, "F": fluorescence(r2), "cka": cka}


class StudentProbeCallback(L.Callback):
    """Probe the students' hidden features every ``every_n_epochs`` validation epochs."""

    def __init__(self, lambdas: Optional[Sequence[float]] = None, max_windows: int = 20_000,
                 every_n_epochs: int = 1, figure: bool = True, min_windows: int = 16):
        self.lambdas = [float(x) for x in (ProbeConfig().lambdas if lambdas is None else lambdas)]
        self.max_windows, self.every_n_epochs = max_windows, max(1, every_n_epochs)
        self.figure, self.min_windows = figure, min_windows
        self.last: Optional[dict] = None  # the latest results, for inspection
        self._reset()

    def _reset(self) -> None:
        self._h, self._s, self._y, self._i, self._n = [], [], [], [], 0

    def _active(self, trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or dataloader_idx != 0 or self._n >= self.max_windows:
            return
        if isinstance(batch, dict):
            batch = with_teacher(batch)  # only windows with cached teacher features
            if not len(batch["y"]):
                return
        with torch.no_grad():
            h, slices = pl_module.hidden_and_slices(batch)
        self._h.append(h.detach().float().cpu())
        self._s.append(None if slices is None else slices.detach().float().cpu())
        y = batch["y"]
        self._y.append(y.detach().float().cpu())
        idx = batch.get("index") if isinstance(batch, dict) else None
        self._i.append(torch.arange(self._n, self._n + len(y)) if idx is None else idx.detach().cpu().long())
        self._n += len(y)

    @staticmethod
    def _gather(pl_module, h, slices, y, idx):
        """all_gather under DDP: every rank's rows, padded to the longest for the collective and cut
        back after, concatenated by rank (each window once)."""
        ns = pl_module.all_gather(torch.tensor([len(y)], device=pl_module.device)).reshape(-1).cpu().tolist()
        n_max = max(ns)

        def g(t, dim):
            if t is None:
                return None
            pad = list(t.shape)
            pad[dim] = n_max - t.shape[dim]
            t = torch.cat([t, t.new_zeros(pad)], dim) if pad[dim] else t
            out = pl_module.all_gather(t.to(pl_module.device)).cpu()  # [W, ...]
            return torch.cat([o.narrow(dim, 0, n) for o, n in zip(out.unbind(0), ns)], dim=dim)

        return g(h, 1), g(slices, 1), g(y, 0), g(idx, 0)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or not self._h:
            return
        h, y, idx = torch.cat(self._h, 1), torch.cat(self._y, 0), torch.cat(self._i, 0)
        slices = None if any(s is None for s in self._s) else torch.cat(self._s, 1)
        self._reset()
        if trainer.world_size > 1:
            h, slices, y, idx = self._gather(pl_module, h, slices, y, idx)
        order = torch.argsort(idx)  # time order: fit on the earlier windows, score on the later
        h, y = h[:, order], y[order]
        slices = None if slices is None else slices[:, order]
        if len(y) < self.min_windows:
            return
        res = probe_students(h, y, slices, self.lambdas)
        names = list(pl_module.student_names)
        sync = trainer.world_size > 1
        for s, name in enumerate(names):
            for k, task in enumerate(TASKS[: y.shape[1]]):
                pl_module.log(f"probe/{name}/{task}_r2", float(res["r2"][s, k]), sync_dist=sync)
                pl_module.log(f"probe/{name}/{task}_F", float(np.nan_to_num(res["F"][s, k])), sync_dist=sync)
            if slices is not None:
                pl_module.log(f"probe/{name}/cka", float(res["cka"][s]), sync_dist=sync)
        self.last = {"names": names, **res}
        if self.figure and trainer.is_global_zero and trainer.loggers:
            fig = student_bars(res["r2"], res["cka"], names, TASKS[: y.shape[1]],
                               title=f"student probes, epoch {trainer.current_epoch}")
            log_figure(list(trainer.loggers), "probe/students", fig, step=trainer.global_step)

"""Per-student early stopping and best weights for a stacked students module.

All S students of a module live in one ``StackedStudents``: every tensor under ``students.``
carries the student index first, so student s's weights W_s are the slices t[s]. Students share
no parameters and AdamW is per-parameter, so each one's trajectory depends on its own loss only;
this callback stops and checkpoints each of them on its own validation loss.

Contract (module): ``student_names`` [S] and ``students.*`` tensors of shape [S, ...]; it logs
v_s = ``key.format(name_s)`` (default ``student/<name>/loss``) once per validation, reduced
over ranks (``sync_dist=True``), so every rank reads the same values and decides alike.

At each validation check e of a fit (after Lightning has put the epoch values in
``trainer.callback_metrics``; sanity checks are skipped), for every student s not yet done:

    improved_s = v_s(e) finite  and  v_s(e) < best_s − min_delta        (best_s starts at +∞)
    improved:  best_s ← v_s(e),  best_epoch_s ← e,  wait_s ← 0,  W*_s ← copy of W_s(e)
    otherwise: wait_s ← wait_s + 1;   done_s ← wait_s ≥ patience
    trainer.should_stop ← all_s done_s                                   (or max_epochs ends it)

A done student is frozen: it may keep training with the others (its gradient touches only its
own slices), but its later values are ignored, so its result is the one it would get trained
alone with EarlyStopping(patience) and a best-epoch checkpoint. At the end of the fit
(``on_fit_end``, ``restore_best=True``) the module gets W_s ← W*_s for every student that has a
best epoch (one that never logged a finite value keeps its last weights). Buffers outside
``students.`` (normalisers, PCA, KD ridge) are fixed after set-up and shared: not copied.

Resume: the state (names, best_s, best_epoch_s, wait_s, done_s and W* as CPU tensors) goes into
every Trainer checkpoint via ``state_dict``/``load_state_dict`` (plain tensors and numbers:
loadable with ``weights_only=True``), so a fit resumed from ``last.ckpt`` ends as an
uninterrupted one. ``patience`` counts validation checks (one per epoch by default, as in
Lightning's EarlyStopping). The cost per check is one host sync for the S values plus a CPU
copy of the improved students' slices (plain slice copies: < 1 ms for 3 default students on CPU).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn


class PerStudentEarlyStopping(L.Callback):
    """Early stopping and best weights per student of a stacked module (see the module docstring)."""

    def __init__(self, patience: int = 4, key: str = "student/{}/loss", min_delta: float = 0.0,
                 prefix: str = "students.", restore_best: bool = True):
        super().__init__()
        if int(patience) < 1:
            raise ValueError(f"patience must be ≥ 1, got {patience}")
        self.patience, self.key, self.min_delta = int(patience), str(key), float(min_delta)
        self.prefix, self.restore_best = str(prefix), bool(restore_best)
        self.names: Optional[list[str]] = None
        self._restored = False  # state came from a checkpoint: setup must not reset it
        self._reset([])

    @property
    def state_key(self) -> str:
        return self._generate_state_key(key=self.key, prefix=self.prefix)

    # -- state ----------------------------------------------------------------------------------
    def _reset(self, names: list[str]) -> None:
        S = len(names)
        self.names = list(names)
        self.best = torch.full((S,), math.inf, dtype=torch.float64)
        self.best_epoch = torch.full((S,), -1, dtype=torch.long)
        self.wait = torch.zeros(S, dtype=torch.long)
        self.done = torch.zeros(S, dtype=torch.bool)
        self.weights: dict[str, torch.Tensor] = {}  # name → [S, ...] on CPU; slice s valid iff best_epoch_s ≥ 0

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names or []), "best": self.best, "best_epoch": self.best_epoch,
                "wait": self.wait, "done": self.done, "weights": dict(self.weights),
                "patience": self.patience, "min_delta": self.min_delta}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        names = list(state_dict["names"])
        if self.names and names != self.names:
            raise ValueError(f"per-student early stopping: checkpoint students {names} != module's {self.names}")
        self._reset(names)
        self.best = state_dict["best"].to("cpu", torch.float64).clone()
        self.best_epoch = state_dict["best_epoch"].to("cpu", torch.long).clone()
        self.wait = state_dict["wait"].to("cpu", torch.long).clone()
        self.done = state_dict["done"].to("cpu", torch.bool).clone()
        self.weights = {k: v.detach().to("cpu").clone() for k, v in state_dict["weights"].items()}
        self._restored = True

    def summary(self) -> dict[str, dict]:
        """{name: {best_epoch, best_loss, done}} (None where a student never logged a finite value)."""
        return {n: {"best_epoch": int(self.best_epoch[i]) if self.best_epoch[i] >= 0 else None,
                    "best_loss": float(self.best[i]) if self.best_epoch[i] >= 0 else None,
                    "done": bool(self.done[i])} for i, n in enumerate(self.names or [])}

    def done_info(self) -> dict:
        """What ``done.json`` records: every student's best epoch and loss, and their mean."""
        return {"best_score": self.mean_best(), "students": self.summary()}

    def mean_best(self) -> Optional[float]:
        """Mean of the students' best losses (= the mean per-student val loss of the kept module)."""
        ok = self.best_epoch >= 0
        return float(self.best[ok].mean()) if bool(ok.any()) else None

    # -- the module's per-student tensors --------------------------------------------------------
    def _tensors(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        out = {k: t for k, t in (*pl_module.named_parameters(), *pl_module.named_buffers()) if k.startswith(self.prefix)}
        S = len(self.names or [])
        bad = [k for k, t in out.items() if t.dim() == 0 or t.shape[0] != S]
        if not out or bad:
            raise ValueError(f"per-student early stopping needs {S} students first in every '{self.prefix}*' tensor"
                             f" (offending: {bad or 'none found'})")
        return out

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        names = [str(n) for n in pl_module.student_names]
        if self._restored and self.names != names:
            raise ValueError(f"per-student early stopping: checkpoint students {self.names} != module's {names}")
        if not self._restored:
            self._reset(names)
        self._tensors(pl_module)  # validates the layout early

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restored = False  # a later fit with this instance starts fresh unless it resumes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.done) and bool(self.done.all()):  # resumed a fit whose students were all done
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or trainer.fast_dev_run:
            return
        logs = trainer.callback_metrics
        keys = [self.key.format(n) for n in self.names]
        missing = [k for k in keys if k not in logs]
        if missing:
            raise RuntimeError(f"per-student early stopping: {missing} not logged (available: {sorted(logs)})")
        v = torch.stack([torch.as_tensor(logs[k]).detach().reshape(()).to("cpu", torch.float64) for k in keys])
        active = ~self.done
        improved = active & torch.isfinite(v) & (v < self.best - self.min_delta)
        if bool(improved.any()):
            tensors = self._tensors(pl_module)
            for k, t in tensors.items():
                if k not in self.weights:
                    self.weights[k] = torch.zeros(t.shape, dtype=t.dtype, device="cpu")
            for s in improved.nonzero().flatten().tolist():  # plain slice copies (S is small)
                for k, t in tensors.items():
                    self.weights[k][s].copy_(t.detach()[s])
        epoch = torch.full_like(self.best_epoch, int(trainer.current_epoch))
        self.best = torch.where(improved, v, self.best)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        stale = active & ~improved
        self.wait = torch.where(improved, torch.zeros_like(self.wait), self.wait + stale.long())
        self.done = self.done | (stale & (self.wait >= self.patience))
        all_done = trainer.strategy.reduce_boolean_decision(bool(self.done.all()), all=False)
        trainer.should_stop = trainer.should_stop or all_done

    @torch.no_grad()
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restore_best:
            self.apply_best(pl_module)

    @torch.no_grad()
    def apply_best(self, pl_module: L.LightningModule) -> None:
        """Write every student's best weights W*_s into ``pl_module`` (students without one keep theirs)."""
        keep = (self.best_epoch >= 0).nonzero().flatten().tolist()
        if not keep or not self.weights:
            return
        for k, t in self._tensors(pl_module).items():
            for s in keep:
                t[s].copy_(self.weights[k][s])

"""OFDD students as Lightning modules: one per dimension, one shared base (docs/method.md, "OFDD students").

* ``LayerStudents``: one student per layer group of the probe plan; its teacher slice is the
  mean of the group's standardized layers.
* ``TaskStudents``: one per task; slice = the brightest layer for that task; that task's loss
  is up-weighted by ``students.task_upweight``.
* ``DataStudents``: one per regime; slice = the brightest layer in that regime; each student's
  loss is masked to its regime's windows inside the one stacked module, so it is trained (and
  early-stopped, on its loss over that regime's val windows) on that regime only.

Every student s is monitored on ``student/<name>/loss``: its epoch OFDD loss over all the val
windows it sees (``StudentLoss``: exact, not a mean of batch ratios; reduced over ranks).

Set-up from data (``setup_from_data``, train split only, streamed over the loader):
  x̃ = (x − μ_x)/σ_x per feature, ỹ = (y − μ_y)/σ_y per task (buffers, exported with the model);
  teacher z_l = (f_l − μ_l)/σ_l per layer; slice_s = Σ_l M_sl z_l (M: group mean or one-hot);
  target_s = (slice_s − μ_s) P_s / ρ_s with P_s the top-D principal axes of slice_s on train
  (``students.pca_dim``) and ρ_s² the mean retained eigenvalue;
  KD readout ŷ^teacher_k = z_{l_k} · w_k: a closed-form ridge from the best layer l_k for task k
  (plan ``best_layer``) to ỹ_k, fit on train, λ picked on val from ``students.kd_lambdas``.
  A batch that carries ``kd`` [B, 3] (target units, e.g. the probe's readout) overrides it.

Contracts: ``student_names``, ``hidden_and_slices(batch) -> (h [S,B,d], slices [S,B,D])`` (probe
callback), ``predict_windows(x) -> [B, 3]`` (mean over the module's students, target units).
``train_students`` fits one dimension with every student early-stopped on its own val loss
``student/<name>/loss`` and keeping its own best weights (``early_stopping.py``), checkpoints in
``run_dir/checkpoints/<dimension>/``, resumes from ``last.ckpt`` and skips a finished fit with the
same fingerprint; ``evaluate`` gives test R²/MSE/MAE per task for every student (and the mean).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, R2Score

from ..config import StudentsConfig
from ..data.datamodule import with_teacher
from ..data.windows import REGIMES, TASKS
from ..errors import CMMInputError
from ..training import data_fingerprint, fingerprint_of, fit_module, plain, trainer_kwargs
from .early_stopping import PerStudentEarlyStopping
from .losses import ofdd_loss
from .stacked import StackedStudents


def _safe_std(var: torch.Tensor) -> torch.Tensor:
    std = var.clamp_min(0).sqrt()
    return torch.where(std > 1e-6, std, torch.ones_like(std))


def regression_metrics(prefix: str = "") -> MetricCollection:
    return MetricCollection({"mse": MeanSquaredError(num_outputs=3), "mae": MeanAbsoluteError(num_outputs=3),
                             "r2": R2Score(multioutput="raw_values")}, prefix=prefix)


class StudentLoss(Metric):
    """Epoch OFDD loss L_s of every student over all the windows it sees (exact across batches and ranks).

    Each batch term ℓ_sb of ``ofdd_loss`` (task, feat, kd) is a ratio Σ num / w_sb over the batch's
    windows, so with the weights w_sb of :meth:`StudentsModule.term_weights`

        T_s = Σ_b w_sb ℓ_sb / Σ_b w_sb  per term  (= the term over all the windows at once),
        L_s = β T_task,s + α T_feat,s + γ T_kd,s,

    the loss ``ofdd_loss`` gives when every window of the epoch is one batch. A batch without the
    student's windows (a data student and another regime) weighs 0; a term without inputs weighs
    0 and adds 0. Sums are reduced over ranks (``dist_reduce_fx="sum"``). A student that saw no
    window: NaN.
    """

    full_state_update = False

    def __init__(self, n_students: int, alpha: float, beta: float, gamma: float):
        super().__init__()
        self.coef = (float(beta), float(alpha), float(gamma))  # task, feat, kd
        self.add_state("num", torch.zeros(3, n_students, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("den", torch.zeros(3, n_students, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, terms: torch.Tensor, weights: torch.Tensor) -> None:
        """terms, weights [3, S]: (task, feat, kd) per student of one batch."""
        w = weights.detach().double()
        self.num += terms.detach().double() * w
        self.den += w

    def compute(self) -> torch.Tensor:
        mean = torch.where(self.den > 0, self.num / self.den.clamp_min(1e-300), torch.zeros_like(self.num))
        total = (torch.tensor(self.coef, dtype=mean.dtype, device=mean.device)[:, None] * mean).sum(0)
        return torch.where(self.den[0] > 0, total, torch.full_like(total, float("nan")))


class StudentsModule(L.LightningModule):
    """Base class: S students in one ``StackedStudents``; subclasses only ``define`` the slices."""

    dimension = "base"

    def __init__(self, plan: dict, students: Optional[dict] = None, n_features: int = 23, window: int = 32,
                 teacher_shape: Optional[list] = None):
        super().__init__()
        cfg = {**dataclasses.asdict(StudentsConfig()), **plain(students or {})}
        plan = plain(plan or {})
        teacher_shape = None if teacher_shape is None else [int(v) for v in teacher_shape]
        self.save_hyperparameters(dict(plan=plan, students=cfg, n_features=int(n_features), window=int(window),
                                       teacher_shape=teacher_shape))
        self.cfg = cfg
        n_layers = teacher_shape[0] if teacher_shape else None
        names, mix, task_w, regimes = self.define(plan, cfg, n_layers)
        self.student_names: list[str] = list(names)
        S = len(names)
        self.has_teacher = teacher_shape is not None
        H = teacher_shape[1] if self.has_teacher else 0
        D = min(int(cfg["pca_dim"]), H) if (self.has_teacher and cfg["pca_dim"]) else H
        self.students = StackedStudents(S, window, n_features, cfg["encoder"], cfg["hidden"], cfg["channels"],
                                        cfg["kernel"], proj_dim=D)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(3))
        self.register_buffer("y_std", torch.ones(3))
        self.register_buffer("task_w", torch.tensor(task_w, dtype=torch.float32))
        self.register_buffer("regime_of", torch.tensor(regimes, dtype=torch.long))  # -1: every regime
        if self.has_teacher:
            for l in {l for row in mix for l, v in enumerate(row) if v} | set(self._kd_layers(plan)):
                if not 0 <= l < n_layers:
                    raise CMMInputError(f"probe plan: layer {l} out of range (teacher has {n_layers} layers)")
            self.register_buffer("mix", torch.tensor(mix, dtype=torch.float32))  # [S, L+1]
            self.register_buffer("t_mean", torch.zeros(n_layers, H))
            self.register_buffer("t_std", torch.ones(n_layers, H))
            self.register_buffer("pca", torch.eye(H, D).repeat(S, 1, 1))  # [S, H, D]
            self.register_buffer("pca_mean", torch.zeros(S, H))
            self.register_buffer("pca_scale", torch.ones(S))
            self.register_buffer("kd_layers", torch.tensor(self._kd_layers(plan), dtype=torch.long))
            self.register_buffer("kd_w", torch.zeros(3, H))
        self.val_metrics = nn.ModuleDict({n: regression_metrics() for n in names})
        self.test_metrics = nn.ModuleDict({n: regression_metrics() for n in names})
        self.student_loss = nn.ModuleDict({k: StudentLoss(S, cfg["alpha"], cfg["beta"], cfg["gamma"])
                                           for k in ("val", "test")})  # → student/<name>/loss (monitored)

    # -- which students exist --------------------------------------------------------------------
    @staticmethod
    def define(plan: dict, cfg: dict, n_layers: Optional[int]) -> tuple[list, list, list, list]:
        """→ (names [S], mix [S][L+1] over teacher layers, task weights [S][3], regime [S] (-1 = all))."""
        raise NotImplementedError

    @staticmethod
    def _kd_layers(plan: dict) -> list[int]:
        best = plan.get("best_layer") or {}
        return [int(best[t]) for t in TASKS] if all(t in best for t in TASKS) else [0, 0, 0]

    @staticmethod
    def _onehot(n_layers: Optional[int], layer: int) -> list[float]:
        n = n_layers or (layer + 1)
        return [1.0 if i == layer else 0.0 for i in range(n)]

    # -- data ----------------------------------------------------------------------------------
    def standardize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.x_mean) - self.x_mean) / self.x_std

    def teacher_slices(self, teacher: torch.Tensor) -> torch.Tensor:
        """teacher [B, L+1, H] → PCA-reduced standardized slices [S, B, D]."""
        z = (teacher.to(self.t_mean) - self.t_mean) / self.t_std
        sl = torch.einsum("sl,blh->sbh", self.mix, z) - self.pca_mean[:, None]
        return torch.bmm(sl, self.pca) / self.pca_scale[:, None, None]

    def kd_targets(self, batch: dict) -> Optional[torch.Tensor]:
        """[B, 3] teacher readout in standardized target units (batch ``kd`` wins over the own ridge)."""
        if "kd" in batch:
            return (batch["kd"].to(self.y_mean) - self.y_mean) / self.y_std
        if not self.has_teacher or "teacher" not in batch:
            return None
        f = batch["teacher"].to(self.t_mean)[:, self.kd_layers]  # [B, 3, H]
        z = (f - self.t_mean[self.kd_layers]) / self.t_std[self.kd_layers]
        return (z * self.kd_w).sum(-1)

    def window_mask(self, regime: torch.Tensor) -> torch.Tensor:
        """[S, B] 1 where student s trains on window b (its regime, or every window)."""
        r = regime.to(self.regime_of.device)
        return ((self.regime_of[:, None] < 0) | (self.regime_of[:, None] == r[None, :])).float()

    @torch.no_grad()
    def setup_from_data(self, datamodule) -> "StudentsModule":
        """Fit normalisers, PCA slices and the KD ridge on the train split (see module docstring)."""
        F = self.hparams.n_features
        acc = {k: torch.zeros(n, dtype=torch.float64) for k, n in (("sx", F), ("sxx", F), ("sy", 3), ("syy", 3))}
        nx = ny = nt = 0
        st = stt = None
        for batch in datamodule.train_dataloader():
            x = batch["x"].double().reshape(-1, F)
            y = batch["y"].double()
            acc["sx"] += x.sum(0); acc["sxx"] += (x * x).sum(0); nx += len(x)
            acc["sy"] += y.sum(0); acc["syy"] += (y * y).sum(0); ny += len(y)
            if self.has_teacher:
                t = with_teacher(batch)["teacher"].double()
                nt += len(t)
                st = t.sum(0) if st is None else st + t.sum(0)
                stt = (t * t).sum(0) if stt is None else stt + (t * t).sum(0)
        if ny < 2:
            raise CMMInputError("students: fewer than 2 training windows")
        mx, my = acc["sx"] / nx, acc["sy"] / ny
        self.x_mean.copy_(mx); self.x_std.copy_(_safe_std(acc["sxx"] / nx - mx ** 2))
        self.y_mean.copy_(my); self.y_std.copy_(_safe_std(acc["syy"] / ny - my ** 2))
        if not self.has_teacher:
            return self
        if st is None or nt < 2:
            raise CMMInputError("students: the datamodule serves no teacher features but the module expects them")
        mt = st / nt
        self.t_mean.copy_(mt); self.t_std.copy_(_safe_std(stt / nt - mt ** 2))
        self._fit_slices_and_kd(datamodule)
        return self

    def _slice_stats(self, loader, with_slices: bool):
        S, H = self.pca_mean.shape
        ss, sss = torch.zeros(S, H, dtype=torch.float64), torch.zeros(S, H, H, dtype=torch.float64)
        xtx, xty = torch.zeros(3, H, H, dtype=torch.float64), torch.zeros(3, H, dtype=torch.float64)
        yy, n = torch.zeros(3, dtype=torch.float64), 0
        for batch in loader:
            batch = with_teacher(batch)
            t = batch["teacher"].to(self.t_mean)
            z = (t - self.t_mean) / self.t_std
            y = ((batch["y"].to(self.y_mean) - self.y_mean) / self.y_std)
            if with_slices:
                sl = torch.einsum("sl,blh->sbh", self.mix, z)
                ss += sl.sum(1).double(); sss += torch.bmm(sl.transpose(1, 2), sl).double()
            zk = z[:, self.kd_layers].transpose(0, 1)  # [3, B, H]
            xtx += torch.bmm(zk.transpose(1, 2), zk).double()
            xty += torch.einsum("kbh,bk->kh", zk, y).double()
            yy += (y.double() ** 2).sum(0); n += len(y)
        return ss, sss, xtx, xty, yy, n

    def _fit_slices_and_kd(self, datamodule) -> None:
        ss, sss, xtx, xty, _, n = self._slice_stats(datamodule.train_dataloader(), True)
        D = self.pca.shape[-1]
        mu = ss / n
        cov = sss / n - mu[:, :, None] * mu[:, None, :]
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        top = evecs[..., -D:].flip(-1)
        self.pca_mean.copy_(mu); self.pca.copy_(top)
        self.pca_scale.copy_(evals[:, -D:].clamp_min(0).mean(-1).sqrt().clamp_min(1e-6))
        # KD ridge: w_k = (Z_kᵀZ_k + λI)⁻¹ Z_kᵀ ỹ_k, λ minimising the val MSE (closed form from sums)
        val = self._slice_stats(datamodule.val_dataloader(), False)  # (…, XᵀX, Xᵀy, yᵀy, n) on val
        lambdas = [float(v) for v in self.cfg["kd_lambdas"]]
        if val[5] == 0:  # no val windows: the middle of the grid
            lambdas = [lambdas[len(lambdas) // 2]]
        H = xtx.shape[-1]
        eye = torch.eye(H, dtype=torch.float64)
        for k in range(3):
            best, best_w = None, None
            for lam in lambdas:  # val MSE·n = wᵀ(XᵀX)w − 2wᵀXᵀy + yᵀy
                w = torch.linalg.solve(xtx[k] + lam * eye, xty[k])
                score = float(w @ val[2][k] @ w - 2 * w @ val[3][k] + val[4][k])
                if best is None or score < best:
                    best, best_w = score, w
            self.kd_w[k].copy_(best_w)

    # -- forward / contracts --------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """Raw x [B, T, F] → (ŷ standardized [S, B, 3], h [S, B, d], proj [S, B, D])."""
        return self.students(self.standardize_x(x))

    def denorm_y(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std + self.y_mean

    @torch.no_grad()
    def predict_students(self, x: torch.Tensor) -> torch.Tensor:
        """[S, B, 3] predictions in target units."""
        return self.denorm_y(self(x.to(self.x_mean.device))[0])

    @torch.no_grad()
    def predict_windows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3] target units: the mean over this module's students."""
        return self.predict_students(x).mean(0)

    @torch.no_grad()
    def named_predictions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.predict_students(x)
        out = {n: y[i] for i, n in enumerate(self.student_names)}
        out[f"{self.dimension}_mean"] = y.mean(0)
        return out

    @torch.no_grad()
    def hidden_and_slices(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(h [S, B', d], slices [S, B', D]) over the batch's windows that have teacher features."""
        if not self.has_teacher or "teacher" not in batch:
            raise CMMInputError("hidden_and_slices needs a batch with teacher features")
        batch = with_teacher(batch)
        _, h, _ = self(batch["x"].to(self.x_mean.device))
        return h, self.teacher_slices(batch["teacher"])

    # -- Lightning ---------------------------------------------------------------------------
    def term_weights(self, mask: torch.Tensor, teacher_mask: Optional[torch.Tensor], target: Optional[torch.Tensor],
                     kd: Optional[torch.Tensor]) -> torch.Tensor:
        """[3, S] weights of the batch's (task, feat, kd) terms that make their weighted means exact (losses.py).

        task: n_s = Σ_b m_sb; kd: Σ_b m̃_sb; feat: Σ_b m̃_sb ‖t_sb‖² (nmse, a ratio of sums) or Σ_b m̃_sb
        (cosine), with m̃ = m · teacher_mask; 0 for a term without inputs.
        """
        tmask = mask if teacher_mask is None else mask * teacher_mask[None, :].to(mask)
        zero = mask.new_zeros(mask.shape[0])
        if target is None:
            feat = zero
        elif self.cfg["feat_loss"] == "nmse":
            feat = ((target ** 2).sum(-1) * tmask).sum(1)
        else:
            feat = tmask.sum(1)
        return torch.stack([mask.sum(1), feat, tmask.sum(1) if kd is not None else zero])

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        yhat, _, proj = self(batch["x"])
        y = (batch["y"] - self.y_mean) / self.y_std
        mask = self.window_mask(batch["regime"])
        target = self.teacher_slices(batch["teacher"]) if self.has_teacher and "teacher" in batch else None
        kd = self.kd_targets(batch)
        parts = ofdd_loss(yhat, y, mask, self.task_w, proj=proj, target=target, kd=kd,
                          alpha=self.cfg["alpha"], beta=self.cfg["beta"], gamma=self.cfg["gamma"],
                          feat_kind=self.cfg["feat_loss"], teacher_mask=batch.get("teacher_mask"))
        B = len(y)
        train = stage == "train"
        sync = True  # epoch values are means over every rank's windows (DDP)
        self.log(f"{stage}/loss", parts["total"].mean(), batch_size=B, on_step=train, on_epoch=True, prog_bar=True,
                 sync_dist=sync)
        for k in ("feat", "task", "kd"):
            self.log(f"{stage}/{k}", parts[k].mean(), batch_size=B, on_step=False, on_epoch=True, sync_dist=sync)
        if not train:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            pred = self.denorm_y(yhat.detach())
            self.student_loss[stage].update(torch.stack([parts["task"], parts["feat"], parts["kd"]]),
                                            self.term_weights(mask, batch.get("teacher_mask"), target, kd))
            for i, n in enumerate(self.student_names):
                metrics[n].update(pred[i], batch["y"])
        return parts["total"].sum()

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log_metrics(self, metrics: nn.ModuleDict, prefix: str) -> None:
        for n, coll in metrics.items():
            if not coll["r2"].update_called:
                continue
            vals = coll.compute()
            for m, v in vals.items():
                for k, t in enumerate(TASKS):  # torchmetrics already reduced over ranks: equal everywhere
                    self.log(f"{prefix}student/{n}/{t}_{m}", v[k].float(), sync_dist=True)
            coll.reset()

    def _log_student_loss(self, stage: str, prefix: str) -> None:
        """``student/<name>/loss``: each student's epoch OFDD loss over the windows it sees (``StudentLoss``)."""
        metric = self.student_loss[stage]
        if not metric.update_called:
            return
        vals = metric.compute().float().reshape(-1)  # torchmetrics squeezes a single student's [1]
        metric.reset()
        for i, n in enumerate(self.student_names):  # sums reduced over ranks: equal everywhere
            self.log(f"{prefix}student/{n}/loss", vals[i], sync_dist=True)

    def on_validation_epoch_end(self):
        self._log_student_loss("val", "")
        self._log_metrics(self.val_metrics, "")

    def on_test_epoch_end(self):
        self._log_student_loss("test", "test/")
        self._log_metrics(self.test_metrics, "test/")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])


class LayerStudents(StudentsModule):
    """One student per plan layer group; slice = mean of the group's standardized layers."""

    dimension = "layer"

    @staticmethod
    def define(plan, cfg, n_layers):
        groups = plan.get("groups")
        if not groups:
            raise CMMInputError("probe plan has no layer 'groups'")
        gnames = plan.get("group_names") or [f"g{i}" for i in range(len(groups))]
        n = n_layers or (max(max(g) for g in groups) + 1)
        mix = [[1.0 / len(g) if i in set(g) else 0.0 for i in range(n)] for g in groups]
        return [f"layer_{g}" for g in gnames], mix, [[1.0] * 3 for _ in groups], [-1] * len(groups)


class TaskStudents(StudentsModule):
    """One student per task; slice = the task's brightest layer; its task loss × task_upweight."""

    dimension = "task"

    @staticmethod
    def define(plan, cfg, n_layers):
        best = plan.get("best_layer") or {}
        if any(t not in best for t in TASKS):
            raise CMMInputError("probe plan: 'best_layer' needs mid, spread and volume")
        up = float(cfg["task_upweight"])
        mix = [StudentsModule._onehot(n_layers, int(best[t])) for t in TASKS]
        tw = [[up if j == k else 1.0 for j in range(3)] for k in range(3)]
        return [f"task_{t}" for t in TASKS], mix, tw, [-1, -1, -1]


class DataStudents(StudentsModule):
    """One student per regime, loss masked to its regime; slice = brightest layer in that regime."""

    dimension = "data"

    @staticmethod
    def define(plan, cfg, n_layers):
        best = plan.get("best_layer_regime") or {}
        if any(r not in best for r in REGIMES):
            raise CMMInputError("probe plan: 'best_layer_regime' needs calm, normal and volatile")
        mix = [StudentsModule._onehot(n_layers, int(best[r])) for r in REGIMES]
        return [f"data_{r}" for r in REGIMES], mix, [[1.0] * 3 for _ in REGIMES], list(range(len(REGIMES)))


DIMENSIONS = {"layer": LayerStudents, "task": TaskStudents, "data": DataStudents}


# ---------------------------------------------------------------------------------------------
# training plumbing (shared with the MoE)
# ---------------------------------------------------------------------------------------------
def train_students(dimension: str, plan: dict, datamodule, cfg, run_dir, logger=None, callbacks: Sequence = (),
                   fingerprint: Optional[str] = None) -> StudentsModule:
    """Train (or reuse / resume) the students of one ``dimension`` ∈ layer | task | data."""
    if dimension not in DIMENSIONS:
        raise CMMInputError(f"unknown student dimension '{dimension}' (layer | task | data)")
    cls = DIMENSIONS[dimension]
    teacher = getattr(datamodule, "teacher", None)
    teacher_shape = None if teacher is None else list(teacher.shape[1:])
    scfg = plain(cfg.students)
    kwargs = dict(plan=plain(plan), students=scfg, n_features=datamodule.windows.n_features,
                  window=datamodule.windows.window, teacher_shape=teacher_shape)
    fp = fingerprint_of("students", dimension, kwargs, data_fingerprint(datamodule), trainer_kwargs(cfg),
                        int(cfg.run.seed), datamodule.batch_size, fingerprint,
                        "per-student early stopping")  # fits (and last.ckpt) of the mean-loss stopping are stale
    return fit_module(lambda: cls(**kwargs), cls, datamodule, cfg, Path(run_dir) / "checkpoints" / dimension, fp,
                      scfg["max_epochs"], scfg["patience"], prepare=lambda m: m.setup_from_data(datamodule),
                      logger=logger, callbacks=callbacks, stopper=PerStudentEarlyStopping(patience=int(scfg["patience"])))


@torch.no_grad()
def evaluate(module, datamodule, split: str = "test") -> dict:
    """{name: {task: {r2, mse, mae}}} on ``split`` for every prediction ``module.named_predictions`` gives."""
    preds: dict[str, list] = {}
    ys = []
    was_training = module.training
    module.eval()
    for batch in getattr(datamodule, f"{split}_dataloader")():
        for n, p in module.named_predictions(batch["x"]).items():
            preds.setdefault(n, []).append(p.detach().float().cpu())
        ys.append(batch["y"].float())
    module.train(was_training)
    y = torch.cat(ys)
    out = {}
    for n, p in preds.items():
        p = torch.cat(p)
        out[n] = {t: {"r2": float(r2_score(p[:, k], y[:, k])), "mse": float(mean_squared_error(p[:, k], y[:, k])),
                      "mae": float(mean_absolute_error(p[:, k], y[:, k]))} for k, t in enumerate(TASKS)}
    return out

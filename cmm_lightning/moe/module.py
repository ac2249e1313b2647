"""HajekMoE: every trained student (layer + task + data) in ONE stacked module, fused by the Hájek-MoE.

    h_i, ŷ_i = student_i(x̃)                    frozen by default (``moe.freeze_students``)
    e_i      = Q_i h_i + q_i ∈ R^m              shared embedding (one StackedLinear for all i)
    K_ij     = exp(−‖e_i − e_j‖² / 2σ²)         σ: median heuristic (``moe.sigma=median``: batch median
                                                while training, its running mean at eval) or learned
    c_i      = 1/(N−1) Σ_{j≠i} K_ij − U         Hájek contributions (``hajek.py``)
    g(x)     = MLP([x̃_T, mean_t x̃_t])          optional gate on a cheap window summary
    w        = softmax((κ c + g(x)) / τ),   ŷ = Σ_i w_i ŷ_i        κ, τ learnable

``moe.mode``: ``uniform`` (w = 1/N), ``gate`` (w = softmax(g/τ), a classic MoE), ``hajek``
(w = softmax(κc/τ)), ``hajek_gate`` (both). Only the parameters a mode uses are trained, on the
task loss (MSE on standardized targets, mean over the three tasks), by default on held-out val
windows the students never saw (stacking, ``moe.fit_on=val``: see ``LOBDataModule.stacking_view``).

Q_i starts as student i's own task head (plus small random extra dims), so at initialisation
the kernel measures agreement of the students' predictions; training reshapes the space.
Students of different modules are brought onto one input/target normaliser by folding the
affine differences into their first layer and task head (exact), so the MoE checkpoint is
self-contained: it holds every student's weights and loads without the student checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
from torch import nn

from ..config import MoEConfig
from ..data.windows import REGIMES, TASKS
from ..errors import CMMInputError
from ..registry import MOE_MODES
from ..students.encoders import StackedLinear, fold_input_affine
from ..students.modules import regression_metrics
from ..training import data_fingerprint, fingerprint_of, fit_module, plain, trainer_kwargs
from ..students.stacked import N_TASKS, StackedStudents
from .hajek import hajek_contributions, hajek_weights, median_sigma2, mix, rbf_kernel


class HajekMoE(L.LightningModule):
    def __init__(self, spec: dict, moe: Optional[dict] = None, mode: Optional[str] = None):
        super().__init__()
        cfg = {**dataclasses.asdict(MoEConfig()), **plain(moe or {})}
        mode = MOE_MODES.check(mode or cfg["mode"])
        cfg["mode"] = mode
        spec = plain(spec)
        self.save_hyperparameters(dict(spec=spec, moe=cfg, mode=mode))
        self.cfg, self.mode = cfg, mode
        self.student_names: list[str] = list(spec["names"])
        self.students = StackedStudents.from_spec(spec["students"], proj_dim=0)
        S, F = self.students.n_students, spec["students"]["n_features"]
        d, m, G = spec["students"]["hidden"], int(cfg["embed_dim"]), int(cfg["gate_hidden"])
        self.register_buffer("x_mean", torch.zeros(F))
        self.register_buffer("x_std", torch.ones(F))
        self.register_buffer("y_mean", torch.zeros(3))
        self.register_buffer("y_std", torch.ones(3))
        self.embed = StackedLinear(S, d, m)
        self.gate = nn.Sequential(nn.Linear(2 * F, G), nn.ReLU(), nn.Linear(G, S))
        nn.init.zeros_(self.gate[2].weight); nn.init.zeros_(self.gate[2].bias)  # starts uniform
        self.kappa = nn.Parameter(torch.tensor(float(cfg["kappa"])))
        self.log_tau = nn.Parameter(torch.tensor(math.log(float(cfg["tau"]))))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("sigma2", torch.tensor(-1.0))  # median heuristic; ≤ 0: not calibrated yet
        self.uses_hajek, self.uses_gate = MOE_MODES.get(mode)
        self._set_trainable()
        self.val_metrics, self.test_metrics = regression_metrics(), regression_metrics()
        self._wsum = self._wcnt = None

    # -- construction from trained student modules -----------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_students(cls, modules: Sequence, moe: Optional[dict] = None, mode: Optional[str] = None) -> "HajekMoE":
        """Stack the students of ``modules`` (StudentsModule instances), onto ``modules[0]``'s normalisers."""
        if not modules:
            raise CMMInputError("the MoE needs at least one trained student module")
        ref = modules[0]
        parts, names, dims = [], [], []
        for mod in modules:
            st = mod.students.select(range(mod.students.n_students), proj_dim=0).to("cpu")
            # x̃_k = (x − μ_k)/σ_k = x̃_ref · σ_ref/σ_k + (μ_ref − μ_k)/σ_k   (folded into the first layer)
            fold_input_affine(st.encoder.first, (ref.x_std / mod.x_std).cpu(),
                              ((ref.x_mean - mod.x_mean) / mod.x_std).cpu(), st.encoder.patch)
            # ỹ_ref = ỹ_k · σ_k/σ_ref + (μ_k − μ_ref)/σ_ref                 (folded into the task head)
            a = (mod.y_std / ref.y_std).cpu()
            b = ((mod.y_mean - ref.y_mean) / ref.y_std).cpu()
            st.head.weight[..., :N_TASKS] *= a
            st.head.bias[..., :N_TASKS] = st.head.bias[..., :N_TASKS] * a + b
            parts.append(st)
            names += list(mod.student_names)
            dims += [mod.dimension] * st.n_students
        stacked = StackedStudents.concat(parts)
        spec = {"names": names, "dimensions": dims, "students": stacked.spec()}
        out = cls(spec, moe, mode)
        out.students.load_state_dict(stacked.state_dict())
        for k in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(out, k).copy_(getattr(ref, k).cpu())
        out.init_embedding()
        return out

    @torch.no_grad()
    def init_embedding(self, noise: float = 0.1) -> None:
        """Q_i ← [student i's task head | small random], q_i ← [its bias | 0]: e_i starts as ŷ_i."""
        m = self.embed.weight.shape[-1]
        k = min(N_TASKS, m)
        d = self.embed.weight.shape[1]
        self.embed.weight.normal_(0.0, noise / math.sqrt(d))
        self.embed.bias.zero_()
        self.embed.weight[..., :k] = self.students.head.weight[..., :k]
        self.embed.bias[..., :k] = self.students.head.bias[..., :k]

    def _set_trainable(self) -> None:
        frozen = bool(self.cfg["freeze_students"])
        self.students.requires_grad_(not frozen)
        self.embed.requires_grad_(self.uses_hajek)
        self.kappa.requires_grad_(self.uses_hajek)
        self.log_sigma.requires_grad_(self.uses_hajek and self.cfg["sigma"] == "learned")
        self.gate.requires_grad_(self.uses_gate)
        self.log_tau.requires_grad_(self.mode != "uniform")

    def has_trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    @torch.no_grad()
    def calibrate(self, datamodule, n_batches: int = 4) -> "HajekMoE":
        """σ² ← median heuristic over a few train batches (also the start of a learned σ)."""
        vals = []
        for i, batch in enumerate(datamodule.train_dataloader()):
            if i >= n_batches:
                break
            _, h, _ = self.students(self.standardize_x(batch["x"].to(self.x_mean.device)))
            vals.append(median_sigma2(self.embed(h).transpose(0, 1)))
        if vals:
            s2 = torch.stack(vals).median()
            self.sigma2.copy_(s2)
            self.log_sigma.copy_(0.5 * torch.log(s2))
        return self

    # -- the fusion -------------------------------------------------------------------------------
    def standardize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.x_mean) - self.x_mean) / self.x_std

    def summary(self, xs: torch.Tensor) -> torch.Tensor:
        """Cheap window summary for the gate: [x̃_T, mean_t x̃_t] → [B, 2F] (linear in x)."""
        return torch.cat([xs[:, -1], xs.mean(1)], -1)

    def current_sigma2(self, e: torch.Tensor) -> torch.Tensor:
        if self.cfg["sigma"] == "learned":
            return torch.exp(2 * self.log_sigma)
        if self.training or self.sigma2 <= 0:
            s2 = median_sigma2(e.detach())
            if self.training:
                with torch.no_grad():
                    self.sigma2.copy_(s2 if self.sigma2 <= 0 else 0.9 * self.sigma2 + 0.1 * s2)
            return s2
        return self.sigma2

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw x [B, T, F] → {y [B,3] standardized, w [B,S], yhat [B,S,3], c [B,S] (Hájek modes)}."""
        xs = self.standardize_x(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg["freeze_students"]):
            yhat, h, _ = self.students(xs)
        yhat = yhat.transpose(0, 1)  # [B, S, 3]
        B, S = yhat.shape[:2]
        out = {"yhat": yhat}
        c = g = None
        if self.uses_hajek:
            e = self.embed(h).transpose(0, 1)  # [B, S, m]
            c = hajek_contributions(rbf_kernel(e, self.current_sigma2(e)))
            out["c"] = c
        if self.uses_gate:
            g = self.gate(self.summary(xs))
        w = yhat.new_full((B, S), 1.0 / S) if self.mode == "uniform" else hajek_weights(c, self.kappa, self.tau, g)
        out["w"], out["y"] = w, mix(w, yhat)
        return out

    # -- contracts ----------------------------------------------------------------------------
    def denorm_y(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std + self.y_mean

    @torch.no_grad()
    def _infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """forward in eval behaviour (σ from the calibrated buffer, nothing updated)."""
        was = self.training
        self.eval()
        try:
            return self(x.to(self.x_mean.device))
        finally:
            self.train(was)

    def predict_windows(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3] fused predictions in target units."""
        return self.denorm_y(self._infer(x)["y"])

    def named_predictions(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The MoE (``moe``), every student by name, and the plain average (``students_mean``)."""
        out = self._infer(x)
        yhat = self.denorm_y(out["yhat"])
        res = {"moe": self.denorm_y(out["y"]), "students_mean": yhat.mean(1)}
        res.update({n: yhat[:, i] for i, n in enumerate(self.student_names)})
        return res

    @torch.no_grad()
    def mean_weights(self, datamodule, split: str = "test") -> dict:
        """{"all" | regime: {student: mean w_i}} over ``split``."""
        wsum, cnt = torch.zeros(len(REGIMES) + 1, len(self.student_names)), torch.zeros(len(REGIMES) + 1)
        for batch in getattr(datamodule, f"{split}_dataloader")():
            self._accumulate(self._infer(batch["x"])["w"].cpu(), batch["regime"].cpu(), wsum, cnt)
        return self._weights_dict(wsum, cnt)

    @staticmethod
    def _accumulate(w, regime, wsum, cnt) -> None:
        for r in range(len(REGIMES)):
            sel = regime == r
            wsum[r] += w[sel].sum(0); cnt[r] += sel.sum()
        wsum[-1] += w.sum(0); cnt[-1] += len(w)

    def _weights_dict(self, wsum, cnt) -> dict:
        keys = list(REGIMES) + ["all"]
        return {k: {n: float(wsum[i, j] / cnt[i]) for j, n in enumerate(self.student_names)}
                for i, k in enumerate(keys) if cnt[i] > 0}

    # -- Lightning ------------------------------------------------------------------------------
    def _step(self, batch: dict, stage: str):
        out = self(batch["x"])
        y = (batch["y"] - self.y_mean) / self.y_std
        loss = ((out["y"] - y) ** 2).mean()
        B = len(y)
        self.log(f"{stage}/loss", loss, batch_size=B, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 sync_dist=True)  # epoch value: the mean over every rank's windows (DDP)
        if stage != "train":
            (self.val_metrics if stage == "val" else self.test_metrics).update(self.denorm_y(out["y"].detach()),
                                                                               batch["y"])
            if self._wsum is not None:
                self._accumulate(out["w"].detach().cpu(), batch["regime"].cpu(), self._wsum, self._wcnt)
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if self.uses_hajek:
            self.log("moe/kappa", self.kappa.detach(), on_step=False, on_epoch=True, sync_dist=True)
        self.log("moe/tau", self.tau.detach(), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _epoch_start(self):
        S = len(self.student_names)
        self._wsum, self._wcnt = torch.zeros(len(REGIMES) + 1, S), torch.zeros(len(REGIMES) + 1)

    def _epoch_end(self, metrics, prefix: str):
        if metrics["r2"].update_called:
            for name, v in metrics.compute().items():
                for k, t in enumerate(TASKS):  # torchmetrics already reduced over ranks: equal everywhere
                    self.log(f"{prefix}moe/{t}_{name}", v[k].float(), sync_dist=True)
            metrics.reset()
        if self._wsum is not None and self.trainer.world_size > 1:  # sums over every rank's windows
            self._wsum = self.trainer.strategy.reduce(self._wsum.to(self.device), reduce_op="sum").cpu()
            self._wcnt = self.trainer.strategy.reduce(self._wcnt.to(self.device), reduce_op="sum").cpu()
        if self._wsum is not None and self._wcnt[-1] > 0:
            for key, ws in self._weights_dict(self._wsum, self._wcnt).items():
                tag = "weight" if key == "all" else f"weight_{key}"
                for n, v in ws.items():  # sums reduced over ranks above: equal everywhere
                    self.log(f"{prefix}moe/{tag}/{n}", v, sync_dist=True)
        self._wsum = None

    def on_validation_epoch_start(self):
        self._epoch_start()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_end(self):
        self._epoch_end(self.val_metrics, "")

    def on_test_epoch_start(self):
        self._epoch_start()

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_test_epoch_end(self):
        self._epoch_end(self.test_metrics, "test/")

    def on_train_epoch_start(self):
        if self.cfg["freeze_students"]:
            self.students.eval()

    def configure_optimizers(self):
        """AdamW; the scalars κ, log τ, log σ get 10× the learning rate (they live on an O(1)–O(10) scale)."""
        scalars = {id(p) for p in (self.kappa, self.log_tau, self.log_sigma)}
        groups = [
            {"params": [p for p in self.parameters() if p.requires_grad and id(p) not in scalars]},
            {"params": [p for p in self.parameters() if p.requires_grad and id(p) in scalars],
             "lr": 10 * float(self.cfg["lr"]), "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(self.cfg["lr"]), weight_decay=1e-4)


def _modules_fingerprint(modules: Sequence) -> str:
    h = hashlib.sha256()
    for mod in modules:
        h.update(mod.dimension.encode())
        for k, v in mod.state_dict().items():
            if k.startswith("students.") or k in ("x_mean", "x_std", "y_mean", "y_std"):
                h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_moe(student_modules: Sequence, datamodule, cfg, run_dir, mode: Optional[str] = None, logger=None,
              callbacks: Sequence = (), fingerprint: Optional[str] = None) -> HajekMoE:
    """Train (or reuse / resume) the Hájek-MoE of ``mode`` over the given trained student modules.

    Checkpoints in ``run_dir/checkpoints/moe_<mode>/``; ``uniform`` over frozen students has
    nothing to train and is only calibrated and saved. With ``moe.fit_on=val`` (stacking) the
    fusion trains on held-out val windows (:meth:`LOBDataModule.stacking_view`).
    """
    mcfg = plain(cfg.moe)
    mode = mode or mcfg["mode"]
    bs = int(mcfg["batch_size"])
    datamodule = (datamodule.stacking_view(float(mcfg["fit_frac"]), bs) if mcfg["fit_on"] == "val"
                  else datamodule.with_splits(bs))
    fp = fingerprint_of("moe", mode, {k: v for k, v in mcfg.items() if k not in ("mode", "ablations")},
                        _modules_fingerprint(student_modules), data_fingerprint(datamodule), trainer_kwargs(cfg),
                        int(cfg.run.seed), datamodule.batch_size, fingerprint)
    return fit_module(lambda: HajekMoE.from_students(student_modules, mcfg, mode), HajekMoE, datamodule, cfg,
                      Path(run_dir) / "checkpoints" / f"moe_{mode}", fp, mcfg["max_epochs"], mcfg["patience"],
                      prepare=lambda m: m.calibrate(datamodule), logger=logger, callbacks=callbacks,
                      train=not (mode == "uniform" and mcfg["freeze_students"]))

"""Cross-fitted CMM predictions on the train split: what ``cmm_rl`` observes while it learns.

An agent trained on the CMM's predictions for windows the students were fitted on would learn to
trust in-sample predictions, which are better than what it sees at test time. So, like the MoE
(stacked on val windows the students never saw), ``cmm_rl`` learns from out-of-sample
predictions: the train windows are cut into ``K = rl.crossfit_folds`` contiguous folds; for fold k
the students (layer, task, data) and the MoE of the configured mode are trained exactly as in
``fit`` but on the train windows outside fold k — purged of those within ``T + h`` snapshots of
it, so no window they fit on overlaps fold k's inputs or targets — and fold k's predictions come
from them. Val keeps its roles (early stopping, the MoE's fit, RL checkpoints); test is untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

DIMENSIONS = ("layer", "task", "data")


@torch.no_grad()
def predict_ids(module, windows, ids: np.ndarray, batch: int = 2048) -> np.ndarray:
    """[len(ids), 3] predictions of a students / MoE module for windows ``ids``, in target units."""
    out = []
    for s in range(0, len(ids), batch):
        out.append(module.predict_windows(torch.from_numpy(windows.inputs(ids[s:s + batch]))).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


def folds(windows, train_ids: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(held-out ids, fit ids)] for ``k`` contiguous folds of ``train_ids``, fit ids purged of the
    windows whose end lies within ``T + h`` snapshots of the held-out fold."""
    gap = windows.window + windows.horizon
    end = windows.end[train_ids]
    out = []
    for held in np.array_split(np.arange(len(train_ids)), k):
        lo, hi = end[held[0]], end[held[-1]]
        fit = (end < lo - gap) | (end > hi + gap)
        out.append((train_ids[held], train_ids[fit]))
    return out


def crossfit_predictions(datamodule, plan: dict, cfg, run_dir, teacher_fingerprint: str, k: int) -> np.ndarray:
    """[W, 3] out-of-fold CMM predictions for the train windows (NaN elsewhere); checkpoints in
    ``run_dir/fold<i>/checkpoints/`` (each fold reused by fingerprint like every stage)."""
    from ..students import train_students
    from .module import train_moe

    w = datamodule.windows
    preds = np.full((len(w.end), 3), np.nan, np.float32)
    for i, (held, fit_ids) in enumerate(folds(w, w.indices("train"), int(k))):
        fp = hashlib.sha256(f"{teacher_fingerprint}|{k}|{i}".encode() + fit_ids.tobytes()).hexdigest()[:16]
        dm = datamodule.with_splits(train=fit_ids)
        fold_dir = Path(run_dir) / f"fold{i}"
        modules = [train_students(d, plan, dm, cfg, fold_dir, fingerprint=fp) for d in DIMENSIONS]
        moe = train_moe(modules, dm, cfg, fold_dir, mode=cfg.moe.mode, fingerprint=fp)
        preds[held] = predict_ids(moe, w, held)
    return preds


__all__ = ["crossfit_predictions", "folds", "predict_ids"]

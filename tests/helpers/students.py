"""Hand-built data for the students / MoE / export tests (no synthetic simulator, teacher or probe).

The shared random-walk book (:func:`.books.random_book`: the level-1 imbalance pushes the next mid
move, volatility switches between three spells) cut into windows by ``make_windows``; teacher
features are random with a planted linear relation: layer l = (standardized targets) · M_l ·
strength_l + noise."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from cmm_lightning.config import Config
from cmm_lightning.data.datamodule import LOBDataModule
from cmm_lightning.data.windows import make_windows

from .books import random_book

N_LAYERS1, HIDDEN = 5, 16  # teacher: embeddings + 4 blocks, width 16
PLAN = {
    "best_layer": {"mid": 3, "spread": 2, "volume": 4},
    "best_layer_by_regime": {r: {"mid": 3, "spread": 2, "volume": 4} for r in ("calm", "normal", "volatile")},
    "best_layer_regime": {"calm": 1, "normal": 2, "volatile": 3},
    "groups": [[0, 1], [2, 3], [4]],
    "group_names": ["shallow", "middle", "deep"],
}


def planted_teacher(windows, seed: int = 1, noise: float = 0.3):
    """[W, L+1, H] float16: layer l = ỹ M_l s_l + noise; layer 3 reads mid best, 2 spread, 4 volume."""
    rng = np.random.default_rng(seed)
    y = windows.targets.astype(np.float64)
    train = windows.split == 0
    ys = (y - y[train].mean(0)) / y[train].std(0)
    strength = np.array([[0.2, 0.2, 0.2], [0.5, 0.5, 0.5], [0.6, 1.5, 0.6], [1.5, 0.6, 0.6], [0.6, 0.6, 1.5]])
    feats = np.empty((len(y), N_LAYERS1, HIDDEN))
    for l in range(N_LAYERS1):
        M = rng.standard_normal((3, HIDDEN))
        feats[:, l] = (ys * strength[l]) @ M + noise * rng.standard_normal((len(y), HIDDEN)) + 3.0 * l
    return feats.astype(np.float16)


def make_data(n: int = 3000, seed: int = 0, batch_size: int = 128, teacher: bool = True):
    book = random_book(n, seed=seed)
    w = make_windows(book, window=16, horizon=5, stride=2)
    feats = planted_teacher(w) if teacher else None
    ids = np.arange(len(w.end)) if teacher else None
    return LOBDataModule(w, batch_size=batch_size, teacher=feats, teacher_ids=ids, seed=seed)


def small_cfg(**over):
    cfg = OmegaConf.structured(Config)
    cfg.students.hidden, cfg.students.channels, cfg.students.kernel = 16, 8, 4
    cfg.students.pca_dim = 8
    cfg.students.max_epochs, cfg.moe.max_epochs = 2, 2
    cfg.students.kd_lambdas = [1.0, 100.0]
    cfg.trainer.enable_progress_bar = False
    cfg.trainer.accelerator = "cpu"
    cfg.moe.embed_dim, cfg.moe.gate_hidden = 4, 8
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg

"""Hand-built test data for the students / MoE / export tests (no synthetic simulator, teacher or probe).

A random-walk Book whose level-1 imbalance pushes the next mid move and whose volatility
switches between three spells, cut into windows by ``make_windows``; teacher features are
random with a planted linear relation: layer l = (standardized targets) · M_l · strength_l + noise.
"""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from cmm_lightning.config import Config
from cmm_lightning.data.datamodule import LOBDataModule
from cmm_lightning.data.lob import Book
from cmm_lightning.data.windows import make_windows

N_LAYERS1, HIDDEN = 5, 16  # teacher: embeddings + 4 blocks, width 16
PLAN = {
    "best_layer": {"mid": 3, "spread": 2, "volume": 4},
    "best_layer_by_regime": {r: {"mid": 3, "spread": 2, "volume": 4} for r in ("calm", "normal", "volatile")},
    "best_layer_regime": {"calm": 1, "normal": 2, "volatile": 3},
    "groups": [[0, 1], [2, 3], [4]],
    "group_names": ["shallow", "middle", "deep"],
}


def random_walk_book(n: int = 3000, levels: int = 2, seed: int = 0) -> Book:
    rng = np.random.default_rng(seed)
    spell = (np.arange(n) // 250) % 3  # calm / normal / volatile spells
    p_move = np.array([0.1, 0.35, 0.8])[spell]
    b1 = rng.integers(5, 60, n).astype(float)
    a1 = rng.integers(5, 60, n).astype(float)
    imb = (b1 - a1) / (b1 + a1)
    move = rng.random(n) < p_move
    up = rng.random(n) < 0.5 + 0.45 * np.roll(imb, 1)
    step = np.where(move, np.where(up, 1, -1), 0)
    bid = 10_000 + np.cumsum(step)
    spread = 1 + (rng.random(n) < 0.3 + 0.2 * spell) + (rng.random(n) < 0.1 * spell)
    bid_px = bid[:, None] - np.arange(levels)[None, :]
    ask_px = (bid + spread)[:, None] + np.arange(levels)[None, :]
    bid_sz = np.concatenate([b1[:, None], rng.integers(5, 80, (n, levels - 1))], 1).astype(float)
    ask_sz = np.concatenate([a1[:, None], rng.integers(5, 80, (n, levels - 1))], 1).astype(float)
    trade_sz = rng.poisson(np.array([2.0, 6.0, 15.0])[spell]).astype(float)
    side = np.sign(rng.standard_normal(n)).astype(np.int8) * (trade_sz > 0)
    return Book(ts=np.arange(n, dtype=np.int64) * 1_000_000, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px,
                ask_sz=ask_sz, trade_px=np.where(trade_sz > 0, bid, 0).astype(np.int64), trade_sz=trade_sz,
                trade_side=side, tick_size=0.01, source="random-walk test book")


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
    book = random_walk_book(n, seed=seed)
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

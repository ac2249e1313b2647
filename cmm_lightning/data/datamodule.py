"""LOBDataModule: serves windows, targets, regimes and (optionally) cached teacher features.

Every batch is a dict:
    x        float32 [B, T, F]   window inputs (see windows.py)
    y        float32 [B, 3]      targets (mid, spread, volume)
    regime   int64   [B]         0 calm, 1 normal, 2 volatile
    index    int64   [B]         window id (position in WindowSet.end)
    teacher  float32 [B, L+1, H] teacher features, only when a feature memmap is attached

Batches are gathered in one vectorised call per batch (a BatchSampler feeds lists of ids),
and teacher features are read from the memory map, so a 10^6-window cache needs no RAM.
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .windows import WindowSet


class WindowDataset(Dataset):
    """Indexed by a *list* of positions into ``ids`` (one call per batch)."""

    def __init__(self, windows: WindowSet, ids: np.ndarray, teacher: Optional[np.ndarray] = None,
                 teacher_rows: Optional[np.ndarray] = None):
        self.windows, self.ids = windows, np.asarray(ids, dtype=np.int64)
        self.teacher = teacher  # memmap [N_cached, L+1, H] float16
        self.teacher_rows = teacher_rows  # window id -> row in the memmap (or -1)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, positions) -> dict:
        idx = self.ids[np.asarray(positions, dtype=np.int64)]
        w = self.windows
        batch = {
            "x": torch.from_numpy(w.inputs(idx)),
            "y": torch.from_numpy(w.targets[idx]),
            "regime": torch.from_numpy(w.regime[idx]),
            "index": torch.from_numpy(idx),
        }
        if self.teacher is not None:
            rows = self.teacher_rows[idx]
            order = np.argsort(rows)  # memmap reads in file order
            feats = np.empty((len(idx),) + self.teacher.shape[1:], dtype=np.float32)
            feats[order] = self.teacher[rows[order]]
            batch["teacher"] = torch.from_numpy(feats)
        return batch


class LOBDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders over one WindowSet.

    ``teacher``: memmap of cached features whose row ``k`` belongs to window ``teacher_ids[k]``;
    when given, only windows with cached features are served.
    ``regime``: restrict the train/val splits to one regime (data students).
    """

    def __init__(self, windows: WindowSet, batch_size: int = 256, num_workers: int = 0,
                 teacher: Optional[np.ndarray] = None, teacher_ids: Optional[np.ndarray] = None,
                 regime: Optional[int] = None, seed: int = 0):
        super().__init__()
        self.windows, self.batch_size, self.num_workers = windows, batch_size, num_workers
        self.teacher, self.regime, self.seed = teacher, regime, seed
        self.teacher_rows = None
        if teacher is not None:
            self.teacher_rows = np.full(len(windows.end), -1, dtype=np.int64)
            self.teacher_rows[np.asarray(teacher_ids)] = np.arange(len(teacher_ids))

    def split_ids(self, split: str, regime: Optional[int] = None) -> np.ndarray:
        ids = self.windows.indices(split)
        if self.teacher_rows is not None:
            ids = ids[self.teacher_rows[ids] >= 0]
        regime = self.regime if regime is None and split in ("train", "val") else regime
        if regime is not None:
            ids = ids[self.windows.regime[ids] == regime]
        return ids

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = WindowDataset(self.windows, self.split_ids(split), self.teacher, self.teacher_rows)
        if shuffle:
            gen = torch.Generator().manual_seed(self.seed)
            base = RandomSampler(range(len(ds)), generator=gen)
        else:
            base = SequentialSampler(range(len(ds)))
        sampler = BatchSampler(base, batch_size=self.batch_size, drop_last=False)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

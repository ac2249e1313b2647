"""LOBDataModule: serves windows, targets, regimes and (optionally) cached teacher features.

Every batch is a dict:
    x        float32 [B, T, F]   window inputs (see windows.py)
    y        float32 [B, 3]      targets (mid, spread, volume)
    regime   int64   [B]         0 calm, 1 normal, 2 volatile
    index    int64   [B]         window id (position in WindowSet.end)
    teacher       float32 [B, L+1, H] teacher features (zeros where none are cached) ┐ only when a
    teacher_mask  float32 [B]         1 where the window's features are cached        ┘ memmap is attached

Batches are gathered in one vectorised call per batch (a batch sampler feeds lists of ids),
and teacher features are read from the memory map, so a 10^6-window cache needs no RAM.

Several processes (DDP): ``batch_size`` is the *global* batch. Every rank draws the same
global batches (the permutation is seeded by ``seed + epoch``) and takes rows ``r::W`` of each,
so all ranks run the same number of steps, no window is served twice (no padding), and the
averaged DDP gradient is the gradient of the 1-process run's batch: results do not depend on
the number of devices beyond float rounding. Outside a running Trainer (statistics, evaluation)
the loaders serve every window on every rank.
"""

from __future__ import annotations

from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import CMMInputError
from .windows import WindowSet


def with_teacher(batch: dict) -> dict:
    """The rows of a batch whose teacher features are cached (the batch itself when all are)."""
    mask = batch.get("teacher_mask")
    if mask is None or bool(mask.all()):
        return batch
    keep = mask > 0
    return {k: v[keep] if torch.is_tensor(v) and len(v) == len(keep) else v for k, v in batch.items()}


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
            have = np.flatnonzero(rows >= 0)
            have = have[np.argsort(rows[have])]  # memmap reads in file order
            feats = np.zeros((len(idx),) + self.teacher.shape[1:], dtype=np.float32)
            feats[have] = self.teacher[rows[have]]
            batch["teacher"] = torch.from_numpy(feats)
            batch["teacher_mask"] = torch.from_numpy((rows >= 0).astype(np.float32))
        return batch


class GlobalBatchSampler(DistributedSampler):
    """Lists of positions in ``range(n)``: global batches of ``batch_size``, rank ``r`` of ``W``
    gets rows ``r::W`` of each.

    Order: ``randperm(n)`` from a generator seeded with ``seed + epoch`` (``shuffle``) or ``0..n-1``;
    consecutive chunks of ``batch_size``; a last chunk with fewer than ``W`` rows joins the one
    before (so no rank ever gets an empty batch). It subclasses ``DistributedSampler`` so that
    Lightning keeps it as it is (no sampler injection) and calls ``set_epoch`` every epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        # DistributedSampler.__init__ is not called: it would need an initialised process group.
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.n, self.batch_size, self.shuffle, self.seed = int(n), int(batch_size), bool(shuffle), int(seed)
        self.rank, self.num_replicas, self.epoch, self.drop_last = int(rank), int(world_size), 0, False

    def global_batches(self) -> list[np.ndarray]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen).numpy()
        else:
            order = np.arange(self.n)
        batches = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < self.num_replicas:
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def __iter__(self):
        for b in self.global_batches():
            yield b[self.rank::self.num_replicas].tolist()

    def __len__(self) -> int:
        nb = -(-self.n // self.batch_size)
        return nb - int(nb > 1 and self.n - (nb - 1) * self.batch_size < self.num_replicas)


class LOBDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders over one WindowSet.

    ``teacher``: memmap of cached features whose row ``k`` belongs to window ``teacher_ids[k]``.
    Every window is served; ``teacher_only=True`` serves only windows with cached features.
    ``regime``: restrict the train/val splits to one regime (data students).
    """

    def __init__(self, windows: WindowSet, batch_size: int = 256, num_workers: int = 0,
                 teacher: Optional[np.ndarray] = None, teacher_ids: Optional[np.ndarray] = None,
                 regime: Optional[int] = None, seed: int = 0, teacher_only: bool = False):
        super().__init__()
        self.windows, self.batch_size, self.num_workers = windows, batch_size, num_workers
        self.teacher, self.regime, self.seed, self.teacher_only = teacher, regime, seed, teacher_only
        self.teacher_rows = None
        self.split_override: dict[str, np.ndarray] = {}  # split -> window ids (see stacking_view)
        if teacher is not None:
            self.teacher_rows = np.full(len(windows.end), -1, dtype=np.int64)
            self.teacher_rows[np.asarray(teacher_ids)] = np.arange(len(teacher_ids))

    def with_splits(self, batch_size: Optional[int] = None, **ids: np.ndarray) -> "LOBDataModule":
        """A copy serving the given window ids for some splits (e.g. ``train=...``) in batches of
        ``batch_size`` (default: this module's)."""
        view = LOBDataModule(self.windows, batch_size or self.batch_size, self.num_workers, seed=self.seed,
                             regime=self.regime, teacher_only=self.teacher_only)
        view.teacher, view.teacher_rows = self.teacher, self.teacher_rows
        view.split_override = {**self.split_override, **ids}
        return view

    def stacking_view(self, fit_frac: float = 0.5, batch_size: Optional[int] = None) -> "LOBDataModule":
        """The data of a model stacked on frozen students (the MoE): its train split is the first
        ``fit_frac`` of the val windows (in time), its val split the rest of them after a gap of
        ``horizon`` snapshots (no target overlaps), its test split unchanged.

        The students never trained on val, so the fusion learns how each of them does out of
        sample; fitted on the train split it would learn their in-sample fit (they overfit it)."""
        if not 0.0 < fit_frac < 1.0:
            raise CMMInputError(f"config: moe.fit_frac={fit_frac} must lie in (0, 1)")
        val = self.split_ids("val")
        end = self.windows.end[val]
        cut = end[min(int(fit_frac * len(val)), len(val) - 1)] if len(val) else 0
        fit, stop = val[end < cut], val[end >= cut + self.windows.horizon]
        if not (len(fit) and len(stop)):
            raise CMMInputError(f"config: moe.fit_on=val needs more than the {len(val)} val windows to split at "
                                f"moe.fit_frac={fit_frac} (use more data or moe.fit_on=train)")
        return self.with_splits(batch_size, train=fit, val=stop)

    def split_ids(self, split: str, regime: Optional[int] = None) -> np.ndarray:
        if split in self.split_override:
            ids = self.split_override[split]
            return ids if regime is None else ids[self.windows.regime[ids] == regime]
        ids = self.windows.indices(split)
        if self.teacher_only and self.teacher_rows is not None:
            ids = ids[self.teacher_rows[ids] >= 0]
        regime = self.regime if regime is None and split in ("train", "val") else regime
        if regime is not None:
            ids = ids[self.windows.regime[ids] == regime]
        return ids

    def _rank_world(self) -> tuple[int, int]:
        """(rank, world size) of the Trainer running now; (0, 1) when none runs."""
        from lightning.pytorch.trainer.states import TrainerStatus

        t = self.trainer
        if t is None or t.state.status != TrainerStatus.RUNNING:
            return 0, 1
        return int(t.global_rank), int(t.world_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = WindowDataset(self.windows, self.split_ids(split), self.teacher, self.teacher_rows)
        rank, world = self._rank_world()
        sampler = GlobalBatchSampler(len(ds), self.batch_size, shuffle=shuffle, seed=self.seed, rank=rank,
                                     world_size=world)
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

"""Training plumbing every stage shares: plain hyper-parameters, fingerprints, the Trainer, the
fit loop with early stopping and resume, and "reuse the output when its fingerprint matches".

Reuse (``reusable`` / ``mark_done``): a stage writes its outputs, then a small JSON marker with the
fingerprint of everything that decided them; a later run with the same fingerprint whose outputs
exist reuses them (teacher features, the probe, every student / MoE checkpoint, the RL agents).
A changed fingerprint never reuses anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .io import read_json, write_json


def plain(obj):
    """OmegaConf / dataclasses / numpy / tuples -> plain JSON types (checkpoint hparams must load
    with ``weights_only``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        obj = OmegaConf.to_container(obj, resolve=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else list(o)))


def fingerprint_of(*parts) -> str:
    """16 hex digits of sha256 over the parts as sorted JSON."""
    return hashlib.sha256(json.dumps(plain(list(parts)), sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(datamodule) -> str:
    """Windows + (a sample of) the attached teacher features: a changed input never reuses a fit."""
    h = hashlib.sha256(datamodule.windows.fingerprint().encode())
    t = getattr(datamodule, "teacher", None)
    if t is not None:
        h.update(str(tuple(t.shape)).encode())
        rows = sorted({0, len(t) // 2, len(t) - 1})
        h.update(np.ascontiguousarray(np.asarray(t[rows])).tobytes())
        h.update(np.ascontiguousarray(datamodule.teacher_rows).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- reuse
def reusable(marker, fingerprint: str, *outputs) -> Optional[dict]:
    """The marker's content when it records ``fingerprint`` and every output file exists, else None."""
    marker = Path(marker)
    try:
        info = read_json(marker)
    except (OSError, ValueError):
        return None
    ok = isinstance(info, dict) and info.get("fingerprint") == fingerprint
    return info if ok and all(Path(p).is_file() for p in outputs) else None


def mark_done(marker, fingerprint: str, **info) -> Path:
    """Write the marker (atomically, last: its presence says the outputs are complete)."""
    return write_json(marker, {"fingerprint": fingerprint, **info})


# ------------------------------------------------------------------------------------------- Trainer
def trainer_kwargs(cfg) -> dict:
    """``lightning.Trainer`` arguments from ``cfg.trainer`` (every ``TrainerConfig`` field)."""
    from .config import TrainerConfig

    tr = getattr(cfg, "trainer", None) or TrainerConfig()
    return {f.name: plain(getattr(tr, f.name)) for f in dataclasses.fields(TrainerConfig)}


def make_trainer(cfg, **overrides):
    """A ``lightning.Trainer`` with the run's trainer settings, ``overrides`` winning."""
    import lightning as L

    return L.Trainer(**{**trainer_kwargs(cfg), **overrides})


def save_plain_checkpoint(module, path: Path) -> None:
    """A Lightning-loadable checkpoint without a Trainer (state dict + plain hparams)."""
    import lightning as L
    import torch

    from .io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "pytorch-lightning_version": L.__version__}, tmp)


def fit_module(make: Callable, cls, datamodule, cfg, ckpt_dir: Path, fingerprint: str, max_epochs: int,
               patience: int, prepare: Optional[Callable] = None, logger=None, callbacks: Sequence = (),
               monitor: str = "val/loss", train: bool = True, stopper=None):
    """Fit ``make()`` with early stopping; resume from ``last.ckpt``; reuse when done.

    ``ckpt_dir`` holds ``fingerprint.json`` (what the checkpoints belong to), ``last.ckpt``,
    ``best.ckpt`` and, once finished, ``done.json``. A different fingerprint clears the folder.
    Returns the best module loaded back with ``weights_only=True`` (on CPU).

    * ``stopper=None`` (one model, the MoE): Lightning's ``EarlyStopping`` on ``monitor``;
      ``best.ckpt`` is the epoch with the lowest ``monitor``.
    * ``stopper`` = an early-stopping callback that keeps its own best weights and writes them into
      the module at the end (students: ``PerStudentEarlyStopping``, every student on its own val
      loss); ``last.ckpt`` (every epoch) carries its state, ``best.ckpt`` the final module,
      ``done.json`` adds ``stopper.done_info()``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from .dist import is_global_zero

    ckpt_dir = Path(ckpt_dir)
    zero = is_global_zero()  # under DDP every rank decides the same; only rank 0 writes
    done, best, last, fp_file = (ckpt_dir / n for n in ("done.json", "best.ckpt", "last.ckpt", "fingerprint.json"))
    if reusable(done, fingerprint, best):
        print(f"{ckpt_dir.name}: reusing {best} (same fingerprint {fingerprint})")
        return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    same = reusable(fp_file, fingerprint) is not None
    if zero:  # stale files go first, the new fingerprint last (a peer reading meanwhile decides alike)
        if ckpt_dir.exists() and not same:
            for f in (*ckpt_dir.glob("*.ckpt"), done):
                f.unlink(missing_ok=True)
        mark_done(fp_file, fingerprint)
    resume = str(last) if same and last.is_file() else None
    L.seed_everything(int(cfg.run.seed) if cfg is not None and "run" in cfg else 0, workers=True, verbose=False)
    module = make()
    if resume is None and prepare is not None:
        prepare(module)
    if not train:  # nothing to optimise (e.g. uniform MoE over frozen students)
        if not zero:
            return module.cpu().eval()
        save_plain_checkpoint(module, best)
        mark_done(done, fingerprint, best=str(best), trained=False)
        return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    if stopper is not None:
        stop = stopper
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False)  # every epoch
    else:
        stop = EarlyStopping(monitor=monitor, patience=int(patience), mode="min")
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_top_k=1,
                               save_last=True, enable_version_counter=False)
    trainer = make_trainer(cfg, max_epochs=int(max_epochs), logger=logger if logger is not None else False,
                           callbacks=[stop, ckpt, *callbacks], default_root_dir=str(ckpt_dir),
                           enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if stopper is not None:  # the module now holds the stopper's best weights
        trainer.save_checkpoint(best, weights_only=True)  # rank 0 writes, every rank waits for it
        path, info = best, stopper.done_info()
    else:
        path, score = Path(ckpt.best_model_path or str(last)), ckpt.best_model_score
        info = {"best_score": None if score is None else float(score)}
    if not zero:  # rank 0 saved the checkpoints (Lightning waits for it); read, don't write
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    if path != best and path.is_file():
        best.write_bytes(path.read_bytes())
    mark_done(done, fingerprint, best=str(best), trained=True, **info, epochs=int(trainer.current_epoch))
    return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()


__all__ = ["data_fingerprint", "fingerprint_of", "fit_module", "make_trainer", "mark_done", "plain", "reusable",
           "save_plain_checkpoint", "trainer_kwargs"]

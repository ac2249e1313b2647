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
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .io import check_file, file_record, read_json_or_none, report_damaged, write_json


def _jsonable(o):
    from omegaconf import OmegaConf

    if OmegaConf.is_config(o):
        return OmegaConf.to_container(o, resolve=True)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return o.item() if hasattr(o, "item") else list(o)


def plain(obj):
    """OmegaConf / dataclasses / numpy / tuples, at any depth -> plain JSON types (checkpoint
    hparams must load with ``weights_only``; fingerprints hash their JSON)."""
    return json.loads(json.dumps(obj, default=_jsonable))


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
def _file_key(marker: Path, path) -> str:
    """How a marker names an output: its path relative to the marker's folder."""
    return os.path.relpath(Path(path), Path(marker).parent)


def reusable(marker, fingerprint: str, *outputs, digest: bool = True) -> Optional[dict]:
    """The marker's content when it records ``fingerprint`` and every output is intact, else None.

    Intact: the file exists and, when the marker recorded it (``mark_done(marker, fp, *outputs)``),
    has the recorded size and (``digest``) checksum. A marker that is not valid JSON, or an output
    that differs from its record, is reported in one line and read as absent: the caller recomputes.
    """
    marker = Path(marker)
    info = read_json_or_none(marker, "recomputing what it marks")
    if info is None or info.get("fingerprint") != fingerprint:
        return None
    files = info.get("files") if isinstance(info.get("files"), dict) else {}
    for p in map(Path, outputs):
        record = files.get(_file_key(marker, p))
        if record is None or not p.is_file():  # not recorded (older marker) or deleted: exists?
            if p.is_file():
                continue
            return None
        why = check_file(p, record, digest=digest)
        if why:
            report_damaged(p, why, "treated as absent: recomputing it")
            return None
    return info


def mark_done(marker, fingerprint: str, *outputs, **info) -> Path:
    """Write the marker (atomically, last: its presence says the outputs are complete), with the
    size and checksum of every ``outputs`` file (checked by :func:`reusable`)."""
    files = {_file_key(marker, p): file_record(p) for p in outputs}
    return write_json(marker, {"fingerprint": fingerprint, **info, **({"files": files} if files else {})})


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


def _recording_checkpoint_class():
    from lightning.pytorch.callbacks import ModelCheckpoint

    class RecordingCheckpoint(ModelCheckpoint):
        """``ModelCheckpoint`` that, after every save, records the size and checksum of
        ``last.ckpt`` / ``best.ckpt`` in ``fingerprint.json`` (rank 0): a resume only starts from a
        checkpoint that is what was written. Built on first use (``training.RecordingCheckpoint``)
        so that importing this module does not import Lightning."""

        def __init__(self, record_file, fingerprint: str, **kwargs):
            super().__init__(**kwargs)
            self.record_file, self.fingerprint = Path(record_file), fingerprint

        def _save_checkpoint(self, trainer, filepath: str) -> None:
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                folder = self.record_file.parent
                mark_done(self.record_file, self.fingerprint,
                          *[f for f in (folder / "last.ckpt", folder / "best.ckpt") if f.is_file()])

    RecordingCheckpoint.__module__, RecordingCheckpoint.__qualname__ = __name__, "RecordingCheckpoint"
    return RecordingCheckpoint


def __getattr__(name: str):
    if name == "RecordingCheckpoint":  # picklable by name (ddp_spawn pickles the callbacks)
        cls = _recording_checkpoint_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _intact_checkpoints(state: Optional[dict], fp_file: Path, paths: Sequence[Path]) -> set:
    """The checkpoints in ``paths`` that match their record in ``fingerprint.json`` (``state``).
    One that differs from its record is reported as damaged; one without a record (a kill
    between the save and the record, or a final ``best.ckpt`` of the students) is not trusted.
    A ``fingerprint.json`` without records (written before they existed): every file is trusted."""
    if state is None:
        return set()
    files = state.get("files")
    if not isinstance(files, dict):
        return {p for p in paths if p.is_file()}
    out = set()
    for p in paths:
        record = files.get(_file_key(fp_file, p))
        if record is None or not p.is_file():
            continue
        why = check_file(p, record)
        if why:
            report_damaged(p, why, "treated as absent: the fit resumes from an intact last.ckpt or starts over")
        else:
            out.add(p)
    return out


def _load_best(cls, best: Path):
    """The module in ``best`` (CPU, eval); None, reported, when it cannot be read (a checkpoint
    from before the records, damaged)."""
    import pickle
    import zipfile

    try:
        return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        report_damaged(best, f"unreadable: {str(e).splitlines()[0][:120]}", "treated as absent: recomputing it")
        return None


def fit_module(make: Callable, cls, datamodule, cfg, ckpt_dir: Path, fingerprint: str, max_epochs: int,
               patience: int, prepare: Optional[Callable] = None, logger=None, callbacks: Sequence = (),
               monitor: str = "val/loss", train: bool = True, stopper=None):
    """Fit ``make()`` with early stopping; resume from ``last.ckpt``; reuse when done.

    ``ckpt_dir`` holds ``fingerprint.json`` (what the checkpoints belong to, with the size and
    checksum of ``last.ckpt`` / ``best.ckpt`` as last saved), ``last.ckpt``, ``best.ckpt`` and,
    once finished, ``done.json`` (with ``best.ckpt``'s size and checksum). A different fingerprint
    clears the folder. A damaged file (a JSON that does not parse, a checkpoint that is not what
    was recorded) is reported in one line and treated as absent: the fit resumes from an intact
    ``last.ckpt`` or starts over. Returns the best module loaded back with ``weights_only=True`` (on CPU).

    * ``stopper=None`` (one model, the MoE): Lightning's ``EarlyStopping`` on ``monitor``;
      ``best.ckpt`` is the epoch with the lowest ``monitor``.
    * ``stopper`` = an early-stopping callback that keeps its own best weights and writes them into
      the module at the end (students: ``PerStudentEarlyStopping``, every student on its own val
      loss); ``last.ckpt`` (every epoch) carries its state, ``best.ckpt`` the final module,
      ``done.json`` adds ``stopper.done_info()``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from .dist import is_global_zero

    ckpt_dir = Path(ckpt_dir)
    zero = is_global_zero()  # under DDP every rank decides the same; only rank 0 writes
    done, best, last, fp_file = (ckpt_dir / n for n in ("done.json", "best.ckpt", "last.ckpt", "fingerprint.json"))
    unreadable, best_present = set(), best.is_file()
    if reusable(done, fingerprint, best):
        module = _load_best(cls, best)
        if module is not None:
            print(f"{ckpt_dir.name}: reusing {best} (same fingerprint {fingerprint})")
            return module
        unreadable.add(best)
    # same fingerprint: the checkpoints that are what was saved (none after a change of fingerprint)
    intact = _intact_checkpoints(reusable(fp_file, fingerprint), fp_file, (last, best)) - unreadable
    # the MoE's resumed ModelCheckpoint points at best.ckpt: without an intact one, start over
    resume_ok = last in intact and (stopper is not None or best in intact or not best_present)
    keep = ([last] + ([best] if stopper is None and best in intact else [])) if resume_ok else []
    if zero:  # stale or damaged files go first, the record last (a peer reading meanwhile decides alike)
        if ckpt_dir.exists():
            for f in (*ckpt_dir.glob("*.ckpt"), done):
                if f not in keep:
                    f.unlink(missing_ok=True)
        mark_done(fp_file, fingerprint, *keep)
    resume = str(last) if resume_ok else None
    L.seed_everything(int(cfg.run.seed) if cfg is not None and "run" in cfg else 0, workers=True, verbose=False)
    module = make()
    if resume is None and prepare is not None:
        prepare(module)
    if not train:  # nothing to optimise (e.g. uniform MoE over frozen students)
        if not zero:
            return module.cpu().eval()
        save_plain_checkpoint(module, best)
        mark_done(done, fingerprint, best, best=str(best), trained=False)
        return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    Checkpoint = getattr(sys.modules[__name__], "RecordingCheckpoint")
    if stopper is not None:
        stop = stopper
        ckpt = Checkpoint(fp_file, fingerprint, dirpath=ckpt_dir, filename="last",
                          enable_version_counter=False)  # every epoch
    else:
        stop = EarlyStopping(monitor=monitor, patience=int(patience), mode="min")
        ckpt = Checkpoint(fp_file, fingerprint, dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min",
                          save_top_k=1, save_last=True, enable_version_counter=False)
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
        from .io import atomic_write_bytes

        atomic_write_bytes(best, path.read_bytes())
    mark_done(done, fingerprint, best, best=str(best), trained=True, **info, epochs=int(trainer.current_epoch))
    return cls.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()


__all__ = ["data_fingerprint", "fingerprint_of", "fit_module", "make_trainer", "mark_done", "plain", "reusable",
           "save_plain_checkpoint", "trainer_kwargs"]

"""Damaged caches and checkpoints: never wrong, never a traceback.

Each damaged artefact — a truncated or overwritten ``features.npy``, a garbage teacher ``meta.json``,
a truncated ``best.ckpt`` / ``last.ckpt``, a truncated or garbage ``done.json``, a garbage
``report.json`` — is reported in one line naming the file and recomputed to what a clean run
gives, or (when it cannot be recomputed) the CLI exits 2 with one line naming it. Written files
honour the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cmm_lightning.__main__ import main
from cmm_lightning.data import make_windows
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.io import atomic_path, verifying, write_json
from cmm_lightning.students.modules import train_students
from cmm_lightning.teacher import cache
from cmm_lightning.teacher.models import build_tiny_llama
from cmm_lightning.training import fit_module

from .helpers import SMOKE
from .helpers.students import PLAN, make_data, small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

GARBAGE = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()


def _damage_lines(err: str, path) -> list[str]:
    """The 'damaged:' lines of stderr; asserts there is exactly one, naming ``path``, and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("damaged:")]
    assert len(lines) == 1 and str(path) in lines[0], err
    return lines


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ------------------------------------------------------------------------------ teacher cache
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", hidden=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def teacher_setup(tiny, tmp_path_factory):
    """(cfg, windows, ids, clean cache root, clean entry folder)."""
    from omegaconf import OmegaConf

    from cmm_lightning.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.teacher.model, cfg.teacher.batch_size = str(tiny), 8
    cfg.trainer.accelerator, cfg.trainer.enable_progress_bar = "cpu", False
    w = make_windows(simulate(900, levels=3, seed=3), window=32, horizon=10, stride=5)
    ids = cache.default_ids(w, 40)
    root = tmp_path_factory.mktemp("clean") / "cache"
    tf = cache.cache_teacher(cfg, w, root, ids=ids)
    return cfg, w, ids, root, tf.path


def _copy_entry(teacher_setup, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "cache"
    shutil.copytree(teacher_setup[3], root)
    return root, root / "teacher" / teacher_setup[4].name


def _overwrite_middle(path: Path, data: bytes) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid:mid + len(data)] = data
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("case", ["features_truncated", "features_random_bytes", "meta_garbage"])
def test_damaged_teacher_cache_is_reported_and_extracted_again(case, teacher_setup, tmp_path, capsys):
    cfg, w, ids, clean_root, clean = teacher_setup
    root, folder = _copy_entry(teacher_setup, tmp_path)
    feats = folder / "features.npy"
    if case == "features_truncated":
        _truncate(feats)
        named = feats
    elif case == "features_random_bytes":  # same size: only the non-finite values give it away
        _overwrite_middle(feats, GARBAGE)
        assert feats.stat().st_size == (clean / "features.npy").stat().st_size
        assert not np.isfinite(np.load(feats, mmap_mode="r")).all()
        named = feats
    else:
        (folder / "meta.json").write_bytes(GARBAGE)
        named = folder / "meta.json"
    capsys.readouterr()
    tf = cache.cache_teacher(cfg, w, root, ids=ids)
    _damage_lines(capsys.readouterr().err, named)
    assert not tf.hit and tf.path == folder
    assert feats.read_bytes() == (clean / "features.npy").read_bytes()
    assert (folder / "ids.npy").read_bytes() == (clean / "ids.npy").read_bytes()
    again = cache.cache_teacher(cfg, w, root, ids=ids)  # intact now: a silent hit
    assert again.hit and capsys.readouterr().err == "" and again.damaged_rows() is None


def test_finite_garbage_is_found_by_verify(teacher_setup, tmp_path, capsys):
    """Overwritten with finite values (1.0): sizes and the non-finite count still match, so only
    the block checksums — checked with ``--verify`` — find it."""
    cfg, w, ids, _, clean = teacher_setup
    root, folder = _copy_entry(teacher_setup, tmp_path)
    _overwrite_middle(folder / "features.npy", np.full(64, 1.0, np.float16).tobytes())
    hit = cache.cache_teacher(cfg, w, root, ids=ids)
    assert hit.hit and hit.damaged_rows().startswith("checksum mismatch in rows ")
    del hit
    capsys.readouterr()
    with verifying():
        tf = cache.cache_teacher(cfg, w, root, ids=ids)
    (line,) = _damage_lines(capsys.readouterr().err, folder / "features.npy")
    assert "checksum mismatch in rows" in line and not tf.hit
    assert (folder / "features.npy").read_bytes() == (clean / "features.npy").read_bytes()


def test_cli_damaged_meta_and_report(tmp_path, capsys, monkeypatch):
    """Through the CLI: a damaged cache entry that cannot be deleted exits 2 with one line naming
    it; deletable, it is extracted again; a garbage report.json is rebuilt."""
    run, root = tmp_path / "run", tmp_path / "cache"
    args = ["--config", str(SMOKE), "data.synthetic.n_snapshots=3000", "teacher.max_windows=32",
            "logger.kind=none", f"run.dir={run}", f"run.cache_dir={root}"]
    assert main(["cache-teacher", *args]) == 0
    (folder,) = (root / "teacher").iterdir()
    clean_feats = (folder / "features.npy").read_bytes()
    clean_report = json.loads((run / "report.json").read_text())

    (folder / "meta.json").write_bytes(GARBAGE)

    def cannot_delete(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache.shutil, "rmtree", cannot_delete)
    capsys.readouterr()
    assert main(["cache-teacher", *args]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: teacher cache entry ") and f"delete {folder} and run again" in line
    monkeypatch.undo()

    assert main(["cache-teacher", *args]) == 0
    _damage_lines(capsys.readouterr().err, folder / "meta.json")
    assert (folder / "features.npy").read_bytes() == clean_feats

    (run / "report.json").write_bytes(GARBAGE)
    assert main(["cache-teacher", *args]) == 0
    _damage_lines(capsys.readouterr().err, run / "report.json")
    report = json.loads((run / "report.json").read_text())
    assert report["data"] == clean_report["data"]
    assert report["teacher"]["fingerprint"] == clean_report["teacher"]["fingerprint"]


def test_damaged_shard_is_dropped_before_a_resume(tmp_path, capsys):
    """A finished shard left by a crashed extraction is resumed from only when it matches the
    record written with it; a damaged one is reported and extracted again (its files removed)."""
    from types import SimpleNamespace

    from cmm_lightning.teacher.extract import ShardWriter, check_shards, finished_shards, read_shards

    writer, trainer = ShardWriter(tmp_path / "shards"), SimpleNamespace(global_rank=0)
    rng = np.random.default_rng(1)
    for k in range(3):
        writer.write_on_batch_end(trainer, None, {"k": k, "ids": np.arange(4 * k, 4 * k + 4),
                                                  "features": rng.standard_normal((4, 3, 8)).astype(np.float16)},
                                  None, None, k)
    assert check_shards(tmp_path / "shards") == 0 and capsys.readouterr().err == ""
    bad = tmp_path / "shards" / "shard_0_1.npy"
    _overwrite_middle(bad, b"\x00" * 16)  # same size, other bytes
    assert check_shards(tmp_path / "shards") == 1
    _damage_lines(capsys.readouterr().err, bad)
    assert sorted(finished_shards(tmp_path / "shards")) == [0, 2]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir() if "_1." in p.name) == []
    np.testing.assert_array_equal(read_shards(tmp_path / "shards")[2][0], np.arange(8, 12))


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def students_setup(tmp_path_factory):
    """(datamodule, cfg, clean run dir, clean module) for the layer students."""
    dm, cfg = make_data(n=1600), small_cfg(**{"students.max_epochs": 2})
    run = tmp_path_factory.mktemp("students") / "run"
    return dm, cfg, run, train_students("layer", PLAN, dm, cfg, run)


@pytest.mark.parametrize("case", ["best_truncated", "done_truncated", "done_garbage"])
def test_damaged_student_checkpoint_is_reported_and_recomputed(case, students_setup, tmp_path, capsys):
    dm, cfg, clean_run, clean = students_setup
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    ck = run / "checkpoints" / "layer"
    named = ck / ("best.ckpt" if case == "best_truncated" else "done.json")
    if case == "done_garbage":
        named.write_bytes(GARBAGE)
    else:
        _truncate(named)
    capsys.readouterr()
    m = train_students("layer", PLAN, dm, cfg, run)
    out = capsys.readouterr()
    _damage_lines(out.err, named)
    assert "reusing" not in out.out
    for (k, a), b in zip(m.state_dict().items(), clean.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    again = train_students("layer", PLAN, dm, cfg, run)  # done.json intact again: reused
    assert "layer: reusing" in capsys.readouterr().out
    for a, b in zip(again.state_dict().values(), clean.state_dict().values()):
        torch.testing.assert_close(a, b)


class TinyRegressor(L.LightningModule):
    def __init__(self, n: int = 4):
        super().__init__()
        self.save_hyperparameters()
        self.lin = nn.Linear(n, 1)

    def training_step(self, batch, i):
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.lin(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class TinyData(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(64, 1, generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x[:48], self.y[:48]), batch_size=16)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[48:], self.y[48:]), batch_size=16)


def _fit_tiny(ckpt_dir: Path):
    cfg = small_cfg()
    return fit_module(TinyRegressor, TinyRegressor, TinyData(), cfg, ckpt_dir, "fp-tiny", max_epochs=3, patience=5)


@pytest.mark.parametrize("case", ["best_truncated", "last_random_bytes"])
def test_monitor_checkpoints_damaged_start_over(case, tmp_path, capsys):
    """Lightning's EarlyStopping + ModelCheckpoint (the MoE's path): a damaged best.ckpt cannot be
    resumed around (the resumed checkpoint callback points at it), a damaged last.ckpt of a
    crashed fit is not resumed from: both start over and end where a clean fit does."""
    clean = _fit_tiny(tmp_path / "clean")
    ck = tmp_path / "ck"
    shutil.copytree(tmp_path / "clean", ck)
    if case == "best_truncated":
        named = ck / "best.ckpt"
        _truncate(named)
    else:  # a fit killed after its last epoch: no done.json, last.ckpt overwritten inside
        (ck / "done.json").unlink()
        named = ck / "last.ckpt"
        _overwrite_middle(named, GARBAGE)
    capsys.readouterr()
    m = _fit_tiny(ck)
    _damage_lines(capsys.readouterr().err, named)
    torch.testing.assert_close(m.lin.weight, clean.lin.weight)
    record = json.loads((ck / "fingerprint.json").read_text())["files"]
    assert set(record) == {"best.ckpt", "last.ckpt"}


# ------------------------------------------------------------------------------ permissions
def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_written_files_honour_the_umask(teacher_setup, tmp_path):
    cfg, w, ids, _, _ = teacher_setup
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "files" / "a.json", {"a": 1})
        with atomic_path(tmp_path / "files" / "b.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.arange(3))
        cache.cache_teacher(cfg, w, tmp_path / "cache", ids=ids[:16])
        _fit_tiny(tmp_path / "ck")
        os.umask(0o027)
        write_json(tmp_path / "group" / "c.json", {"c": 1})
    finally:
        os.umask(old)
    modes = {**_modes(tmp_path / "files"), **_modes(tmp_path / "cache" / "teacher"), **_modes(tmp_path / "ck")}
    assert {"a.json", "b.npy", "best.ckpt", "last.ckpt", "done.json", "fingerprint.json"} <= set(modes)
    assert any(k.endswith("features.npy") for k in modes) and any(k.endswith("meta.json") for k in modes)
    assert {k: v for k, v in modes.items() if v != 0o644} == {}
    assert _modes(tmp_path / "group") == {"c.json": 0o640}

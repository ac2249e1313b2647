"""Teacher cache: hit/miss by fingerprint, crash → resume → byte-identical features (tiny Llama)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from cmm_lightning.config import Config
from cmm_lightning.data import make_windows
from cmm_lightning.data.datamodule import LOBDataModule
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.teacher import cache
from cmm_lightning.teacher.extract import CRASH_ENV
from cmm_lightning.teacher.models import build_tiny_llama


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", hidden=32, layers=2, heads=2)


def make_cfg(model: Path, **teacher):
    cfg = OmegaConf.structured(Config)
    cfg.teacher.model = str(model)
    cfg.teacher.batch_size = 8
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.enable_progress_bar = False
    for k, v in teacher.items():
        cfg.teacher[k] = v
    return cfg


def small_windows(seed: int = 3, n: int = 900):
    return make_windows(simulate(n, levels=3, seed=seed), window=32, horizon=10, stride=5)


def test_hit_miss_and_meta(tiny_dir, tmp_path, capsys):
    cfg, w = make_cfg(tiny_dir), small_windows()
    root = tmp_path / "cache"
    first = cache.cache_teacher(cfg, w, root)
    assert not first.hit
    ids = np.flatnonzero(w.split >= 0)
    np.testing.assert_array_equal(first.ids, ids)
    assert first.features.shape == (len(ids), 3, 32) and first.features.dtype == np.float16
    assert isinstance(first.features, np.memmap) and np.isfinite(first.features).all()
    m = first.meta
    assert m["N"] == len(ids) and m["n_layers"] == 2 and m["hidden_size"] == 32 and m["template"] == "v1"
    assert m["windows_per_s"] > 0 and m["tokens_per_s"] > 0 and m["latency_us"] > 0
    assert not list(first.path.glob("shards-*")), "shards are removed after the merge"

    t0 = time.perf_counter()
    again = cache.cache_teacher(cfg, w, root)
    assert again.hit and time.perf_counter() - t0 < 2.0
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))

    # every input of the features changes the key; nothing stale is reused
    fp = first.fingerprint
    assert cache.teacher_fingerprint(make_cfg(tiny_dir, template="v0"), w, root, ids) != fp
    assert cache.teacher_fingerprint(make_cfg(tiny_dir, pooling="last"), w, root, ids) != fp
    other_dtype = "float32" if "bfloat16" in first.meta["dtype"] else "bfloat16"  # auto: bf16 where native
    assert cache.teacher_fingerprint(make_cfg(tiny_dir, dtype=other_dtype), w, root, ids) != fp
    assert cache.teacher_fingerprint(cfg, w, root, ids[:-1]) != fp
    other_data = small_windows(seed=4)
    assert cache.teacher_fingerprint(cfg, other_data, root, np.flatnonzero(other_data.split >= 0)) != fp
    assert cache.teacher_fingerprint(make_cfg(tiny_dir, batch_size=3), w, root, ids) == fp  # speed knob only

    # a template change is a miss with its own features
    v0 = cache.cache_teacher(make_cfg(tiny_dir, template="v0"), w, root, ids=ids[:20])
    assert not v0.hit and v0.features.shape == (20, 3, 32) and v0.path != first.path

    # the stage function prints hit/miss + fingerprint and writes teacher/meta.json
    cfg.run.cache_dir = str(root)
    capsys.readouterr()
    tf = cache.run_cache_teacher(cfg, w, tmp_path / "run")
    out = capsys.readouterr().out
    assert tf.hit and f"cache hit {fp}" in out and "windows/s" in out and str(tf.path) in out
    assert (tmp_path / "run" / "teacher" / "meta.json").is_file()

    # the datamodule serves exactly these rows beside the windows
    dm = LOBDataModule(w, batch_size=16, teacher=tf.features, teacher_ids=tf.ids)
    batch = next(iter(dm.val_dataloader()))
    rows = np.searchsorted(tf.ids, batch["index"].numpy())
    np.testing.assert_array_equal(batch["teacher"].numpy(), np.asarray(tf.features[rows], dtype=np.float32))


# A child process cannot import this module: its script gets make_cfg / small_windows as source
# (the same inputs, so the same fingerprint) and the package API for the rest.
PRELUDE = "\n".join([
    "from __future__ import annotations",  # the sources' annotations stay unevaluated
    "import sys, torch",
    "torch.set_num_threads(1)",
    "from omegaconf import OmegaConf",
    "from cmm_lightning.config import Config",
    "from cmm_lightning.data import make_windows",
    "from cmm_lightning.data.synthetic import simulate",
    "from cmm_lightning.teacher.cache import cache_teacher",
    "",
    inspect.getsource(make_cfg),
    inspect.getsource(small_windows),
])

SCRIPT = PRELUDE + """
cache_teacher(make_cfg(sys.argv[1]), small_windows(), sys.argv[2])
"""


def test_crash_then_resume_is_byte_identical(tiny_dir, tmp_path):
    script = tmp_path / "run_cache.py"
    script.write_text(SCRIPT)
    root = tmp_path / "crashy"
    env = {**os.environ, CRASH_ENV: "2", "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run([sys.executable, str(script), str(tiny_dir), str(root)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 17, crashed.stderr[-2000:]
    (folder,) = (root / "teacher").iterdir()
    (shards,) = folder.glob("shards-*")
    assert len(list(shards.glob("shard_0_*.ids.npy"))) == 3  # 2 finished + the ids of the killed one
    assert len([p for p in shards.glob("shard_0_*.npy") if not p.name.endswith(".ids.npy")]) == 2
    assert list(shards.glob(".shard_*.tmp")), "the kill left a half-written temp file"
    assert not (folder / "meta.json").exists() and not (folder / "features.npy").exists()

    # resume here (another process than the one that wrote the first shards)
    resumed = cache.cache_teacher(make_cfg(tiny_dir), small_windows(), root)
    assert not resumed.hit and resumed.meta["resumed_batches"] == 2 and resumed.meta["batches"] > 2

    clean = cache.cache_teacher(make_cfg(tiny_dir), small_windows(), tmp_path / "clean")
    assert clean.meta["resumed_batches"] == 0 and clean.path.name == folder.name
    assert (folder / "features.npy").read_bytes() == (clean.path / "features.npy").read_bytes()
    assert (folder / "ids.npy").read_bytes() == (clean.path / "ids.npy").read_bytes()


DDP_SCRIPT = PRELUDE + """
cfg = make_cfg(sys.argv[1])
cfg.trainer.strategy, cfg.trainer.devices = "ddp", 2
tf = cache_teacher(cfg, small_windows(), sys.argv[2])
print("WORLD", tf.meta["world_size"], tf.features.shape[0], flush=True)
"""


@pytest.mark.slow
def test_ddp_two_cpu_ranks_match_single_process(tiny_dir, tmp_path):
    """Under DDP (2 CPU processes, gloo) each rank writes its own shards; rank 0 merges."""
    script = tmp_path / "run_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    out = subprocess.run([sys.executable, str(script), str(tiny_dir), str(tmp_path / "ddp")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WORLD 2" in out.stdout
    single = cache.cache_teacher(make_cfg(tiny_dir), small_windows(), tmp_path / "single")
    (folder,) = (tmp_path / "ddp" / "teacher").iterdir()
    assert folder.name == single.path.name
    assert (folder / "features.npy").read_bytes() == (single.path / "features.npy").read_bytes()

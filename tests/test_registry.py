"""Registries: every choice made by name is checked at config load (exit 2, the closest name, before
anything heavy is imported), and users add their own from a plugin module (``run.plugins``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cmm_lightning.config import load_config
from cmm_lightning.errors import CMMInputError
from cmm_lightning.registry import REGISTRIES, Registry

ROOT = Path(__file__).resolve().parents[1]

MISSPELT = {  # key -> (bad value, the closest registered choice)
    "market.policies": ("[cmm,fixed_sprad]", "fixed_spread"),
    "students.encoder": ("tcnn", "tcn"),
    "moe.mode": ("hajek_gat", "hajek_gate"),
    "market.fill_model": ("hftbacktes", "hftbacktest"),
    "logger.kind": ("wandbb", "wandb"),
    "teacher.model": ("smollm2-135m", "smollm2-135m-instruct"),
}


def test_every_registry_is_checked_at_config_load():
    assert set(MISSPELT) == set(REGISTRIES)
    for key, (bad, close) in MISSPELT.items():
        with pytest.raises(CMMInputError, match=f"did you mean '{close}'"):
            load_config(None, [f"{key}={bad}"])
    # teacher.model also takes paths and hub ids: a path must exist, a hub id not in the local
    # Hugging Face cache is downloaded only when asked for (never here)
    load_config(None, ["teacher.model=HuggingFaceTB/SmolLM2-135M-Instruct", "teacher.allow_download=true"])
    load_config(None, [f"teacher.model={ROOT}"])


def test_a_misspelt_policy_fails_at_once_from_the_cli():
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "cmm_lightning", "fit", "market.policies=[cmm,avelaneda_stoikov]"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    took = time.perf_counter() - t0
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: config: market.policies='avelaneda_stoikov' is not a registered choice; did you mean "
        "'avellaneda_stoikov'?"]
    assert took < 30  # seconds, not a training run (it fails before torch is imported: ~1 s idle)


def test_registry_lazy_entries_and_decorator():
    r = Registry("x.kind", {"a": "cmm_lightning.market.episodes:episode_bounds"})
    assert "a" in r and r.names() == ("a",)
    from cmm_lightning.market.episodes import episode_bounds

    assert r.get("a") is episode_bounds  # imported on first use

    @r.register("b")
    def b():
        return 1

    assert r.get("b") is b and r.names() == ("a", "b")
    with pytest.raises(CMMInputError, match="x.kind='c' is not a registered choice"):
        r.get("c")
    r.register("broken", "no_such_module_xyz:thing")
    with pytest.raises(CMMInputError, match="cannot import 'no_such_module_xyz:thing'"):
        r.get("broken")


PLUGIN = '''
"""A user's own encoder and policy, registered from outside the repository."""
import numpy as np

from cmm_lightning.registry import ENCODERS, POLICIES, PolicySpec
from cmm_lightning.students.encoders import TCNEncoder


@ENCODERS.register("wide_tcn")
class WideTCN(TCNEncoder):
    def __init__(self, n_students, window, n_features, hidden=48, channels=24, kernel=8):
        super().__init__(n_students, window, n_features, hidden=hidden, channels=2 * channels, kernel=kernel)


def momentum(run):
    """Predict the last mid move again, the mean spread, the mean volume."""
    w = run.windows
    y = w.targets[w.indices("train")].mean(0)
    out = np.tile(y, (len(w.end), 1)).astype(np.float32)
    out[:, 0] = w.book.mid[w.end] - w.book.mid[w.end - w.horizon]
    return out


POLICIES.register("momentum", PolicySpec("prediction", "my_cmm_plugin:momentum"))
'''


def test_a_plugin_module_registers_an_encoder_and_a_policy(tmp_path):
    (tmp_path / "my_cmm_plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["students.encoder=wide_tcn", "market.policies=[cmm,momentum]"]
    p = subprocess.run([sys.executable, "-m", "cmm_lightning", "fit", "--print-config", *args],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and "students.encoder='wide_tcn' is not a registered choice" in p.stderr
    p = subprocess.run([sys.executable, "-m", "cmm_lightning", "fit", "--print-config", "run.plugins=[my_cmm_plugin]",
                        *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "encoder: wide_tcn" in p.stdout and "- momentum" in p.stdout
    code = textwrap.dedent('''
        import numpy as np
        from cmm_lightning.compare import family
        from cmm_lightning.config import load_config
        from cmm_lightning.registry import POLICIES, load
        from cmm_lightning.students.encoders import build_encoder
        cfg = load_config(None, ["run.plugins=[my_cmm_plugin]", "students.encoder=wide_tcn"])
        enc = build_encoder(cfg.students.encoder, 3, 32, 23, hidden=8, channels=4, kernel=8)
        assert type(enc).__name__ == "WideTCN" and enc.channels == 8
        assert family("momentum") == "prediction"
        print("ok", POLICIES.spec("momentum").predictions)
    ''')
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0 and "ok my_cmm_plugin:momentum" in p.stdout, p.stderr

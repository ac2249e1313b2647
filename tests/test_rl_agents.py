"""PPO agents (stable-baselines3) on the market env: token training, weights-only checkpoint,
fingerprint skip, and a planted pickle payload that never runs."""

import tempfile

import numpy as np
import pytest

from cmm_lightning.config import load_config
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.data.windows import make_windows
from cmm_lightning.market import run_backtest
from cmm_lightning.market.rl import load_agent, rl_policies, train_agent
from cmm_lightning.market.rl_env import RLTask, rl_signals

TOKEN = ["market.episode_length=300", "market.base_size=50", "rl.episode_length=200", "rl.timesteps=256",
         "rl.n_envs=4", "rl.n_steps=32", "rl.batch_size=64", "rl.n_epochs=1", "rl.eval_freq=128",
         "rl.net_arch=[16]", "trainer.enable_progress_bar=false", "run.seed=3"]


@pytest.fixture(scope="module")
def windows():
    return make_windows(simulate(n_snapshots=4000, levels=2, seed=5), window=8, horizon=4, stride=4)


def test_ppo_trains_checkpoints_and_skips(windows, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger
    from stable_baselines3 import PPO

    cfg = load_config(overrides=TOKEN)
    task = RLTask(windows, cfg)
    logger = CSVLogger(save_dir=str(tmp_path), name="logs", version="fit")
    model = train_agent("rl_ppo", task, cfg, tmp_path, logger=logger)
    ckpt, meta = tmp_path / "rl" / "rl_ppo.safetensors", tmp_path / "rl" / "rl_ppo.json"
    assert ckpt.is_file() and meta.is_file() and sorted(p.name for p in (tmp_path / "rl").iterdir()) == [
        "rl_ppo.json", "rl_ppo.safetensors"]  # weights only: no SB3 zip, no best_model.zip left behind
    import json

    info = json.loads(meta.read_text())
    assert info["fingerprint"] == task.fingerprint("rl_ppo", 3) and info["timesteps_trained"] >= 256
    assert info["n_evals"] >= 1 and np.isfinite(info["best_val_reward"])
    logged = (tmp_path / "logs" / "fit" / "metrics.csv").read_text()
    assert "rl/rl_ppo/eval/mean_reward" in logged

    # the checkpoint reloads to the same deterministic policy
    obs = task.vec_env("val").reset()
    again = load_agent(ckpt, task, cfg)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])

    # same fingerprint: loaded, not retrained
    def boom(*a, **k):
        raise AssertionError("retrained although the fingerprint matched")

    monkeypatch.setattr(PPO, "learn", boom)
    skipped = train_agent("rl_ppo", task, cfg, tmp_path)
    act = lambda m: m.predict(obs, deterministic=True)[0]
    np.testing.assert_array_equal(act(skipped), act(again))
    # a changed setting changes the fingerprint: retrained
    cfg2 = load_config(overrides=TOKEN + ["rl.inventory_penalty=0.1"])
    assert RLTask(windows, cfg2).fingerprint("rl_ppo", 3) != info["fingerprint"]
    with pytest.raises(AssertionError, match="retrained"):
        train_agent("rl_ppo", RLTask(windows, cfg2), cfg2, tmp_path)
    monkeypatch.undo()

    # the agent's signals go through the same backtest as any policy
    sig = rl_signals(model, task, "test")
    _, dec = task.decisions("test")
    assert sig.shape == (len(dec), 4) and np.isfinite(sig).all()
    assert set(np.unique(sig[:, 1])) <= {2.0, 4.0, 6.0, 8.0}  # ŝ = 2δ, δ from the grid
    res = run_backtest(windows.book, dec, sig, cfg.market)
    assert np.isfinite(res.metrics["pnlmap"])


def test_rl_policies_with_cmm_predictions(windows, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where SB3 would make its folder
    (tmp_path / "tmp").mkdir()
    cfg = load_config(overrides=TOKEN + ["rl.action=continuous"])
    preds = windows.targets.astype(np.float64)  # stand-in for the exported CMM's predictions
    out = rl_policies(windows, cfg, tmp_path, preds=preds)  # no logger: nothing left in the temp folder
    assert list((tmp_path / "tmp").glob("SB3-*")) == []
    assert list(out) == ["rl_ppo", "cmm_rl"]
    n_test = len(windows.indices("test"))
    for sig in out.values():
        assert sig.shape == (n_test, 4) and np.isfinite(sig).all()
        assert (sig[:, 1] >= 2.0 - 1e-9).all() and (sig[:, 1] <= 8.0 + 1e-9).all()
    tasks = {"rl_ppo": RLTask(windows, cfg), "cmm_rl": RLTask(windows, cfg, preds=preds)}
    agents = {n: load_agent(tmp_path / "rl" / f"{n}.safetensors", t, cfg) for n, t in tasks.items()}
    assert agents["cmm_rl"].observation_space.shape[0] == agents["rl_ppo"].observation_space.shape[0] + 3


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_agent_never_runs_code(windows, tmp_path):
    import json
    import pickle
    import zipfile

    cfg = load_config(overrides=TOKEN)
    task = RLTask(windows, cfg)
    rl, marker = tmp_path / "rl", tmp_path / "PWNED"
    rl.mkdir()
    payload = pickle.dumps(_Payload(marker))
    # planted where the agent lives, with the matching fingerprint: the weights file, and SB3's zip
    # format (a cloudpickled entry) that older versions wrote and loaded with PPO.load
    (rl / "rl_ppo.safetensors").write_bytes(payload)
    with zipfile.ZipFile(rl / "rl_ppo.zip", "w") as z:
        z.writestr("data", payload)
    (rl / "rl_ppo.json").write_text(json.dumps({"fingerprint": task.fingerprint("rl_ppo", 3)}))
    with pytest.raises(ValueError, match="not a weights-only agent"):
        load_agent(rl / "rl_ppo.safetensors", task, cfg)
    agent = train_agent("rl_ppo", task, cfg, tmp_path)  # damaged: trained again, nothing executed
    assert not marker.exists()
    obs = task.vec_env("val").reset()
    np.testing.assert_array_equal(agent.predict(obs, deterministic=True)[0],
                                  load_agent(rl / "rl_ppo.safetensors", task, cfg).predict(obs, deterministic=True)[0])

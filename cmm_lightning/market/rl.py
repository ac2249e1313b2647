"""The RL baselines ``rl_ppo`` and ``cmm_rl``: SB3 PPO agents trained on ``rl_env.py``'s environments.

* **Training** (:func:`train_agent`): SB3 PPO on random H-row segments of the train split,
  validation-split early stopping (``EvalCallback`` on the val split's backtest episodes +
  ``StopTrainingOnNoModelImprovement``), the best evaluation's policy kept; checkpoint
  ``run_dir/rl/<name>.safetensors`` (the policy's weights only: loading runs no code) +
  ``<name>.json`` (fingerprint, summary); an agent with the same fingerprint is loaded, not retrained.
* **Backtest** (:func:`rl_policies`): the agents' deterministic actions on the split's episodes
  as signals [D, 4] (``rl_env.rl_signals``), scored by ``run_backtest`` like every policy.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.logger import KVWriter

from ..io import atomic_path
from ..training import mark_done, reusable
from .rl_env import RLTask, rl_signals

class _LightningWriter(KVWriter):
    """SB3 ``KVWriter`` that forwards numeric scalars to a Lightning logger as ``rl/<name>/<key>``."""

    def __init__(self, logger, name: str):
        self.logger, self.name = logger, name

    def write(self, key_values, key_excluded, step=0) -> None:
        m = {f"rl/{self.name}/{k}": float(v) for k, v in key_values.items()
             if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        if m:
            self.logger.log_metrics(m, step=int(step))

    def close(self) -> None:
        pass


def _ppo_kwargs(cfg, n_envs: int) -> dict:
    rl = cfg.rl
    n_steps = int(rl.n_steps)
    return dict(n_steps=n_steps, batch_size=int(min(rl.batch_size, n_steps * n_envs)), n_epochs=int(rl.n_epochs),
                learning_rate=float(rl.learning_rate), gamma=float(rl.gamma), ent_coef=float(rl.ent_coef),
                policy_kwargs=dict(net_arch=[int(h) for h in rl.net_arch]))


def _policy(task: RLTask, cfg):
    """A fresh SB3 ``ActorCriticPolicy`` of the agents' architecture for ``task``'s spaces."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    return ActorCriticPolicy(task.observation_space, task.action_space, lambda _: 0.0,
                             net_arch=[int(h) for h in cfg.rl.net_arch])


def save_agent(policy, path) -> None:
    """The policy's weights only, as safetensors (no pickle: loading runs no code)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(tmp))


def load_agent(path, task: RLTask, cfg):
    """An agent saved by :func:`save_agent`: the policy rebuilt from the config, its weights loaded
    from safetensors; ``predict(obs, deterministic=True)`` as SB3's. A file that is not valid
    safetensors (damaged, or planted) raises ``ValueError``: nothing in it is executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    policy = _policy(task, cfg)
    try:
        policy.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise ValueError(f"{path}: not a weights-only agent ({str(e).splitlines()[0]})") from None
    return policy.eval()


def train_agent(name: str, task: RLTask, cfg, run_dir, logger=None):
    """PPO agent ``name`` on ``task``'s train split, early-stopped on its val split.

    Reused when ``run_dir/rl/<name>.safetensors`` exists with the same fingerprint in
    ``<name>.json``. Returns the policy of the best validation evaluation. Agents are stored as
    weights only (safetensors) and the best one is kept in memory, never as SB3's pickled zip:
    loading an agent never unpickles anything.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, StopTrainingOnNoModelImprovement
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecMonitor

    seed = int(cfg.run.seed)
    out = Path(run_dir) / "rl"
    ckpt, meta_path = out / f"{name}.safetensors", out / f"{name}.json"
    fp = task.fingerprint(name, seed)
    if reusable(meta_path, fp, ckpt):
        try:
            agent = load_agent(ckpt, task, cfg)
            print(f"{name}: reusing {ckpt} (same fingerprint {fp})")
            return agent
        except ValueError as e:
            print(f"{name}: {e}; training it again")

    import torch

    class KeepBest(BaseCallback):  # on each new best val evaluation: the policy weights, in memory
        best, at = None, 0

        def _on_step(self) -> bool:
            self.best = {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()}
            self.at = int(self.model.num_timesteps)
            return True

    t0 = time.perf_counter()
    train_env = VecMonitor(task.vec_env("train", training=True))
    val_env = VecMonitor(task.vec_env("val"))
    n_envs = train_env.num_envs
    model = PPO("MlpPolicy", train_env, seed=seed, device="cpu", verbose=0, **_ppo_kwargs(cfg, n_envs))
    # our own logger, also without one: SB3's default makes an empty /tmp/SB3-<time> folder per run
    model.set_logger(Logger(folder=None, output_formats=[_LightningWriter(logger, name)] if logger else []))
    keep = KeepBest()
    stop = StopTrainingOnNoModelImprovement(max_no_improvement_evals=int(cfg.rl.patience), min_evals=1)
    evalcb = EvalCallback(val_env, n_eval_episodes=val_env.num_envs, eval_freq=max(1, int(cfg.rl.eval_freq) // n_envs),
                          best_model_save_path=None, callback_on_new_best=keep, deterministic=True, verbose=0,
                          callback_after_eval=stop, warn=False)
    progress = bool(cfg.trainer.enable_progress_bar)
    model.learn(total_timesteps=int(cfg.rl.timesteps), callback=evalcb, progress_bar=progress)
    trained, n_evals = int(model.num_timesteps), evalcb.n_calls // evalcb.eval_freq
    if keep.best is not None:  # early stopping keeps the best validation evaluation
        model.policy.load_state_dict(keep.best)
    save_agent(model.policy, ckpt)
    summary = {"name": name, "algo": "PPO (stable-baselines3)", "seed": seed, "format": "safetensors (weights only)",
               "net_arch": [int(h) for h in cfg.rl.net_arch], "timesteps_trained": trained,
               "best_at_timesteps": keep.at if keep.best is not None else trained, "n_evals": int(n_evals),
               "best_val_reward": float(evalcb.best_mean_reward), "stopped_early": trained < int(cfg.rl.timesteps),
               "obs_dim": int(task.observation_space.shape[0]), "action": str(cfg.rl.action),
               "n_envs": int(n_envs), "train_s": round(time.perf_counter() - t0, 3),
               "torch_threads": torch.get_num_threads()}
    mark_done(meta_path, fp, ckpt, **summary)  # records the weights file's size and digest
    if logger:
        logger.log_metrics({f"rl/{name}/best_val_reward": summary["best_val_reward"],
                            f"rl/{name}/train_s": summary["train_s"]}, step=trained)
        if hasattr(logger, "save"):
            logger.save()
    return load_agent(ckpt, task, cfg)


def rl_policies(windows, cfg, run_dir, preds: np.ndarray | None = None, logger=None,
                split: str = "test") -> dict[str, np.ndarray]:
    """What the pipeline calls: train (or load) ``rl_ppo`` and, given CMM ``preds`` [W, 3],
    ``cmm_rl``; returns their signals [D, 4] for ``split`` (``run_policies`` input); {} when
    ``rl.enabled`` is off."""
    out = {}
    if not cfg.rl.enabled:
        return out
    for name, p in (("rl_ppo", None), ("cmm_rl", preds)):
        if name == "cmm_rl" and p is None:
            continue
        task = RLTask(windows, cfg, preds=p)
        out[name] = rl_signals(train_agent(name, task, cfg, run_dir, logger), task, split)
    return out

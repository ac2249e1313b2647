"""RL environment throughput: env-steps/s of the vectorised market env on ONE CPU core.

    python benchmarks/rl_env_throughput.py [--envs 1 64 256 1024] [--seconds 2] [--snapshots 40000]

The embedded synthetic market (default config) with the train split's H-row training segments.
Per ``--envs`` size it times full SB3 ``VecEnv`` steps (``step_async`` + ``step_wait``: signals from
actions, one numba call for quote → submit → advance of every env, rewards, observations, infos,
auto-resets) with pre-drawn random actions, and the numba step alone (``step_signals``). The
baseline, measured in the same run, is the plain ``gymnasium.Env`` (:class:`MarketMakingEnv`),
one step per Python call; the ratio column is env-steps/s over that baseline. The process is
pinned to one core (``os.sched_setaffinity``) where the OS allows it. Target: >= 1e5 env-steps/s.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cmm_lightning.config import load_config
from cmm_lightning.data import build_windows
from cmm_lightning.market.rl_env import RLTask


def rate(fn, n_per_call: int, seconds: float) -> float:
    fn()  # warm (compiles on the first call)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls * n_per_call / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, nargs="+", default=[1, 64, 256, 1024])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--snapshots", type=int, default=40_000)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        pinned = "pinned to 1 core"
    except (AttributeError, OSError):
        pinned = "not pinned"
    cfg = load_config(overrides=[f"data.synthetic.n_snapshots={args.snapshots}"])
    w = build_windows(cfg.data)
    task = RLTask(w, cfg)
    print(f"synthetic book {w.book.n:,} snapshots, train decisions {len(w.indices('train')):,}, "
          f"obs dim {task.observation_space.shape[0]}, action {cfg.rl.action}; {pinned}")

    env = task.env("train", training=True)
    env.reset(seed=0)
    acts = [env.action_space.sample() for _ in range(1024)]
    k = [0]

    def single():
        _, _, done, _, _ = env.step(acts[k[0] % 1024])
        k[0] += 1
        if done:
            env.reset()

    base = rate(single, 1, args.seconds)
    print(f"{'baseline gymnasium.Env':<28}{base:>14,.0f} env-steps/s")
    print(f"{'n_envs':>8}{'VecEnv step/s':>18}{'ratio':>10}{'numba step/s':>18}{'us / vec step':>16}")
    for n in args.envs:
        v = task.vec_env("train", n_envs=n, training=True)
        v.seed(0)
        v.reset()
        pool = np.stack([v.action_space.sample() for _ in range(64 * n)]).reshape(64, n, -1)
        sigs = [task.signals(a) for a in pool[:8]]
        i = [0]

        def vec():
            v.step_async(pool[i[0] % 64])
            v.step_wait()
            i[0] += 1

        def kernel():
            v.step_signals(sigs[i[0] % 8])
            i[0] += 1

        r_vec = rate(vec, n, args.seconds)
        r_ker = rate(kernel, n, args.seconds)
        print(f"{n:>8}{r_vec:>18,.0f}{r_vec / base:>9.1f}x{r_ker:>18,.0f}{1e6 * n / r_vec:>16.1f}")
    print("target: >= 100,000 env-steps/s (VecEnv column)")


if __name__ == "__main__":
    main()

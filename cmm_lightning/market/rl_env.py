"""The RL market-making environments, on the backtest engine itself (docs/method.md, "Baselines"): one engine, two doors.

A gymnasium environment (:class:`MarketMakingEnv`, one episode) and an SB3 ``VecEnv``
(:class:`MarketMakingVecEnv`, many episodes stepped in one numba call) drive the SAME kernels as
:func:`~.engine.run_backtest` (``quote`` → ``submit`` → ``advance``); nothing of the fill model
is copied here. Episodes, decision rows and metrics are those of the backtest.

* **Decision step k** at row ``d_k`` (a window end of the split). Observation
  ``o_k = [z(x_k), q_k / limit, τ_k]``: ``x_k`` the window summary the students see (the last
  snapshot's F = 4L+3 features and 5 window statistics: realised vol, mean spread, log total
  volume, mid move over the window, mean imbalance), ``z`` standardisation with TRAIN mean/std
  (clipped to ±10), ``τ_k = min(1, (t_end − d_k) / H)`` the time left (H = ``market.episode_length``
  or ``rl.episode_length`` rows). ``cmm_rl`` appends the standardised frozen CMM predictions
  ``z(ŷ_k)`` (mid, spread, volume).
* **Action** ``(o, δ)`` = reservation offset and half-spread in ticks: ``rl.action=discrete`` picks
  from the grids ``rl.offsets × rl.half_spreads`` (``MultiDiscrete``), ``continuous`` maps
  ``a ∈ [−1, 1]²`` linearly onto ``[min, max]`` of each grid. It becomes the quoting rule's signals
  ``(m̂, ŝ, v̂, η) = (o, 2δ/c, base_size, market.eta)``, i.e. ``p = mid + o − η·q``, half-spread δ.
* **Reward** (ticks per base clip ``b`` = ``market.base_size``), Cartea–Jaimungal running
  inventory penalty sampled at decision times (quadratic)::

      r_k = (E_{k+1} − E_k) / (b · tick) − φ · (q_{k+1} / b)²      φ = rl.inventory_penalty

  with ``E`` the equity marked to mid (currency), so Σ_k (E_{k+1} − E_k) = EPnL of the episode.
* **Backtest** (:func:`rl_signals`): the deterministic policy is rolled out on the split's
  episodes and its actions returned as signals ``[D, 4]``; ``run_backtest`` on them replays the
  identical path, so ``rl_ppo`` / ``cmm_rl`` sit in the same results table as every policy.

Training the agents on these environments: ``rl.py``.
"""

from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numba import njit
from stable_baselines3.common.vec_env import VecEnv

from ..errors import CMMInputError
from .engine import Engine, advance, decide, default_end_row, equity, fills_table, inventory, restart, submit
from .episodes import episode_bounds, resolve_episode_length, typical_rows

OBS_VERSION = "rl-obs-v1"
N_STATS = 5  # window statistics appended to the last snapshot's features


# --------------------------------------------------------------------------- observations
def window_summary(windows, idx: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[B, F + 5] float64: last snapshot's features + (rv, mean spread, log volume, Δmid, mean imb)."""
    L = windows.book.levels
    out = np.empty((len(idx), windows.n_features + N_STATS))
    for s in range(0, len(idx), chunk):
        x = windows.inputs(idx[s:s + chunk]).astype(np.float64)  # [B, T, F], prices rel. to mid now
        o = out[s:s + chunk]
        o[:, :-N_STATS] = x[:, -1]
        o[:, -5] = windows.realized_vol[idx[s:s + chunk]]
        o[:, -4] = (x[:, :, L] - x[:, :, 0]).mean(1)  # ask1 − bid1
        o[:, -3] = np.log1p(np.expm1(x[:, :, 4 * L]).sum(1))
        o[:, -2] = -0.5 * (x[:, 0, 0] + x[:, 0, L])  # mid now − mid at the window start
        o[:, -1] = x[:, :, 4 * L + 2].mean(1)
    return out


def _standardize(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu, sd = train.mean(0), train.std(0)
    return np.clip((x - mu) / np.where(sd > 1e-9, sd, 1.0), -10, 10).astype(np.float32)


class RLTask:
    """Everything the environments need for one book: decisions, observation tables, episodes.

    ``cfg`` is the full config (``cfg.market``, ``cfg.rl``); ``preds`` [W, 3] the frozen CMM
    predictions aligned with window ids (``cmm_rl``), or None (``rl_ppo``).
    """

    def __init__(self, windows, cfg, preds: np.ndarray | None = None):
        self.windows, self.book = windows, windows.book
        self.market, self.rl = cfg.market, cfg.rl
        self.tick = float(self.book.tick_size)
        ids = np.flatnonzero(windows.split >= 0)
        feats = window_summary(windows, ids)
        table = np.zeros((len(windows.end), feats.shape[1]), np.float32)
        train = windows.split[ids] == 0
        table[ids] = _standardize(feats, feats[train])
        if preds is not None:
            preds = np.asarray(preds, np.float64)
            if preds.shape != (len(windows.end), 3) or not np.isfinite(preds[ids]).all():
                raise CMMInputError(f"cmm_rl: preds must be finite [W={len(windows.end)}, 3], got {preds.shape}")
            table = np.concatenate([table, np.zeros((len(table), 3), np.float32)], 1)
            table[ids, -3:] = _standardize(preds[ids], preds[ids][train])
        self.table, self.preds = table, preds
        self.episode_length = self.market.episode_length  # rows, a duration, "auto" or None
        if self.episode_length == "auto":  # the test split in market.n_episodes parts (as the pipeline)
            _, dec = self.decisions("test")
            self.episode_length = resolve_episode_length("auto", default_end_row(dec, self.book.n) - int(dec[0]),
                                                         int(self.market.n_episodes))
        if isinstance(self.episode_length, str):  # a duration: its typical rows on the train split
            _, dec = self.decisions("train")
            self.horizon = typical_rows(episode_bounds(int(dec[0]), default_end_row(dec, self.book.n),
                                                       self.episode_length, ts=self.book.ts))
        else:
            self.horizon = int(self.episode_length or self.rl.episode_length)
        self.limit = float(self.market.inventory_limit)
        self.base = float(self.market.base_size)
        self.c = float(self.market.spread_mult)
        self.eta = float(self.market.eta)
        self.offsets = np.asarray(self.rl.offsets, np.float64)
        self.half_spreads = np.asarray(self.rl.half_spreads, np.float64)
        if len(self.offsets) == 0 or len(self.half_spreads) == 0 or self.half_spreads.min() <= 0:
            raise CMMInputError("config: rl.offsets and rl.half_spreads need values, half-spreads > 0")
        self.observation_space = spaces.Box(-np.inf, np.inf, (table.shape[1] + 2,), np.float32)
        if self.rl.action == "discrete":
            self.action_space = spaces.MultiDiscrete([len(self.offsets), len(self.half_spreads)])
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    # ------------------------------------------------------------------ layout
    def decisions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(window ids, decision rows) of ``split``, as the backtest takes them."""
        idx = self.windows.indices(split)
        return idx, self.windows.end[idx].astype(np.int64)

    def episodes(self, split: str, training: bool = False) -> np.ndarray:
        """[E, 4] (start row, first decision j, end decision j, end row), j into the split's decisions.

        Scoring: exactly :func:`run_backtest`'s episodes. Training: one H-row segment starting at
        each decision whose segment fits in the split (random starts give varied episodes).
        """
        _, dec = self.decisions(split)
        end = default_end_row(dec, self.book.n)
        if training:
            lo = np.flatnonzero(dec + self.horizon <= end)
            lo = lo if len(lo) else np.array([0])
            s = dec[lo]
            t = np.minimum(s + self.horizon, end)
        else:
            eps = episode_bounds(int(dec[0]), end, self.episode_length, ts=self.book.ts,
                                 cuts=self.book.meta.get("day_start"))
            s, t = eps[:, 0], eps[:, 1]
            lo = np.searchsorted(dec, s)
        hi = np.searchsorted(dec, t)
        ok = hi > lo
        return np.stack([s[ok], lo[ok], hi[ok], t[ok]], 1).astype(np.int64)

    def signals(self, actions) -> np.ndarray:
        """Actions [n, 2] → quoting-rule signals [n, 4] = (o, 2δ/c, base_size, η)."""
        a = np.asarray(actions).reshape(-1, 2)
        if self.rl.action == "discrete":
            off, hs = self.offsets[a[:, 0].astype(np.int64)], self.half_spreads[a[:, 1].astype(np.int64)]
        else:
            u = np.clip(a.astype(np.float64), -1.0, 1.0)
            o0, o1 = self.offsets.min(), self.offsets.max()
            h0, h1 = self.half_spreads.min(), self.half_spreads.max()
            off = o0 + 0.5 * (u[:, 0] + 1.0) * (o1 - o0)
            hs = h0 + 0.5 * (u[:, 1] + 1.0) * (h1 - h0)
        sig = np.empty((len(a), 4))
        sig[:, 0], sig[:, 1], sig[:, 2], sig[:, 3] = off, 2.0 * hs / self.c, self.base, self.eta
        return sig

    def observe(self, split_idx: np.ndarray, j, inv, time_left) -> np.ndarray:
        """[n, K+2] float32 observations for decisions ``j`` of a split (window ids ``split_idx``)."""
        j = np.atleast_1d(j)
        obs = np.empty((len(j), self.table.shape[1] + 2), np.float32)
        obs[:, :-2] = self.table[split_idx[j]]
        obs[:, -2] = np.asarray(inv) / self.limit
        obs[:, -1] = time_left
        return obs

    def reward(self, pnl_ticks, inv) -> np.ndarray:
        """r = ΔE/(b·tick) − φ·(q/b)², ΔE in ticks×shares (engine units)."""
        return np.asarray(pnl_ticks) / self.base - float(self.rl.inventory_penalty) * (np.asarray(inv) / self.base) ** 2

    def fingerprint(self, name: str, seed: int) -> str:
        """Hash of data + windows, observation spec, CMM predictions, market + RL config, seed."""
        from omegaconf import OmegaConf
        import stable_baselines3

        conf = lambda c: OmegaConf.to_container(c, resolve=True) if OmegaConf.is_config(c) else dict(vars(c))
        rl = {k: v for k, v in conf(self.rl).items() if k != "enabled"}
        market = {k: v for k, v in conf(self.market).items() if k != "policies"}
        h = hashlib.sha256()
        h.update(json.dumps([name, OBS_VERSION, self.windows.fingerprint(), market, rl, int(seed),
                             stable_baselines3.__version__], sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(self.windows.split).tobytes())  # which windows train / validate
        if self.preds is not None:
            h.update(np.ascontiguousarray(self.preds).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ doors
    def env(self, split: str = "train", training: bool = False, log_fills: bool = False) -> "MarketMakingEnv":
        return MarketMakingEnv(self, split, training, log_fills)

    def vec_env(self, split: str = "train", n_envs: int | None = None, training: bool = False
                ) -> "MarketMakingVecEnv":
        return MarketMakingVecEnv(self, split, n_envs, training)


# --------------------------------------------------------------------------- kernels
@njit(cache=True, inline="always")
def _start(bk, prm, fs, is_, pi, pf, dec, eps, ep, log_i, log_f, no_eq):
    """Episode ``ep`` from flat at its start row, advanced through its first decision row
    (as ``run_engine``; the fills log keeps counting). Returns (first decision j, logs)."""
    restart(fs, is_, eps[ep, 0])
    j = eps[ep, 1]
    log_i, log_f = advance(bk, prm, fs, is_, pi, pf, dec[j] + 1, log_i, log_f, no_eq, no_eq, 0)
    return j, log_i, log_f


@njit(cache=True)
def _reset_envs(bk, prm, FS, IS, PI, PF, dec, eps, env_ep, env_j, eq, log_i, log_f):
    no_eq = np.zeros(0)
    for e in range(FS.shape[0]):
        env_j[e], log_i, log_f = _start(bk, prm, FS[e], IS[e], PI[e], PF[e], dec, eps, env_ep[e], log_i, log_f,
                                        no_eq)
        d = dec[env_j[e]]
        eq[e] = equity(FS[e], 0.5 * (bk[1][d, 0] + bk[3][d, 0]))
    return log_i, log_f


@njit(cache=True)
def _step_envs(bk, prm, FS, IS, PI, PF, dec, dec_ts, eps, env_ep, env_j, eq, sig, next_ep, pnl, inv, mark, done,
               log_i, log_f):
    """One decision step of every env, exactly ``run_engine``'s: ``decide`` (quoting rule +
    inventory rule) → ``submit`` → ``advance`` to the next decision row (or the episode's end),
    mark to mid. Finished envs restart on ``next_ep``. Engine units (ticks, ticks x shares)."""
    bpx, apx = bk[1], bk[3]
    no_eq = np.zeros(0)
    for e in range(FS.shape[0]):
        ep, j = env_ep[e], env_j[e]
        d, t = dec[j], dec_ts[j]
        bp, bs, ap, as_, log_i, log_f = decide(bk, prm, FS[e], IS[e], PI[e], PF[e], d, t, sig[e, 0], sig[e, 1],
                                               sig[e, 2], sig[e, 3], False, log_i, log_f)
        submit(bk, prm, FS[e], IS[e], PI[e], PF[e], d, bp, bs, ap, as_, t)
        fin = j + 1 >= eps[ep, 2]
        r1 = eps[ep, 3] if fin else dec[j + 1] + 1
        log_i, log_f = advance(bk, prm, FS[e], IS[e], PI[e], PF[e], r1, log_i, log_f, no_eq, no_eq, 0)
        now = equity(FS[e], 0.5 * (bpx[r1 - 1, 0] + apx[r1 - 1, 0]))
        pnl[e], inv[e], mark[e], done[e] = now - eq[e], inventory(FS[e]), now, fin
        eq[e] = now
        if fin:
            env_ep[e] = next_ep[e]
            env_j[e], log_i, log_f = _start(bk, prm, FS[e], IS[e], PI[e], PF[e], dec, eps, next_ep[e], log_i,
                                            log_f, no_eq)
            eq[e] = 0.0  # flat: no order is live before the first decision acts
        else:
            env_j[e] = j + 1
    return log_i, log_f


# --------------------------------------------------------------------------- vectorised
class MarketMakingVecEnv(VecEnv):
    """``n_envs`` episodes of one split stepped together in one numba call (SB3 ``VecEnv``).

    ``training``: episodes are random H-row segments, each finished env restarts on a random one.
    Otherwise (scoring) the backtest's episodes in a cycle: env i plays episode i, i + n, ...;
    with ``n_envs`` = number of episodes (the default) one ``reset`` + one pass plays each once.
    Finished envs auto-reset; ``infos[i]`` then holds ``terminal_observation`` and ``epnl``.
    ``log_fills`` (one env only) keeps the engine's fills log (:meth:`fills`).
    """

    render_mode = None

    def __init__(self, task: RLTask, split: str = "train", n_envs: int | None = None, training: bool = False,
                 log_fills: bool = False):
        self.task, self.split, self.training = task, split, training
        self.idx, self.dec = task.decisions(split)
        self.dec_ts = np.ascontiguousarray(task.book.ts[self.dec], np.int64)
        self.eps = task.episodes(split, training)
        n = int(n_envs or (task.rl.n_envs if training else len(self.eps)))
        if log_fills and n != 1:
            raise ValueError("log_fills needs n_envs == 1")
        self.engine = Engine(task.book, task.market, n_envs=n)
        self._log = (np.zeros((256 if log_fills else 0, 4), np.int64), np.zeros((256 if log_fills else 0, 3)))
        self.env_ep = np.zeros(n, np.int64)
        self.env_j = np.zeros(n, np.int64)
        self._eq = np.zeros(n)
        self._pnl, self._inv, self._mark, self._done = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.bool_)
        self._epnl = np.zeros(n)
        self._rng = np.random.default_rng()
        self._actions = None
        super().__init__(n, task.observation_space, task.action_space)

    # ------------------------------------------------------------------ core
    def _next_episodes(self) -> np.ndarray:
        if self.training:
            return self._rng.integers(len(self.eps), size=self.num_envs)
        return (self.env_ep + self.num_envs) % len(self.eps)

    def time_left(self) -> np.ndarray:
        return np.minimum(1.0, (self.eps[self.env_ep, 3] - self.dec[self.env_j]) / self.task.horizon)

    def _obs(self) -> np.ndarray:
        return self.task.observe(self.idx, self.env_j, self.engine.inventory, self.time_left())

    def reset_to(self, episodes) -> np.ndarray:
        """Start env i on episode ``episodes[i]``; returns the observations."""
        self.env_ep[:] = episodes
        e = self.engine
        self._log = _reset_envs(e.bk, e.prm, e.FS, e.IS, e.PI, e.PF, self.dec, self.eps, self.env_ep, self.env_j,
                                self._eq, *self._log)
        self._epnl[:] = 0.0
        return self._obs()

    def reset(self):
        if self.training:
            return self.reset_to(self._rng.integers(len(self.eps), size=self.num_envs))
        return self.reset_to(np.arange(self.num_envs) % len(self.eps))

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_signals(self, signals: np.ndarray):
        """Step with quoting-rule signals [n, 4]; returns (pnl currency, inventory, done).
        ``self._mark`` holds each env's equity (ticks x shares) at the end of the step."""
        e = self.engine
        self._j_prev, self._ep_prev = self.env_j.copy(), self.env_ep.copy()
        self._log = _step_envs(e.bk, e.prm, e.FS, e.IS, e.PI, e.PF, self.dec, self.dec_ts, self.eps, self.env_ep,
                               self.env_j, self._eq, np.ascontiguousarray(signals, np.float64),
                               self._next_episodes(), self._pnl, self._inv, self._mark, self._done, *self._log)
        return self._pnl * self.task.tick, self._inv, self._done

    def step_wait(self):
        self.last_signals = self.task.signals(self._actions)
        pnl, inv, done = self.step_signals(self.last_signals)
        rewards = self.task.reward(self._pnl, inv).astype(np.float32)
        self._epnl += pnl
        obs = self._obs()
        infos = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(done):
            term = self.task.observe(self.idx, self._j_prev[i], inv[i], 0.0)[0]
            infos[i] = {"terminal_observation": term, "TimeLimit.truncated": False, "epnl": float(self._epnl[i]),
                        "episode_index": int(self._ep_prev[i])}
            self._epnl[i] = 0.0
        return obs, rewards, done.copy(), infos

    def fills(self) -> np.ndarray:
        """The fills log (``log_fills``), as :func:`run_backtest`'s ``fills`` table."""
        return fills_table(*self._log, int(self.engine.n_logged[0]), self.task.tick)

    # ------------------------------------------------------------------ VecEnv plumbing
    def seed(self, seed: int | None = None):
        self._rng = np.random.default_rng(seed)
        return [seed] * self.num_envs

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(list(self._get_indices(indices)))


# --------------------------------------------------------------------------- single env
class MarketMakingEnv(gym.Env):
    """One episode at a time: a gymnasium face on a one-env :class:`MarketMakingVecEnv` (same
    kernel). ``reset(options={'episode': e})`` picks an episode of the split, else a random one.
    ``info``: ``pnl`` (currency, this step), ``equity`` (currency, marked to the mid of the step's
    last row ``end_row``), ``inventory``, ``signal`` (the quoting-rule signals sent at ``row``)."""

    metadata = {"render_modes": []}

    def __init__(self, task: RLTask, split: str = "train", training: bool = False, log_fills: bool = False):
        self.task, self.split = task, split
        self.vec = MarketMakingVecEnv(task, split, n_envs=1, training=training, log_fills=log_fills)
        self.eps = self.vec.eps
        self.observation_space, self.action_space = task.observation_space, task.action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        pick = options and "episode" in options
        ep = int(options["episode"]) if pick else int(self.np_random.integers(len(self.eps)))
        self.episode = ep
        obs = self.vec.reset_to(np.array([ep]))
        return obs[0], {"episode": ep, "row": int(self.vec.dec[self.vec.env_j[0]])}

    def step(self, action):
        v = self.vec
        sig = self.task.signals(action)
        j = int(v.env_j[0])
        pnl, inv, done = v.step_signals(sig)
        end = int(self.eps[self.episode, 3] - 1 if done[0] else v.dec[j + 1])  # last row of this step
        info = {"pnl": float(pnl[0]), "equity": float(v._mark[0] * self.task.tick), "inventory": float(inv[0]),
                "signal": sig[0], "row": int(v.dec[j]), "end_row": end}
        obs = self.task.observe(v.idx, j, inv[0], 0.0)[0] if done[0] else v._obs()[0]
        return obs, float(self.task.reward(v._pnl, inv)[0]), bool(done[0]), False, info

    def fills(self) -> np.ndarray:
        return self.vec.fills()


# --------------------------------------------------------------------------- backtest door
def rollout(policy, task: RLTask, split: str = "test") -> np.ndarray:
    """Signals [D, 4] for the split's decisions: ``policy(obs [n, K]) -> actions`` played on every
    backtest episode at once (one env per episode, each played once)."""
    env = task.vec_env(split)
    obs = env.reset()
    sig = np.full((len(env.dec), 4), np.nan)
    active = np.ones(env.num_envs, np.bool_)
    while active.any():
        j = env.env_j.copy()
        env.step_async(policy(obs))
        obs, _, done, _ = env.step_wait()
        sig[j[active]] = env.last_signals[active]
        active &= ~done
    return sig


def rl_signals(model, task: RLTask, split: str = "test") -> np.ndarray:
    """Signals [D, 4] of a trained agent (deterministic actions) for ``run_backtest`` / ``run_policies``."""
    return rollout(lambda o: model.predict(o, deterministic=True)[0], task, split)

"""RL environment over the backtest engine: one engine, two doors (issue 9)."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cmm_lightning.config import load_config
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.data.windows import make_windows
from cmm_lightning.market import run_backtest
from cmm_lightning.market.rl_env import RLTask, rollout


def rl_cfg(*extra):
    return load_config(overrides=["market.episode_length=300", "market.inventory_limit=300", "market.base_size=50",
                                  "market.latency=2", "market.maker_fee=-0.0002", "rl.episode_length=200",
                                  "rl.n_envs=8", *extra])


@pytest.fixture(scope="module")
def windows():
    book = simulate(n_snapshots=8000, levels=3, seed=3)
    return make_windows(book, window=16, horizon=5, stride=4)


def test_check_env_discrete_and_continuous(windows):
    for action in ("discrete", "continuous"):
        task = RLTask(windows, rl_cfg(f"rl.action={action}"))
        check_env(task.env("train", training=True), skip_render_check=True)


def test_signals_from_actions():
    cfg = rl_cfg("market.spread_mult=2.0", "market.eta=0.03")
    book = simulate(n_snapshots=2000, levels=2, seed=1)
    task = RLTask(make_windows(book, window=8, horizon=4, stride=4), cfg)
    # discrete: grid offsets [-2..2], half-spreads [1..4]; ŝ = 2δ/c so that c·ŝ/2 = δ
    np.testing.assert_array_equal(task.signals([[0, 3], [2, 0]]), [[-2, 4.0, 50, 0.03], [0, 1.0, 50, 0.03]])
    task = RLTask(task.windows, load_config(overrides=["rl.action=continuous", "market.spread_mult=2.0"]))
    np.testing.assert_allclose(task.signals([[-1, -1], [1, 1], [0, 0]])[:, :2], [[-2, 1.0], [2, 4.0], [0, 2.5]])


def test_env_replays_the_backtest_exactly(windows):
    """A fixed action sequence through the env = run_backtest on the same quotes: PnL, inventory, fills."""
    task = RLTask(windows, rl_cfg())
    env = task.env("test", log_fills=True)
    rng = np.random.default_rng(0)
    idx, dec = task.decisions("test")
    sig = np.full((len(dec), 4), np.nan)
    steps = []  # (episode, row, end_row, equity, inventory, pnl, reward)
    for e in range(len(env.eps)):
        obs, info = env.reset(options={"episode": e})
        assert info["row"] == dec[env.eps[e, 1]]
        done = False
        while not done:
            a = rng.integers([0, 0], [5, 4])
            obs, r, done, trunc, info = env.step(a)
            sig[np.searchsorted(dec, info["row"])] = info["signal"]
            steps.append((e, info["row"], info["end_row"], info["equity"], info["inventory"], info["pnl"], r))
            assert env.observation_space.contains(obs) and not trunc
    assert not np.isnan(sig).any()  # every decision of the split was played once
    res = run_backtest(windows.book, dec, sig, task.market)
    np.testing.assert_array_equal(res.episodes, env.eps[:, [0, 3]])
    base = res.rows[0]
    st = np.array(steps)
    for e in range(len(env.eps)):
        s = st[st[:, 0] == e]
        np.testing.assert_array_equal(s[:, 3], res.step_equity(e)[1:])  # bit-exact equity path
        np.testing.assert_array_equal(s[:, 4], res.inventory[s[:, 2].astype(int) - base])
        assert s[-1, 3] == res.episode_metrics[e]["epnl"]
    np.testing.assert_array_equal(env.fills(), res.fills)
    assert len(res.fills) > 20 and len(np.unique(res.fills["side"])) == 2
    # reward = ΔE / (b · tick) − φ (q / b)²
    b, phi, tick = 50.0, 0.01, windows.book.tick_size
    np.testing.assert_allclose(st[:, 6], st[:, 5] / (b * tick) - phi * (st[:, 4] / b) ** 2, rtol=1e-9, atol=1e-9)


def test_vec_env_rollout_equals_backtest(windows):
    """A path-dependent policy rolled out on all episodes at once; run_backtest on its signals
    reproduces the env's episode PnLs."""
    task = RLTask(windows, rl_cfg())

    def policy(obs):  # lean against inventory, widen late in the episode
        q, tl = obs[:, -2], obs[:, -1]
        off = np.where(q > 0.1, 0, np.where(q < -0.1, 4, 2))
        return np.stack([off, np.where(tl < 0.5, 3, 0)], 1)

    sig = rollout(policy, task, "test")
    _, dec = task.decisions("test")
    res = run_backtest(windows.book, dec, sig, task.market)
    env = task.vec_env("test")
    assert env.num_envs == len(res.episodes) > 1
    obs = env.reset()
    epnl = np.full(env.num_envs, np.nan)
    for _ in range(int((env.eps[:, 2] - env.eps[:, 1]).max())):
        env.step_async(policy(obs))
        obs, rew, done, infos = env.step_wait()
        for i in np.flatnonzero(done):
            if np.isnan(epnl[i]):
                epnl[i] = infos[i]["epnl"]
                assert infos[i]["episode_index"] == i and "terminal_observation" in infos[i]
    np.testing.assert_allclose(epnl, [m["epnl"] for m in res.episode_metrics], rtol=1e-12, atol=1e-9)
    assert len(np.unique(sig[:, 0])) == 3  # the inventory-dependent offset was used


def test_observation_and_episodes(windows):
    cfg = rl_cfg()
    task = RLTask(windows, cfg)
    tr = windows.indices("train")
    z = task.table[tr]
    live = z.std(0) > 0
    np.testing.assert_allclose(z[:, live].mean(0), 0, atol=1e-4)  # standardised on train
    np.testing.assert_allclose(z[:, live].std(0), 1, atol=1e-3)
    assert task.observation_space.shape == (windows.n_features + 5 + 2,)
    # training: H-row segments (H = market.episode_length, which wins over rl.episode_length)
    # starting at each train decision, inside the train split; "auto" (the default) follows the
    # test split in market.n_episodes parts; null falls back to rl.episode_length
    _, test_dec = task.decisions("test")
    auto = -(-(test_dec[-1] + 4 - test_dec[0]) // 20)
    assert task.horizon == 300 and RLTask(windows, load_config()).horizon == auto
    assert RLTask(windows, load_config(None, ["market.episode_length=null"])).horizon == 1000
    _, dec = task.decisions("train")
    eps = task.episodes("train", training=True)
    assert (eps[:, 3] - eps[:, 0] == 300).all() and (dec[eps[:, 1]] == eps[:, 0]).all()
    assert len(eps) == (dec + 300 <= dec[-1] + 4).sum() and (dec[eps[:, 2] - 1] < eps[:, 3]).all()
    # inventory / limit and time left τ = min(1, (t_end − d) / H)
    v = task.vec_env("train", training=True)
    v.seed(1)
    obs = v.reset()
    np.testing.assert_allclose(obs[:, -1], np.minimum(1, (v.eps[v.env_ep, 3] - v.dec[v.env_j]) / 300))
    v.engine.FS[:, 1] = 150.0
    assert (v._obs()[:, -2] == 0.5).all()
    # cmm_rl: standardised predictions appended
    preds = windows.targets.astype(np.float64)
    t2 = RLTask(windows, cfg, preds=preds)
    assert t2.observation_space.shape[0] == task.observation_space.shape[0] + 3
    np.testing.assert_allclose(t2.table[tr, -3:].mean(0), 0, atol=1e-4)
    assert t2.fingerprint("cmm_rl", 0) != RLTask(windows, cfg, preds=preds + 1).fingerprint("cmm_rl", 0)
    # fingerprint: the policy list and rl.enabled do not matter; seed, penalty, splits do
    fp = task.fingerprint("rl_ppo", 0)
    assert fp == RLTask(windows, rl_cfg("market.policies=[cmm]", "rl.enabled=false")).fingerprint("rl_ppo", 0)
    assert fp != task.fingerprint("rl_ppo", 1) != task.fingerprint("cmm_rl", 0)
    assert fp != RLTask(windows, rl_cfg("rl.inventory_penalty=0.5")).fingerprint("rl_ppo", 0)
    w2 = make_windows(windows.book, window=16, horizon=5, stride=4, split=(0.6, 0.2, 0.2))
    assert fp != RLTask(w2, cfg).fingerprint("rl_ppo", 0)

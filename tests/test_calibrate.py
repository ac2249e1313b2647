"""Equal tuning (market/calibrate.py), episodes (market/episodes.py) and the comparison tables
(compare.py): hand-checked knobs, grid sizes, eligibility, episode cuts and paired statistics."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from cmm_lightning.compare import Arena, add_holm_verdicts, backtest, summarize_table
from cmm_lightning.config import CalibrateConfig, MarketConfig, load_config
from cmm_lightning.data import make_windows
from cmm_lightning.data.synthetic import simulate
from cmm_lightning.errors import CMMInputError
from cmm_lightning.market import avellaneda_stoikov, estimate_as_params, predictions
from cmm_lightning.market.calibrate import (as_quoter, calibrate, check_grids, fixed_spread_quoter, grid_sizes,
                                            knob_grid, objective_value, pooled_pnlmap, prediction_quoter)
from cmm_lightning.market.episodes import episode_bounds, resolve_episode_length


def test_every_family_gets_the_same_number_of_backtests():
    c = CalibrateConfig()
    assert grid_sizes(c) == {"prediction": 27, "fixed_spread": 27, "avellaneda_stoikov": 27}
    assert knob_grid("avellaneda_stoikov", c)[7] == {"gamma_mult": 0.25, "size_scale": 1.0}  # axes in order
    with pytest.raises(CMMInputError, match="same number of backtests"):
        check_grids(OmegaConf.merge(OmegaConf.structured(CalibrateConfig), {"eta": [0.0, 0.1]}))
    with pytest.raises(CMMInputError, match="same number of backtests"):  # at config load, exit 2 in the CLI
        load_config(None, ["market.calibrate.gamma_mult=[1.0]"])
    with pytest.raises(CMMInputError, match="spread_mult"):
        load_config(None, ["market.calibrate.spread_mult=[0.0,1.0,2.0]"])


def test_quoters_apply_their_own_knobs():
    base = predictions(np.array([[0.5, 3.0, np.log1p(20.0)], [-1.0, 1.0, np.log1p(5.0)]]),
                       MarketConfig(base_size=100, eta=0.05), volume_ref=10.0)
    sig, c = prediction_quoter("cmm", base).signals({"spread_mult": 2.0, "eta": 0.01, "size_scale": 0.5})
    np.testing.assert_allclose(sig, [[0.5, 3.0, 100.0, 0.01], [-1.0, 1.0, 25.0, 0.01]])
    assert c == 2.0
    sig, c = fixed_spread_quoter(2, 100.0).signals({"half_spread": 3.0, "eta": 0.02, "size_scale": 2.0})
    np.testing.assert_array_equal(sig, [[0, 6.0, 200.0, 0.02]] * 2)
    assert c == 1.0  # its half-spread is the knob itself
    book = simulate(3000, levels=2, seed=1)
    rows = np.arange(1000, 2000, 10)
    mc = MarketConfig(base_size=50, spread_mult=1.0, episode_length=None)
    p = estimate_as_params(book, (0, 1000), mc, horizon_rows=1000)
    sig, c = as_quoter(lambda g: avellaneda_stoikov(book, rows, mc, as_params={**p, "gamma": p["gamma"] * g})
                       ).signals({"gamma_mult": 4.0, "size_scale": 2.0})
    want = avellaneda_stoikov(book, rows, mc, as_params={**p, "gamma": 4 * p["gamma"]})
    want[:, 2] *= 2.0
    np.testing.assert_allclose(sig, want, rtol=1e-15)
    assert c == 1.0


def test_calibrate_picks_the_best_eligible_knobs():
    c = OmegaConf.structured(CalibrateConfig(min_trades_per_episode=5.0))

    def fake_backtest(sig, spread_mult):  # planted: wide spreads score best but barely trade
        score, trades = 1.0 / spread_mult + sig[0, 3], 10.0 if spread_mult < 2 else 1.0
        return [{"epnl": score, "map": 1.0, "n_trades": trades, "sharpe": 0.0}] * 4

    q = prediction_quoter("cmm", np.ones((3, 4)))
    cal = calibrate(q, fake_backtest, c)
    assert cal.n_backtests == 27 and cal.eligible
    assert cal.knobs == {"spread_mult": 0.5, "eta": 0.08, "size_scale": 0.5}  # ties: the first in grid order
    assert cal.score == pytest.approx(4 * 2.08 / 4)
    c.min_trades_per_episode = 50.0  # nobody trades enough: the most active set, flagged
    cal = calibrate(q, fake_backtest, c)
    assert not cal.eligible and cal.knobs["spread_mult"] == 0.5
    eps = [{"epnl": 3.0, "map": 0.2, "sharpe": 1.0}, {"epnl": -1.0, "map": 4.0, "sharpe": 3.0}]
    assert objective_value(eps, "pnlmap") == pytest.approx(2.0 / 5.0)  # MAP floored at 1 share
    assert objective_value(eps, "sharpe") == 2.0 and pooled_pnlmap([3.0, -1.0], [0.2, 4.0]) == 0.4


def test_episodes_rows_durations_auto_and_day_cuts():
    np.testing.assert_array_equal(episode_bounds(10, 35, 10), [[10, 20], [20, 30], [30, 35]])
    np.testing.assert_array_equal(episode_bounds(10, 35, None), [[10, 35]])
    ts = np.arange(100, dtype=np.int64) * 400_000_000  # one row every 0.4 s
    np.testing.assert_array_equal(episode_bounds(5, 45, "2s", ts=ts), [[5, 10], [10, 15], [15, 20], [20, 25],
                                                                       [25, 30], [30, 35], [35, 40], [40, 45]])
    assert resolve_episode_length("auto", 1001, 20) == 51 and resolve_episode_length(7, 1001, 20) == 7
    np.testing.assert_array_equal(episode_bounds(0, 30, 10, cuts=[15, 50]), [[0, 10], [10, 15], [15, 20], [20, 30]])
    with pytest.raises(CMMInputError, match="episode_length"):
        load_config(None, ["market.episode_length=soon"])


def test_tables_pair_policies_on_the_same_episodes():
    book = simulate(6000, levels=3, seed=2)
    w = make_windows(book, window=16, horizon=5, stride=5)
    mc = OmegaConf.structured(MarketConfig(base_size=50, min_size=10, max_size=100))
    arena = Arena.of("test", w, w.indices("test"), 60)
    assert len(arena.bounds) > 10 and (arena.bounds[1:, 0] == arena.bounds[:-1, 1]).all()
    rng = np.random.default_rng(0)
    table = {}
    for name, noise in (("cmm", 0.2), ("noisy", 3.0)):
        preds = np.stack([w.targets[arena.ids, 0] + rng.normal(0, noise, len(arena.ids)),
                          np.full(len(arena.ids), 2.0), np.full(len(arena.ids), 3.0)], 1)
        res = backtest(book, arena, predictions(preds, mc, 20.0), mc, 1.0)
        table[name] = {"result": res, "knobs": {"spread_mult": 1.0}, "calibration": {}}
    out = summarize_table(table)
    e = {n: np.array([x["epnl"] for x in table[n]["result"].episode_metrics]) for n in table}
    m = {n: np.maximum([x["map"] for x in table[n]["result"].episode_metrics], 1.0) for n in table}
    assert out["cmm"]["pnlmap"] == pytest.approx(e["cmm"].sum() / m["cmm"].sum())
    lo, hi = out["cmm"]["ci"]["pnlmap"]
    assert lo < out["cmm"]["pnlmap"] < hi
    p = out["paired"]["noisy"]
    assert p["diff"] == pytest.approx(e["cmm"].sum() / m["cmm"].sum() - e["noisy"].sum() / m["noisy"].sum())
    assert p["n_episodes"] == len(arena.bounds) and p["p_holm"] == p["p_value"]  # one baseline: Holm = p
    assert out["cmm"]["per_episode"]["epnl"] == e["cmm"].tolist()
    # the verdict needs the CI and the Holm-adjusted test to agree
    paired = {"a": {"ci": [0.1, 0.5], "p_value": 0.01, "p_less": 0.99},
              "b": {"ci": [0.1, 0.5], "p_value": 0.04, "p_less": 0.96},
              "c": {"ci": [-0.5, -0.1], "p_value": 0.999, "p_less": 0.001}}
    add_holm_verdicts(paired)
    assert {k: v["verdict"] for k, v in paired.items()} == {"a": "ahead", "b": "indistinguishable", "c": "behind"}
    assert paired["b"]["p_holm"] == pytest.approx(0.08)

"""Policies -> signals (hand values), quoting-rule twins, comparison table and equity figure."""

import math

import numpy as np
import pytest

from cmm_lightning.config import MarketConfig
from cmm_lightning.market import (Engine, avellaneda_stoikov, backtest_policies, equity_figure,
                                  estimate_as_params, fixed_spread, params, predictions, quotes_np,
                                  results_table, run_policies)

from .helpers.books import make_book, random_book


def test_fixed_spread_signals():
    c = MarketConfig(fixed_half_spread=1.5, base_size=40, eta=0.02)
    np.testing.assert_array_equal(fixed_spread(3, c), [[0, 3.0, 40, 0.02]] * 3)


def test_avellaneda_stoikov_hand_values():
    # train rows 0..4: mids 100, 101, 100, 101, 102 -> Δ = [1, -1, 1, 1], σ = np.std = sqrt(0.75)
    # trades: row 1 @ 102 (previous mid 100, δ=2), row 3 @ 99 (previous mid 100, δ=1) -> k = 1/1.5
    # median spread 2, H = 10 rows, base 100 -> γ = 2 / (100 * 0.75 * 10)
    b = make_book(bid=[99, 100, 99, 100, 101] + [100] * 15, ask=[101, 102, 101, 102, 103] + [102] * 15,
                  trades={1: (102, 5, 1), 3: (99, 5, -1)})
    c = MarketConfig(base_size=100, spread_mult=2.0, episode_length=None)
    p = estimate_as_params(b, (0, 5), c, horizon_rows=10)
    assert p["sigma"] == pytest.approx(math.sqrt(0.75), rel=1e-15)
    assert p["k"] == pytest.approx(2 / 3, rel=1e-15)
    assert p["gamma"] == pytest.approx(2 / 750, rel=1e-15)
    # decisions at rows 10, 12, 14 with end_row 20 (one episode): T - t = 10, 8, 6
    sig = avellaneda_stoikov(b, [10, 12, 14], c, train_rows=(0, 5), end_row=20)
    g, s2 = 2 / 750, 0.75
    tau = np.array([10.0, 8.0, 6.0])
    np.testing.assert_allclose(sig[:, 3], g * s2 * tau, rtol=1e-14)  # η = γσ²(T−t)
    np.testing.assert_allclose(sig[:, 1], (g * s2 * tau + 2 / g * math.log(1 + g / (2 / 3))) / 2.0, rtol=1e-14)
    np.testing.assert_array_equal(sig[:, [0, 2]], [[0, 100]] * 3)
    # with episodes of 3 rows starting at 10: [10,13), [13,16), ... -> T - t = 3, 1, 2
    sig = avellaneda_stoikov(b, [10, 12, 14], c, end_row=20, episode_length=3, as_params=p)
    np.testing.assert_allclose(sig[:, 3], p["gamma"] * p["sigma"] ** 2 * np.array([3, 1, 2]), rtol=1e-14)
    # config overrides win over estimates
    assert estimate_as_params(b, (0, 5), MarketConfig(as_gamma=0.5, as_k=2.0))["gamma"] == 0.5


def test_predictions_signals():
    preds = np.array([[0.5, 3.0, math.log1p(20.0)], [-1.0, 1.0, math.log1p(5.0)]])
    sig = predictions(preds, MarketConfig(base_size=100, eta=0.01), volume_ref=10.0)
    np.testing.assert_allclose(sig, [[0.5, 3.0, 200.0, 0.01], [-1.0, 1.0, 50.0, 0.01]], rtol=1e-14)
    assert (predictions(preds, MarketConfig(base_size=70))[:, 2] == 70).all()  # no reference: base size


def test_quote_kernel_and_numpy_twin_agree():
    rng = np.random.default_rng(1)
    b = random_book(200, levels=1, tick_size=1.0)
    c = MarketConfig(spread_mult=1.3, min_size=10, max_size=300, inventory_limit=250, lot_size=5)
    eng = Engine(b, c, n_envs=64)
    rows = rng.integers(0, 199, 64)
    eng.FS[:, 1] = rng.integers(-300, 300, 64)  # inventories (F_INV)
    sig = np.stack([rng.normal(0, 3, 64), rng.uniform(-1, 12, 64), rng.uniform(-5, 400, 64),
                    rng.uniform(0, 0.1, 64)], axis=1)
    sig[0, 1] = np.nan
    q = eng.quotes(rows, sig)
    q_np = quotes_np(params(c, 1.0), b.bid_px[rows, 0], b.ask_px[rows, 0], eng.FS[:, 1], sig)
    np.testing.assert_array_equal(q, q_np)
    assert (q[0] == 0).all()  # NaN signal -> no quotes
    live = q[:, 1] > 0
    assert (q[live, 0] < b.ask_px[rows[live], 0]).all()  # bids never through the best ask
    assert (q[q[:, 3] > 0, 2] > b.bid_px[rows[q[:, 3] > 0], 0]).all()
    sizes = q[:, [1, 3]][q[:, [1, 3]] > 0]
    assert ((sizes >= 10) & (sizes <= 300) & (sizes % 5 == 0)).all()
    assert (eng.FS[live, 1] + q[live, 1] <= 250).all()


def test_compare_policies_table_and_figure():
    b = random_book(6000, levels=1, tick_size=1.0)
    dec = np.arange(3000, 5990, 5)
    c = MarketConfig(episode_length=1000, inventory_limit=500, base_size=50, min_size=10, max_size=100)
    rng = np.random.default_rng(2)
    sigs = {
        "fixed_spread": fixed_spread(len(dec), c),
        "avellaneda_stoikov": avellaneda_stoikov(b, dec, c, train_rows=(0, 3000)),
        "noise": predictions(np.stack([rng.normal(0, 1, len(dec)), np.full(len(dec), 2.0),
                                       np.full(len(dec), 3.0)], 1), c, volume_ref=20.0),
    }
    res = run_policies(b, dec, sigs, c)
    mets = backtest_policies(b, dec, sigs, c)
    assert list(mets) == list(sigs)
    for name, m in mets.items():
        assert m["n_episodes"] == 3 and m == res[name].metrics
        assert m["total_trades"] > 0
        assert np.isfinite([m[k] for k in ("epnl", "map", "pnlmap", "sharpe", "max_drawdown")]).all()
        # EPnL per episode = final marked equity of that episode
        r = res[name]
        for e, (s, t) in enumerate(r.episodes):
            assert r.episode_metrics[e]["epnl"] == r.equity[t - 1 - r.rows[0]]
    table = results_table(mets)
    assert all(name in table for name in sigs) and "pnlmap" in table
    fig = equity_figure(res)
    ax_eq, ax_inv, ax_ep = fig.axes
    assert [t.get_text() for t in ax_ep.get_xticklabels()] == list(sigs)  # per-episode EPnL, one column each
    dots = [c for c in ax_ep.collections if type(c).__name__ == "PathCollection"]  # one dot per episode
    assert [len(c.get_offsets()) for c in dots] == [3] * len(sigs)
    assert [ln.get_label() for ln in ax_eq.lines] == list(sigs)
    assert [ln.get_label() for ln in ax_inv.lines if not ln.get_label().startswith("_")] == list(sigs)
    # chained equity ends at the sum of the episodes' EPnL
    r = res["fixed_spread"]
    assert r.cumulative_equity()[-1] == pytest.approx(r.metrics["total_epnl"], abs=1e-9)

"""Episode metrics: hand values and a DDP-style merge (two metric states merged == one pass)."""

import math

import numpy as np
import pytest
import torch

from cmm_lightning.market.metrics import (MAP, EPnL, FillRate, MaxDrawdown, PnLMAP, Sharpe, aggregate,
                                          market_metrics)

# equity path [0, 1, 3, 2, 6]: steps ΔE = [1, 2, -1, 4], mean 1.5,
# unbiased var = (0.25 + 0.25 + 6.25 + 6.25) / 3 = 13/3  ->  Sharpe = 1.5 / sqrt(13/3)
# running max [0, 1, 3, 3, 6] - equity = [0, 0, 0, 1, 0] -> max drawdown 1
# inventory [0, 10, -20, 10] -> MAP 10 -> PnLMAP = 6 / 10 = 0.6
EQ = [0.0, 1.0, 3.0, 2.0, 6.0]
INV = [0.0, 10.0, -20.0, 10.0]


def test_hand_values():
    m = market_metrics()
    m.update(equity=EQ, inventory=INV, n_trades=7, n_orders=8, n_filled_orders=2)
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["epnl"] == 6.0
    assert out["map"] == 10.0
    assert out["pnlmap"] == pytest.approx(0.6, abs=1e-15)
    assert out["sharpe"] == pytest.approx(1.5 / math.sqrt(13 / 3), rel=1e-14)
    assert out["max_drawdown"] == 1.0
    assert out["n_trades"] == 7.0
    assert out["fill_rate"] == 0.25


def test_edge_cases():
    # never held a position: PnLMAP = EPnL / max(MAP, 1 share) = EPnL; flat equity: Sharpe 0, no drawdown
    p = PnLMAP()
    p.update(equity=[0.0, 0.0, -3.0], inventory=[0.0, 0.0, 0.0])
    assert float(p.compute()) == -3.0
    s = Sharpe()
    s.update(equity=[0.0, 0.0, 0.0])
    s.update(equity=[0.0, 5.0])  # a single step: Sharpe undefined -> 0
    assert float(s.compute()) == 0.0
    f = FillRate()
    f.update(n_orders=0, n_filled_orders=0)
    assert float(f.compute()) == 0.0
    # drawdown measured from the running peak, not the start: [0, 5, -2, 4] -> 7
    d = MaxDrawdown()
    d.update(equity=[0.0, 5.0, -2.0, 4.0])
    assert float(d.compute()) == 7.0


def test_aggregate_mean_std_over_episodes():
    m = market_metrics()
    for pnl in (2.0, 4.0, 9.0):
        m.update(equity=[0.0, pnl], inventory=[1.0], n_trades=1, n_orders=1, n_filled_orders=1)
    agg = aggregate(m)
    assert agg["epnl"] == 5.0 and agg["n_episodes"] == 3
    assert agg["epnl_std"] == pytest.approx(float(np.std([2, 4, 9], ddof=1)), rel=1e-14)


def _episodes(seed, n):
    rng = np.random.default_rng(seed)
    return [dict(equity=np.concatenate([[0.0], np.cumsum(rng.normal(0, 1, 20))]),
                 inventory=rng.integers(-50, 50, 40).astype(float), n_trades=int(rng.integers(0, 9)),
                 n_orders=10, n_filled_orders=int(rng.integers(0, 10))) for _ in range(n)]


@pytest.mark.parametrize("cls,keys", [(EPnL, ["equity"]), (MAP, ["inventory"]), (Sharpe, ["equity"]),
                                      (MaxDrawdown, ["equity"]), (PnLMAP, ["equity", "inventory"])])
def test_ddp_style_merge_equals_one_pass(cls, keys):
    eps_a, eps_b = _episodes(1, 3), _episodes(2, 4)
    rank0, rank1, single = cls(), cls(), cls()
    for ep in eps_a:
        rank0.update(**{k: ep[k] for k in keys})
        single.update(**{k: ep[k] for k in keys})
    for ep in eps_b:
        rank1.update(**{k: ep[k] for k in keys})
        single.update(**{k: ep[k] for k in keys})
    rank0.merge_state(rank1)  # what the 'cat' reduction does across ranks (order may differ)
    torch.testing.assert_close(rank0.compute(), single.compute(), rtol=1e-13, atol=0)
    assert torch.equal(rank0.per_episode().sort().values, single.per_episode().sort().values)


def test_collection_merge_and_reset():
    eps_a, eps_b = _episodes(3, 2), _episodes(4, 5)
    a, b, one = market_metrics(), market_metrics(), market_metrics()
    for ep in eps_a:
        a.update(**ep)
        one.update(**ep)
    for ep in eps_b:
        b.update(**ep)
        one.update(**ep)
    for name in a.keys():
        a[name].merge_state(b[name])
    ga, go = aggregate(a), aggregate(one)
    assert ga.keys() == go.keys() and all(ga[k] == pytest.approx(go[k], rel=1e-13) for k in ga)
    one.reset()
    assert aggregate(one)["n_episodes"] == 0

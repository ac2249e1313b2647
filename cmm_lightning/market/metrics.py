"""Backtest metrics as torchmetrics ``Metric``s (docs/method.md, "Metrics"), so they reduce correctly under DDP.

Each metric takes one *episode* per ``update`` and keeps the per-episode values in a ``cat``
state: under DDP the episodes of all ranks are gathered, and ``compute()`` is the mean over
episodes (``per_episode()`` gives the values, for mean ± std). An episode is described by

    equity     [S+1] equity at the episode start (0) and after each decision step, the last one
                     marked to mid at the episode's end (currency)
    inventory  [R]   position after every row of the episode (shares)
    n_trades, n_orders, n_filled_orders   counts from the engine

with ΔE_s = equity[s] − equity[s−1] the per-step PnL:

    EPnL        = equity[S] − equity[0]                         (PnL marked to mid at the end)
    MAP         = mean_r |inventory_r|                          (mean absolute position, per row)
    PnLMAP      = EPnL / max(MAP, 1 share)                      (finite when no position is held)
    Sharpe      = mean(ΔE) / std(ΔE)  (unbiased std; 0 if S < 2 or std = 0; per step, not annualised)
    MaxDrawdown = max_s (max_{u ≤ s} equity[u] − equity[s])     (≥ 0, on the decision-step path)
    NTrades     = number of fills (partial fills count one each)
    FillRate    = orders with at least one fill / orders placed (0 when none placed)
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("epnl", "map", "pnlmap", "sharpe", "max_drawdown", "n_trades", "fill_rate")


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64) if not torch.is_tensor(x) else x,
                           dtype=torch.float64)


class _EpisodeMetric(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def _push(self, v) -> None:
        self.values.append(_t(v).reshape(1))

    def per_episode(self) -> torch.Tensor:
        """All episodes' values (gathered across ranks when distributed)."""
        if not self.values:
            return torch.zeros(0, dtype=torch.float64)
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            return dim_zero_cat(self.values).clone()

    def compute(self) -> torch.Tensor:
        if not self.values:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return dim_zero_cat(self.values).mean()


class EPnL(_EpisodeMetric):
    higher_is_better = True

    def update(self, equity) -> None:
        e = _t(equity)
        self._push(e[-1] - e[0])


class MAP(_EpisodeMetric):
    higher_is_better = False

    def update(self, inventory) -> None:
        inv = _t(inventory)
        self._push(inv.abs().mean() if inv.numel() else torch.zeros((), dtype=torch.float64))


class PnLMAP(_EpisodeMetric):
    higher_is_better = True

    def update(self, equity, inventory) -> None:
        e, inv = _t(equity), _t(inventory)
        mp = inv.abs().mean() if inv.numel() else torch.zeros((), dtype=torch.float64)
        self._push((e[-1] - e[0]) / torch.clamp(mp, min=1.0))


class Sharpe(_EpisodeMetric):
    higher_is_better = True

    def update(self, equity) -> None:
        d = torch.diff(_t(equity))
        if d.numel() < 2:
            self._push(0.0)
            return
        sd = d.std()
        self._push(d.mean() / sd if sd > 0 else torch.zeros((), dtype=torch.float64))


class MaxDrawdown(_EpisodeMetric):
    higher_is_better = False

    def update(self, equity) -> None:
        e = _t(equity)
        self._push((torch.cummax(e, 0).values - e).max())


class NTrades(_EpisodeMetric):
    def update(self, n_trades) -> None:
        self._push(n_trades)


class FillRate(_EpisodeMetric):
    def update(self, n_orders, n_filled_orders) -> None:
        self._push(float(n_filled_orders) / float(n_orders) if n_orders > 0 else 0.0)


def market_metrics(sync_on_compute: bool = True) -> MetricCollection:
    """All episode metrics in one collection; ``update(equity=, inventory=, n_trades=, ...)``.
    ``sync_on_compute=False``: this process's episodes only (no gather across DDP ranks)."""
    kw = {"sync_on_compute": sync_on_compute}
    return MetricCollection({
        "epnl": EPnL(**kw), "map": MAP(**kw), "pnlmap": PnLMAP(**kw), "sharpe": Sharpe(**kw),
        "max_drawdown": MaxDrawdown(**kw), "n_trades": NTrades(**kw), "fill_rate": FillRate(**kw),
    }, compute_groups=False)


def aggregate(collection: MetricCollection) -> dict:
    """{name: mean over episodes, name_std: std (unbiased; 0 for one episode), n_episodes}."""
    out: dict = {}
    n = 0
    for name, m in collection.items():
        v = m.per_episode()
        n = int(v.numel())
        out[name] = float(v.mean()) if n else float("nan")
        out[f"{name}_std"] = float(v.std()) if n > 1 else 0.0
    out["n_episodes"] = n
    return out


def summarize_episodes(res) -> tuple[list, dict]:
    """Per-episode metric dicts and the aggregate for a ``BacktestResult``: its per-row
    ``inventory``, ``step_equity(e)`` and ``extra['episode_state']`` (the engine's EpisodeState:
    named [E] columns n_fills, n_placed, n_filled, volume, fees in ticks, inventory)."""
    coll = market_metrics(sync_on_compute=False)  # one local engine result: its own episodes only
    per = []
    st = res.extra["episode_state"]
    tick = float(res.extra.get("tick_size", 1.0))
    base = int(res.rows[0])
    for e, (s, t) in enumerate(res.episodes):
        eq = res.step_equity(e)  # starts at 0: the account is flat until the first decision acts
        n_orders = int(st.n_placed[e])
        coll.update(equity=eq, inventory=res.inventory[s - base:t - base], n_trades=int(st.n_fills[e]),
                    n_orders=n_orders, n_filled_orders=int(st.n_filled[e]))
        per.append(dict(start_row=int(s), end_row=int(t), n_steps=len(eq) - 1, n_orders=n_orders,
                        volume=float(st.volume[e]), fees=float(st.fees[e]) * tick,
                        final_inventory=float(st.inventory[e])))
    for name, m in coll.items():
        for d, v in zip(per, m.per_episode().tolist()):
            d[name] = int(v) if name == "n_trades" else float(v)
    agg = aggregate(coll)
    agg["total_epnl"] = float(sum(p["epnl"] for p in per))
    agg["total_trades"] = int(sum(p["n_trades"] for p in per))
    agg["volume"] = float(sum(p["volume"] for p in per))
    agg["fees"] = float(sum(p["fees"] for p in per))
    return per, agg


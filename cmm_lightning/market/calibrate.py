"""Equal tuning: every policy's quoting knobs are chosen on val, from a grid of the same size, by
the same objective (README, "Equal tuning"; ``market.calibrate``).

A policy belongs to one family, and a family's knobs are the ones that change its own quotes:

    prediction          spread_mult c × eta η × size_scale     signals (m̂, ŝ, s·v̂, η), δ = max(1, c·ŝ/2)
    fixed_spread        half_spread h × eta η × size_scale     signals (0, 2h, s·base, η), c = 1
    avellaneda_stoikov  gamma_mult g × size_scale              γ = g·γ̂ (γ̂ fitted on train); c cancels

Each candidate is one backtest on the calibration decisions (the val windows the MoE did not fit
on); its score is the objective over that split's episodes — ``pnlmap`` pooled (ΣEPnL / ΣMAP,
per-episode PnLMAP is heavy-tailed), ``epnl`` or ``sharpe`` (means over episodes) — among the knob
sets that fill at least ``min_trades_per_episode`` times per episode on average (a policy that
barely trades must not win by dividing by a tiny MAP; when none does, the most active one is kept
and ``eligible`` says so). Ties keep the first candidate in grid order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import CMMInputError

FAMILY_AXES = {
    "prediction": ("spread_mult", "eta", "size_scale"),
    "fixed_spread": ("half_spread", "eta", "size_scale"),
    "avellaneda_stoikov": ("gamma_mult", "size_scale"),
}


def knob_grid(family: str, ccfg) -> list[dict]:
    """Every knob set of ``family`` (the product of its axes, in config order)."""
    axes = FAMILY_AXES[family]
    values = [[float(v) for v in getattr(ccfg, a)] for a in axes]
    return [dict(zip(axes, combo)) for combo in itertools.product(*values)]


def grid_sizes(ccfg) -> dict[str, int]:
    return {f: len(knob_grid(f, ccfg)) for f in FAMILY_AXES}


def check_grids(ccfg) -> None:
    """Equal tuning budget: every family's grid has the same number of knob sets (config load)."""
    for f, axes in FAMILY_AXES.items():
        for a in axes:
            vals = list(getattr(ccfg, a))
            if not vals or any(float(v) < 0 for v in vals) or (a != "eta" and any(float(v) <= 0 for v in vals)):
                raise CMMInputError(f"config: market.calibrate.{a}={vals} must be a non-empty list of numbers > 0"
                                    + (" (eta >= 0)" if a == "eta" else ""))
    sizes = grid_sizes(ccfg)
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{f} {n}" for f, n in sizes.items())
        raise CMMInputError(f"config: market.calibrate grids must give every policy the same number of backtests "
                            f"(equal tuning); got {detail}")


def default_knobs(family: str, mcfg) -> dict:
    """The knobs a policy trades with when calibration is off (the market config's values)."""
    return {"prediction": {"spread_mult": float(mcfg.spread_mult), "eta": float(mcfg.eta), "size_scale": 1.0},
            "fixed_spread": {"half_spread": float(mcfg.fixed_half_spread), "eta": float(mcfg.eta),
                             "size_scale": 1.0},
            "avellaneda_stoikov": {"gamma_mult": 1.0, "size_scale": 1.0}}[family]


@dataclass
class Quoter:
    """A policy on one set of decisions: ``signals(knobs) -> (signals [D, 4], spread_mult c)``."""

    name: str
    family: str
    signals: Callable[[dict], tuple[np.ndarray, float]]


def prediction_quoter(name: str, base: np.ndarray) -> Quoter:
    """``base`` [D, 4] = signals at size scale 1 (market.policies.predictions)."""
    def signals(k):
        sig = base.copy()
        sig[:, 2] *= k["size_scale"]
        sig[:, 3] = k["eta"]
        return sig, k["spread_mult"]
    return Quoter(name, "prediction", signals)


def fixed_spread_quoter(n_decisions: int, base_size: float) -> Quoter:
    def signals(k):
        sig = np.empty((n_decisions, 4))
        sig[:] = (0.0, 2.0 * k["half_spread"], base_size * k["size_scale"], k["eta"])
        return sig, 1.0
    return Quoter("fixed_spread", "fixed_spread", signals)


def as_quoter(as_signals: Callable[[float], np.ndarray]) -> Quoter:
    """``as_signals(gamma_mult)`` -> AS signals [D, 4] built with c = 1 at size scale 1."""
    def signals(k):
        sig = as_signals(k["gamma_mult"]).copy()
        sig[:, 2] *= k["size_scale"]
        return sig, 1.0
    return Quoter("avellaneda_stoikov", "avellaneda_stoikov", signals)


def pooled_pnlmap(epnl, map_) -> float:
    """ΣEPnL / Σ max(MAP, 1 share): the pooled PnLMAP (each episode's MAP floored as in PnLMAP)."""
    return float(np.sum(epnl) / np.sum(np.maximum(np.asarray(map_, np.float64), 1.0)))


def objective_value(episode_metrics: list[dict], objective: str) -> float:
    """Score of one backtest from its per-episode metrics (higher is better)."""
    if objective == "pnlmap":
        return pooled_pnlmap([e["epnl"] for e in episode_metrics], [e["map"] for e in episode_metrics])
    if objective in ("epnl", "sharpe"):
        return float(np.mean([e[objective] for e in episode_metrics]))
    raise CMMInputError(f"config: market.calibrate.objective={objective!r} is not one of pnlmap, epnl, sharpe")


@dataclass
class Calibration:
    knobs: dict
    score: float
    eligible: bool  # the chosen set met min_trades_per_episode
    n_backtests: int
    table: list = field(default_factory=list)  # [(knobs, score, trades per episode)]

    def to_json(self) -> dict:
        return {"knobs": self.knobs, "score": self.score, "eligible": self.eligible, "n_backtests": self.n_backtests}


def calibrate(quoter: Quoter, backtest: Callable[[np.ndarray, float], list], ccfg) -> Calibration:
    """Grid search of ``quoter``'s family: ``backtest(signals, spread_mult) -> per-episode metrics``."""
    table = []
    for k in knob_grid(quoter.family, ccfg):
        eps = backtest(*quoter.signals(k))
        trades = float(np.mean([e["n_trades"] for e in eps])) if eps else 0.0
        table.append((k, objective_value(eps, ccfg.objective) if eps else -np.inf, trades))
    ok = [t for t in table if t[2] >= float(ccfg.min_trades_per_episode)]
    pool = ok or [max(table, key=lambda t: t[2])]
    best = max(pool, key=lambda t: t[1])  # max keeps the first of equal scores
    return Calibration(knobs=best[0], score=float(best[1]), eligible=bool(ok), n_backtests=len(table), table=table)


__all__ = ["FAMILY_AXES", "Calibration", "Quoter", "as_quoter", "calibrate", "check_grids", "default_knobs",
           "fixed_spread_quoter", "grid_sizes", "knob_grid", "objective_value", "pooled_pnlmap",
           "prediction_quoter"]

"""Policies: maps from decision points to signals [D, 4] = (m̂, ŝ, v̂, η), and the comparison.

Every policy goes through the same quoting rule (quoting.py) and the same engine, so they differ
only in their signals:

* ``fixed_spread``: m̂ = 0, ŝ = 2·fixed_half_spread, v̂ = base_size, η = market.eta.
* ``avellaneda_stoikov`` (Avellaneda & Stoikov 2008): reservation r = s − q·γσ²(T−t) and total
  spread γσ²(T−t) + (2/γ)·ln(1 + γ/k), i.e. η = γσ²(T−t), ŝ = [γσ²(T−t) + (2/γ)ln(1+γ/k)] / c,
  with T−t the rows left in the decision's episode. From the TRAIN rows: σ = std of the per-row
  mid change (ticks), k = 1 / mean distance of trades from the previous mid (exponential
  arrival intensity A·e^{−kδ}, maximum likelihood), γ such that one base-size clip held at
  mid-episode skews the reservation price by half the median train spread:
  γ·σ²·(H/2)·base_size = s_med/2 (H = episode length in rows). Each can be fixed in config.
* ``predictions(preds [D, 3])`` for cmm / teacher_probe / single_student_kd / llm_agent / ablations:
  m̂ = predicted mid move, ŝ = predicted spread, v̂ = base_size · expm1(vol̂) / mean train volume
  (targets are log1p volume), η = market.eta.
"""

from __future__ import annotations

import numpy as np

from ..errors import CMMInputError
from .engine import BacktestResult, default_end_row, run_backtest
from .episodes import episode_bounds, resolve_episode_length


def _market(cfg):
    """The market config, or its defaults (``config.MarketConfig``: the one place they live)."""
    from ..config import MarketConfig

    return MarketConfig() if cfg is None else cfg


def fixed_spread(n_decisions: int, cfg=None) -> np.ndarray:
    cfg = _market(cfg)
    sig = np.empty((n_decisions, 4))
    sig[:, 0] = 0.0
    sig[:, 1] = 2.0 * float(cfg.fixed_half_spread)
    sig[:, 2] = float(cfg.base_size)
    sig[:, 3] = float(cfg.eta)
    return sig


def estimate_as_params(book, train_rows, cfg=None, horizon_rows: int | None = None) -> dict:
    """σ, k, γ of Avellaneda–Stoikov from book rows ``train_rows = (first, end)`` (ticks, rows)."""
    cfg = _market(cfg)
    lo, hi = int(train_rows[0]), int(min(train_rows[1], book.n))
    if hi - lo < 3:
        raise CMMInputError("avellaneda_stoikov: need at least 3 training rows")
    mid = book.mid[lo:hi]
    sigma = float(np.std(np.diff(mid)))
    r = np.arange(lo + 1, hi)
    traded = book.trade_sz[r] > 0
    dist = np.abs(book.trade_px[r][traded] - book.mid[r - 1][traded])
    s_med = float(np.median(book.spread[lo:hi]))
    k = 1.0 / float(dist.mean()) if dist.size and dist.mean() > 0 else 2.0 / max(s_med, 1.0)
    length = cfg.episode_length
    H = float(horizon_rows or (length if isinstance(length, int) and length > 0 else hi - lo))
    base = float(cfg.base_size)
    gamma = s_med / (base * max(sigma, 1e-6) ** 2 * H)
    out = {"sigma": sigma, "k": k, "gamma": gamma, "median_spread": s_med}
    for key in ("sigma", "k", "gamma"):
        fixed = getattr(cfg, f"as_{key}")
        if fixed is not None:
            out[key] = float(fixed)
    return out


def avellaneda_stoikov(book, decision_rows, cfg=None, train_rows=None, end_row=None,
                       episode_length=None, as_params: dict | None = None, episodes=None) -> np.ndarray:
    """AS signals for ``decision_rows``; T−t counted in rows to the end of each decision's episode
    (``episodes`` [E, 2], or cut from the first decision by ``episode_length``)."""
    cfg = _market(cfg)
    dec = np.asarray(decision_rows, np.int64)
    if episodes is not None:
        eps = np.asarray(episodes, np.int64)
    else:
        episode_length = episode_length if episode_length is not None else cfg.episode_length
        end = default_end_row(dec, book.n) if end_row is None else int(min(end_row, book.n))
        episode_length = resolve_episode_length(episode_length, end - int(dec[0]), int(cfg.n_episodes))
        eps = episode_bounds(int(dec[0]), end, episode_length, ts=book.ts)
    if as_params is None:
        if train_rows is None:
            raise CMMInputError("avellaneda_stoikov: give train_rows (first, end) or as_params")
        as_params = estimate_as_params(book, train_rows, cfg, horizon_rows=int(eps[0, 1] - eps[0, 0]))
    g, s2, k = as_params["gamma"], as_params["sigma"] ** 2, as_params["k"]
    ep_end = eps[np.clip(np.searchsorted(eps[:, 0], dec, side="right") - 1, 0, len(eps) - 1), 1]
    tau = np.maximum(ep_end - dec, 0).astype(np.float64)
    c = float(cfg.spread_mult)
    sig = np.empty((len(dec), 4))
    sig[:, 0] = 0.0
    sig[:, 3] = g * s2 * tau
    sig[:, 1] = (g * s2 * tau + (2.0 / g) * np.log1p(g / k)) / c
    sig[:, 2] = float(cfg.base_size)
    return sig


def predictions(preds, cfg=None, volume_ref: float | None = None) -> np.ndarray:
    """Signals from model predictions [D, 3] in target units (mid ticks, spread ticks, log1p volume)."""
    p = np.asarray(preds, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise CMMInputError(f"predictions must be [D, 3] (mid, spread, volume), got {p.shape}")
    cfg = _market(cfg)
    base = float(cfg.base_size)
    sig = np.empty((len(p), 4))
    sig[:, 0] = p[:, 0]
    sig[:, 1] = p[:, 1]
    if volume_ref:
        sig[:, 2] = base * np.maximum(np.expm1(p[:, 2]), 0.0) / float(volume_ref)
    else:
        sig[:, 2] = base
    sig[:, 3] = float(cfg.eta)
    return sig


def train_volume_ref(windows) -> float:
    """Mean traded volume (shares over the horizon) of the train windows: the v̂ reference."""
    return float(np.expm1(windows.targets[windows.indices("train"), 2].astype(np.float64)).mean())


def _decisions(book, decisions, split: str = "test"):
    """Decision rows from a WindowSet (its ``split`` windows' ends) or an array of rows."""
    if hasattr(decisions, "end") and hasattr(decisions, "indices"):
        return decisions.end[decisions.indices(split)]
    return np.asarray(decisions, np.int64)


def run_policies(book, decisions, signals: dict, cfg=None, episode_length=None, end_row=None,
                 split: str = "test") -> dict[str, BacktestResult]:
    """One backtest per policy on identical rows, episodes and fill model."""
    dec = _decisions(book, decisions, split)
    out = {}
    for name, sig in signals.items():
        sig = np.asarray(sig, np.float64)
        if len(sig) != len(dec):
            raise CMMInputError(f"policy '{name}': {len(sig)} signal rows for {len(dec)} decisions")
        out[name] = run_backtest(book, dec, sig, cfg, episode_length=episode_length, end_row=end_row)
    return out


def backtest_policies(book, decisions, signals: dict, cfg=None, episode_length=None,
                      end_row=None, split: str = "test") -> dict[str, dict]:
    """{policy: aggregate metrics} (see :func:`run_policies` for the full results)."""
    return {k: r.metrics for k, r in run_policies(book, decisions, signals, cfg, episode_length,
                                                   end_row, split).items()}


def results_table(metrics: dict[str, dict]) -> str:
    """Plain-text table, one row per policy (mean over episodes; ± std when several)."""
    cols = ("epnl", "map", "pnlmap", "sharpe", "max_drawdown", "n_trades", "fill_rate")
    head = f"{'policy':<22}" + "".join(f"{c:>14}" for c in cols)
    lines = [head, "-" * len(head)]
    for name, m in metrics.items():
        cells = []
        for c in cols:
            v, sd = m.get(c, float("nan")), m.get(f"{c}_std", 0.0)
            cells.append(f"{v:>14.4g}" if not sd or m.get("n_episodes", 1) < 2 else f"{v:>8.3g}±{sd:<5.2g}")
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


def equity_figure(results: dict[str, BacktestResult], max_points: int = 4000):
    """Equity (top) and inventory (middle) over book rows, one line per policy, and the spread of
    the per-episode EPnL per policy (bottom: one dot per episode, the mean as a bar) — the
    variation the confidence intervals summarise (headless Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 9), dpi=100)
    FigureCanvasAgg(fig)
    ax_eq, ax_inv, ax_ep = fig.subplots(3, 1, gridspec_kw={"height_ratios": [3, 2, 2]})
    ax_inv.sharex(ax_eq)
    for name, r in results.items():
        step = max(1, len(r.rows) // max_points)
        ax_eq.plot(r.rows[::step], r.cumulative_equity()[::step], label=name, lw=1)
        ax_inv.plot(r.rows[::step], r.inventory[::step], label=name, lw=1)
    first = next(iter(results.values()), None)
    if first is not None and len(first.episodes) <= 200:
        for s, _ in first.episodes[1:]:  # episode starts (each starts flat)
            ax_inv.axvline(s, color="0.8", lw=0.5, zorder=0)
    rng = np.random.default_rng(0)
    for i, (name, r) in enumerate(results.items()):
        ep = np.array([e["epnl"] for e in r.episode_metrics]) if r.episode_metrics else np.zeros(0)
        ax_ep.scatter(i + rng.uniform(-0.2, 0.2, len(ep)), ep, s=8, alpha=0.6)
        if len(ep):
            ax_ep.hlines(ep.mean(), i - 0.3, i + 0.3, color="black", lw=2)
    ax_ep.axhline(0, color="0.5", lw=0.5)
    ax_ep.set_xticks(range(len(results)), list(results), rotation=30, ha="right", fontsize=8)
    ax_ep.set_ylabel("EPnL per episode\n(bar: mean)")
    ax_eq.set_ylabel("equity, marked to mid\n(episodes chained)")
    ax_inv.set_ylabel("inventory (shares)")
    ax_inv.set_xlabel("book row")
    ax_eq.legend(loc="upper left", fontsize=8, ncol=2)
    for ax in (ax_eq, ax_inv, ax_ep):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

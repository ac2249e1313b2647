"""The comparison the project exists for: does distilling the LLM make a better market maker?

Every policy is calibrated on val (``market.calibrate``: same grid size, same objective, for
every family), then traded once on the test decisions; the test split is cut into episodes and
every number comes with a 95 % bootstrap CI over episodes; CMM is compared with every other policy
on the same episodes (paired difference, CI, one-sided p-value, Holm-corrected across baselines).

Two tables (two *arenas*: sets of decisions every policy of the table trades on):

* ``test``: every test decision. cmm (and its ablations), cmm_no_teacher, single_student_kd,
  fixed_spread, avellaneda_stoikov, rl_ppo, cmm_rl.
* ``teacher``: the test decisions whose window the teacher read (``teacher.max_windows`` of them
  on a CPU; all with ``null``) — the only decisions where teacher_probe and llm_agent have a fresh
  reading. They trade there, beside cmm, cmm_no_teacher and the rule baselines on the very same
  decisions; their gaps are never filled. The coverage (read / all test decisions) is reported.

Calibration decisions: the val windows the MoE did not fit on (its early-stopping half), all of
them for the test table and those the teacher read for the teacher table. llm_agent has no val
decodes: it trades with cmm's teacher-table knobs. RL agents are tuned by their own training
(checkpoint chosen on val); their quoting knobs are those they were trained with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .market.calibrate import (Calibration, as_quoter, calibrate, default_knobs, fixed_spread_quoter, pooled_pnlmap,
                               prediction_quoter)
from .market.engine import default_end_row, run_backtest
from .market.episodes import episode_bounds, typical_rows
from .market.policies import avellaneda_stoikov, estimate_as_params, predictions, train_volume_ref
from .registry import POLICIES

EPISODE_KEYS = ("epnl", "map", "sharpe", "max_drawdown", "n_trades", "fill_rate")


def family(name: str) -> str:
    """A policy's calibration family (``registry.PolicySpec``); the MoE ablations ``cmm_<mode>``
    are prediction policies like ``cmm``."""
    return POLICIES.spec(name).family if name in POLICIES else "prediction"


def reads_teacher(name: str) -> bool:
    """Whether the policy trades only where the teacher read the window (the teacher table)."""
    return name in POLICIES and POLICIES.spec(name).teacher


@dataclass
class Arena:
    """Decisions (window ids, their end rows) and the episodes [E, 2] every policy trades on."""

    name: str
    ids: np.ndarray
    rows: np.ndarray
    bounds: np.ndarray
    end_row: int

    @classmethod
    def of(cls, name: str, windows, ids, episode_length, start_row=None, end_row=None) -> "Arena":
        ids = np.asarray(ids, np.int64)
        rows = windows.end[ids]
        end = default_end_row(rows, windows.book.n) if end_row is None else int(end_row)
        start = int(rows[0]) if start_row is None else int(start_row)
        bounds = episode_bounds(start, end, episode_length, ts=windows.book.ts,
                                cuts=windows.book.meta.get("day_start"))
        return cls(name, ids, rows, bounds, end)

    def subset(self, name: str, keep: np.ndarray) -> "Arena":
        """The decisions ``keep`` (bool over ``ids``) on the same episodes."""
        return Arena(name, self.ids[keep], self.rows[keep], self.bounds, self.end_row)


def _with_spread_mult(mcfg, c: float):
    from omegaconf import OmegaConf

    if OmegaConf.is_config(mcfg):
        return OmegaConf.merge(mcfg, {"spread_mult": float(c)})
    import dataclasses

    return dataclasses.replace(mcfg, spread_mult=float(c))


def backtest(book, arena: Arena, signals: np.ndarray, mcfg, spread_mult: float):
    """One policy on ``arena``: the market config with this policy's ``spread_mult``."""
    return run_backtest(book, arena.rows, signals, _with_spread_mult(mcfg, spread_mult), episodes=arena.bounds,
                        end_row=arena.end_row)


# ------------------------------------------------------------------------------------------------- quoters
class Quoters:
    """Builds each policy's :class:`~.market.calibrate.Quoter` on an arena.

    ``predictions(name) -> [W, 3]``: a prediction-driven policy's predictions for every window
    (NaN where it has none); AS is fitted on the train rows once."""

    def __init__(self, windows, mcfg, predictions_of: Callable[[str], np.ndarray], as_horizon: int):
        self.windows, self.mcfg, self.predictions_of = windows, mcfg, predictions_of
        w = windows
        self.vref = train_volume_ref(w)
        train_rows = (w.boundaries["train"][0] - w.window + 1, w.boundaries["train"][1] + 1)
        self.as_params = estimate_as_params(w.book, train_rows, mcfg, horizon_rows=as_horizon)
        self.mcfg_c1 = _with_spread_mult(mcfg, 1.0)

    def __call__(self, name: str, arena: Arena):
        kind = family(name)
        if kind == "fixed_spread":
            return fixed_spread_quoter(len(arena.ids), float(self.mcfg.base_size))
        if kind == "avellaneda_stoikov":
            p = self.as_params
            return as_quoter(lambda g: avellaneda_stoikov(self.windows.book, arena.rows, self.mcfg_c1,
                                                          as_params={**p, "gamma": p["gamma"] * g},
                                                          episodes=arena.bounds))
        base = predictions(self.predictions_of(name)[arena.ids], self.mcfg, self.vref)
        return prediction_quoter(name, base)


# ------------------------------------------------------------------------------------------------- tables
def run_table(book, mcfg, quoters: Quoters, names: list[str], test: Arena, cal: Arena | None,
              fixed_signals: dict | None = None, borrow: dict | None = None) -> dict:
    """Calibrate every policy of ``names`` on ``cal`` (None or ``market.calibrate.enabled=false``:
    the market config's knobs), trade it on ``test``; ``fixed_signals`` {name: (signals, c, note)}
    trade as given (RL agents); ``borrow`` {name: other} trades ``name`` with ``other``'s knobs.
    Returns {name: {"result", "knobs", "calibration"}}, plus "seconds" spent calibrating."""
    ccfg = mcfg.calibrate
    out, t_cal = {}, 0.0
    for name in names:
        if borrow and name in borrow:
            continue
        q = quoters(name, test)
        if cal is not None and ccfg.enabled and len(cal.ids):
            t0 = time.perf_counter()
            qc = quoters(name, cal)
            c = calibrate(qc, lambda sig, sm: backtest(book, cal, sig, mcfg, sm).episode_metrics, ccfg)
            t_cal += time.perf_counter() - t0
        else:
            c = Calibration(knobs=default_knobs(q.family, mcfg), score=float("nan"), eligible=True, n_backtests=0)
        sig, sm = q.signals(c.knobs)
        out[name] = {"result": backtest(book, test, sig, mcfg, sm), "knobs": c.knobs, "calibration": c.to_json()}
    for name, other in (borrow or {}).items():
        q = quoters(name, test)
        knobs = out[other]["knobs"]
        sig, sm = q.signals(knobs)
        out[name] = {"result": backtest(book, test, sig, mcfg, sm), "knobs": knobs,
                     "calibration": {"source": other, "note": f"no val readings: trades with {other}'s knobs"}}
    for name, (sig, sm, note) in (fixed_signals or {}).items():
        out[name] = {"result": backtest(book, test, sig, mcfg, sm), "knobs": {"spread_mult": sm},
                     "calibration": {"note": note}}
    out["seconds"] = t_cal
    return out


def episode_arrays(res) -> dict[str, np.ndarray]:
    """Per-episode metric arrays of a BacktestResult (the episodes' start rows under ``start``)."""
    em = res.episode_metrics
    out = {k: np.array([e[k] for e in em], np.float64) for k in EPISODE_KEYS}
    out["start"] = np.array([e["start_row"] for e in em], np.int64)
    return out


def summarize_table(table: dict, baseline: str = "cmm", confidence: float = 0.95, seed: int = 0) -> dict:
    """{policy: metrics + CIs + knobs + per-episode values, "paired": {other: CMM − other}}."""
    from .stats import mean_ci, paired_test, ratio_ci

    out, eps = {}, {}
    for name, entry in table.items():
        if name == "seconds":
            continue
        res = entry["result"]
        e = eps[name] = episode_arrays(res)
        den = np.maximum(e["map"], 1.0)
        m = dict(res.metrics)
        m["pnlmap_episode_mean"] = m.pop("pnlmap")
        m["pnlmap_episode_mean_std"] = m.pop("pnlmap_std")
        m["pnlmap"] = pooled_pnlmap(e["epnl"], e["map"])
        m["ci"] = {k: list(mean_ci(e[k], confidence, seed=seed)) for k in ("epnl", "map", "sharpe")}
        m["ci"]["pnlmap"] = list(ratio_ci(e["epnl"], den, confidence, seed=seed))
        m["knobs"], m["calibration"] = entry["knobs"], entry["calibration"]
        m["per_episode"] = {k: e[k].tolist() for k in ("epnl", "map", "sharpe", "n_trades")}
        out[name] = m
    if baseline in eps:
        a = eps[baseline]
        paired = {}
        for name, b in eps.items():
            if name == baseline:
                continue
            if not np.array_equal(a["start"], b["start"]):
                raise RuntimeError(f"paired test: {baseline} and {name} were not traded on the same episodes")
            pm = paired_test(a["epnl"], b["epnl"], np.maximum(a["map"], 1.0), np.maximum(b["map"], 1.0),
                             confidence, seed=seed)
            pe = paired_test(a["epnl"], b["epnl"], confidence=confidence, seed=seed)
            paired[name] = {"metric": "pnlmap", "diff": pm["diff"], "ci": pm["ci"], "p_value": pm["p_value"],
                            "p_less": pm["p_less"], "n_episodes": pm["n"],
                            "epnl": {"diff": pe["diff"], "ci": pe["ci"], "p_value": pe["p_value"]}}
        add_holm_verdicts(paired, 1.0 - confidence)
        out["paired"] = paired
    return out


def add_holm_verdicts(paired: dict, alpha: float = 0.05) -> None:
    """Holm-adjust each direction's one-sided p-values across the baselines of one table, then
    the verdict: ahead / behind only where the CI excludes 0 AND that direction's adjusted p < α."""
    from .stats import holm, verdict

    up = holm({k: v["p_value"] for k, v in paired.items()})
    down = holm({k: v["p_less"] for k, v in paired.items()})
    for name, p in paired.items():
        p["p_holm"], p["p_holm_less"] = up[name], down[name]
        p["verdict"] = verdict(p["ci"], up[name], down[name], alpha)


def as_horizon_rows(bounds: np.ndarray) -> int:
    """AS's horizon H (rows) follows the episodes: their typical length."""
    return typical_rows(bounds)


# ------------------------------------------------------------------------------------------------- the stage
def _main_policies(run) -> list[str]:
    """The test table's policies in order: cmm, its MoE ablations right after it, then the rest
    of ``market.policies`` (the teacher policies have their own table)."""
    out = []
    for name in run.cfg.market.policies:
        if reads_teacher(name):
            continue
        out.append(name)
        if name == "cmm":
            out += [f"cmm_{m}" for m in run.moe if m != run.cfg.moe.mode]
    return out


def _rl_signals(run) -> dict:
    """{agent: (test signals, spread_mult, note)}: rl_ppo, and cmm_rl observing the CMM's
    predictions — cross-fitted (out-of-fold) on the train windows it learns from."""
    from .market.rl import rl_policies

    preds = np.where(np.isnan(run.crossfit), run.cmm_predictions, run.crossfit)
    sig = run.timed("rl", lambda: rl_policies(run.windows, run.cfg, run.dir, preds=preds, logger=run.logger))
    note = "PPO trained on train, checkpoint chosen on val; trades with the quoting knobs it learned with"
    return {k: (v, float(run.cfg.market.spread_mult), note) for k, v in sig.items()}


def compare_policies(run) -> tuple[dict, dict]:
    """The test table and (when a teacher policy is listed) the teacher table: every policy
    calibrated on val, traded on the same test decisions, with CIs and paired tests (compare.py).
    Returns (report["backtest"], the test table's BacktestResults)."""
    from .market.calibrate import grid_sizes

    w, m, names = run.windows, run.cfg.market, list(run.cfg.market.policies)
    test_ids = w.indices("test")
    cal_ids = (run.datamodule.stacking_view(float(run.cfg.moe.fit_frac)).split_ids("val")
               if run.cfg.moe.fit_on == "val" else w.indices("val"))
    test = Arena.of("test", w, test_ids, m.episode_length)
    cal = Arena.of("calibration", w, cal_ids, m.episode_length)
    quoters = Quoters(w, m, run.predictions, as_horizon_rows(test.bounds))
    fixed = _rl_signals(run) if run.cfg.rl.enabled else {}
    table = run_table(w.book, m, quoters, _main_policies(run), test, cal, fixed_signals=fixed)
    results = {k: v["result"] for k, v in table.items() if k != "seconds"}
    block = summarize_table(table, seed=int(run.cfg.run.seed))
    seconds = table["seconds"]
    block["episodes"] = {"length": m.episode_length, "n": int(len(results["cmm"].episodes)) if "cmm" in results
                         else None, "rows": [int(test.bounds[0, 0]), int(test.end_row)]}
    if any(reads_teacher(n) for n in names):
        read = np.isin(test_ids, run.teacher.ids)  # the test decisions whose window the teacher read
        if "llm_agent" in names:
            read &= np.isin(test_ids, run.agent_answers["ids"])
        if read.any():
            tnames = [n for n in names if n != "llm_agent"]  # llm_agent borrows cmm's knobs
            ttable = run_table(w.book, m, quoters, tnames, test.subset("teacher", read),
                               cal.subset("teacher calibration", np.isin(cal_ids, run.teacher.ids)),
                               borrow={"llm_agent": "cmm"} if "llm_agent" in names else None)
            seconds += ttable["seconds"]
            block["teacher"] = summarize_table(ttable, seed=int(run.cfg.run.seed))
            block["teacher"]["coverage"] = {"decisions": int(read.sum()), "test_decisions": int(len(test_ids)),
                                            "fraction": float(read.mean())}
        else:
            print("teacher table: the teacher read no test window (teacher.max_windows); teacher policies not scored")
    block["calibration"] = {"enabled": bool(m.calibrate.enabled), "objective": m.calibrate.objective,
                            "split": "val windows the MoE did not fit on" if run.cfg.moe.fit_on == "val" else "val",
                            "decisions": int(len(cal_ids)), "n_backtests_per_policy": grid_sizes(m.calibrate),
                            "seconds": round(seconds, 3)}
    run.timings["calibration"] = round(seconds, 3)
    return block, results


def gains(run, block: dict) -> dict:
    """What the LLM adds, with 95 % CIs: the information gain (the val-chosen layer's test R² minus
    the val-chosen raw-input ridge's, bootstrap over test windows) and the distillation gain (cmm −
    cmm_no_teacher: test R², bootstrap over test windows; pooled PnLMAP, paired over episodes)."""
    from .data import TASKS
    from .stats import r2_diff_ci

    w = run.windows

    def r2_gain(ids, a, b):
        """Per task R²(a) − R²(b) on windows ``ids`` (time order), bootstrapped in blocks of windows
        as long as they overlap (inputs + targets: T + h snapshots)."""
        order = np.argsort(w.end[ids])
        ids, a, b = ids[order], a[order], b[order]
        spacing = float(np.median(np.diff(w.end[ids]))) if len(ids) > 1 else 1.0
        block = max(1, int(np.ceil((w.window + w.horizon) / max(spacing, 1.0))))
        d = r2_diff_ci(w.targets[ids], a, b, block=block, seed=int(run.cfg.run.seed))
        return {**{t: {"diff": d["diff"][k], "ci": d["ci"][k]} for k, t in enumerate(TASKS)},
                "n_windows": int(len(ids)), "block": block}

    out = {}
    tp = run.probe.test_predictions
    if "raw" in tp:
        out["information"] = r2_gain(np.asarray(tp["ids"]), tp["layer"], tp["raw"])
    if "cmm_no_teacher" in run.cfg.market.policies:
        ids = w.indices("test")
        out["distillation"] = {"r2": r2_gain(ids, run.predictions("cmm")[ids], run.predictions("cmm_no_teacher")[ids])}
        if "cmm_no_teacher" in block.get("paired", {}):
            p = block["paired"]["cmm_no_teacher"]
            out["distillation"]["pnlmap"] = {k: p[k] for k in ("diff", "ci", "p_value", "verdict")}
    return out


__all__ = ["Arena", "Quoters", "add_holm_verdicts", "as_horizon_rows", "backtest", "compare_policies", "episode_arrays",
           "family", "gains", "pooled_pnlmap", "reads_teacher", "run_table", "summarize_table"]

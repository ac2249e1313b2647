"""What ``fit`` prints and logs: the test R² table, the backtest tables with CIs and paired tests,
the gains the LLM brings, and the one-screen summary at the end (headline numbers, where the
files went)."""

from __future__ import annotations

from pathlib import Path

TASKS = ("mid", "spread", "volume")
NOT_POLICIES = ("paired", "teacher", "episodes", "calibration", "coverage")


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def policies(block: dict) -> dict:
    """The policy entries of a ``report["backtest"]`` block (or its teacher table)."""
    return {k: v for k, v in block.items() if k not in NOT_POLICIES}


def test_table(students: dict, moe_rep: dict, baselines: dict) -> str:
    rows = [(f"{n} ({s['dimension']})", s["test"]) for n, s in students.items()]
    rows += [(f"MoE {moe_rep['mode']} (cmm)", moe_rep["test"])]
    rows += [(f"MoE {m}", e["test"]) for m, e in moe_rep["ablations"].items()]
    rows += [(name, e["test"]) for name, e in baselines.items()]
    lines = [f"{'model (test split)':<32}" + "".join(f"{t + ' R²':>12}" for t in TASKS)]
    lines += [f"{name:<32}" + "".join(f"{m[t]['r2']:>12.3f}" for t in TASKS) for name, m in rows]
    return "\n".join(lines)


def _ci(v, ci, spec=".3g") -> str:
    lo, hi = ci if ci else (None, None)
    if v is None or lo is None or lo != lo:
        return f"{_fmt(v, spec)}"
    return f"{format(v, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def _knobs(k: dict) -> str:
    short = {"spread_mult": "c", "eta": "η", "size_scale": "size", "half_spread": "h", "gamma_mult": "γ×"}
    return " ".join(f"{short.get(n, n)}={v:g}" for n, v in k.items())


def policy_table(block: dict, title: str) -> str:
    """One row per policy: mean per episode [95 % CI] of EPnL, MAP, Sharpe; pooled PnLMAP [CI]."""
    lines = [title, f"{'policy':<20}{'EPnL':>26}{'MAP':>24}{'PnLMAP (pooled)':>28}{'Sharpe':>26}"
             f"{'trades':>8}  knobs (chosen on val)"]
    for name, m in policies(block).items():
        ci = m.get("ci", {})
        lines.append(f"{name:<20}{_ci(m['epnl'], ci.get('epnl')):>26}{_ci(m['map'], ci.get('map')):>24}"
                     f"{_ci(m['pnlmap'], ci.get('pnlmap')):>28}{_ci(m['sharpe'], ci.get('sharpe')):>26}"
                     f"{m['n_trades']:>8.0f}  {_knobs(m.get('knobs', {}))}")
    return "\n".join(lines)


def paired_table(block: dict, baseline: str = "cmm") -> str:
    """CMM minus each other policy on the same episodes: pooled PnLMAP and EPnL differences."""
    paired = block.get("paired", {})
    if not paired:
        return ""
    lines = [f"{baseline} − other, same episodes (95 % CI; one-sided p for {baseline} > other; ahead / behind: "
             f"the CI excludes 0 and that direction's Holm-adjusted p < 0.05)",
             f"{'other':<20}{'Δ PnLMAP':>28}{'p':>8}{'p_holm':>8}  {'verdict':<18}{'Δ EPnL':>28}"]
    for name, p in paired.items():
        lines.append(f"{name:<20}{_ci(p['diff'], p['ci']):>28}{_fmt(p['p_value'], '.3f'):>8}"
                     f"{_fmt(p.get('p_holm'), '.3f'):>8}  {p['verdict']:<18}{_ci(p['epnl']['diff'], p['epnl']['ci']):>28}")
    return "\n".join(lines)


def backtest_tables(block: dict) -> str:
    e, c = block.get("episodes", {}), block.get("calibration", {})
    parts = [policy_table(block, f"backtest, test split: {e.get('n')} episodes of {e.get('length')} rows "
                                 f"(currency; knobs calibrated on {c.get('decisions')} val decisions, "
                                 f"{c.get('seconds', 0):.1f} s)"),
             paired_table(block)]
    t = block.get("teacher")
    if t:
        cov = t.get("coverage", {})
        parts += [policy_table(t, f"teacher table: the {cov.get('decisions')} test decisions whose window the "
                                  f"teacher read ({100 * cov.get('fraction', 0):.1f} % of {cov.get('test_decisions')})"),
                  paired_table(t)]
    return "\n\n".join(p for p in parts if p)


def gains_table(g: dict) -> str:
    """The two numbers that say whether the LLM earns its place, per task, with 95 % CIs."""
    lines = ["what the LLM adds (95 % CI)"]
    if "information" in g:
        lines.append("  information gain (val-chosen layer − raw-input ridge, test R²): " + ", ".join(
            f"{t} {_ci(g['information'][t]['diff'], g['information'][t]['ci'], '+.3f')}" for t in TASKS))
    d = g.get("distillation")
    if d:
        lines.append("  distillation gain (cmm − cmm_no_teacher, test R²):               " + ", ".join(
            f"{t} {_ci(d['r2'][t]['diff'], d['r2'][t]['ci'], '+.3f')}" for t in TASKS))
        if "pnlmap" in d:
            p = d["pnlmap"]
            lines.append(f"  distillation gain in pooled PnLMAP: {_ci(p['diff'], p['ci'])} (p {_fmt(p['p_value'], '.3f')}, "
                         f"{p['verdict']})")
    return "\n".join(lines)


def flat_rows(block: dict) -> tuple[dict, tuple]:
    """{policy: {metric: value, metric_lo, metric_hi}} for loggers (W&B table, scalars)."""
    keys = ("epnl", "map", "pnlmap", "sharpe", "max_drawdown", "n_trades", "fill_rate")
    rows = {}
    for name, m in policies(block).items():
        r = {k: m.get(k) for k in keys}
        for k, (lo, hi) in m.get("ci", {}).items():
            r[f"{k}_lo"], r[f"{k}_hi"] = lo, hi
        r["n_episodes"] = m.get("n_episodes")
        if name in block.get("paired", {}):
            p = block["paired"][name]
            r.update(cmm_minus_pnlmap=p["diff"], cmm_minus_pnlmap_lo=p["ci"][0], cmm_minus_pnlmap_hi=p["ci"][1],
                     p_holm=p.get("p_holm"))
        rows[name] = r
    columns = tuple(dict.fromkeys(k for r in rows.values() for k in r))
    return rows, columns


def print_summary(report: dict, run_dir: Path) -> None:
    run_dir = Path(run_dir)
    bar = "=" * 78
    lines = [bar, f"cmm_lightning fit finished in {report.get('timings_s', {}).get('fit_total', 0):.0f} s  →  {run_dir}", bar]
    d, t = report.get("data", {}), report.get("teacher", {})
    nw = d.get("n_windows", {})
    lines.append(f"data     {d.get('source')}: {d.get('n_snapshots', 0):,} snapshots, windows "
                 f"{nw.get('train', 0):,}/{nw.get('val', 0):,}/{nw.get('test', 0):,} (train/val/test)")
    lines.append(f"teacher  {t.get('model')} · {t.get('n_layers')} layers × {t.get('hidden_size')} · "
                 f"cache {'hit' if t.get('cache_hit') else 'miss'} {t.get('fingerprint')}")
    best = report.get("probe", {}).get("best_layer", {})
    summ = report.get("probe", {}).get("summary", {})
    lines.append("probe    layer chosen on val " + ", ".join(
        f"{k}={v} (test R² {_fmt(summ.get(k, {}).get('r2'))}, raw {_fmt(summ.get(k, {}).get('raw_r2'))})"
        for k, v in best.items()))
    moe = report.get("moe", {})
    if moe:
        r2 = moe.get("test", {})
        lines.append(f"MoE      {moe.get('mode')}: test R² " + ", ".join(
            f"{k} {_fmt(v.get('r2'))}" for k, v in r2.items()))
    bt = report.get("backtest", {})
    if bt:
        lines.append("backtest pooled PnLMAP " + "  ".join(f"{p} {_fmt(m.get('pnlmap'), '.3g')}"
                                                           for p, m in policies(bt).items()))
        verdicts = {p: v["verdict"] for p, v in bt.get("paired", {}).items()}
        if verdicts:
            lines.append("         cmm vs " + ", ".join(f"{p}: {v}" for p, v in verdicts.items()))
    lat = report.get("latency_us", {})
    if lat:
        lines.append(f"latency  teacher {_fmt(lat.get('teacher'), ',.0f')} µs · CMM {_fmt(lat.get('cmm'), '.1f')} µs "
                     f"per decision (×{_fmt(lat.get('ratio'), ',.0f')})")
    lines += _files(report, run_dir)
    lines.append(bar)
    print("\n".join(lines))


def _files(report: dict, run_dir: Path) -> list[str]:
    """Where the files went: the run folder's main outputs (those that exist), the teacher cache, the logs."""
    def present(*names):
        return [n for n in names if (run_dir / n).exists()]

    heat = sorted(p.name for p in (run_dir / "probe").glob("heatmap_*.png"))
    out = ["files    " + "  ".join(present("report.json", "config.yaml", "data_summary.json"))]
    out.append("         " + "  ".join(present("probe/probe.json") + ([f"probe/{{{','.join(h[8:-4] for h in heat)}}}"
                                                                      f".png"] if heat else [])
                                        + present("backtest/equity.png", "checkpoints/cmm.pt", "rl")))
    cache = report.get("teacher", {}).get("path") or report.get("teacher", {}).get("cache_dir")
    if cache:
        out.append(f"cache    {cache}")
    lg = report.get("logger", {})
    if lg.get("kind") == "csv" and lg.get("metrics"):
        out.append(f"logs     {lg['metrics']}")
    elif lg.get("kind") == "wandb":
        where = lg.get("url") or lg.get("dir")
        out.append(f"W&B      {'offline run ' if lg.get('offline') else ''}{where}")
        if lg.get("sync"):
            out.append(f"         upload later with: {lg['sync']}")
    return out

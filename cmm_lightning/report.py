"""The one-screen summary at the end of ``fit``: the headline numbers and where the files went."""

from __future__ import annotations

from pathlib import Path


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


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
    lines.append("probe    best layer " + ", ".join(f"{k}={v}" for k, v in best.items()))
    moe = report.get("moe", {})
    if moe:
        r2 = moe.get("test", {})
        lines.append(f"MoE      {moe.get('mode')}: test R² " + ", ".join(
            f"{k} {_fmt(v.get('r2'))}" for k, v in r2.items()))
    bt = report.get("backtest", {})
    if bt:
        lines.append("backtest " + "  ".join(f"{p}: PnLMAP {_fmt(m.get('pnlmap'), '.3g')}" for p, m in bt.items()))
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

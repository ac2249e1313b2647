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
    lines.append("files    " + "  ".join(p for p in ("config.yaml", "report.json", "probe/probe.json",
                                                         "probe/heatmap_<regime>.png", "backtest/equity.png",
                                                         "checkpoints/cmm.pt")))
    lines.append(bar)
    print("\n".join(lines))

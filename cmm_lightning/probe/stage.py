"""The ``probe`` stage: run the probe on the cached teacher features, write ``probe/``, print the
table (the layer chosen on val, its val and test R², the raw-input controls, the information gain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fluorescence import run_probe
from .result import ProbeResult


_SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values: np.ndarray) -> str:
    """F profile over layers as one character per layer (blank = 0, █ = 1)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1)
    return "".join(_SPARK[int(round(x * (len(_SPARK) - 1)))] for x in v)


def format_table(res: ProbeResult) -> str:
    """Compact per-task table (regime "all"): the layer chosen on val with its val and test R²,
    the control, the F profile over layers (val), the raw controls' test R², the information
    gain (test R² − the val-chosen raw control's test R²); then the per-regime brightest layers."""
    ia = res.regimes.index("all")
    summ = res.summary()
    raw_names = list(res.raw_r2)
    width = max(len(res.r2), 24)
    head = (f"{'task':<8}{'layer':>6}{'val R2':>8}{'test R2':>9}{'ctrl':>7}  "
            f"{'F_val profile (layer 0 .. ' + str(len(res.r2) - 1) + ')':<{width}}")
    head += "".join(f"{'raw ' + n:>12}" for n in raw_names) + ("{:>8}  beats raw (val)".format("gain") if raw_names else "")
    lines = [head]
    F_val = res.F_val
    for k, t in enumerate(res.tasks):
        s = summ[t]
        line = (f"{t:<8}{s['best_layer']:>6}{_f(s['r2_val']):>8}{_f(s['r2']):>9}{_f(s['control_r2']):>7}  "
                f"{sparkline(F_val[:, k, ia]):<{width}}")
        line += "".join(f"{_f(s['raw_r2_' + n]):>12}" for n in raw_names)
        if raw_names:
            nb = len(s["layers_beating_raw"])
            line += f"{_f(s['gain'], '+.3f'):>8}  {'yes' if s['beats_raw'] else 'no':<3} ({nb} layer{'s' if nb != 1 else ''})"
        lines.append(line)
    byr = res.plan["best_layer_by_regime"]
    lines.append("best layer by regime (val): " + "; ".join(
        f"{r}: " + " ".join(f"{t}={byr[r][t]}" for t in res.tasks) for r in byr))
    names = res.plan["group_names"]
    lines.append("groups: " + "  ".join(f"{n}={g[0]}-{g[-1]}" for n, g in zip(names, res.plan["groups"])))
    lines.append("layers and beats-raw are chosen on val (val R2 is optimistic); test R2 is reported only")
    return "\n".join(lines)


def _f(x, spec: str = ".3f") -> str:
    return "  n/a" if x is None else format(x, spec)


def run_probe_stage(cfg, windows, teacher_features, raw_prompt, run_dir, logger=None) -> ProbeResult:
    """The ``probe`` stage: run the probe on cached teacher features and write
    ``probe/probe.json``, ``probe/readout.npz`` and ``probe/heatmap_<regime>.png``;
    print the table; log the heatmaps to ``logger`` (W&B / TensorBoard; others skip).

    ``teacher_features``: ``.features`` memmap [N, L+1, H] and ``.ids`` window ids [N];
    ``raw_prompt``: [N, K] numbers the prompt renders, row-aligned with ``.ids`` (or None).
    """
    from .plots import heatmap, log_figure, save_figure

    ids = np.asarray(teacher_features.ids, dtype=np.int64)
    feats = teacher_features.features
    raw_window = windows.inputs(ids).reshape(len(ids), -1)
    res = run_probe(feats, windows.targets[ids], windows.regime[ids], windows.split[ids],
                    raw_prompt=raw_prompt, raw_window=raw_window, cfg_probe=cfg.probe)
    res.test_predictions["ids"] = ids[res.test_predictions.pop("rows")]  # feature rows -> window ids
    out = Path(run_dir) / "probe"
    res.save(out)
    beats = res.beats_raw
    layers = list(range(len(res.r2)))
    for r, name in enumerate(res.regimes):
        fig = heatmap(res.F[:, :, r], res.r2[:, :, r], layers, res.tasks,
                      title=f"fluorescence F, regime {name} (cells: test R²; plan chosen on val)",
                      beats_raw=None if beats is None else beats[:, :, r])
        save_figure(fig, out / f"heatmap_{name}.png")
        log_figure(logger, f"probe/heatmap_{name}", fig)
    n = res.n
    print(f"probe: {len(layers)} layers x {len(res.tasks)} tasks x {len(res.regimes)} regimes on "
          f"{n['train']['all']:,}/{n['val']['all']:,}/{n['test']['all']:,} train/val/test windows "
          f"in {res.seconds:.1f} s")
    print(format_table(res))
    summ = res.summary()
    if res.raw_r2:
        verdict = "; ".join(f"{t}: layer {summ[t]['best_layer']} "
                            f"{'beats' if summ[t]['beats_raw'] else 'does not beat'} the raw input on val "
                            f"(test gain {summ[t]['gain']:+.3f})" for t in res.tasks)
        print(f"note: {verdict}")
    print(f"wrote {out / 'probe.json'}, {out / 'readout.npz'}, {len(res.regimes)} heatmaps")
    return res


__all__ = ["format_table", "run_probe_stage", "sparkline"]

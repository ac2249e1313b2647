"""``evaluate``: the whole pipeline over many datasets (and training seeds), pooled with CIs.

Datasets (``evaluate.*``), each run by ``fit`` in its own folder ``run.dir/<dataset>/seed<k>``
(so every stage is reused exactly like ``fit``: a rerun is cheap, a crash resumes):

    synthetic_seeds   one synthetic market per ``data.synthetic.seed``
    paths             files or folders: a LOBSTER folder holding many days (and tickers) is one
                      dataset per day, a folder of tables one per file (``data.dataset_paths``)
    walk_forward      ``paths`` are days of one instrument: dataset k trains on days < k-1,
                      validates on day k-1 and tests on day k (``data.split_by=day``)
    datasets          explicit entries: {name: ..., <config overrides>} (e.g. the AMZN day with
                      its LOBSTER window spec)
    seeds             ``run.seed`` values: each dataset is trained once per seed

Pooling: PnL figures are converted to ticks per base clip (EPnL / (tick · market.base_size), MAP /
base_size), so instruments of different prices pool. Per dataset a policy's per-episode values are
first averaged over training seeds (the episodes are the same market, not new data); a dataset's
PnLMAP = ΣEPnL / Σ max(MAP, 1 share) over its episodes. The POOLED column is the mean of the
datasets' PnLMAP (every dataset weighs the same; a ratio of sums over all datasets' episodes would
weigh each dataset by the inventory the policy held there, so two policies tied on every dataset
could differ pooled), with a bootstrap CI that resamples episodes within each dataset, and cmm
against each baseline as the paired difference of that mean over the same episodes (CI, one-sided
permutation p-value swapping the two policies' episodes, Holm across baselines), plus the number
of datasets where cmm is ahead / behind (CI excluding zero and Holm-adjusted p < 0.05) /
indistinguishable. The spread over training seeds is the standard deviation of each dataset's
PnLMAP across seeds.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import CMMInputError
from .io import read_json, write_json

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(text: str) -> str:
    return _SLUG.sub("_", str(text)).strip("_") or "dataset"


def _source_of(path: str) -> str:
    p = Path(path)
    if p.suffix.lower() in (".npz", ".npy") or (p.is_dir() and any(p.glob("*.npz"))):
        return "hftbacktest"
    if p.is_dir() or re.search(r"_(orderbook|message)_\d+\.csv$", p.name):
        return "lobster"
    return "parquet" if p.suffix.lower() in (".parquet", ".pq") else "csv"


def datasets(ecfg) -> list[tuple[str, dict]]:
    """[(name, config overrides)] from the ``evaluate`` section (see the module docstring)."""
    from .data import dataset_paths

    out = [(f"synthetic_seed{s}", {"data": {"source": "synthetic", "synthetic": {"seed": int(s)}}})
           for s in ecfg.synthetic_seeds]
    days = []
    for entry in ecfg.paths:
        src = _source_of(str(entry))
        days += [(src, p) for p in dataset_paths(src, str(entry))]
    if ecfg.walk_forward:
        if len({s for s, _ in days}) > 1 or len(days) < 3:
            raise CMMInputError(f"config: evaluate.walk_forward needs >= 3 days of one source in evaluate.paths, "
                                f"got {len(days)}")
        for k in range(2, len(days)):
            out.append((f"walk_forward_{_slug(Path(days[k][1]).stem)}",
                        {"data": {"source": days[k][0], "path": [p for _, p in days[:k + 1]], "split_by": "day"}}))
    else:
        out += [(_slug(Path(p).stem), {"data": {"source": src, "path": p}}) for src, p in days]
    for d in ecfg.datasets:
        d = OmegaConf.to_container(d, resolve=True) if OmegaConf.is_config(d) else dict(d)
        name = d.pop("name", None)
        if not name:
            raise CMMInputError("config: every evaluate.datasets entry needs a name")
        out.append((_slug(name), d))
    names = [n for n, _ in out]
    if not out:
        raise CMMInputError("config: evaluate has no datasets (evaluate.synthetic_seeds, paths or datasets)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CMMInputError(f"config: evaluate datasets with the same name: {', '.join(dup)}")
    return out


def dataset_config(base: DictConfig, overrides: dict, run_dir: Path, seed: int, name: str) -> DictConfig:
    """The ``fit`` config of one dataset and training seed (unknown keys name the dataset)."""
    from .config import check_keys, merge, validate

    check_keys(overrides, f"evaluate dataset '{name}'")
    cfg = merge(base, OmegaConf.create(overrides), f"evaluate dataset '{name}'")
    cfg.run.dir, cfg.run.seed = str(run_dir), int(seed)
    validate(cfg)
    return cfg


def _normalised(report: dict) -> dict:
    """{policy: {"epnl", "map"} per-episode arrays in ticks·clips and clips} of one run's test table."""
    from .report import policies

    tick = float(report["data"]["tick_size"])
    base = float(report["config"]["base_size"])
    out = {}
    for name, m in policies(report["backtest"]).items():
        e = m["per_episode"]
        out[name] = {"epnl": np.asarray(e["epnl"]) / (tick * base), "map": np.asarray(e["map"]) / base}
    return out


def pooled_pnlmap(epnl, map_clips, base_size) -> float:
    """ΣEPnL / Σ max(MAP, 1 share), in ticks (EPnL in ticks·clips, MAP in clips)."""
    return float(np.sum(epnl) / np.sum(np.maximum(np.asarray(map_clips), 1.0 / base_size)))


def aggregate(runs: dict[str, list[dict]], base_size: float, seed: int = 0) -> dict:
    """{"datasets": {name: {policy: {pnlmap, ci, seed_std, n_episodes}, "paired": …}},
    "pooled": {policy: {pnlmap, ci}, "paired": {baseline: …}, "wins": …}} from the reports."""
    from .compare import add_holm_verdicts
    from .stats import ratio_ci, stratified_ratio

    floor = 1.0 / base_size  # MAP floored at one share, in clips
    per_ds, pooled_eps = {}, {}
    for name, reports in runs.items():
        norm = [_normalised(r) for r in reports]
        pols = [p for p in norm[0] if all(p in n for n in norm)]
        ds = {}
        for p in pols:
            e = np.mean([n[p]["epnl"] for n in norm], 0)  # over training seeds, episode by episode
            m = np.mean([n[p]["map"] for n in norm], 0)
            seeds = [pooled_pnlmap(n[p]["epnl"], n[p]["map"], base_size) for n in norm]
            ds[p] = {"pnlmap": pooled_pnlmap(e, m, base_size), "ci": list(ratio_ci(e, np.maximum(m, floor), seed=seed)),
                     "seed_std": float(np.std(seeds, ddof=1)) if len(seeds) > 1 else 0.0,
                     "n_episodes": int(len(e)), "epnl": e, "map": m}
            pooled_eps.setdefault(p, []).append((name, e, m))
        ds["paired"] = {p: _paired(ds["cmm"], ds[p], floor, seed) for p in pols if p != "cmm" and "cmm" in ds}
        add_holm_verdicts(ds["paired"])
        per_ds[name] = ds
    common = [p for p, parts in pooled_eps.items() if len(parts) == len(runs)]
    pooled = {}
    for p in common:
        e = np.concatenate([x[1] for x in pooled_eps[p]])
        m = np.maximum(np.concatenate([x[2] for x in pooled_eps[p]]), floor)
        strata = np.concatenate([np.full(len(x[1]), k) for k, x in enumerate(pooled_eps[p])])
        pooled[p] = {"pnlmap": stratified_ratio(e, m, strata), "ci": list(ratio_ci(e, m, seed=seed, strata=strata)),
                     "n_episodes": int(len(e)), "n_datasets": len(runs), "epnl": e, "map": m, "strata": strata}
    paired = {}
    if "cmm" in pooled:
        for p in common:
            if p == "cmm":
                continue
            r = _paired(pooled["cmm"], pooled[p], floor, seed, strata=pooled["cmm"]["strata"])
            r["datasets"] = {v: sum(per_ds[d]["paired"].get(p, {}).get("verdict") == v for d in per_ds)
                             for v in ("ahead", "behind", "indistinguishable")}
            paired[p] = r
        add_holm_verdicts(paired)
    for block in [*per_ds.values(), pooled]:
        for v in block.values():
            if isinstance(v, dict):
                v.pop("epnl", None), v.pop("map", None), v.pop("strata", None)
    pooled["paired"] = paired
    return {"datasets": per_ds, "pooled": pooled}


def _paired(a: dict, b: dict, floor: float, seed: int, strata=None) -> dict:
    from .stats import paired_test

    t = paired_test(a["epnl"], b["epnl"], np.maximum(a["map"], floor), np.maximum(b["map"], floor), seed=seed,
                    strata=strata)
    return {k: t[k] for k in ("diff", "ci", "p_value", "p_less")}


def evaluation_table(ev: dict) -> str:
    """One row per policy, one column block per dataset (pooled PnLMAP [CI], ticks), then pooled."""
    from .report import _ci

    names = list(ev["datasets"])
    pols = [p for p in ev["pooled"] if p != "paired"]
    w = 30
    head = f"{'policy':<20}" + "".join(f"{n[:w - 2]:>{w}}" for n in names) + f"{'POOLED':>{w}}"
    lines = ["PnLMAP (ticks; ΣEPnL / ΣMAP over a dataset's episodes) [95 % CI]; POOLED: the mean over datasets, "
             "each weighing the same", head]
    for p in pols:
        cells = [_ci(ev["datasets"][n][p]["pnlmap"], ev["datasets"][n][p]["ci"]) if p in ev["datasets"][n] else "n/a"
                 for n in names]
        cells.append(_ci(ev["pooled"][p]["pnlmap"], ev["pooled"][p]["ci"]))
        lines.append(f"{p:<20}" + "".join(f"{c:>{w}}" for c in cells))
    paired = ev["pooled"].get("paired", {})
    if paired:
        lines += ["", "cmm − baseline in the POOLED PnLMAP, the same episodes (95 % CI; p one-sided, Holm); "
                  "datasets where cmm is ahead / behind / indistinguishable",
                  f"{'baseline':<20}{'Δ PnLMAP':>30}{'p_holm':>9}  {'verdict':<18}{'ahead/behind/indist.':>22}"]
        for p, r in paired.items():
            d = r["datasets"]
            lines.append(f"{p:<20}{_ci(r['diff'], r['ci']):>30}{r.get('p_holm', float('nan')):>9.3f}  "
                         f"{r['verdict']:<18}{str(d['ahead']) + ' / ' + str(d['behind']) + ' / ' + str(d['indistinguishable']):>22}")
    return "\n".join(lines)


def gains_rows(runs: dict[str, list[dict]]) -> dict:
    """Per dataset (first training seed): the information and distillation gains with their CIs."""
    return {name: reports[0].get("gains", {}) for name, reports in runs.items()}


def evaluate(cfg: DictConfig) -> dict:
    """Run ``fit`` for every dataset x training seed, then pool (``evaluation.json``)."""
    from . import pipeline
    from .config import resolve_run_dir
    from .report import gains_table

    from .config import save_config

    root = resolve_run_dir(cfg)
    save_config(cfg, root)  # what this evaluation ran (each dataset's fit writes its own)
    ecfg = cfg.evaluate
    base = OmegaConf.merge(cfg, {"evaluate": {"synthetic_seeds": [], "paths": [], "datasets": []}})
    plan = datasets(ecfg)
    seeds = [int(s) for s in ecfg.seeds] or [int(cfg.run.seed)]
    configs = {(n, s): dataset_config(base, o, root / n / f"seed{s}", s, n) for n, o in plan for s in seeds}
    print(f"evaluate: {len(plan)} dataset(s) x {len(seeds)} training seed(s) -> {root}")
    t0, timings, runs = time.perf_counter(), {}, {}
    for (name, s), dcfg in configs.items():
        print(f"\n=== {name}, run.seed={s} ({dcfg.run.dir}) ===")
        t = time.perf_counter()
        pipeline.run("fit", dcfg)
        timings[f"{name}/seed{s}"] = round(time.perf_counter() - t, 1)
        report = read_json(Path(dcfg.run.dir) / "report.json")
        report["config"] = {"base_size": float(dcfg.market.base_size)}
        runs.setdefault(name, []).append(report)
    base_size = float(cfg.market.base_size)
    ev = aggregate(runs, base_size, seed=int(cfg.run.seed))
    ev["gains"] = gains_rows(runs)
    ev["timings_s"] = {**timings, "total": round(time.perf_counter() - t0, 1)}
    ev["units"] = "PnLMAP in ticks (EPnL in ticks x base clips, MAP in base clips of market.base_size shares)"
    write_json(root / "evaluation.json", ev)
    print("\n" + evaluation_table(ev))
    for name, g in ev["gains"].items():
        if g:
            print(f"\n{name}: " + gains_table(g))
    print(f"\nwrote {root / 'evaluation.json'}")
    return ev


__all__ = ["aggregate", "dataset_config", "datasets", "evaluate", "evaluation_table"]

"""The pipeline: each CLI subcommand is a stage; ``fit`` runs them in order.

Every stage writes into ``run.dir`` and is skipped when its output for the same fingerprint
already exists, so reruns are cheap and a crashed ``fit`` resumes.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from .config import resolve_run_dir, save_config
from .errors import CMMInputError
from .io import write_json


def prepare(cfg: DictConfig) -> dict:
    """Load + validate + window the data; write ``data_summary.json``."""
    from .data import build_windows

    run_dir = resolve_run_dir(cfg)
    t0 = time.perf_counter()
    windows = build_windows(cfg.data)
    summary = windows.summary()
    summary["source"] = windows.book.source
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(run_dir / "data_summary.json", summary)
    nw = summary["n_windows"]
    print(f"prepared {summary['n_snapshots']:,} snapshots from {summary['source']} in {summary['seconds']} s")
    print(f"windows: train {nw['train']:,}  val {nw['val']:,}  test {nw['test']:,}  "
          f"(T={windows.window}, h={windows.horizon})")
    print("regime cuts (realised vol, ticks): " + ", ".join(f"{c:.3f}" for c in summary["regime_cuts"]))
    for t, s in summary["targets"].items():
        print(f"  target {t:<7} mean {s['mean']:+.3f}  std {s['std']:.3f}")
    print(f"wrote {run_dir / 'data_summary.json'}")
    return summary


STAGES = {"prepare": prepare}


def run(command: str, cfg: DictConfig) -> None:
    stage = STAGES.get(command)
    if stage is None:
        raise CMMInputError(f"'{command}' is not available yet in this version of cmm_lightning")
    run_dir = resolve_run_dir(cfg)
    save_config(cfg, run_dir)
    stage(cfg)

"""The pipeline: each CLI subcommand is a stage; ``fit`` runs them all in order.

    prepare → cache-teacher → probe → students (layer, task, data) → Hájek-MoE → test → backtest

A :class:`Run` owns one run directory. Each stage output is a lazily computed property that is
skipped when its output for the same fingerprint already exists on disk (teacher features in
the shared cache, ``probe/probe.json``, student/MoE checkpoints), so reruns are cheap and a
crashed ``fit`` resumes where it stopped. Everything a run did ends up in ``report.json``.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from .config import cache_dir, resolve_run_dir, save_config
from .errors import CMMInputError
from .io import read_json, write_json


class Run:
    """One run directory plus the stage outputs computed so far."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = resolve_run_dir(cfg)
        save_config(cfg, self.dir)
        report_path = self.dir / "report.json"
        self.report: dict = read_json(report_path) if report_path.is_file() else {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def save_report(self) -> Path:
        self.report["timings_s"] = {**self.report.get("timings_s", {}), **self.timings}
        return write_json(self.dir / "report.json", self.report)

    def _timed(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.timings[name] = round(time.perf_counter() - t0, 3)
        return out

    @cached_property
    def logger(self):
        from .loggers import build_logger

        return build_logger(self.cfg, self.dir)

    # ------------------------------------------------------------------ stages
    @cached_property
    def windows(self):
        from .data import build_windows

        windows = self._timed("prepare", lambda: build_windows(self.cfg.data))
        summary = windows.summary()
        summary["source"] = windows.book.source
        write_json(self.dir / "data_summary.json", summary)
        self.report["data"] = {"source": summary["source"], "n_snapshots": summary["n_snapshots"],
                               "n_windows": summary["n_windows"]}
        return windows

    @cached_property
    def teacher(self):
        from .teacher import run_cache_teacher

        feats = self._timed("cache_teacher", lambda: run_cache_teacher(self.cfg, self.windows, self.dir))
        m = feats.meta
        self.report["teacher"] = {k: m.get(k) for k in ("model", "n_layers", "hidden_size", "fingerprint",
                                                         "template", "pooling", "windows_per_s", "tokens_per_s")}
        return feats


def prepare(run: Run) -> None:
    """Load + validate + window the data; write ``data_summary.json`` and print a summary."""
    w = run.windows
    s = read_json(run.dir / "data_summary.json")
    nw = s["n_windows"]
    print(f"prepared {s['n_snapshots']:,} snapshots from {s['source']} in {run.timings['prepare']} s")
    print(f"windows: train {nw['train']:,}  val {nw['val']:,}  test {nw['test']:,}  (T={w.window}, h={w.horizon})")
    print("regime cuts (realised vol, ticks): " + ", ".join(f"{c:.3f}" for c in s["regime_cuts"]))
    for t, st in s["targets"].items():
        print(f"  target {t:<7} mean {st['mean']:+.3f}  std {st['std']:.3f}")
    print(f"wrote {run.dir / 'data_summary.json'}")


def cache_teacher(run: Run) -> None:
    run.teacher
    run.save_report()


STAGES = {"prepare": prepare, "cache-teacher": cache_teacher}


def run(command: str, cfg: DictConfig) -> None:
    stage = STAGES.get(command)
    if stage is None:
        raise CMMInputError(f"'{command}' is not available yet in this version of cmm_lightning")
    stage(Run(cfg))

"""The pipeline: each CLI subcommand is a stage; ``fit`` runs them all in order.

    prepare → cache-teacher → probe → students (layer, task, data) → Hájek-MoE → test → backtest

A :class:`Run` owns one run directory. Each stage output is a lazily computed property that is
skipped when its output for the same fingerprint already exists on disk (teacher features in
the shared cache, ``probe/``, student/MoE checkpoints, RL agents), so reruns are cheap and a
crashed ``fit`` resumes where it stopped. Everything a run did ends up in ``report.json``.

Several processes (``trainer.devices=N trainer.strategy=ddp``, torchrun, SLURM): every rank runs
the same stages in the same order (so every Trainer call meets its peers), the Lightning stages
(teacher extraction, students, MoE) split their data over the ranks, and only global rank 0
writes files, logs, prints, and runs what no peer needs (RL agents, the backtest, latency).
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import resolve_run_dir, save_config
from .dist import distributed_run_id, is_global_zero
from .errors import CMMInputError
from .io import read_json_or_none, write_json
from .training import fingerprint_of

DIMENSIONS = ("layer", "task", "data")
_TRAINED = ("data", "teacher", "probe", "students", "moe", "trainer", "run.seed")
REPORT_BLOCKS = {  # report block -> the config sections that decide it (with the data)
    "data": ("data",),
    "teacher": ("data", "teacher"),
    "probe": ("data", "teacher", "probe"),
    "students": _TRAINED, "moe": _TRAINED, "baselines": _TRAINED,
    "backtest": (*_TRAINED, "market", "rl"), "gains": (*_TRAINED, "market", "rl"),
    "latency_us": (*_TRAINED, "market", "rl"),
}


class Run:
    """One run directory plus the stage outputs computed so far."""

    def __init__(self, cfg: DictConfig, command: str = "fit"):
        self.cfg, self.command = cfg, command
        self.dir = resolve_run_dir(cfg)
        self.rank_zero = is_global_zero()
        if self.rank_zero:
            save_config(cfg, self.dir)
        self.report: dict = {"run_dir": str(self.dir)}  # this invocation's blocks (see save_report)
        # none yet, or damaged (reported in one line): rebuilt by the stages that run
        self._previous = read_json_or_none(self.dir / "report.json", "rebuilding it") or {}
        self.timings: dict[str, float] = {}
        self._predictions: dict[str, np.ndarray] = {}

    def block_key(self, block: str) -> str:
        """Fingerprint of what decides a report block: the config sections it depends on and the
        data (book contents + window spec)."""
        sections = REPORT_BLOCKS[block]
        data = self.windows.fingerprint() if "windows" in self.__dict__ else None
        return fingerprint_of(block, data, {k: OmegaConf.select(self.cfg, k) for k in sections})

    def save_report(self) -> Path:
        """``report.json``: the blocks computed by this invocation, each stamped with its
        ``block_key`` under ``inputs``, plus the blocks of the previous report whose stamp still
        matches (computed with the same config and data). A block whose inputs changed is dropped,
        with everything downstream of it: a report never mixes numbers from two configs."""
        now = {b: self.block_key(b) for b in REPORT_BLOCKS}
        old = self._previous.get("inputs", {})
        for b in REPORT_BLOCKS:
            if b not in self.report and b in self._previous and old.get(b) == now[b]:
                self.report[b] = self._previous[b]
        self.report["inputs"] = {b: now[b] for b in REPORT_BLOCKS if b in self.report}
        same_run = all(old.get(b) == now[b] for b in REPORT_BLOCKS)
        self.report["timings_s"] = {**(self._previous.get("timings_s", {}) if same_run else {}), **self.timings}
        path = self.dir / "report.json"
        return write_json(path, self.report) if self.rank_zero else path

    @property
    def progress(self) -> bool:
        """Progress bars on (``trainer.enable_progress_bar``), on rank 0 only."""
        return bool(self.cfg.trainer.enable_progress_bar) and self.rank_zero

    def timed(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.timings[name] = round(time.perf_counter() - t0, 3)
        return out

    @cached_property
    def logger(self):
        from .loggers import build_logger

        return build_logger(self.cfg, self.dir, self.command)

    # ---------------------------------------------------------------- data → teacher → probe
    @cached_property
    def windows(self):
        from .data import build_windows
        from .market.engine import default_end_row
        from .market.episodes import resolve_episode_length

        windows = self.timed("prepare", lambda: build_windows(self.cfg.data))
        summary = windows.summary()
        summary["source"] = windows.book.source
        self.data_summary = summary
        if self.rank_zero:
            write_json(self.dir / "data_summary.json", summary)
        self.report["data"] = {"source": summary["source"], "n_snapshots": summary["n_snapshots"],
                               "tick_size": summary["tick_size"], "n_windows": summary["n_windows"],
                               "regime_cuts": summary["regime_cuts"]}
        # "auto" episodes: the test split in market.n_episodes parts; val (calibration), test and the
        # RL agents then all use this one length in rows
        rows = windows.end[windows.indices("test")]
        m = self.cfg.market
        m.episode_length = resolve_episode_length(m.episode_length, default_end_row(rows, windows.book.n) - rows[0],
                                                  m.n_episodes)
        return windows

    @cached_property
    def teacher(self):
        from .teacher import run_cache_teacher

        feats = self.timed("cache_teacher", lambda: run_cache_teacher(self.cfg, self.windows, self.dir))
        m = feats.meta
        self.report["teacher"] = {
            "model": m["model"], "n_layers": m["n_layers"], "hidden_size": m["hidden_size"],
            "fingerprint": feats.fingerprint, "template": m["template"], "pooling": m["pooling"],
            "n_windows": m["N"], "windows_per_s": m["windows_per_s"], "tokens_per_s": m["tokens_per_s"],
            "cache_hit": feats.hit, "path": str(feats.path),
        }
        from .loggers import log_scalars

        log_scalars(self.logger, "teacher", {k: m.get(k) for k in (
            "n_layers", "hidden_size", "N", "windows_per_s", "tokens_per_s", "model_tokens_per_s", "latency_us",
            "prefix_tokens", "window_tokens_mean", "world_size")} | {"cache_hit": feats.hit})
        return feats

    @cached_property
    def probe(self):
        from .probe import ProbeResult, run_probe_stage
        from .teacher.prompts import prompt_numbers

        from .training import fingerprint_of, mark_done, reusable

        probe_dir = self.dir / "probe"
        key = fingerprint_of("probe", self.teacher.fingerprint, self.cfg.probe)
        stamp = probe_dir / "fingerprint.json"
        if reusable(stamp, key, probe_dir / "probe.json", probe_dir / "readout.npz"):
            print(f"probe: reusing {probe_dir / 'probe.json'} (same teacher features and probe config)")
            res = ProbeResult.load(probe_dir)
        elif not self.rank_zero:  # the same closed-form probe (the plan), written to a scratch folder
            import tempfile

            raw = prompt_numbers(self.windows, self.teacher.ids, self.cfg.teacher.template)
            with tempfile.TemporaryDirectory(prefix="cmm-probe-") as tmp:
                res = run_probe_stage(self.cfg, self.windows, self.teacher, raw, tmp, None)
        else:
            raw = prompt_numbers(self.windows, self.teacher.ids, self.cfg.teacher.template)
            res = self.timed("probe", lambda: run_probe_stage(self.cfg, self.windows, self.teacher, raw,
                                                              self.dir, None))
            mark_done(stamp, key, probe_dir / "probe.json", probe_dir / "readout.npz")
        summ = res.summary()
        self.report["probe"] = {"best_layer": res.plan["best_layer"], "plan": res.plan, "summary": summ,
                                "selection": "layers and beats_raw chosen on val; r2 = test R² of that layer"}
        from .loggers import log_image_files, log_scalars

        log_scalars(self.logger, "probe", {"best_layer": res.plan["best_layer"], "summary": summ})
        log_image_files(self.logger, {f"probe/heatmap_{r}": probe_dir / f"heatmap_{r}.png" for r in res.regimes})
        return res

    # ---------------------------------------------------------------- students → MoE
    @cached_property
    def datamodule(self):
        from .data.datamodule import LOBDataModule

        t = self.teacher
        return LOBDataModule(self.windows, batch_size=self.cfg.data.batch_size,
                             num_workers=self.cfg.data.num_workers, teacher=t.features, teacher_ids=t.ids,
                             seed=self.cfg.run.seed)

    def _callbacks(self, probe: bool = True) -> list:
        """Every student module and MoE: the val backtest each epoch; students: their probe too."""
        from .callbacks.backtest import BacktestCallback
        from .callbacks.probe import StudentProbeCallback

        out = [StudentProbeCallback(lambdas=list(self.cfg.probe.lambdas), figure=False)] if probe else []
        every = int(self.cfg.market.backtest_every_n_epochs)
        if every > 0:
            out.append(BacktestCallback(market_cfg=self.cfg.market, split="val", every_n_epochs=every,
                                        log_figure=False))
        return out

    def _train_students(self, cfg, run_dir: Path, name: str = "", probe: bool = True) -> dict:
        """{dimension: trained students module}; ``name`` prefixes their logger stage and timings."""
        from .loggers import student_logger
        from .students import train_students

        plan = self.probe.plan
        return {d: self.timed(f"students_{name}{d}", lambda d=d: train_students(
            d, plan, self.datamodule, cfg, run_dir, logger=student_logger(self.logger, f"{name}{d}"),
            callbacks=self._callbacks(probe), fingerprint=self.teacher.fingerprint)) for d in DIMENSIONS}

    @cached_property
    def students(self) -> dict:
        """{dimension: trained students module} for layer, task and data students."""
        return self._train_students(self.cfg, self.dir)

    @cached_property
    def no_teacher_cfg(self) -> DictConfig:
        """The config of ``cmm_no_teacher``: the same students and MoE trained with α = γ = 0."""
        return OmegaConf.merge(self.cfg, {"students": {"alpha": 0.0, "gamma": 0.0}})

    @cached_property
    def students_no_teacher(self) -> dict:
        """The students of ``cmm_no_teacher``: same architectures, data and recipe, task loss only."""
        return self._train_students(self.no_teacher_cfg, self.dir / "no_teacher", "no_teacher_", probe=False)

    @cached_property
    def single_student(self):
        """The single_student_kd baseline: one student distilled from the teacher's last layer only
        (feature slice and KD readout both from it, FitNet-style), same architecture as a CMM student."""
        from .loggers import student_logger
        from .students import train_students

        last = int(self.teacher.meta["n_layers"])
        plan = {**self.probe.plan, "groups": [[last]], "group_names": ["last_layer"],
                "best_layer": {t: last for t in self.probe.plan["best_layer"]}}
        return self.timed("single_student_kd", lambda: train_students(
            "layer", plan, self.datamodule, self.cfg, self.dir / "single_student_kd",
            logger=student_logger(self.logger, "single_student_kd"), callbacks=self._callbacks(probe=False),
            fingerprint=self.teacher.fingerprint))

    def _train_moe(self, modules: list, mode: str, cfg, run_dir: Path, stage: str):
        from .loggers import moe_logger
        from .moe import train_moe

        return self.timed(stage, lambda: train_moe(modules, self.datamodule, cfg, run_dir, mode=mode,
                                                   logger=moe_logger(self.logger, stage[4:]),
                                                   callbacks=self._callbacks(probe=False),
                                                   fingerprint=self.teacher.fingerprint))

    @cached_property
    def moe(self) -> dict:
        """{mode: trained HajekMoE}: the configured mode first, then the ablations."""
        from .registry import MOE_MODES

        modes = [self.cfg.moe.mode] + ([m for m in MOE_MODES.names() if m != self.cfg.moe.mode]
                                       if self.cfg.moe.ablations else [])
        modules = list(self.students.values())
        return {m: self._train_moe(modules, m, self.cfg, self.dir, f"moe_{m}") for m in modes}

    @cached_property
    def moe_no_teacher(self):
        """``cmm_no_teacher``: the configured MoE mode over the no-teacher students."""
        mode = self.cfg.moe.mode
        return self._train_moe(list(self.students_no_teacher.values()), mode, self.no_teacher_cfg,
                               self.dir / "no_teacher", f"moe_no_teacher_{mode}")

    @cached_property
    def crossfit(self) -> np.ndarray:
        """[W, 3] out-of-fold CMM predictions on the train windows (``cmm_rl``'s training view)."""
        from .moe.crossfit import crossfit_predictions

        return self.timed("crossfit", lambda: crossfit_predictions(
            self.datamodule, self.probe.plan, self.cfg, self.dir / "crossfit", self.teacher.fingerprint,
            int(self.cfg.rl.crossfit_folds)))

    @cached_property
    def cmm(self):
        """The trained CMM (configured MoE mode) exported as one plain nn.Module, saved as ``cmm.pt``."""
        from .export import export_cmm, save_cmm

        model = export_cmm(self.moe[self.cfg.moe.mode])
        if self.rank_zero:
            save_cmm(model, self.dir / "checkpoints" / "cmm.pt")
        return model

    @cached_property
    def cmm_predictions(self) -> np.ndarray:
        """[W, 3] predictions of the configured MoE for every window (cmm policy, cmm_rl observation)."""
        return self.predictions("cmm")

    def predict(self, module, ids: np.ndarray) -> np.ndarray:
        """[len(ids), 3] predictions of a students/MoE module, in target units."""
        from .moe.crossfit import predict_ids

        return predict_ids(module, self.windows, ids)

    def predictions(self, policy: str) -> np.ndarray:
        """[W, 3] a prediction-driven policy's predictions for every window (target units), NaN
        where it has none (``registry.POLICIES``; ``cmm_<mode>``: an MoE ablation)."""
        if policy not in self._predictions:
            from .registry import POLICIES, load

            if policy.startswith("cmm_") and policy[4:] in self.moe:
                self._predictions[policy] = self.predict(self.moe[policy[4:]], np.arange(len(self.windows.end)))
            else:
                self._predictions[policy] = load(POLICIES.spec(policy).predictions)(self)
        return self._predictions[policy]

    @cached_property
    def agent_answers(self) -> dict:
        path = self.dir / "teacher" / "agent.npz"
        if not self.cfg.teacher.agent or not path.is_file():
            raise CMMInputError("policy 'llm_agent' needs teacher.agent=true (the teacher's generated numbers)")
        with np.load(path) as z:
            return {"ids": z["ids"], "preds": z["preds"]}


# -------------------------------------------------------------------- stages
def prepare(run: Run) -> None:
    """Load + validate + window the data; write ``data_summary.json`` and print a summary."""
    w = run.windows
    s = run.data_summary
    nw = s["n_windows"]
    print(f"prepared {s['n_snapshots']:,} snapshots from {s['source']} in {run.timings['prepare']} s")
    print(f"windows: train {nw['train']:,}  val {nw['val']:,}  test {nw['test']:,}  (T={w.window}, h={w.horizon})")
    print("regime cuts (realised vol, ticks): " + ", ".join(f"{c:.3f}" for c in s["regime_cuts"]))
    for t, st in s["targets"].items():
        print(f"  target {t:<7} mean {st['mean']:+.3f}  std {st['std']:.3f}")
    print(f"wrote {run.dir / 'data_summary.json'}")
    run.save_report()


def cache_teacher(run: Run) -> None:
    run.teacher
    run.save_report()


def probe(run: Run) -> None:
    run.probe
    run.save_report()


def test(run: Run) -> None:
    """Test metrics (R², MSE, MAE per task) of every student, the MoE and its ablations, and the
    distilled baselines (cmm_no_teacher, single_student_kd)."""
    from .students import evaluate

    dm = run.datamodule
    students = {}
    for dim, module in run.students.items():
        params = module.students.params_per_student()
        for name, metrics in evaluate(module, dm, "test").items():
            if name in module.student_names:
                students[name] = {"dimension": dim, "params": int(params), "test": metrics}
    run.report["students"] = students
    moe_rep = {"mode": run.cfg.moe.mode, "ablations": {}}
    for mode, module in run.moe.items():
        metrics = evaluate(module, dm, "test")
        key = next(iter(metrics))  # the MoE's own prediction comes first
        entry = {"test": metrics[key], "weights": module.mean_weights(dm, "test")}
        if mode == run.cfg.moe.mode:
            moe_rep.update(entry)
        else:
            moe_rep["ablations"][mode] = entry
    run.report["moe"] = moe_rep
    baselines = {}
    policies = list(run.cfg.market.policies)
    if "cmm_no_teacher" in policies:
        baselines["cmm_no_teacher"] = {"test": evaluate(run.moe_no_teacher, dm, "test")["moe"]}
    if "single_student_kd" in policies:
        baselines["single_student_kd"] = {"test": evaluate(run.single_student, dm, "test")["layer_mean"]}
    run.report["baselines"] = baselines
    from .report import test_table

    print(test_table(students, moe_rep, baselines))
    from .loggers import log_scalars

    for name, s in students.items():
        log_scalars(run.logger, f"student/{name}/test", s["test"])
    log_scalars(run.logger, f"moe/{moe_rep['mode']}/test", moe_rep["test"])
    log_scalars(run.logger, f"moe/{moe_rep['mode']}/weights", moe_rep["weights"])
    for mode, e in moe_rep["ablations"].items():
        log_scalars(run.logger, f"moe/{mode}/test", e["test"])
    for name, e in baselines.items():
        log_scalars(run.logger, f"baseline/{name}/test", e["test"])
    run.save_report()


def _latency(run: Run) -> dict:
    """Per-decision latency at batch 1 on one CPU thread, like for like: from the book rows of one
    window to the three predictions. Teacher: render the prompt, tokenise, forward, pool (measured
    when its features were extracted, ``meta.json``; here only for a cache written without it).
    CMM: the compiled path book rows → input window → fused students + Hájek-MoE kernel."""
    from .config import cache_dir as _cache_dir
    from .export import book_decision_latency_us
    from .teacher import load_teacher, measure_latency_us
    from .teacher.cache import target_device

    ids = run.windows.indices("test")[:8]
    teacher_us = run.teacher.meta.get("latency_us")
    if teacher_us is None:
        model, tok, _ = load_teacher(run.cfg.teacher, _cache_dir(run.cfg), target_device(run.cfg))
        teacher_us = measure_latency_us(model, tok, run.windows, ids, run.cfg)
        del model
    cmm_us, cmm_p10 = book_decision_latency_us(run.cmm, run.windows.book, run.windows.end[ids])
    return {"teacher": teacher_us, "cmm": round(cmm_us, 2), "cmm_p10": round(cmm_p10, 2),
            "ratio": round(teacher_us / cmm_us, 1), "from": "book rows of one window to the 3 predictions"}


def backtest(run: Run) -> None:
    """Every policy calibrated on val and traded on the test split (same engine and fill model):
    tables with CIs and paired tests, the gains, report, equity plot."""
    from .io import atomic_path
    from .loggers import log_figure, log_results_table, log_scalars
    from .market import equity_figure
    from .report import backtest_tables, flat_rows, gains_table

    names = list(run.cfg.market.policies)
    # the Lightning stages first, on every rank (each Trainer call needs all its peers) ...
    if "cmm" in names or run.cfg.rl.enabled:
        run.moe
    if "cmm_no_teacher" in names:
        run.moe_no_teacher
    if "single_student_kd" in names:
        run.single_student
    if run.cfg.rl.enabled:
        run.crossfit
    if not run.rank_zero:  # ... then rank 0 alone: RL agents, backtest, figures, latency
        return
    from .compare import compare_policies, gains

    block, results = run.timed("backtest", lambda: compare_policies(run))
    run.report["backtest"] = block
    run.report["gains"] = gains(run, block)
    print(backtest_tables(block))
    print(gains_table(run.report["gains"]))
    fig = equity_figure(results)
    with atomic_path(run.dir / "backtest" / "equity.png") as tmp:
        fig.savefig(tmp, format="png")
    log_figure(run.logger, "backtest/equity", fig)
    rows, columns = flat_rows(block)
    log_scalars(run.logger, "backtest", {p: r for p, r in rows.items()})
    log_results_table(run.logger, "backtest/results", rows, columns)
    log_scalars(run.logger, "gains", run.report["gains"])
    run.report["latency_us"] = _latency(run)
    log_scalars(run.logger, "latency_us", run.report["latency_us"])
    run.save_report()


def fit(run: Run) -> None:
    """The whole pipeline, each stage reused when its output for the same fingerprint exists."""
    t0 = time.perf_counter()
    run.windows
    run.teacher
    run.probe
    run.save_report()
    test(run)
    backtest(run)
    run.timings["fit_total"] = round(time.perf_counter() - t0, 3)
    if not run.rank_zero:
        return
    from .loggers import log_model_artifact, logger_summary, update_summary
    from .report import flat_rows

    cmm_path = run.dir / "checkpoints" / "cmm.pt"
    run.cmm  # noqa: B018  (writes checkpoints/cmm.pt when no policy needed it yet)
    log_model_artifact(run.logger, cmm_path, name=f"cmm-{run.dir.name}",
                       metadata={"moe_mode": run.cfg.moe.mode, "students": list(run.report.get("students", {})),
                                 "teacher": run.report.get("teacher", {}).get("model"),
                                 "fingerprint": run.report.get("teacher", {}).get("fingerprint")})
    update_summary(run.logger, {"moe": {"test": run.report.get("moe", {}).get("test", {})},
                                "backtest": flat_rows(run.report.get("backtest", {}))[0],
                                "gains": run.report.get("gains", {}),
                                "latency_us": run.report.get("latency_us", {})})
    run.report["logger"] = logger_summary(run.logger)
    run.save_report()
    from .report import print_summary

    print_summary(run.report, run.dir)


STAGES = {"prepare": prepare, "cache-teacher": cache_teacher, "probe": probe, "fit": fit,
          "backtest": backtest, "test": test}


RUN_DIR_ENV = "CMM_RUN_DIR"  # rank 0 → the processes Lightning launches for the other devices


def run(command: str, cfg: DictConfig) -> None:
    """Run one stage (the CLI's entry). Sets up what several processes need: one run folder for all
    ranks (``CMM_RUN_DIR``, inherited by the processes Lightning launches; SLURM / torchrun job ids
    when every rank starts on its own), quiet stdout on ranks other than 0, and a logger that is
    closed (W&B finished) however the stage ends."""
    import os

    stage = STAGES.get(command)
    if stage is None:
        raise CMMInputError(f"'{command}' is not available in this version of cmm_lightning")
    if cfg.run.dir is None:
        inherited = os.environ.get(RUN_DIR_ENV) if not is_global_zero() else None
        job = distributed_run_id()
        if inherited or job:
            cfg.run.dir = inherited or str(Path("runs") / job)
    if is_global_zero():  # one writer per run folder; the ranks of a DDP job share rank 0's lock
        from .locks import hold

        with hold(resolve_run_dir(cfg)):
            _run_stage(stage, command, cfg)
    else:
        _run_stage(stage, command, cfg)


def _run_stage(stage, command: str, cfg: DictConfig) -> None:
    import os
    import sys

    r = Run(cfg, command)
    saved_env, saved_stdout = os.environ.get(RUN_DIR_ENV), sys.stdout
    os.environ[RUN_DIR_ENV] = str(r.dir.resolve())
    quiet = None if r.rank_zero else open(os.devnull, "w")
    if quiet is not None:
        sys.stdout = quiet
    ok = False
    try:
        stage(r)
        ok = True
    finally:
        if "logger" in r.__dict__:  # built by this stage
            from .loggers import finish

            finish(r.logger, exit_code=0 if ok else 1)
        if quiet is not None:
            sys.stdout = saved_stdout
            quiet.close()
        if saved_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved_env

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
from .io import read_json, write_json

DIMENSIONS = ("layer", "task", "data")
MOE_MODES = ("uniform", "gate", "hajek", "hajek_gate")


class Run:
    """One run directory plus the stage outputs computed so far."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = resolve_run_dir(cfg)
        self.rank_zero = is_global_zero()
        if self.rank_zero:
            save_config(cfg, self.dir)
        report_path = self.dir / "report.json"
        self.report: dict = read_json(report_path) if report_path.is_file() else {}
        self.report["run_dir"] = str(self.dir)
        self.timings: dict[str, float] = {}

    def save_report(self) -> Path:
        self.report["timings_s"] = {**self.report.get("timings_s", {}), **self.timings}
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

        return build_logger(self.cfg, self.dir)

    # ---------------------------------------------------------------- data → teacher → probe
    @cached_property
    def windows(self):
        from .data import build_windows

        windows = self.timed("prepare", lambda: build_windows(self.cfg.data))
        summary = windows.summary()
        summary["source"] = windows.book.source
        self.data_summary = summary
        if self.rank_zero:
            write_json(self.dir / "data_summary.json", summary)
        self.report["data"] = {"source": summary["source"], "n_snapshots": summary["n_snapshots"],
                               "n_windows": summary["n_windows"], "regime_cuts": summary["regime_cuts"]}
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

        probe_dir = self.dir / "probe"
        key = {"teacher": self.teacher.fingerprint, "probe": OmegaConf.to_container(self.cfg.probe)}
        stamp = probe_dir / "fingerprint.json"
        if stamp.is_file() and read_json(stamp) == key and (probe_dir / "probe.json").is_file():
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
            write_json(stamp, key)
        summ = res.summary()
        self.report["probe"] = {"best_layer": res.plan["best_layer"], "plan": res.plan, "summary": summ}
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

    def _callbacks(self) -> list:
        from .callbacks.probe import StudentProbeCallback

        return [StudentProbeCallback(lambdas=list(self.cfg.probe.lambdas), figure=False)]

    @cached_property
    def students(self) -> dict:
        """{dimension: trained students module} for layer, task and data students."""
        from .loggers import student_logger
        from .students import train_students

        plan = self.probe.plan
        out = {}
        for dim in DIMENSIONS:
            out[dim] = self.timed(f"students_{dim}", lambda d=dim: train_students(
                d, plan, self.datamodule, self.cfg, self.dir, logger=student_logger(self.logger, d),
                callbacks=self._callbacks(), fingerprint=self.teacher.fingerprint))
        return out

    @cached_property
    def single_student(self):
        """The single_student_kd baseline: one student distilled from the teacher's last layer only."""
        from .loggers import student_logger
        from .students import train_students

        last = int(self.teacher.meta["n_layers"])
        plan = {**self.probe.plan, "groups": [[last]], "group_names": ["last_layer"]}
        return self.timed("single_student_kd", lambda: train_students(
            "layer", plan, self.datamodule, self.cfg, self.dir / "single_student_kd",
            logger=student_logger(self.logger, "single_student_kd"), fingerprint=self.teacher.fingerprint))

    @cached_property
    def moe(self) -> dict:
        """{mode: trained HajekMoE}: the configured mode first, then the ablations."""
        from .loggers import moe_logger
        from .moe import train_moe

        modes = [self.cfg.moe.mode] + ([m for m in MOE_MODES if m != self.cfg.moe.mode]
                                       if self.cfg.moe.ablations else [])
        modules = list(self.students.values())
        return {m: self.timed(f"moe_{m}", lambda m=m: train_moe(modules, self.datamodule, self.cfg, self.dir,
                                                                   mode=m, logger=moe_logger(self.logger, m),
                                                                   fingerprint=self.teacher.fingerprint))
                for m in modes}

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
        return self.predict(self.moe[self.cfg.moe.mode], np.arange(len(self.windows.end)))

    def predict(self, module, ids: np.ndarray, batch: int = 2048) -> np.ndarray:
        """[len(ids), 3] predictions of a students/MoE module, in target units."""
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(ids), batch):
                x = torch.from_numpy(self.windows.inputs(ids[s:s + batch]))
                out.append(module.predict_windows(x).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3), np.float32)


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
    """Test metrics (R², MSE, MAE per task) of every student, the MoE and its ablations."""
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
    _print_test_table(students, moe_rep)
    from .loggers import log_scalars

    for name, s in students.items():
        log_scalars(run.logger, f"student/{name}/test", s["test"])
    log_scalars(run.logger, f"moe/{moe_rep['mode']}/test", moe_rep["test"])
    log_scalars(run.logger, f"moe/{moe_rep['mode']}/weights", moe_rep["weights"])
    for mode, e in moe_rep["ablations"].items():
        log_scalars(run.logger, f"moe/{mode}/test", e["test"])
    run.save_report()


def _print_test_table(students: dict, moe_rep: dict) -> None:
    from .data import TASKS

    rows = [(f"{n} ({s['dimension']})", s["test"]) for n, s in students.items()]
    rows += [(f"MoE {moe_rep['mode']}", moe_rep["test"])]
    rows += [(f"MoE {m}", e["test"]) for m, e in moe_rep["ablations"].items()]
    print(f"{'model':<28}" + "".join(f"{t + ' R²':>12}" for t in TASKS))
    for name, m in rows:
        print(f"{name:<28}" + "".join(f"{m[t]['r2']:>12.3f}" for t in TASKS))


def _latency(run: Run) -> dict:
    """Per-decision latency at batch 1 on one CPU thread (or the GPU): teacher (prompt → features)
    and CMM. The teacher's figure was measured when its features were extracted (``meta.json``);
    it is measured here only for a cache written without it."""
    from .config import cache_dir as _cache_dir
    from .export import decision_latency_us
    from .teacher import load_teacher, measure_latency_us
    from .teacher.cache import target_device

    ids = run.windows.indices("test")[:8]
    teacher_us = run.teacher.meta.get("latency_us")
    if teacher_us is None:
        model, tok, _ = load_teacher(run.cfg.teacher, _cache_dir(run.cfg), target_device(run.cfg))
        teacher_us = measure_latency_us(model, tok, run.windows, ids, run.cfg)
        del model
    cmm_us, _ = decision_latency_us(run.cmm, run.windows.inputs(ids[:1])[0])
    return {"teacher": teacher_us, "cmm": cmm_us, "ratio": round(teacher_us / cmm_us, 1)}


def policy_signals(run: Run) -> dict:
    """{policy: signals [D, 4]} for every configured policy on the test split's decision rows."""
    from .market import avellaneda_stoikov, fixed_spread, predictions, train_volume_ref

    w, mcfg = run.windows, run.cfg.market
    test_ids = w.indices("test")
    rows = w.end[test_ids]
    vref = train_volume_ref(w)
    train_rows = (w.boundaries["train"][0] - w.window + 1, w.boundaries["train"][1] + 1)
    want = list(mcfg.policies)
    sig = {}
    for name in want:
        if name == "cmm":
            sig["cmm"] = predictions(run.cmm_predictions[test_ids], mcfg, vref)
            for mode, module in run.moe.items():
                if mode != run.cfg.moe.mode:
                    sig[f"cmm_{mode}"] = predictions(run.predict(module, test_ids), mcfg, vref)
        elif name == "fixed_spread":
            sig[name] = fixed_spread(len(rows), mcfg)
        elif name == "avellaneda_stoikov":
            sig[name] = avellaneda_stoikov(w.book, rows, mcfg, train_rows=train_rows)
        elif name == "teacher_probe":
            # the slow teacher as a trader: its probe readout from the latest window it has read
            # (features exist for teacher.max_windows windows; between them it holds its last view)
            t = run.teacher
            pos = np.maximum(np.searchsorted(t.ids, test_ids, side="right") - 1, 0)
            sig[name] = predictions(run.probe.readout(t.features[pos]), mcfg, vref)
        elif name == "single_student_kd":
            sig[name] = predictions(run.predict(run.single_student, test_ids), mcfg, vref)
        elif name == "llm_agent":
            sig[name] = _agent_signals(run, test_ids, vref)
        else:
            raise CMMInputError(f"config: market.policies has unknown policy '{name}'")
    if run.cfg.rl.enabled:
        from .market.rl import rl_policies

        sig.update(run.timed("rl", lambda: rl_policies(w, run.cfg, run.dir, preds=run.cmm_predictions,
                                                       logger=run.logger)))
    return sig


def _agent_signals(run: Run, test_ids: np.ndarray, vref: float) -> np.ndarray:
    """LLM-as-agent: the teacher's generated numbers (teacher.agent=true); unparsable → no move, train-mean spread."""
    from .market import predictions

    path = run.dir / "teacher" / "agent.npz"
    if not run.cfg.teacher.agent or not path.is_file():
        raise CMMInputError("policy 'llm_agent' needs teacher.agent=true (the teacher's generated numbers)")
    blob = np.load(path)
    preds = np.full((len(test_ids), 3), np.nan, np.float32)
    pos = np.searchsorted(test_ids, blob["ids"])
    preds[pos] = blob["preds"]
    fallback = run.windows.targets[run.windows.indices("train")].mean(axis=0)
    preds = np.where(np.isnan(preds), fallback, preds)
    return predictions(preds, run.cfg.market, vref)


def _run_policies(run: Run, signals: dict) -> dict:
    """One backtest per policy (same rows, episodes, fill model), with a progress bar over policies."""
    from tqdm.auto import tqdm

    from .market import run_policies

    w, mcfg = run.windows, run.cfg.market
    out = {}
    bar = tqdm(signals.items(), desc="backtest", unit="policy", disable=not run.progress, leave=False)
    for name, sig in bar:
        bar.set_postfix_str(name)
        out.update(run_policies(w.book, w, {name: sig}, mcfg, episode_length=mcfg.episode_length))
    return out


def backtest(run: Run) -> None:
    """Every policy on the test split, same engine and fill model; table, report, equity plot."""
    from .io import atomic_path
    from .loggers import log_figure, log_results_table, log_scalars
    from .market import equity_figure, results_table
    from .market.metrics import METRIC_NAMES

    # the Lightning stages first, on every rank (each Trainer call needs all its peers) ...
    if "cmm" in run.cfg.market.policies or run.cfg.rl.enabled:
        run.moe
    if "single_student_kd" in run.cfg.market.policies:
        run.single_student
    if not run.rank_zero:  # ... then rank 0 alone: RL agents, backtest, figures, latency
        return
    signals = policy_signals(run)
    results = run.timed("backtest", lambda: _run_policies(run, signals))
    metrics = {k: r.metrics for k, r in results.items()}
    run.report["backtest"] = metrics
    print(results_table(metrics))
    fig = equity_figure(results)
    with atomic_path(run.dir / "backtest" / "equity.png") as tmp:
        fig.savefig(tmp, format="png")
    log_figure(run.logger, "backtest/equity", fig)
    log_scalars(run.logger, "backtest", metrics)
    log_results_table(run.logger, "backtest/results", metrics, METRIC_NAMES + ("n_episodes",))
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

    cmm_path = run.dir / "checkpoints" / "cmm.pt"
    run.cmm  # noqa: B018  (writes checkpoints/cmm.pt when no policy needed it yet)
    log_model_artifact(run.logger, cmm_path, name=f"cmm-{run.dir.name}",
                       metadata={"moe_mode": run.cfg.moe.mode, "students": list(run.report.get("students", {})),
                                 "teacher": run.report.get("teacher", {}).get("model"),
                                 "fingerprint": run.report.get("teacher", {}).get("fingerprint")})
    update_summary(run.logger, {"moe": {"test": run.report.get("moe", {}).get("test", {})},
                                "backtest": run.report.get("backtest", {}),
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
    import sys

    stage = STAGES.get(command)
    if stage is None:
        raise CMMInputError(f"'{command}' is not available in this version of cmm_lightning")
    if cfg.run.dir is None:
        inherited = os.environ.get(RUN_DIR_ENV) if not is_global_zero() else None
        job = distributed_run_id()
        if inherited or job:
            cfg.run.dir = inherited or str(Path("runs") / job)
    r = Run(cfg)
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

"""Lightning loggers chosen by ``logger.kind``: csv (default), wandb, none — and what the pipeline logs.

W&B runs offline unless credentials are present (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai), so a run never blocks on a login prompt and never touches the network; the run
folder (``<run.dir>/wandb/offline-run-*``) syncs later with ``wandb sync``. ``logger.offline``
forces either way; ``logger.project``, ``logger.entity`` and ``logger.tags`` go to ``wandb.init``.

One run = one logger = one W&B run. Every stage logs under its own prefix:

    teacher/…                     extraction throughput, shape, cache hit, latency
    probe/…                       best layer and R² per task, heatmaps (images), student probes
    student/<dimension>/…         train/val losses of one student module (layer, task, data, single_student_kd)
    student/<name>/…              per-student val metrics while training, test R²/MSE/MAE
    moe/<mode>/…                  the Hájek-MoE of each mode: losses, κ, τ, weights, test metrics
    backtest/<policy>/…           market metrics; ``backtest/results`` (table), ``backtest/equity`` (image)
    rl/<agent>/…                  PPO training curves

:class:`StageLogger` gives a stage's Trainer a view of the run logger that renames the keys its
LightningModule logs (``val/loss`` → ``student/layer/val/loss``), so the modules stay generic.
Only global rank 0 logs (Lightning's loggers are rank-zero-only; the helpers here check too).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .dist import is_global_zero


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_logger(cfg: DictConfig, run_dir: Path, name: str = "fit"):
    """The Lightning logger registered as ``logger.kind`` (``registry.LOGGERS``), writing under
    ``run_dir`` (``False`` for none)."""
    from .registry import LOGGERS

    return LOGGERS.get(cfg.logger.kind)(cfg, run_dir, name)


def none_logger(cfg: DictConfig, run_dir: Path, name: str):
    return False


def csv_logger(cfg: DictConfig, run_dir: Path, name: str):
    """``logs/<name>/metrics.csv``; a folder that already holds logs (an earlier invocation on the
    same run folder) is kept and this one writes ``logs/<name>-1``, ``-2``, ...: logs are never
    deleted (Lightning's CSV logger would overwrite them)."""
    from lightning.pytorch.loggers import CSVLogger

    version, k = name, 0
    while (Path(run_dir) / "logs" / version).exists() and any((Path(run_dir) / "logs" / version).iterdir()):
        k += 1
        version = f"{name}-{k}"
    return CSVLogger(save_dir=str(run_dir), name="logs", version=version)


def wandb_logger(cfg: DictConfig, run_dir: Path, name: str):
    """W&B, offline unless credentials are present (see the module docstring)."""
    from lightning.pytorch.loggers import WandbLogger

    offline = cfg.logger.offline if cfg.logger.offline is not None else not wandb_has_credentials()
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # no login prompt, no network; `wandb sync` later
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")  # keep the terminal ours (progress bars)
    if is_global_zero():
        _finish_stale_wandb_run()
    logger = WandbLogger(
        project=cfg.logger.project, entity=cfg.logger.entity, tags=list(cfg.logger.tags),
        save_dir=str(run_dir), offline=bool(offline), name=Path(run_dir).name, job_type=name,
        settings=_wandb_settings(),
        # the resolved config goes to wandb.init: it is part of the run record. A config.update
        # right after init was sometimes missing from the offline run log (not published when the
        # run's interface was not attached yet; seen in 2 of 4 full test runs)
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    return logger


def _wandb_settings():
    import wandb

    return wandb.Settings(silent=True, console="off", x_disable_stats=True)


def _finish_stale_wandb_run() -> None:
    """A run left open in this process (a crashed fit in a notebook) must not swallow the new one."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1)


def is_wandb(logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def wandb_run_dir(logger) -> Optional[Path]:
    """The local W&B run folder (``…/wandb/offline-run-<time>-<id>``), once the run exists."""
    if not is_wandb(logger) or not is_global_zero():
        return None
    d = getattr(logger.experiment, "dir", None)  # …/files
    return Path(d).resolve().parent if d else None


def logger_summary(logger) -> dict:
    """{kind, dir, (sync)}: where the logger wrote, for the report and the final summary."""
    if not logger:
        return {"kind": "none"}
    if is_wandb(logger):
        d = wandb_run_dir(logger)
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        out = {"kind": "wandb", "offline": offline, "dir": str(d) if d else None,
               "project": logger.experiment.project if is_global_zero() else None}
        if offline and d:
            out["sync"] = f"wandb sync {d}"
        elif is_global_zero():
            out["url"] = getattr(logger.experiment, "url", None)
        return out
    log_dir = getattr(logger, "log_dir", None)
    return {"kind": "csv", "dir": log_dir, "metrics": str(Path(log_dir) / "metrics.csv") if log_dir else None}


# ------------------------------------------------------------------------------------------- stage views
class StageLogger(Logger):
    """One stage's view of the run logger: every key goes through ``rename``; all else is the base's.

    Hyperparameters a stage's module logs are nested under ``stage`` (W&B config ``stage.key``),
    so the resolved run config stays at the top level. ``finalize`` only saves: the run goes on.
    """

    def __init__(self, base: Logger, stage: str, rename: Callable[[str], str]):
        super().__init__()
        self.base, self.stage, self.rename = base, stage, rename

    @property
    def name(self):
        return self.base.name

    @property
    def version(self):
        return self.base.version

    @property
    def save_dir(self):
        return self.base.save_dir

    @property
    def log_dir(self):
        return getattr(self.base, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return self.base.experiment

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.base.log_metrics({self.rename(k): v for k, v in metrics.items()}, step)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        from lightning.fabric.utilities.logger import _convert_params

        self.base.log_hyperparams({self.stage: _convert_params(params)})

    def save(self) -> None:
        self.base.save()

    def finalize(self, status: str) -> None:
        self.base.save()

    def __getattr__(self, item):
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(item)
        attr = getattr(base, item)  # AttributeError when the base lacks it (hasattr stays honest)
        if item in ("log_image", "log_table"):
            return lambda key, *a, **k: attr(self.rename(key), *a, **k)
        return attr


def student_logger(logger, stage: str):
    """Keys of a students module: ``student/<name>/…`` and ``probe/…`` stay, the rest → ``student/<stage>/…``."""
    if not logger:
        return logger

    def rename(k: str) -> str:
        if k == "epoch" or k.startswith("student/"):
            return k
        if k.startswith("probe/"):
            return f"{k}/{stage}" if k == "probe/students" else k
        return f"student/{stage}/{k}"

    return StageLogger(logger, f"students_{stage}", rename)


def moe_logger(logger, mode: str):
    """Keys of a HajekMoE of ``mode``: ``moe/x`` and ``val/loss`` → ``moe/<mode>/x``, ``moe/<mode>/val/loss``."""
    if not logger:
        return logger

    def rename(k: str) -> str:
        if k == "epoch":
            return k
        return f"moe/{mode}/{k[4:] if k.startswith('moe/') else k}"

    return StageLogger(logger, f"moe_{mode}", rename)


# ------------------------------------------------------------------------------------------- pipeline-level
def _numeric(d: dict, prefix: str) -> dict:
    """Flatten nested dicts of numbers into ``prefix/a/b`` keys (bools as 0/1; others skipped)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_numeric(v, key))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)) and v == v:  # not NaN
            out[key] = float(v)
    return out


def log_scalars(logger, prefix: str, values: dict) -> None:
    """Nested numbers → ``prefix/…`` scalars on the run logger (rank 0)."""
    if logger and is_global_zero():
        m = _numeric(values, prefix)
        if m:
            logger.log_metrics(m)


def log_figure(logger, key: str, fig) -> None:
    """Send a matplotlib figure to loggers that take images (W&B); others ignore it."""
    if logger and hasattr(logger, "log_image") and is_global_zero():
        import wandb

        logger.log_image(key=key, images=[wandb.Image(fig)])


def log_image_files(logger, key_paths: dict) -> None:
    """{key: png path} → images on loggers that take them (probe heatmaps are read back from disk)."""
    if logger and hasattr(logger, "log_image") and is_global_zero():
        import wandb

        for key, path in key_paths.items():
            if Path(path).is_file():
                logger.log_image(key=key, images=[wandb.Image(str(path))])


def log_results_table(logger, key: str, metrics: dict[str, dict], columns: tuple) -> None:
    """The backtest results, one row per policy, as a ``wandb.Table`` (W&B only)."""
    if not (logger and hasattr(logger, "log_table") and is_global_zero()):
        return
    rows = [[p] + [float(m.get(c, float("nan"))) for c in columns] for p, m in metrics.items()]
    logger.log_table(key=key, columns=["policy", *columns], data=rows)


def log_model_artifact(logger, path: Path, name: str, metadata: dict | None = None) -> None:
    """The final student set (``checkpoints/cmm.pt``) as a W&B model artifact (stored offline too)."""
    if not (is_wandb(logger) and is_global_zero() and Path(path).is_file()):
        return
    import wandb

    art = wandb.Artifact(name=name, type="model", metadata=metadata or {},
                         description="the trained CMM (students + Hájek-MoE) as one plain nn.Module")
    art.add_file(str(path), name=Path(path).name)
    logger.experiment.log_artifact(art)


def update_summary(logger, values: dict) -> None:
    """Headline numbers into the W&B run summary (the columns of the runs table)."""
    if is_wandb(logger) and is_global_zero():
        logger.experiment.summary.update(_numeric(values, ""))


def finish(logger, exit_code: int = 0) -> None:
    """Flush and close the run logger (W&B: ``wandb.finish`` writes the summary and closes the run)."""
    if not logger or not is_global_zero():
        return
    logger.save()
    if is_wandb(logger) and logger._experiment is not None:
        logger.experiment.finish(exit_code=exit_code)


# ------------------------------------------------------------------------------------------- offline runs
def _wandb_records(path: Path):
    """The protobuf records of a ``run-<id>.wandb`` transaction log (a LevelDB-style log: a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks ``crc32 u32 | length u16 | type u8 | data``,
    type 1 = full record, 2/3/4 = first/middle/last piece)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run log")
    block, pos, parts = 32768, 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        parts.append(chunk)
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            parts = []
            yield rec


def read_offline_run(run_folder: Path) -> dict:
    """What an offline W&B run folder holds, without syncing it: {config, history [rows], summary,
    artifacts [{name, type, metadata, files}], media [paths under files/], run {project, tags, …}}."""
    import json

    run_folder = Path(run_folder)
    log = next(run_folder.glob("run-*.wandb"))
    out: dict = {"run": {}, "config": {}, "history": [], "summary": {}, "artifacts": [], "media": []}

    def key(item):
        return item.key or "/".join(item.nested_key)

    for rec in _wandb_records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "entity": r.entity, "name": r.display_name,
                          "tags": list(r.tags), "job_type": r.job_type}
            for u in r.config.update:  # config set before the run record went out travels inside it
                out["config"][key(u)] = json.loads(u.value_json)
        elif kind == "config":
            for u in rec.config.update:
                out["config"][key(u)] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for u in rec.summary.update:
                out["summary"][key(u)] = json.loads(u.value_json)
        elif kind == "artifact":
            a = rec.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                     "files": [e.path for e in a.manifest.contents]})
    files = run_folder / "files"
    out["media"] = sorted(str(p.relative_to(files)) for p in (files / "media").rglob("*") if p.is_file())
    return out

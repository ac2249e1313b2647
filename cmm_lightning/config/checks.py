"""Config checks at load time: choices, values, paths, registered names (registry.py), the
teacher model (registered, a path, or in the local Hugging Face cache), market episodes and grids."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import CMMInputError


_CHOICES = {
    "data.source": ("synthetic", "lobster", "csv", "parquet", "hftbacktest"),
    "data.split_by": ("fraction", "day"),
    "data.hftbacktest.crossed": ("error", "resolve"),
    "teacher.pooling": ("mean", "last"),
    "probe.grouping": ("thirds", "profile"),
    "students.feat_loss": ("nmse", "cosine"),
    "moe.sigma": ("median", "learned"),
    "moe.fit_on": ("train", "val"),
    "market.calibrate.objective": ("pnlmap", "epnl", "sharpe"),
    "rl.action": ("discrete", "continuous"),
}


def validate(cfg: DictConfig) -> None:
    """Every check of a loaded config (a CMMInputError naming the key for the first that fails)."""
    for key, choices in _CHOICES.items():
        val = OmegaConf.select(cfg, key)
        if val not in choices:
            raise CMMInputError(f"config: {key}={val!r} is not one of {', '.join(choices)}")
    _validate_data(cfg.data)
    _validate_teacher(cfg.teacher)
    _validate_run_dir(cfg.run.dir)
    _validate_data_path(cfg.data.path)
    _validate_registered(cfg)
    _validate_teacher_model(cfg.teacher)
    _validate_market(cfg)  # last: it imports the market package (torch)


def _validate_data(data: DictConfig) -> None:
    """Numbers of ``data.*`` (windows, depth, tick size, splits, window budget)."""
    split = list(data.split) if isinstance(data.split, (list, ListConfig)) else None
    try:
        fr = [float(x) for x in split] if split is not None else None
    except (TypeError, ValueError):
        fr = None
    if fr is None or len(fr) != 3 or any(not math.isfinite(x) or x <= 0 for x in fr):
        raise CMMInputError(f"config: data.split={_show(data.split)} must be three positive fractions "
                            "(train, val, test) that sum to 1")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise CMMInputError(f"config: data.split={_show(data.split)} sums to {sum(fr):.6g}; the train, val "
                            "and test fractions must sum to 1")
    if data.gap is not None and data.gap < data.horizon:
        raise CMMInputError(f"config: data.gap={data.gap} must be at least data.horizon={data.horizon}")
    for key in ("window", "horizon", "stride", "synthetic.days", "batch_size"):
        if OmegaConf.select(data, key) < 1:
            raise CMMInputError(f"config: data.{key} must be >= 1, got {OmegaConf.select(data, key)}")
    for key, null in (("levels", "5, or the file's depth when it has fewer"), ("max_windows", "every window")):
        val = data[key]
        if val is not None and val < 1:
            raise CMMInputError(f"config: data.{key} must be >= 1 or null ({null}), got {val}")
    tick = float(data.tick_size)
    if not (math.isfinite(tick) and tick > 0):
        raise CMMInputError(f"config: data.tick_size must be a positive number (currency per tick, e.g. 0.01), "
                            f"got {data.tick_size}")
    hb = data.hftbacktest
    if hb.interval_ns is not None and hb.interval_ns < 1:
        raise CMMInputError(f"config: data.hftbacktest.interval_ns must be >= 1 or null (one row per exchange "
                            f"timestamp), got {hb.interval_ns}")
    if hb.lot_size is not None and not (math.isfinite(float(hb.lot_size)) and float(hb.lot_size) > 0):
        raise CMMInputError(f"config: data.hftbacktest.lot_size must be a positive number or null (sizes as in "
                            f"the file), got {hb.lot_size}")


def _validate_teacher(teacher: DictConfig) -> None:
    for key in ("max_windows", "agent_max_windows"):
        val = teacher[key]
        if val is not None and val < 1:
            raise CMMInputError(f"config: teacher.{key} must be >= 1 or null (every window), got {val}")
    if teacher.batch_size < 1:
        raise CMMInputError(f"config: teacher.batch_size must be >= 1, got {teacher.batch_size}")


def _show(val: Any) -> str:
    if isinstance(val, (DictConfig, ListConfig)):
        val = OmegaConf.to_container(val)
    return str(val).replace(" ", "")


def _validate_run_dir(run_dir: Any) -> None:
    """``run.dir`` must be a folder or creatable as one: not an existing file, nor below a file."""
    if run_dir is None:
        return
    if not str(run_dir).strip():
        raise CMMInputError("config: run.dir is empty; give a folder (or leave it unset for runs/<timestamp>)")
    path = Path(os.path.expanduser(str(run_dir)))
    if path.exists() and not path.is_dir():
        raise CMMInputError(f"config: run.dir={run_dir} is an existing file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CMMInputError(f"config: run.dir={run_dir} lies below {parent}, which is a file, not a folder")
            break


def _validate_registered(cfg: DictConfig) -> None:
    """Every choice made by name is a registered one (registry.py), the closest named otherwise."""
    from ..registry import ENCODERS, FILL_MODELS, LOGGERS, MOE_MODES, POLICIES

    for key, registry in (("students.encoder", ENCODERS), ("moe.mode", MOE_MODES),
                          ("market.fill_model", FILL_MODELS), ("logger.kind", LOGGERS)):
        registry.check(OmegaConf.select(cfg, key))
    for name in cfg.market.policies:
        for need in POLICIES.check(name) and POLICIES.spec(name).needs:
            if not OmegaConf.select(cfg, need):
                raise CMMInputError(f"config: policy '{name}' needs {need}=true")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def hub_cache_dir() -> str:
    """The local Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ~/.cache/huggingface/hub)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))


def in_hub_cache(repo_id: str) -> bool:
    """True when the hub model ``repo_id`` (config and weights) is in the local Hugging Face cache.
    Looks at files only, never at the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False

    def cached(filename: str) -> bool:
        try:
            hit = try_to_load_from_cache(repo_id, filename)
        except Exception:  # not a valid repo id
            return False
        return isinstance(hit, str) and os.path.isfile(hit)

    return cached("config.json") and any(cached(w) for w in WEIGHT_FILES)


def looks_like_path(name: str) -> bool:
    """``teacher.model`` values that can only be meant as a file or folder (not a hub id org/name)."""
    return (name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name
            or name.lower().endswith((".gguf", ".safetensors", ".bin", ".pt", ".pth")))


def hub_not_cached(name: str) -> CMMInputError:
    return CMMInputError(f"config: teacher.model={name!r} is not a registered name, a local file or folder, "
                         f"or a model in the local Hugging Face cache ({hub_cache_dir()}); set "
                         "teacher.allow_download=true to download it from the hub")


def _validate_teacher_model(teacher: DictConfig) -> None:
    """``teacher.model``: a registered name, an existing file or folder, a hub id already in the
    local Hugging Face cache, or (only with ``teacher.allow_download=true``) a hub id to download.
    Anything else fails here, at once, without touching the network."""
    from ..registry import TEACHER_MODELS

    model = str(teacher.model)
    if model in TEACHER_MODELS or model.lower() in TEACHER_MODELS:
        return
    if Path(os.path.expanduser(model)).exists():
        return
    if looks_like_path(model):
        raise CMMInputError(f"config: teacher.model={model}: no such file or folder")
    if in_hub_cache(model):
        return
    if "/" in model:  # a hub id org/name
        if teacher.allow_download:
            return
        raise hub_not_cached(model)
    close = difflib.get_close_matches(model, TEACHER_MODELS.names(), n=1, cutoff=0.5)
    if teacher.allow_download and not close:  # a hub id without an org (e.g. gpt2)
        return
    try:
        TEACHER_MODELS.check(model)
    except CMMInputError as e:
        if close:
            raise
        raise CMMInputError(f"{e}; or a local model folder or .gguf file, or a hub id (org/name) in the local "
                            "Hugging Face cache or with teacher.allow_download=true") from None


def _validate_market(cfg: DictConfig) -> None:
    """Episodes and the calibration grids, checked before anything trains."""
    from ..market.calibrate import check_grids
    from ..market.episodes import check_episode_length

    check_episode_length(cfg.market.episode_length)
    if cfg.market.n_episodes < 1:
        raise CMMInputError("config: market.n_episodes must be >= 1")
    check_grids(cfg.market.calibrate)
    if cfg.rl.enabled and cfg.rl.crossfit_folds < 2:
        raise CMMInputError("config: rl.crossfit_folds must be >= 2 (cmm_rl learns on out-of-fold predictions)")


def _validate_data_path(path: Any) -> None:
    """``data.path``: None, a non-empty string, or a non-empty list of non-empty strings."""
    if path is None:
        return
    is_list = isinstance(path, (list, tuple, ListConfig))
    items = list(path) if is_list else [path]
    if is_list and not items:
        raise CMMInputError("config: data.path is an empty list; give a file, a folder or a list of them")
    for item in items:
        if not isinstance(item, (str, os.PathLike)) or not str(item).strip():
            raise CMMInputError(f"config: data.path must be a file or folder path or a list of them, got {item!r}")

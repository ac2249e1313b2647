"""Load a config: defaults <- each --config file <- key=value overrides; unknown keys and
scalars given to groups are one-line errors naming the key and the closest valid one."""

from __future__ import annotations

import difflib
import functools
import os
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from ..errors import CMMInputError
from .checks import _CHOICES, _validate_run_dir, validate
from .schema import Config


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The structured defaults, built once (read-only; building one takes ~0.1 s): key checks only."""
    schema = OmegaConf.structured(Config)
    OmegaConf.set_readonly(schema, True)
    return schema


def _all_keys(node: dict, prefix: str = "") -> list[str]:
    """Every key of the schema, leaves and sections, dotted."""
    keys = []
    for k, v in node.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, dict):
            keys.extend(_all_keys(v, f"{prefix}{k}."))
    return keys


def _unknown_key_error(key: str, source: str) -> CMMInputError:
    valid = _all_keys(OmegaConf.to_container(_schema(), resolve=False))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return CMMInputError(f"{source}: unknown config key '{key}'{hint}")


def check_keys(node: Any, source: str, prefix: str = "") -> None:
    """Raise a CMMInputError for the first key in ``node`` that the schema lacks."""
    schema = _schema()
    for key in _flat_keys(node, prefix):
        if OmegaConf.select(schema, key, default="__missing__") == "__missing__":
            raise _unknown_key_error(key, source)


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, (dict, DictConfig)):
        return [prefix.rstrip(".")] if prefix else []
    out = []
    for k, v in node.items():
        if isinstance(v, (dict, DictConfig)) and v:
            out.extend(_flat_keys(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def load_config(files: list[str] | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults ← each ``--config`` file in order ← ``key=value`` overrides; validated."""
    cfg = OmegaConf.structured(Config)
    for f in files or []:
        layer = _load_file(f)
        check_keys(OmegaConf.to_container(layer), str(f))
        _check_groups(layer, str(f))
        cfg = merge(cfg, layer, str(f))
    for item in overrides or []:
        if "=" not in item:
            raise CMMInputError(f"command line: expected key=value, got '{item}'")
        key = item.split("=", 1)[0]
        check_keys({key: None} if "." not in key else _nest(key), "command line")
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise CMMInputError(f"command line: cannot parse '{item}' ({str(e).splitlines()[0]})") from None
        _check_groups(layer, "command line")
        cfg = merge(cfg, layer, "command line", key)
    from ..registry import load_plugins

    load_plugins(cfg.run.plugins)
    validate(cfg)
    return cfg


def _load_file(f) -> DictConfig:
    """One ``--config`` file -> its DictConfig; a missing file, bad YAML or a top level that is not
    a mapping of keys (a list, a number, a string) is a one-line CMMInputError naming the file."""
    import yaml

    path = Path(f)
    if not path.is_file():
        raise CMMInputError(f"{f}: config file not found" if not path.exists() else f"{f}: not a file")

    def not_a_mapping(raw) -> CMMInputError:
        kind = ("a list" if isinstance(raw, (list, ListConfig)) else
                f"{'a number' if isinstance(raw, (int, float)) else 'a ' + type(raw).__name__} ({str(raw)[:40]!r})")
        return CMMInputError(f"{f}: the top level must be a mapping of config keys (e.g. 'data:' with "
                             f"'  source: csv' below it), got {kind}")

    try:
        layer = OmegaConf.load(path)
    except Exception as e:  # yaml errors; OmegaConf refuses a scalar top level
        try:
            raw = yaml.safe_load(path.read_text())
        except Exception as ye:
            mark = getattr(ye, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            what = getattr(ye, "problem", None) or (str(ye).strip().splitlines() or [type(ye).__name__])[0]
            raise CMMInputError(f"{f}: not valid YAML ({where}{what})") from None
        if raw is not None and not isinstance(raw, dict):
            raise not_a_mapping(raw) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CMMInputError(f"{f}: not valid YAML ({first})") from None
    if not isinstance(layer, DictConfig):
        raise not_a_mapping(layer)
    return layer


def _group_keys(key: str) -> list[str]:
    node = OmegaConf.select(_schema(), key)
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _choices_of(key: str):
    """The valid values of ``key`` when it is a choice (``_CHOICES`` or a registry), else None."""
    from ..registry import REGISTRIES

    if key in _CHOICES:
        return _CHOICES[key]
    reg = REGISTRIES.get(key)
    return reg.names() if reg is not None else None


def _check_groups(layer: Any, source: str, prefix: str = "") -> None:
    """A value given to a config group (``logger=wandb``, ``data: x``) is an error that names the
    group, its keys and, when the value is a choice of one of them, the key meant (``logger.kind=wandb``)."""
    if not isinstance(layer, (dict, DictConfig)):
        return
    for k, v in layer.items():
        key = f"{prefix}{k}"
        keys = _group_keys(key)
        if not keys:
            continue
        if isinstance(v, (dict, DictConfig)):
            _check_groups(v, source, f"{key}.")
            continue
        meant = [f"{key}.{sub}={v}" for sub in keys if v in (_choices_of(f"{key}.{sub}") or ())]
        hint = f"; did you mean {meant[0]}?" if meant else ""
        raise CMMInputError(f"{source}: '{key}' is a group of settings, not a value (got {v!r}); set its keys "
                            f"as {key}.KEY=VALUE, KEY one of {', '.join(keys)}{hint}")


def _nest(dotted: str) -> dict:
    out: dict = {}
    cur = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = None
    return out


def merge(cfg: DictConfig, layer: DictConfig, source: str, key: Optional[str] = None) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except ConfigKeyError as e:
        raise _unknown_key_error(str(e.full_key or e.key or key), source) from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise CMMInputError(f"{source}: bad value for '{e.full_key or key or e.key}': {msg}") from None


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``run.dir`` or a fresh ``runs/<timestamp>`` folder; created and stored back into cfg."""
    if cfg.run.dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path("runs") / stamp
        path, i = base, 1
        while path.exists():
            path, i = Path(f"{base}-{i}"), i + 1
        cfg.run.dir = str(path)
    _validate_run_dir(cfg.run.dir)
    path = Path(os.path.expanduser(cfg.run.dir))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CMMInputError(f"config: run.dir={cfg.run.dir}: cannot create the folder ({e.strerror or e})") from None
    return path


def cache_dir(cfg: DictConfig) -> Path:
    default = os.environ.get("CMM_CACHE", "~/.cache/cmm_lightning")
    path = Path(os.path.expanduser(str(cfg.run.cache_dir or default)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the resolved config atomically to ``run_dir/config.yaml``."""
    from ..io import atomic_write_text

    return atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

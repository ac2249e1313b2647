"""Structured configs (docs/method.md): one dataclass per pipeline stage, merged with OmegaConf.

Defaults live in ``schema.py`` (inside the package, so ``python -m cmm_lightning ...`` works from
any directory); ``conf/*.yaml`` presets and ``key=value`` overrides are layered on top by
:func:`load_config` (``load.py``), which checks every key and value before anything runs
(``checks.py``; choices made by name against ``registry.py``). Unknown keys are errors that name
the key and suggest the closest one.
"""

from .checks import hub_cache_dir, hub_not_cached, in_hub_cache, looks_like_path, validate
from .load import cache_dir, check_keys, load_config, merge, resolve_run_dir, save_config
from .schema import (RunConfig, SyntheticConfig, HftbacktestConfig, DataConfig, TeacherConfig, ProbeConfig, StudentsConfig, MoEConfig, CalibrateConfig, MarketConfig, RLConfig, TrainerConfig, LoggerConfig, EvaluateConfig, Config)

__all__ = ["RunConfig", "SyntheticConfig", "HftbacktestConfig", "DataConfig", "TeacherConfig", "ProbeConfig", "StudentsConfig", "MoEConfig", "CalibrateConfig", "MarketConfig", "RLConfig", "TrainerConfig", "LoggerConfig", "EvaluateConfig", "Config", "cache_dir", "check_keys", "hub_cache_dir",
           "hub_not_cached", "in_hub_cache", "load_config", "looks_like_path", "merge", "resolve_run_dir",
           "save_config", "validate"]

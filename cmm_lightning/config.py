"""Structured configs: one dataclass per pipeline stage, merged with OmegaConf.

Defaults live here (inside the package), so ``python -m cmm_lightning ...`` works from any
directory. ``conf/*.yaml`` presets and ``key=value`` overrides are layered on top by
:func:`load_config`. Unknown keys are errors that name the key and suggest the closest one.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import CMMInputError


@dataclass
class RunConfig:
    dir: Optional[str] = None  # default: runs/<timestamp>
    seed: int = 0
    cache_dir: Optional[str] = None  # teacher features + model copies; default $CMM_CACHE or ~/.cache/cmm_lightning
    plugins: list = field(default_factory=list)  # modules imported first: they register their own choices


@dataclass
class SyntheticConfig:
    """Seeded regime-switching LOB simulator (docs/method.md, "Data")."""

    n_snapshots: int = 40_000
    seed: int = 7
    start_price: float = 100.0  # currency units
    mean_regime_length: int = 500  # mean regime spell (geometric); short enough for all 3 in every split
    ofi_signal: float = 0.7  # strength of imbalance -> next mid move (ridge R² on mid ≈ 0.2)
    # days of n_snapshots each (seeds seed, seed+1, ...; each day starts at 09:30 the next calendar
    # day and continues from the previous day's last mid); > 1 gives a multi-day book
    days: int = 1


@dataclass
class HftbacktestConfig:
    """``data.source=hftbacktest``: hftbacktest event files (``.npz``) -> snapshot rows
    (``cmm_lightning/data/hftbacktest.py``, :func:`read_hftbacktest`; README, "Bring hftbacktest data")."""

    # None: one row per distinct exchange timestamp; else one row per interval of the clock, stamped
    # at its end (multiples of interval_ns since the epoch): the book after the interval's events
    interval_ns: Optional[int] = None
    # None: sizes as in the file (float: shares, contracts, coins). Else sizes in whole lots of this many
    # file units (the exchange's quantity step): a level's qty / lot_size rounded half-up (under half a
    # lot: no level, as in hftbacktest's depth), a row's summed trade qty / lot_size rounded half-up.
    # The market's sizes (market.base_size, ...) are then lots: keep market.lot_size=1
    lot_size: Optional[float] = None
    # a book still crossed at the end of a row: error (names the event), or resolve = hftbacktest's
    # depth rule (a level set through the other side's best removes the crossed levels there)
    crossed: str = "error"


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | lobster | csv | parquet | hftbacktest
    # file or folder (LOBSTER: orderbook, message or their folder; hftbacktest: .npz event files), or a
    # list of them. Several days of ONE instrument (a LOBSTER folder of one ticker, a folder of tables
    # or of .npz files, a list) load as one multi-day book; windows never span days
    path: Any = None
    tick_size: float = 0.01  # tables, hftbacktest: currency per tick
    # book levels kept; None: 5 (synthetic, hftbacktest), or the file's depth when it has fewer (tables, LOBSTER)
    levels: Optional[int] = None
    window: int = 32  # T snapshots per input window
    horizon: int = 10  # h snapshots ahead for the targets
    stride: int = 5  # snapshots between consecutive windows (= decision interval)
    max_windows: Optional[int] = None  # keep only the last N windows (None: all; else >= 1)
    split: list = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train / val / test fractions, sum 1
    gap: Optional[int] = None  # snapshots between splits (default and minimum: horizon)
    # fraction: data.split fractions of the time span; day: last day test, the day before val,
    # earlier days train (needs >= 3 days; walk-forward)
    split_by: str = "fraction"
    batch_size: int = 256
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    hftbacktest: HftbacktestConfig = field(default_factory=HftbacktestConfig)


@dataclass
class TeacherConfig:
    model: str = "smollm2-135m-instruct"  # registry name, local path, or HF hub id (in the local HF cache)
    # a hub id that is not in the local Hugging Face cache is downloaded only when this is true
    allow_download: bool = False
    template: str = "v1"
    pooling: str = "mean"  # mean | last
    dtype: str = "auto"  # auto (bf16 on GPU/AMX CPU) | float32 | bfloat16 | float16
    batch_size: int = 32
    # teacher budget: features for at most this many windows, spread evenly over the splits
    # (float32 SmolLM2 on a 2-core AVX2 CPU does ~4 windows/s); students learn the tasks from every
    # window and the feature/KD terms from these. None: every window.
    max_windows: Optional[int] = 512
    prefix_cache: bool = True
    trust_remote_code: bool = False
    agent: bool = False  # also decode the LLM-as-agent numbers (llm_agent; slow: one generation per window)
    agent_max_windows: Optional[int] = None  # decode at most this many of the test windows the teacher read


@dataclass
class ProbeConfig:
    # ridge λ grid (sum-of-squares scale on standardized features, chosen on val per layer/task/regime)
    lambdas: list = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5])
    grouping: str = "thirds"  # thirds (shallow/middle/deep) | profile
    n_groups: int = 3
    seed: int = 0  # shuffled-target control permutation
    min_windows: int = 20  # a regime with fewer windows in any split is not probed (NaN column)


@dataclass
class StudentsConfig:
    encoder: str = "tcn"  # tcn | gru | mixer
    hidden: int = 48  # d, width of each student's window code h
    channels: int = 24  # C, first-layer channels (tcn, mixer)
    kernel: int = 8  # k, snapshots per temporal-conv kernel / mixer patch (stride = kernel)
    alpha: float = 1.0  # feature loss weight
    beta: float = 1.0  # task loss weight
    gamma: float = 0.5  # KD loss weight (teacher probe readout)
    feat_loss: str = "nmse"  # nmse | cosine
    pca_dim: Optional[int] = 64  # teacher slice reduced by PCA (None: full width)
    task_upweight: float = 3.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 15
    patience: int = 4
    kd_lambdas: list = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0])  # own KD ridge


@dataclass
class MoEConfig:
    mode: str = "hajek_gate"  # uniform | gate | hajek | hajek_gate
    embed_dim: int = 16  # m, the shared space of e_i = Q_i h_i
    sigma: str = "median"  # median | learned
    kappa: float = 1.0
    tau: float = 1.0
    freeze_students: bool = True
    lr: float = 3e-3
    max_epochs: int = 15
    patience: int = 4
    ablations: bool = True  # also train/evaluate the other modes for the report
    gate_hidden: int = 16  # g(x): MLP 2F -> gate_hidden -> S on (last snapshot, window mean)
    fit_on: str = "val"  # val: stacking, fit on the first fit_frac of the val windows, early-stop on the rest
    fit_frac: float = 0.5  # (the students never saw them); train: fit on the students' own train split
    batch_size: int = 64  # the fusion's fit set is small (fit_on=val: ~600 windows by default)


@dataclass
class CalibrateConfig:
    """Quoting knobs of every policy chosen on val (README, "Equal tuning"): each policy family
    searches its own grid, all grids the same size, one objective, on the val windows the MoE did
    not fit on. A knob set that trades less than ``min_trades_per_episode`` fills per episode on
    average is not eligible (a policy that barely trades must not win by dividing by a tiny MAP)."""

    enabled: bool = True
    objective: str = "pnlmap"  # pnlmap (pooled ΣEPnL / ΣMAP) | epnl (mean per episode) | sharpe
    min_trades_per_episode: float = 2.0
    # prediction-driven policies (cmm, ablations, cmm_no_teacher, single_student_kd, teacher_probe,
    # llm_agent): spread_mult x eta x size_scale
    spread_mult: list = field(default_factory=lambda: [0.5, 1.0, 2.0])  # c in δ = max(1, c·ŝ/2)
    eta: list = field(default_factory=lambda: [0.0, 0.02, 0.08])  # inventory skew, ticks per share
    size_scale: list = field(default_factory=lambda: [0.5, 1.0, 2.0])  # x the size signal v̂
    # fixed_spread: half_spread x eta x size_scale
    half_spread: list = field(default_factory=lambda: [1.0, 2.0, 3.0])  # ticks
    # avellaneda_stoikov: gamma_mult x size_scale (c cancels in the AS spread)
    gamma_mult: list = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])


@dataclass
class MarketConfig:
    # cmm (+ cmm_<mode> for each MoE ablation), cmm_no_teacher, single_student_kd, fixed_spread,
    # avellaneda_stoikov; teacher_probe and llm_agent trade only where the teacher read the window
    # (the teacher table); rl_ppo / cmm_rl come with rl.enabled
    policies: list = field(
        default_factory=lambda: [
            "cmm", "cmm_no_teacher", "single_student_kd", "fixed_spread", "avellaneda_stoikov", "teacher_probe",
        ]
    )
    eta: float = 0.05  # inventory skew, ticks per share of inventory
    spread_mult: float = 1.0  # c in delta = max(1 tick, c * s_hat / 2)
    base_size: int = 100
    min_size: int = 10
    max_size: int = 500
    inventory_limit: int = 1_000
    fixed_half_spread: float = 1.0  # ticks, fixed_spread baseline
    latency: int = 1  # snapshots, entry and cancel alike
    maker_fee: float = 0.0  # per share traded, in currency (negative = rebate)
    taker_fee: float = 0.0
    # episodes the test split is cut into (each starts flat, ends marked to mid): rows (int), a
    # duration ("30min", "90s"), "auto" (the test split in n_episodes equal parts) or null (one)
    episode_length: Any = "auto"
    n_episodes: int = 20
    backtest_every_n_epochs: int = 1  # val backtest logged while students / MoE train (0: off)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    # fill model details (README, "Market making: quotes, fill model and metrics")
    latency_ns: int = 0  # > 0: latency in ns of exchange time (active at first row with ts >= t + latency_ns)
    lot_size: float = 1.0  # shares per lot; quote sizes are whole lots
    post_only: bool = False  # an order that crosses on arrival: False = taker fill, True = rejected
    partial_fills: bool = True  # False: an at-price fill takes the whole order (hftbacktest no_partial_fill)
    queue_depth_cap: bool = False  # True: queue ahead <= displayed size at our price (hftbacktest risk_adverse)
    # design | hftbacktest: hftbacktest's risk_adverse_queue_model + no_partial_fill_exchange + GTX
    # quotes + constant order latency (entry = latency_ns, response below), fill for fill (docs/hft_agreement.md)
    fill_model: str = "design"
    response_latency_ns: int = 0  # hftbacktest mode: fills reach the trader (inventory rule) this much later
    as_gamma: Optional[float] = None  # Avellaneda-Stoikov overrides (None: estimated on the train split)
    as_k: Optional[float] = None
    as_sigma: Optional[float] = None


@dataclass
class RLConfig:
    """PPO market makers rl_ppo / cmm_rl on the backtest engine (market/rl.py; README, "RL market makers")."""

    enabled: bool = True
    timesteps: int = 200_000  # at most; early-stopped on val (~20k env steps/s on one core)
    # φ of the running penalty φ·(q/base_size)² per decision step; reward in ticks per base clip
    inventory_penalty: float = 0.01
    action: str = "discrete"  # discrete | continuous
    offsets: list = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])  # reservation offset grid, ticks
    half_spreads: list = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])  # half-spread grid, ticks
    episode_length: int = 1_000  # rows per training segment when market.episode_length is null
    crossfit_folds: int = 3  # cmm_rl trains on out-of-fold CMM predictions (students cross-fitted on train)
    n_envs: int = 32  # training episodes stepped at once (one numba call)
    n_steps: int = 128  # PPO rollout length per env
    batch_size: int = 512
    n_epochs: int = 5
    learning_rate: float = 3e-4
    gamma: float = 0.99
    ent_coef: float = 0.01
    net_arch: list = field(default_factory=lambda: [64, 64])
    eval_freq: int = 4_096  # env steps between validation evaluations
    patience: int = 5  # evaluations without val improvement before stopping


@dataclass
class TrainerConfig:
    """Passed through to ``lightning.Trainer``."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class LoggerConfig:
    kind: str = "csv"  # csv | wandb | none
    project: str = "cmm_lightning"
    entity: Optional[str] = None
    tags: list = field(default_factory=list)
    offline: Optional[bool] = None  # None: offline unless W&B credentials are present


@dataclass
class EvaluateConfig:
    """``evaluate``: the pipeline over many datasets, pooled (cmm_lightning/evaluate.py)."""

    synthetic_seeds: list = field(default_factory=list)  # one synthetic market per data.synthetic.seed
    paths: list = field(default_factory=list)  # files / folders (a LOBSTER folder: one dataset per day)
    walk_forward: bool = False  # paths are days of one instrument: train+val on earlier days, test the next
    datasets: list = field(default_factory=list)  # [{name: ..., <config overrides>}]
    seeds: list = field(default_factory=lambda: [0])  # run.seed values (training seeds)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


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


def _check_keys(node: Any, source: str, prefix: str = "") -> None:
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
        _check_keys(OmegaConf.to_container(layer), str(f))
        _check_groups(layer, str(f))
        cfg = _merge(cfg, layer, str(f))
    for item in overrides or []:
        if "=" not in item:
            raise CMMInputError(f"command line: expected key=value, got '{item}'")
        key = item.split("=", 1)[0]
        _check_keys({key: None} if "." not in key else _nest(key), "command line")
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise CMMInputError(f"command line: cannot parse '{item}' ({str(e).splitlines()[0]})") from None
        _check_groups(layer, "command line")
        cfg = _merge(cfg, layer, "command line", key)
    from .registry import load_plugins

    load_plugins(cfg.run.plugins)
    _validate(cfg)
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
    from .registry import REGISTRIES

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


def _merge(cfg: DictConfig, layer: DictConfig, source: str, key: Optional[str] = None) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except ConfigKeyError as e:
        raise _unknown_key_error(str(e.full_key or e.key or key), source) from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise CMMInputError(f"{source}: bad value for '{e.full_key or key or e.key}': {msg}") from None


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


def _validate(cfg: DictConfig) -> None:
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
    from .registry import ENCODERS, FILL_MODELS, LOGGERS, MOE_MODES, POLICIES

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
    from .registry import TEACHER_MODELS

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
    from .market.calibrate import check_grids
    from .market.episodes import check_episode_length

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
    from .io import atomic_write_text

    return atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

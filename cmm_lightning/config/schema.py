"""The structured config: one dataclass per pipeline stage, the defaults' one home."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


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
    """PPO market makers rl_ppo / cmm_rl on the backtest engine (market/rl_env.py, market/rl.py; README, "RL market makers")."""

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

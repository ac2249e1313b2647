"""Market making: quoting rule, compiled backtest engine, metrics, baseline policies (DESIGN §7).

    signals [D, 4] (m̂, ŝ, v̂, η)  --quoting.quote-->  quotes  --engine-->  fills, equity  --metrics-->
"""

from .engine import FILL_DTYPE, BacktestResult, Engine, run_backtest
from .episodes import episode_bounds
from .metrics import METRIC_NAMES, market_metrics
from .policies import (avellaneda_stoikov, backtest_policies, equity_figure, estimate_as_params,
                       fixed_spread, predictions, results_table, run_policies, train_volume_ref)
from .quoting import params, quotes_np

__all__ = [
    "FILL_DTYPE", "BacktestResult", "Engine", "METRIC_NAMES", "avellaneda_stoikov", "backtest_policies",
    "episode_bounds", "equity_figure", "estimate_as_params", "fixed_spread", "market_metrics", "params",
    "predictions", "quotes_np", "results_table", "run_backtest", "run_policies", "train_volume_ref",
]

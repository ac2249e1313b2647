"""Market making: quoting rule, compiled backtest engine, metrics, baseline policies (docs/method.md, "Quoting rule" to "Baselines").

    signals [D, 4] (m̂, ŝ, v̂, η)  --quoting.quote-->  quotes  --engine-->  fills, equity  --metrics-->

The names below are imported on first use (PEP 562), so ``import cmm_lightning.market.episodes``
(what the config checks need) does not compile the engine or load torchmetrics.
"""

from importlib import import_module

_WHERE = {
    "FILL_DTYPE": "engine", "BacktestResult": "engine", "Engine": "engine", "params": "engine",
    "run_backtest": "engine", "episode_bounds": "episodes", "METRIC_NAMES": "metrics",
    "market_metrics": "metrics", "avellaneda_stoikov": "policies", "backtest_policies": "policies",
    "equity_figure": "policies", "estimate_as_params": "policies", "fixed_spread": "policies",
    "predictions": "policies", "results_table": "policies", "run_policies": "policies",
    "train_volume_ref": "policies", "quotes_np": "quoting",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

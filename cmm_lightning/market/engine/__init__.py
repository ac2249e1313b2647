"""Compiled market-making engine: one event loop over the book's snapshots, two doors, one file
per fill model. The rules and their formulas: README, "Market making: quotes, fill model and
metrics"; our orders never move the replayed book; deterministic (same inputs, same fills).

    state.py        the account's state vectors (F_*/I_* slots), the fills log, EpisodeState,
                    named accessors (cash, inventory, equity, n_logged, reset, restart)
    design.py       the design fill model (the default)           } the same members: four
    hftbacktest.py  hftbacktest 2.4's queue + exchange model       } constants, configure,
                                                                   } print_fill, trader_inventory
    model.py        the models by id (names: cmm_lightning.registry.FILL_MODELS) and the only
                    compiled branches on the id
    exchange.py     what every model shares: orders in flight, arrivals, the taker walk,
                    matching a row (the model's print_fill, then the crossed rule), the fills log
    loop.py         THE compiled loop (rows, order activations, decisions) and its doors
    parameters.py   MarketConfig -> the parameter vector (the model sets / checks its options)
    api.py          run_backtest, Engine, BacktestResult, book_arrays, default_end_row

Why a model id and not a model object: numba inlines a model's functions into the loop only when
it sees them as globals at compile time, and its on-disk cache (``cache=True``) does not survive
functions passed as runtime values. So the parameter vector carries the model's id
(``prm[P_MODEL]``) and ``model.py`` holds the only branches on it, one small function per member
(a compare on a value constant over the run: what the former ``if hft`` flags cost). A new fill
model is a new file here plus its registration (the steps: ``model.py``).

Both doors run the same loop (``loop._run``): :func:`run_backtest` (the whole backtest in numba,
one call per episode) and :class:`Engine` / ``rl_env.py`` (``advance`` / ``decide`` / ``submit``,
per action, for many environments at once). Internally prices are ticks and cash is ticks x
shares; the doors report currency.
"""

from .api import BacktestResult, Engine, book_arrays, default_end_row, run_backtest
from .loop import advance, decide, submit
from .model import FILL_MODELS
from .parameters import params
from .state import FILL_DTYPE, EpisodeState, cash, equity, fills_table, inventory, n_logged, reset, restart

__all__ = ["FILL_DTYPE", "FILL_MODELS", "BacktestResult", "Engine", "EpisodeState", "advance", "book_arrays",
           "cash", "decide", "default_end_row", "equity", "fills_table", "inventory", "n_logged", "params",
           "reset", "restart", "run_backtest", "submit"]

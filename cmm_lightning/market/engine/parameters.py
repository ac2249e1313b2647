"""``MarketConfig`` -> the engine's float64 parameter vector (layout: ``quoting.P_*``): the quoting
knobs, fees in ticks per share, latencies, the fill model's id and options, the tick size."""

from __future__ import annotations

import numpy as np

from ...errors import CMMInputError
from ..quoting import (NP, P_C, P_DEPTHCAP, P_LAT, P_LATNS, P_LIMIT, P_LOT, P_MAKER, P_MAX, P_MIN, P_MODEL,
                       P_MSGS, P_PARTIAL, P_POSTONLY, P_RESPNS, P_TAKER, P_TICK)
from .model import FILL_MODELS, MODELS


def params(cfg, tick_size: float, has_messages: bool = False) -> np.ndarray:
    """``MarketConfig`` (None: the defaults) -> the float64 parameter vector (fees converted to
    ticks per share); the fill model (``market.fill_model``) sets and checks its own options."""
    from ...config import MarketConfig

    cfg = MarketConfig() if cfg is None else cfg
    prm = np.zeros(NP)
    prm[P_C] = float(cfg.spread_mult)
    prm[P_MIN] = float(cfg.min_size)
    prm[P_MAX] = float(cfg.max_size)
    prm[P_LIMIT] = float(cfg.inventory_limit)
    prm[P_LOT] = float(cfg.lot_size)
    prm[P_MAKER] = float(cfg.maker_fee) / tick_size
    prm[P_TAKER] = float(cfg.taker_fee) / tick_size
    prm[P_LAT] = float(cfg.latency)
    prm[P_LATNS] = float(cfg.latency_ns)
    prm[P_POSTONLY] = float(bool(cfg.post_only))
    prm[P_PARTIAL] = float(bool(cfg.partial_fills))
    prm[P_DEPTHCAP] = float(bool(cfg.queue_depth_cap))
    prm[P_MSGS] = float(has_messages)
    prm[P_RESPNS] = float(cfg.response_latency_ns)
    prm[P_TICK] = float(tick_size)
    model = FILL_MODELS.spec(str(cfg.fill_model))
    if model not in MODELS:
        raise CMMInputError(f"config: market.fill_model={cfg.fill_model!r} is registered but the engine has no "
                            "module for it (market/engine/model.py)")
    prm[P_MODEL] = float(model)
    MODELS[model].configure(prm, cfg)
    if prm[P_LOT] <= 0 or prm[P_MIN] > prm[P_MAX]:
        raise CMMInputError("config: need market.lot_size > 0 and market.min_size <= market.max_size")
    return prm

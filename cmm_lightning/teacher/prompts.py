"""Versioned prompt templates: a LOB window as a short text the teacher reads.

A prompt is ``head + PREFIX + body + tail``:

* ``PREFIX(template)`` — the shared instruction (what the numbers mean, what to predict). It is
  the same for every window, so it comes first and its key/value cache is computed once
  (prefix sharing, ``teacher.prefix_cache``).
* ``render_prompts(windows, idx)`` — the per-window body: recent values and the window's
  summary statistics, then the request. A small model does not compute statistics for itself,
  so they are stated (docs/method.md, "Teacher features"); numbers use few digits because the tokenizer spends one
  token per digit and per space.
* ``head``/``tail`` — the tokenizer's chat wrapping, when it has a chat template
  (:func:`chat_parts`): the prefix becomes the system message and the body the user message.

Template ``v1`` (default), for a window ending at snapshot ``e`` with ``T`` snapshots, ``m`` the mid
in ticks, ``s`` the spread in ticks, sizes and volumes in lots of 100 shares:

    mid      round(m[e-k] - m[e])          k ∈ 7 points evenly spaced over T-1 .. 1 snapshots ago
    spread   s[e-3] .. s[e]                the last 4 spreads
    size     round(b1[e]/100) round(a1[e]/100)   best bid / ask size now
    volume   round(Σ traded / 100)         per quarter of the window, oldest first
    rv       sqrt(Σ (Δm)²) over the window (1 decimal)      sp  mean spread (1 decimal)
    vol      total traded volume, lots                      imb round(100 (b1-a1)/(b1+a1)) at e

``v0`` is the ablation without volumes and statistics (mids, spreads, sizes, imbalance).
:func:`prompt_numbers` returns exactly the numbers a template renders, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOT = 100.0  # shares per lot in the prompt
N_MID_POINTS = 7
N_SPREADS = 4
N_VOLUME_SEGMENTS = 4


@dataclass(frozen=True)
class Field:
    label: str  # text before the numbers
    column: str  # key of _columns()
    decimals: int = 0
    newline: bool = True  # end the line after this field (else a space)


@dataclass(frozen=True)
class Template:
    version: str
    prefix: str  # format string with {T}, {h}, {ago}
    fields: tuple[Field, ...]
    request: str

    def text(self) -> str:
        """Everything that defines the template (for the cache fingerprint)."""
        fields = ";".join(f"{f.label}:{f.column}:{f.decimals}:{int(f.newline)}" for f in self.fields)
        return f"{self.version}\n{self.prefix}\n{fields}\n{self.request}"


_V1_PREFIX = (
    "You are a market maker reading a limit order book. Each message describes the last {T} "
    "snapshots. Prices are in ticks, sizes and volumes in lots of 100 shares.\n"
    "mid: mid price {ago} snapshots ago, minus the mid now.\n"
    "spread: the last {n_spreads} spreads.\n"
    "size: best bid size, best ask size now.\n"
    "volume: traded volume in each quarter of the window.\n"
    "rv: realised volatility of the mid. sp: mean spread. vol: total traded volume.\n"
    "imb: best level imbalance (bid - ask) / (bid + ask) in percent.\n"
    "Predict, over the next {h} snapshots: the mid move in ticks, the mean spread in ticks and "
    "the traded volume in lots. Answer with three numbers."
)
_V0_PREFIX = (
    "You are a market maker reading a limit order book. Each message describes the last {T} "
    "snapshots. Prices are in ticks, sizes in lots of 100 shares.\n"
    "mid: mid price {ago} snapshots ago, minus the mid now.\n"
    "spread: the last {n_spreads} spreads.\n"
    "size: best bid size, best ask size now.\n"
    "imb: best level imbalance (bid - ask) / (bid + ask) in percent.\n"
    "Predict, over the next {h} snapshots: the mid move in ticks, the mean spread in ticks and "
    "the traded volume in lots. Answer with three numbers."
)
_REQUEST = "Predict mid move, spread, volume."

TEMPLATES: dict[str, Template] = {
    "v1": Template(
        version="v1",
        prefix=_V1_PREFIX,
        fields=(
            Field("mid", "mid"),
            Field("spread", "spread"),
            Field("size", "size"),
            Field("volume", "volume"),
            Field("rv", "rv", 1, newline=False),
            Field("sp", "sp", 1, newline=False),
            Field("vol", "vol"),
            Field("imb", "imb"),
        ),
        request=_REQUEST,
    ),
    "v0": Template(
        version="v0",
        prefix=_V0_PREFIX,
        fields=(Field("mid", "mid"), Field("spread", "spread"), Field("size", "size"), Field("imb", "imb")),
        request=_REQUEST,
    ),
}


def get_template(template: str | Template) -> Template:
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        from ..errors import CMMInputError

        raise CMMInputError(f"config: teacher.template={template!r} is not one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def mid_lags(T: int) -> np.ndarray:
    """Snapshots ago of the rendered mids: ``N_MID_POINTS`` points evenly spaced over T-1 .. 1."""
    return np.unique(np.rint(np.linspace(T - 1, 1, N_MID_POINTS)).astype(np.int64))[::-1]


def PREFIX(template: str | Template = "v1", window: int = 32, horizon: int = 10) -> str:
    """The shared instruction (identical for every window of a WindowSet)."""
    t = get_template(template)
    ago = ", ".join(str(k) for k in mid_lags(window))
    return t.prefix.format(T=window, h=horizon, ago=ago, n_spreads=min(N_SPREADS, window))


def _columns(windows, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every renderable quantity for windows ``idx``, already rounded as rendered (float64)."""
    b, T = windows.book, windows.window
    e = windows.end[np.asarray(idx, dtype=np.int64)]
    mid = b.mid
    lags = mid_lags(T)
    cs_spread = np.concatenate([[0.0], np.cumsum(b.spread.astype(np.float64))])
    cs_vol = np.concatenate([[0.0], np.cumsum(b.trade_sz)])
    first = e - T + 1
    seg = np.rint(np.linspace(0, T, N_VOLUME_SEGMENTS + 1)).astype(np.int64)  # segment edges
    seg_vol = cs_vol[first[:, None] + seg[None, 1:]] - cs_vol[first[:, None] + seg[None, :-1]]
    b1, a1 = b.bid_sz[e, 0], b.ask_sz[e, 0]
    n_sp = min(N_SPREADS, T)
    cols = {
        "mid": np.rint(mid[e[:, None] - lags[None, :]] - mid[e][:, None]),
        "spread": b.spread[e[:, None] + np.arange(-n_sp + 1, 1)[None, :]].astype(np.float64),
        "size": np.rint(np.stack([b1, a1], axis=1) / LOT),
        "volume": np.rint(seg_vol / LOT),
        "rv": np.round(windows.realized_vol[idx].astype(np.float64), 1),
        "sp": np.round((cs_spread[e + 1] - cs_spread[first]) / T, 1),
        "vol": np.rint((cs_vol[e + 1] - cs_vol[first]) / LOT),
        "imb": np.rint(100.0 * (b1 - a1) / np.maximum(b1 + a1, 1e-12)),
    }
    return {k: (v if v.ndim == 2 else v[:, None]) + 0.0 for k, v in cols.items()}  # +0.0: no "-0"


def prompt_numbers(windows, idx: np.ndarray, template: str | Template = "v1") -> np.ndarray:
    """float32 [B, K]: exactly the numbers the template renders, in reading order."""
    t = get_template(template)
    cols = _columns(windows, np.asarray(idx, dtype=np.int64))
    return np.concatenate([cols[f.column] for f in t.fields], axis=1).astype(np.float32)


def number_names(template: str | Template = "v1", window: int = 32) -> list[str]:
    """Names of the columns of :func:`prompt_numbers` (e.g. ``mid_lag28``, ``spread_0``)."""
    t = get_template(template)
    widths = {"mid": [f"lag{k}" for k in mid_lags(window)],
              "spread": [f"{k - min(N_SPREADS, window) + 1}" for k in range(min(N_SPREADS, window))],
              "size": ["bid", "ask"], "volume": [f"q{k}" for k in range(N_VOLUME_SEGMENTS)]}
    return [f"{f.column}_{w}" if f.column in widths else f.column
            for f in t.fields for w in widths.get(f.column, [""])]


def render_prompts(windows, idx: np.ndarray, template: str | Template = "v1") -> list[str]:
    """The per-window part of each prompt (the body; the shared PREFIX is not included)."""
    t = get_template(template)
    idx = np.asarray(idx, dtype=np.int64)
    cols = _columns(windows, idx)
    # one format string for the whole body; integers print as ints, stats with their decimals
    parts, arrays = [], []
    for f in t.fields:
        a = cols[f.column]
        spec = "{:d}" if f.decimals == 0 else f"{{:.{f.decimals}f}}"
        parts.append(f.label + "".join(" " + spec for _ in range(a.shape[1])) + ("\n" if f.newline else " "))
        arrays.append(a.astype(np.int64).astype(object) if f.decimals == 0 else a.astype(object))
    fmt = "".join(parts) + t.request
    rows = np.concatenate(arrays, axis=1).tolist()
    return [fmt.format(*r) for r in rows]


def chat_parts(tokenizer, prefix: str) -> tuple[str, str]:
    """(head, tail) so that a prompt is ``head + body + tail``; ``head`` holds the shared prefix.

    With a chat template the prefix is the system message, the body the user message and the
    tail opens the assistant turn; without one, head = prefix + newline and tail is empty.
    """
    if getattr(tokenizer, "chat_template", None):
        sentinel = "\x00BODY\x00"
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": prefix}, {"role": "user", "content": sentinel}],
            add_generation_prompt=True, tokenize=False,
        )
        if text.count(sentinel) == 1:
            head, tail = text.split(sentinel)
            return head, tail
    return prefix + "\n", ""

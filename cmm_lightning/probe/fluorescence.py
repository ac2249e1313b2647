"""The normalized fluorescent probe (docs/method.md, "Probe"): R², fluorescence F, selectivity,
raw control, plan.

For layer l, task t, regime r a ridge probe (``ridge.fit_ridge``) reads target t from layer l:

    R²[l,t,r]    held-out R² on the test windows of regime r (reported: the heatmaps)
    R²_val[l,t,r] the same probe's R² on the val windows of regime r at its chosen λ (selects)
    F[l,t,r]     = max(0, R²[l,t,r]) / max_l' max(0, R²[l',t,r])     (F = 0 for the whole
                   column when every R² ≤ 0: no layer lights up; the column then has no 1);
                   F_val the same on R²_val
    control      the same probe (fit and λ choice) on targets permuted within the train and
                 within the val windows (seeded), scored on the true test targets: neither the
                 weights nor λ ever see the true pairing (choosing λ on true val targets would
                 let a shuffled probe that happens to point along the signal score R² > 0)
    selectivity  = R² − R²_control
    raw_r2       the same ridge on the raw input: ``prompt`` (the numbers the prompt renders)
                 and ``window`` (the full T x F window), test R² (and ``raw_r2_val``, val R²);
                 a layer *beats raw* when its val R² is above the larger val R² of the two
                 (and above 0).

Selection discipline: train fits, val chooses, test only reports. λ is chosen on val, and so is
everything the probe decides: the plan (best layer per task and per regime, the ``profile``
groups, read from F_val), ``best_layer`` and ``beats raw``. The test R² reported as "best layer
R²" is the test score of the layer chosen on val; its val R² is optimistic (λ and the layer were
both picked on it). The raw control the information gain is measured against is, per task and
regime, the raw input (prompt or window) with the higher val R².

Per-regime protocol: the probe for regime r is fit on the train windows of r (standardization
statistics included), λ is chosen on the val windows of r, R² is measured on the test windows
of r around their own mean. R²[·,·,r] is thus the share of *within-regime* variance a layer
explains with a readout specific to that regime: a global probe scored per regime could gain
or lose R² only through the regime's mean level, and the data students (one per regime,
trained on that regime's windows only) use exactly this conditional readout. Regime "all" is
the usual probe over every window. A regime with fewer than ``probe.min_windows`` windows in its
train or val split gets NaN in its column (null in JSON) and its plan entries fall back to "all";
one with fewer test windows is probed and chosen as usual, only its test R² is NaN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..data.windows import REGIMES, SPLITS, TASKS
from ..errors import CMMInputError
from ..io import atomic_path, read_json, write_json
from .ridge import as_float, fit_ridge, fit_ridge_gram, r2_score

REGIMES_ALL = REGIMES + ("all",)
_FIT_NOTE = ("per regime: fit on the regime's train windows, lambda on its val windows, "
             "R2 on its test windows (own mean); 'all' uses every window")


# ---------------------------------------------------------------------------------------------
# readout: the best layer's probe per task, for the teacher_probe policy and the KD loss
# ---------------------------------------------------------------------------------------------
@dataclass
class Readout:
    """ŷ_t = ((x_{layer_t} − mean_t) / std_t) · weight_t + bias_t for each task t."""

    layers: np.ndarray  # int64 [3] best layer per task (over all regimes)
    mean: np.ndarray  # float32 [3, H]
    std: np.ndarray  # float32 [3, H]
    weight: np.ndarray  # float32 [3, H]
    bias: np.ndarray  # float32 [3]
    tasks: tuple = TASKS

    def predict(self, features, stacked: Optional[bool] = None) -> np.ndarray:
        """[N, 3] predictions from ``features``: the full stack [N, L+1, H] (the best layers are
        picked here) or, with ``stacked=True`` / a [N, 3, H] array that cannot be a full stack,
        the best layer's features per task already stacked in task order."""
        x = np.asarray(features)
        if x.ndim == 2:
            x = x[:, None, :]
        if stacked is None:
            stacked = x.shape[1] == len(self.tasks) and x.shape[1] <= int(self.layers.max())
        if not stacked:
            x = x[:, self.layers, :]
        x = x.astype(np.float32)
        return (((x - self.mean) / self.std) * self.weight).sum(-1) + self.bias

    def save(self, path) -> Path:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, layers=self.layers, mean=self.mean, std=self.std, weight=self.weight,
                         bias=self.bias, tasks=np.array(self.tasks))
        return Path(path)

    @classmethod
    def load(cls, path) -> "Readout":
        z = np.load(path)
        return cls(layers=z["layers"], mean=z["mean"], std=z["std"], weight=z["weight"],
                   bias=z["bias"], tasks=tuple(str(t) for t in z["tasks"]))


# ---------------------------------------------------------------------------------------------
# F, plan, groups
# ---------------------------------------------------------------------------------------------
def fluorescence(r2: np.ndarray) -> np.ndarray:
    """F along axis 0 (layers): max(0, R²) / max over layers; 0 where the column max is ≤ 0;
    NaN columns stay NaN."""
    pos = np.maximum(np.asarray(r2, dtype=np.float64), 0.0)
    top = np.max(pos, axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, pos / np.where(top > 0, top, 1.0), np.where(np.isnan(top), np.nan, 0.0))


def thirds(n_layers: int, n_groups: int) -> list[list[int]]:
    """Layers 0..n_layers-1 cut into ``n_groups`` contiguous, equal-ish segments."""
    k = max(1, min(n_groups, n_layers))
    return [seg.tolist() for seg in np.array_split(np.arange(n_layers), k)]


def segment_profiles(P: np.ndarray, n_groups: int) -> list[list[int]]:
    """Optimal contiguous segmentation of the rows of ``P`` [L, m] into ``n_groups`` segments,
    minimising the total within-segment sum of squares Σ_g Σ_{l∈g} ‖P_l − P̄_g‖² (dynamic
    programming over cut points, O(k·L²))."""
    P = np.nan_to_num(np.asarray(P, dtype=np.float64).reshape(len(P), -1))
    L = len(P)
    k = max(1, min(n_groups, L))
    c1 = np.concatenate([np.zeros((1, P.shape[1])), np.cumsum(P, 0)])  # prefix sums
    c2 = np.concatenate([[0.0], np.cumsum((P ** 2).sum(1))])
    i, j = np.meshgrid(np.arange(L + 1), np.arange(L + 1), indexing="ij")  # segment i..j-1
    cnt = np.maximum(j - i, 1)
    cost = c2[j] - c2[i] - ((c1[j] - c1[i]) ** 2).sum(-1) / cnt
    cost = np.where(j > i, cost, np.inf)
    best = np.full((k + 1, L + 1), np.inf)
    arg = np.zeros((k + 1, L + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        tot = best[g - 1][:, None] + cost  # [i, j]
        arg[g] = tot.argmin(0)
        best[g] = tot.min(0)
    cuts, j = [L], L
    for g in range(k, 0, -1):
        j = int(arg[g, j])
        cuts.append(j)
    cuts = cuts[::-1]
    return [list(range(a, b)) for a, b in zip(cuts[:-1], cuts[1:])]


def group_names(k: int) -> list[str]:
    return {1: ["all"], 2: ["shallow", "deep"], 3: ["shallow", "middle", "deep"]}.get(
        k, [f"group{i}" for i in range(k)])


def make_plan(r2: np.ndarray, F: np.ndarray, grouping: str = "thirds", n_groups: int = 3) -> dict:
    """The plan students follow; r2/F are [layers, tasks, regimes] with regimes = REGIMES_ALL.

    best_layer[t] = argmax_l R²[l,t,all]; best_layer_by_regime[r][t] = argmax_l R²[l,t,r];
    best_layer_regime[r] = argmax_l mean_t F[l,t,r]; groups: ``thirds`` = equal contiguous
    segments, ``profile`` = optimal contiguous segmentation of the layers' F vectors
    (F[l] over every task x regime, NaN read as 0; see :func:`segment_profiles`)."""
    ia = REGIMES_ALL.index("all")
    best = {t: int(np.nanargmax(r2[:, k, ia])) for k, t in enumerate(TASKS)}
    by_regime, regime_best = {}, {}
    for r, name in enumerate(REGIMES):
        col = r2[:, :, r]
        if np.isnan(col).all():
            by_regime[name] = dict(best)
            regime_best[name] = int(np.nanargmax(np.nanmean(F[:, :, ia], axis=1)))
            continue
        by_regime[name] = {t: int(np.nanargmax(col[:, k])) for k, t in enumerate(TASKS)}
        regime_best[name] = int(np.argmax(np.nan_to_num(F[:, :, r]).mean(1)))
    if grouping == "thirds":
        groups = thirds(len(r2), n_groups)
    elif grouping == "profile":
        groups = segment_profiles(F.reshape(len(F), -1), n_groups)
    else:
        raise CMMInputError(f"config: probe.grouping={grouping!r} is not one of thirds, profile")
    return {"best_layer": best, "best_layer_by_regime": by_regime, "best_layer_regime": regime_best,
            "groups": groups, "group_names": group_names(len(groups))}


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------
def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _jsonable(arr: np.ndarray, ndigits: int = 5):
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.tolist()
    return _nan_to_none(np.round(arr.astype(np.float64), ndigits).tolist())


def _from_json(x) -> np.ndarray:
    return np.array(_none_to_nan(x), dtype=np.float64)


def _none_to_nan(x):
    return [_none_to_nan(v) for v in x] if isinstance(x, list) else (np.nan if x is None else x)


@dataclass
class ProbeResult:
    """All probe outputs; arrays are [layer, task, regime] with regimes = calm, normal, volatile, all."""

    r2: np.ndarray  # test R² (reported)
    F: np.ndarray  # fluorescence of the test R² (heatmaps)
    control_r2: np.ndarray
    lam: np.ndarray  # chosen λ
    raw_r2: dict  # {"prompt": [task, regime], "window": [task, regime]} test R² (only those given)
    plan: dict
    n: dict  # {split: {regime: windows}}
    r2_val: Optional[np.ndarray] = None  # val R² at the chosen λ (selects the plan)
    raw_r2_val: dict = field(default_factory=dict)  # val R² of the raw controls
    readout_: Optional[Readout] = None
    # regime "all" test windows: feature rows, targets, predictions of the val-chosen layer's probe
    # and of the val-chosen raw control (the information gain's inputs; probe/test_predictions.npz)
    test_predictions: dict = field(default_factory=dict)
    lambdas: tuple = ()  # the λ grid searched (probe.lambdas)
    tasks: tuple = TASKS
    regimes: tuple = REGIMES_ALL
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def selectivity(self) -> np.ndarray:
        return self.r2 - self.control_r2

    @property
    def F_val(self) -> np.ndarray:
        return fluorescence(self.r2_val)

    @property
    def raw_choice(self) -> Optional[np.ndarray]:
        """[task, regime] index into ``raw_r2`` of the raw control with the higher val R²."""
        if not self.raw_r2_val:
            return None
        val = np.stack([np.nan_to_num(v, nan=-np.inf) for v in self.raw_r2_val.values()])
        return val.argmax(0)

    def raw_best(self, split: str = "test") -> Optional[np.ndarray]:
        """[task, regime] R² on ``split`` (test | val) of the raw control chosen on val."""
        src = self.raw_r2 if split == "test" else self.raw_r2_val
        if not src:
            return None
        return np.take_along_axis(np.stack(list(src.values())), self.raw_choice[None], 0)[0]

    @property
    def beats_raw(self) -> Optional[np.ndarray]:
        """bool [layer, task, regime]: val R² above both the chosen raw control's val R² and 0 (a
        layer that explains nothing beats nothing, even where the raw ridge scores below 0)."""
        raw = self.raw_best("val")
        if raw is None:
            return None
        bar = np.maximum(np.nan_to_num(raw, nan=np.inf), 0.0)
        return np.nan_to_num(self.r2_val, nan=-np.inf) > bar

    def readout(self, features, stacked: Optional[bool] = None) -> np.ndarray:
        """[N, 3] teacher-probe predictions (see :meth:`Readout.predict`)."""
        if self.readout_ is None:
            raise ValueError("probe result has no readout (load readout.npz)")
        return self.readout_.predict(features, stacked=stacked)

    def summary(self) -> dict:
        """Per task (regime "all"): the layer chosen on val, its test R² (``r2``) and val R²
        (``r2_val``, optimistic: layer and λ were picked on it), control, selectivity, the raw
        controls' test R², the val-chosen raw control (``raw``, ``raw_r2``: its test R²), the
        information gain ``gain`` = test R² − raw test R², and beats raw (decided on val)."""
        ia = self.regimes.index("all")
        out, beats = {}, self.beats_raw
        raw_test, choice = self.raw_best("test"), self.raw_choice
        names = list(self.raw_r2)
        for k, t in enumerate(self.tasks):
            l = self.plan["best_layer"][t]
            row = {"best_layer": l, "r2": float(self.r2[l, k, ia]), "r2_val": float(self.r2_val[l, k, ia]),
                   "control_r2": float(self.control_r2[l, k, ia]),
                   "selectivity": float(self.selectivity[l, k, ia])}
            for name, arr in self.raw_r2.items():
                row[f"raw_r2_{name}"] = float(arr[k, ia])
            if raw_test is not None:
                row["raw"] = names[int(choice[k, ia])]
                row["raw_r2"] = float(raw_test[k, ia])
                row["gain"] = row["r2"] - row["raw_r2"]
            row["beats_raw"] = None if beats is None else bool(beats[l, k, ia])
            row["layers_beating_raw"] = None if beats is None else np.flatnonzero(beats[:, k, ia]).tolist()
            out[t] = row
        return _nan_to_none_dict(out)

    def to_json(self) -> dict:
        axes = ["layer", "task", "regime"]
        beats = self.beats_raw
        return {
            "axes": axes,
            "layers": list(range(len(self.r2))),
            "tasks": list(self.tasks),
            "regimes": list(self.regimes),
            "fit": _FIT_NOTE,
            "selection": "plan, best_layer and beats_raw use val R2 (r2_val); r2 and F are test, reported only",
            "control": "targets permuted (seeded) within the train and within the val windows of the "
                       "regime; R2 on the true test targets",
            "beats_raw_rule": "val R2 > max(val R2 of the raw control chosen on val, 0)",
            "r2": _jsonable(self.r2),
            "r2_val": _jsonable(self.r2_val),
            "F": _jsonable(self.F),
            "control_r2": _jsonable(self.control_r2),
            "selectivity": _jsonable(self.selectivity),
            "raw_r2": {k: {"axes": ["task", "regime"], "values": _jsonable(v), "val": _jsonable(self.raw_r2_val[k])}
                       for k, v in self.raw_r2.items()},
            "beats_raw": None if beats is None else beats.tolist(),
            "lambdas": {"grid": [float(x) for x in self.lambdas], "chosen": _jsonable(self.lam, 6)},
            "plan": self.plan,
            "best_layer": self.plan["best_layer"],
            "summary": self.summary(),
            "n": self.n,
            "seconds": round(self.seconds, 3),
            **({"meta": self.meta} if self.meta else {}),
        }

    @classmethod
    def from_json(cls, d: dict, readout: Optional[Readout] = None) -> "ProbeResult":
        return cls(r2=_from_json(d["r2"]), F=_from_json(d["F"]), control_r2=_from_json(d["control_r2"]),
                   lam=_from_json(d["lambdas"]["chosen"]), r2_val=_from_json(d["r2_val"]),
                   raw_r2={k: _from_json(v["values"]) for k, v in d["raw_r2"].items()},
                   raw_r2_val={k: _from_json(v["val"]) for k, v in d["raw_r2"].items()},
                   plan=d["plan"], n=d["n"], readout_=readout, lambdas=tuple(d["lambdas"]["grid"]),
                   tasks=tuple(d["tasks"]), regimes=tuple(d["regimes"]), seconds=d.get("seconds", 0.0),
                   meta=d.get("meta", {}))

    def save(self, probe_dir) -> Path:
        probe_dir = Path(probe_dir)
        if self.readout_ is not None:
            self.readout_.save(probe_dir / "readout.npz")
        if self.test_predictions:
            with atomic_path(probe_dir / "test_predictions.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self.test_predictions)
        return write_json(probe_dir / "probe.json", self.to_json())

    @classmethod
    def load(cls, probe_dir) -> "ProbeResult":
        probe_dir = Path(probe_dir)
        ro, tp = probe_dir / "readout.npz", probe_dir / "test_predictions.npz"
        res = cls.from_json(read_json(probe_dir / "probe.json"), Readout.load(ro) if ro.exists() else None)
        if tp.exists():
            with np.load(tp) as z:
                res.test_predictions = {k: z[k] for k in z.files}
        return res


def _nan_to_none_dict(d):
    if isinstance(d, dict):
        return {k: _nan_to_none_dict(v) for k, v in d.items()}
    return None if isinstance(d, float) and not np.isfinite(d) else d


def _cfg(cfg_probe) -> dict:
    """The probe config (None: ``config.ProbeConfig``'s defaults), checked, as plain values."""
    from ..config import ProbeConfig

    c = ProbeConfig() if cfg_probe is None else cfg_probe
    lambdas = [float(x) for x in c.lambdas]
    if not lambdas or min(lambdas) < 0:
        raise CMMInputError(f"config: probe.lambdas={lambdas} must be a non-empty list of numbers >= 0")
    if int(c.n_groups) < 1:
        raise CMMInputError("config: probe.n_groups must be >= 1")
    return {"lambdas": lambdas, "grouping": str(c.grouping), "n_groups": int(c.n_groups), "seed": int(c.seed),
            "min_windows": int(c.min_windows)}


def _layout(regime: np.ndarray, split: np.ndarray, min_windows: int):
    """Row order that makes every (split, regime) block contiguous (split-major, time order kept);
    per regime (REGIMES_ALL order) its (train, val, test) slices into that order, whether train
    and val hold at least ``min_windows`` windows of it (what fitting and choosing need: test
    counts never decide what is probed), and whether test does (enough to report a test R²)."""
    used = np.flatnonzero(np.isin(split, (0, 1, 2)) & np.isin(regime, (0, 1, 2)))
    order = used[np.lexsort((regime[used], split[used]))]
    s_o, r_o = split[order], regime[order]
    slices, ok, test_ok, counts = [], [], [], {name: {} for name in SPLITS}
    for r, name in enumerate(REGIMES_ALL):
        sl = []
        for k, sname in enumerate(SPLITS):
            rows = np.flatnonzero((s_o == k) & ((r_o == r) if name != "all" else True))
            sl.append(slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0))
            counts[sname][name] = int(len(rows))
        slices.append(sl)
        n = [x.stop - x.start for x in sl]
        ok.append(min(n[:2]) >= max(min_windows, 3))
        test_ok.append(n[2] >= max(min_windows, 3))
    return order, slices, ok, test_ok, counts


def _raw_control(X, Y, subsets, lambdas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on a raw input X [N, d]: ([task, regime] test R², [task, regime] val R², the
    regime-"all" test predictions [n_test, task])."""
    X = as_float(X).reshape(len(X), -1)
    test, val = np.full((Y.shape[1], len(subsets)), np.nan), np.full((Y.shape[1], len(subsets)), np.nan)
    pred_all = None
    for r, sub in enumerate(subsets):
        if sub is None:
            continue
        tr, va, te = sub
        fit = fit_ridge(X[tr], Y[tr], X[va], Y[va], lambdas)
        pred = fit.predict(X[te])[0]
        test[:, r], val[:, r] = r2_score(Y[te], pred).numpy(), fit.val_r2[0].numpy()
        if r == len(subsets) - 1:  # "all" is last in REGIMES_ALL
            pred_all = pred.numpy()
    return test, val, pred_all


def run_probe(features, targets, regime, split, raw_prompt=None, raw_window=None, cfg_probe=None,
              *, chunk_mb: float = 128.0) -> ProbeResult:
    """Probe every layer x task x regime; see the module docstring for the protocol.

    features [N, L+1, H] (float16 memmap is fine; read and converted one layer chunk at a
    time), targets [N, 3], regime [N] (0 calm, 1 normal, 2 volatile), split [N] (0 train,
    1 val, 2 test, anything else unused), raw_prompt [N, K] | None, raw_window [N, T*F] | None.
    """
    t0 = time.perf_counter()
    c = _cfg(cfg_probe)
    N, n_layers, H = features.shape
    Y = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    regime, split = np.asarray(regime), np.asarray(split)
    if not (len(Y) == len(regime) == len(split) == N):
        raise CMMInputError(f"probe: {N} feature rows but {len(Y)} targets, {len(regime)} regimes, "
                            f"{len(split)} splits")
    order, slices, ok, test_ok, counts = _layout(regime, split, c["min_windows"])
    subsets = [sl if good else None for sl, good in zip(slices, ok)]
    Y = Y[torch.from_numpy(order)]
    ia = REGIMES_ALL.index("all")
    if subsets[ia] is None or not test_ok[ia]:
        raise CMMInputError(f"probe: too few windows per split {counts}; need at least "
                            f"probe.min_windows={c['min_windows']} in each of train/val/test")
    rng = np.random.default_rng(c["seed"])
    perms = [None if s is None else [torch.from_numpy(rng.permutation(x.stop - x.start)) for x in s[:2]]
             for s in subsets]  # per regime: train and val permutations
    k, R = Y.shape[1], len(REGIMES_ALL)
    r2 = np.full((n_layers, k, R), np.nan)
    r2_val, ctrl, lam = np.full_like(r2, np.nan), np.full_like(r2, np.nan), np.full_like(r2, np.nan)
    ro_mean, ro_std = np.zeros((n_layers, H), np.float32), np.ones((n_layers, H), np.float32)
    ro_w, ro_b = np.zeros((n_layers, H, k), np.float32), np.zeros((n_layers, k), np.float32)

    step = max(1, int(chunk_mb * 2**20 // (N * H * 4)))
    order_t = torch.from_numpy(order)
    for l0 in range(0, n_layers, step):
        l1 = min(n_layers, l0 + step)
        # [c, n_used, H] float32 in block order: one gather + convert per chunk, then views only
        Xc = as_float(features[:, l0:l1]).transpose(0, 1).index_select(1, order_t)
        mu0 = Xc[:, slices[ia][0]].mean(1, keepdim=True)
        Xc.sub_(mu0)  # centred on the train mean: the second moments below lose no precision
        # per-regime train Gram matrices; "all" is their sum (parallel-axis correction below)
        moments, g_all, s_all = {}, 0.0, 0.0
        for r in range(len(REGIMES)):
            Xr = Xc[:, slices[r][0]]
            if Xr.shape[1]:
                moments[r] = ((Xr.transpose(1, 2) @ Xr).double(), Xr.sum(1).double(), Xr.shape[1])
                g_all, s_all = g_all + moments[r][0], s_all + moments[r][1]
        moments[ia] = (g_all, s_all, slices[ia][0].stop - slices[ia][0].start)

        for r, sub in enumerate(subsets):
            if sub is None:
                continue
            tr, va, te = sub
            ytr, yva = Y[tr], Y[va]
            Ytr = torch.cat([ytr, ytr[perms[r][0]]], 1)  # real targets | shuffled control
            Yva = torch.cat([yva, yva[perms[r][1]]], 1)
            Yte = Y[te].repeat(1, 2)
            g_raw, x_sum, n_r = moments[r]
            m = x_sum / n_r  # [c, H] train mean (in the centred coordinates)
            G = g_raw - n_r * m[:, :, None] * m[:, None, :]  # Σ (x − m)(x − m)ᵀ
            y_mean = Ytr.mean(0)
            XtY = Xc[:, tr].transpose(1, 2) @ (Ytr - y_mean).float().expand(len(Xc), -1, -1)
            fit = fit_ridge_gram(G, XtY, n_r, m, y_mean, Xc[:, va], Yva, c["lambdas"])
            score = r2_score(Yte, fit.predict(Xc[:, te])).numpy()  # [c, 2k]
            r2[l0:l1, :, r], ctrl[l0:l1, :, r] = score[:, :k], score[:, k:]
            r2_val[l0:l1, :, r] = fit.val_r2[:, :k].numpy()
            lam[l0:l1, :, r] = fit.lam[:, :k].numpy()
            if r == ia:
                ro_mean[l0:l1], ro_std[l0:l1] = (fit.mean + mu0[:, 0]).numpy(), fit.std.numpy()
                ro_w[l0:l1], ro_b[l0:l1] = fit.weight[..., :k].numpy(), fit.bias[:, :k].numpy()
        del Xc

    raw, raw_val, raw_pred = {}, {}, {}
    for name, X in (("prompt", raw_prompt), ("window", raw_window)):
        if X is not None:
            raw[name], raw_val[name], raw_pred[name] = _raw_control(np.asarray(X)[order], Y, subsets, c["lambdas"])
    few = ~np.array(test_ok)  # too few test windows to report a test R² (the choice stands: it is val's)
    r2[:, :, few] = ctrl[:, :, few] = np.nan
    for v in raw.values():
        v[:, few] = np.nan
    plan = make_plan(r2_val, fluorescence(r2_val), c["grouping"], c["n_groups"])  # val chooses
    best = np.array([plan["best_layer"][t] for t in TASKS], dtype=np.int64)
    readout = Readout(layers=best, mean=ro_mean[best], std=ro_std[best],
                      weight=ro_w[best, :, np.arange(k)], bias=ro_b[best, np.arange(k)])
    res = ProbeResult(r2=r2, F=fluorescence(r2), control_r2=ctrl, lam=lam, raw_r2=raw, plan=plan, n=counts,
                      r2_val=r2_val, raw_r2_val=raw_val, readout_=readout, lambdas=tuple(c["lambdas"]),
                      seconds=time.perf_counter() - t0,
                      meta={"grouping": c["grouping"], "n_groups": c["n_groups"], "seed": c["seed"],
                            "min_windows": c["min_windows"]})
    te_rows = order[slices[ia][2]]  # the test windows (feature rows), regime "all"
    sorted_rows = np.sort(te_rows)  # memmap reads in file order
    layer_pred = readout.predict(features[sorted_rows][np.searchsorted(sorted_rows, te_rows)])
    res.test_predictions = {"rows": te_rows, "y": Y[slices[ia][2]].numpy(), "layer": layer_pred}
    if raw:
        pick = res.raw_choice[:, ia]
        stack = np.stack([raw_pred[n] for n in raw])  # [controls, n_test, task]
        res.test_predictions["raw"] = stack[pick, :, np.arange(k)].T
    return res


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
_SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values: np.ndarray) -> str:
    """F profile over layers as one character per layer (blank = 0, █ = 1)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0, 1)
    return "".join(_SPARK[int(round(x * (len(_SPARK) - 1)))] for x in v)


def format_table(res: ProbeResult) -> str:
    """Compact per-task table (regime "all"): the layer chosen on val with its val and test R²,
    the control, the F profile over layers (val), the raw controls' test R², the information
    gain (test R² − the val-chosen raw control's test R²); then the per-regime brightest layers."""
    ia = res.regimes.index("all")
    summ = res.summary()
    raw_names = list(res.raw_r2)
    width = max(len(res.r2), 24)
    head = (f"{'task':<8}{'layer':>6}{'val R2':>8}{'test R2':>9}{'ctrl':>7}  "
            f"{'F_val profile (layer 0 .. ' + str(len(res.r2) - 1) + ')':<{width}}")
    head += "".join(f"{'raw ' + n:>12}" for n in raw_names) + ("{:>8}  beats raw (val)".format("gain") if raw_names else "")
    lines = [head]
    F_val = res.F_val
    for k, t in enumerate(res.tasks):
        s = summ[t]
        line = (f"{t:<8}{s['best_layer']:>6}{_f(s['r2_val']):>8}{_f(s['r2']):>9}{_f(s['control_r2']):>7}  "
                f"{sparkline(F_val[:, k, ia]):<{width}}")
        line += "".join(f"{_f(s['raw_r2_' + n]):>12}" for n in raw_names)
        if raw_names:
            nb = len(s["layers_beating_raw"])
            line += f"{_f(s['gain'], '+.3f'):>8}  {'yes' if s['beats_raw'] else 'no':<3} ({nb} layer{'s' if nb != 1 else ''})"
        lines.append(line)
    byr = res.plan["best_layer_by_regime"]
    lines.append("best layer by regime (val): " + "; ".join(
        f"{r}: " + " ".join(f"{t}={byr[r][t]}" for t in res.tasks) for r in byr))
    names = res.plan["group_names"]
    lines.append("groups: " + "  ".join(f"{n}={g[0]}-{g[-1]}" for n, g in zip(names, res.plan["groups"])))
    lines.append("layers and beats-raw are chosen on val (val R2 is optimistic); test R2 is reported only")
    return "\n".join(lines)


def _f(x, spec: str = ".3f") -> str:
    return "  n/a" if x is None else format(x, spec)


def run_probe_stage(cfg, windows, teacher_features, raw_prompt, run_dir, logger=None) -> ProbeResult:
    """The ``probe`` stage: run the probe on cached teacher features and write
    ``probe/probe.json``, ``probe/readout.npz`` and ``probe/heatmap_<regime>.png``;
    print the table; log the heatmaps to ``logger`` (W&B / TensorBoard; others skip).

    ``teacher_features``: ``.features`` memmap [N, L+1, H] and ``.ids`` window ids [N];
    ``raw_prompt``: [N, K] numbers the prompt renders, row-aligned with ``.ids`` (or None).
    """
    from .plots import heatmap, log_figure, save_figure

    ids = np.asarray(teacher_features.ids, dtype=np.int64)
    feats = teacher_features.features
    raw_window = windows.inputs(ids).reshape(len(ids), -1)
    res = run_probe(feats, windows.targets[ids], windows.regime[ids], windows.split[ids],
                    raw_prompt=raw_prompt, raw_window=raw_window, cfg_probe=cfg.probe)
    res.test_predictions["ids"] = ids[res.test_predictions.pop("rows")]  # feature rows -> window ids
    out = Path(run_dir) / "probe"
    res.save(out)
    beats = res.beats_raw
    layers = list(range(len(res.r2)))
    for r, name in enumerate(res.regimes):
        fig = heatmap(res.F[:, :, r], res.r2[:, :, r], layers, res.tasks,
                      title=f"fluorescence F, regime {name} (cells: test R²; plan chosen on val)",
                      beats_raw=None if beats is None else beats[:, :, r])
        save_figure(fig, out / f"heatmap_{name}.png")
        log_figure(logger, f"probe/heatmap_{name}", fig)
    n = res.n
    print(f"probe: {len(layers)} layers x {len(res.tasks)} tasks x {len(res.regimes)} regimes on "
          f"{n['train']['all']:,}/{n['val']['all']:,}/{n['test']['all']:,} train/val/test windows "
          f"in {res.seconds:.1f} s")
    print(format_table(res))
    summ = res.summary()
    if res.raw_r2:
        verdict = "; ".join(f"{t}: layer {summ[t]['best_layer']} "
                            f"{'beats' if summ[t]['beats_raw'] else 'does not beat'} the raw input on val "
                            f"(test gain {summ[t]['gain']:+.3f})" for t in res.tasks)
        print(f"note: {verdict}")
    print(f"wrote {out / 'probe.json'}, {out / 'readout.npz'}, {len(res.regimes)} heatmaps")
    return res


__all__ = ["ProbeResult", "Readout", "REGIMES_ALL", "fluorescence", "make_plan", "segment_profiles",
           "thirds", "run_probe", "run_probe_stage", "format_table", "sparkline"]

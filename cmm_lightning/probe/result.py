"""What the probe found (docs/method.md, "Probe"): ``ProbeResult`` (R², F, controls, the plan, JSON
round trip) and ``Readout`` (the chosen layer's ridge per task: the teacher_probe policy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.windows import TASKS
from ..io import atomic_path, read_json, write_json
from .plan import REGIMES_ALL, fluorescence

_FIT_NOTE = ("per regime: fit on the regime's train windows, lambda on its val windows, "
             "R2 on its test windows (own mean); 'all' uses every window")


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


__all__ = ["ProbeResult", "Readout"]

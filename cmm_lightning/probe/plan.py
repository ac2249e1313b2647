"""The probe's plan (docs/method.md, "Probe"): fluorescence F and what the students follow.

    F[l,t,r] = max(0, R²[l,t,r]) / max_l' max(0, R²[l',t,r])

The plan is made from the *validation* R² (``ProbeResult.r2_val``): the brightest layer per task
(``best_layer``) and per task and regime, the brightest layer per regime (mean F over tasks),
and contiguous layer groups (equal thirds, or the optimal segmentation of the F profiles).
"""

from __future__ import annotations

import numpy as np

from ..data.windows import REGIMES, TASKS
from ..errors import CMMInputError

REGIMES_ALL = REGIMES + ("all",)


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


__all__ = ["REGIMES_ALL", "fluorescence", "group_names", "make_plan", "segment_profiles", "thirds"]

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

import numpy as np
import torch

from ..data.windows import REGIMES, SPLITS, TASKS
from ..errors import CMMInputError
from .plan import REGIMES_ALL, fluorescence, make_plan
from .result import ProbeResult, Readout
from .ridge import as_float, fit_ridge, fit_ridge_gram, r2_score


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


__all__ = ["run_probe"]

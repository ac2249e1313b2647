"""Fluorescent probe: closed-form ridge, R² / F / control / raw control, plan, files (docs/method.md, "Probe").

Ground truth is planted by hand: features whose layer k holds task t linearly (the rest is
noise) must light up exactly at k, per regime too, and shuffled targets must read nothing.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cmm_lightning.config import load_config
from cmm_lightning.data.windows import REGIMES, TASKS, make_windows
from cmm_lightning.errors import CMMInputError
from cmm_lightning.probe import (REGIMES_ALL, ProbeResult, Readout, fit_ridge, fluorescence, make_plan,
                                 r2_score, run_probe, run_probe_stage, segment_profiles, thirds)
from cmm_lightning.probe.plots import heatmap, log_figure

from .helpers.books import random_book

IA = REGIMES_ALL.index("all")


# ------------------------------------------------------------------------------------------
# fixtures: the random book with volatility spells of 40 rows, cut by make_windows; a fair-coin
# walk (no imbalance push: the next move is not in the window) whose spread and volume do not
# follow the spells (tasks independent within a regime). 24,000 rows: the shuffled control's test
# R² is the sampling noise of per-regime test means, well under its bound at this size.
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def windows():
    w = make_windows(random_book(24_000, spell=40, push=0.0, coupled=False), window=16, horizon=5, stride=1)
    ok = w.split >= 0
    counts = np.array([[((w.split == s) & (w.regime == r)).sum() for r in range(3)] for s in range(3)])
    assert counts.min() >= 100, counts  # every regime in every split
    return SimpleNamespace(w=w, ids=np.flatnonzero(ok))


def planted_features(w, ids, plant: dict, n_layers=8, hidden=16, noise=0.3, seed=1) -> np.ndarray:
    """float16 [N, n_layers, hidden]: noise, plus for each (regime, task) -> layer the target,
    standardized within the regime, along a fixed random direction of that layer."""
    rng = np.random.default_rng(seed)
    y, reg = w.targets[ids].astype(np.float64), w.regime[ids]
    X = rng.normal(size=(len(ids), n_layers, hidden)) * noise
    for (r, t), layer in plant.items():
        rows = reg == r
        z = (y[rows, t] - y[rows, t].mean()) / y[rows, t].std()
        u = rng.normal(size=hidden)
        X[rows, layer] += z[:, None] * (u / np.linalg.norm(u))
    return X.astype(np.float16)


# regime -> task -> layer; each layer holds at most one task inside a regime
PLANT = {0: {0: 1, 1: 2, 2: 7}, 1: {0: 3, 1: 2, 2: 7}, 2: {0: 5, 1: 2, 2: 6}}


@pytest.fixture(scope="module")
def planted(windows):
    w, ids = windows.w, windows.ids
    plant = {(r, t): l for r, d in PLANT.items() for t, l in d.items()}
    X = planted_features(w, ids, plant)
    res = run_probe(X, w.targets[ids], w.regime[ids], w.split[ids], raw_prompt=None,  # window only
                    raw_window=w.inputs(ids).reshape(len(ids), -1), cfg_probe=None)
    return SimpleNamespace(X=X, res=res)


# ------------------------------------------------------------------------------------------
# ridge
# ------------------------------------------------------------------------------------------
def _numpy_ridge(X, Y, lam):
    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-6] = 1.0
    Xs = (X - mu) / sd
    W = np.linalg.solve(Xs.T @ Xs + lam * np.eye(X.shape[1]), Xs.T @ (Y - Y.mean(0)))
    return W, mu, sd


@pytest.mark.parametrize("n,d", [(300, 20), (15, 40)])  # primal and dual branches
def test_ridge_matches_closed_form(n, d):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(3, n, d)) * rng.uniform(0.2, 4, d) + 30).astype(np.float16)
    X[:, :, 5] = 2.0  # a constant column reads 0
    Y = rng.normal(size=(n, 2))
    fit = fit_ridge(X, Y, None, None, [2.5])
    for l in range(3):
        W, mu, sd = _numpy_ridge(X[l].astype(np.float64), Y, 2.5)
        np.testing.assert_allclose(fit.weight[l].numpy(), W, atol=2e-5, rtol=1e-4)
        pred = ((X[l].astype(np.float64) - mu) / sd) @ W + Y.mean(0)
        np.testing.assert_allclose(fit.predict(X)[l].numpy(), pred, atol=1e-4)
    np.testing.assert_allclose(fit.predict(X[0])[1].numpy(), fit.predict(X)[1].numpy()[0:0].sum() +
                               fit.select([1]).predict(X[0])[0].numpy())  # [n, d] goes to every layer


def test_ridge_grid_paths_agree():
    """Cholesky per λ (short grid) and the eigendecomposition (long grid / λ = 0) agree."""
    from cmm_lightning.probe.ridge import _grid_weights

    rng = np.random.default_rng(2)
    X = torch.tensor(rng.normal(size=(2, 200, 30)))
    G, b = X.transpose(1, 2) @ X, X.transpose(1, 2) @ torch.tensor(rng.normal(size=(200, 3)))
    short = torch.tensor([0.5, 5.0, 50.0], dtype=torch.float64)
    long = torch.cat([short, torch.logspace(-2, 6, 11, dtype=torch.float64)])
    np.testing.assert_allclose(_grid_weights(G, b, short), _grid_weights(G, b, long)[:, :, :3], atol=1e-10)
    ols = torch.linalg.solve(G, b)
    np.testing.assert_allclose(_grid_weights(G, b, torch.zeros(1, dtype=torch.float64))[:, :, 0], ols, atol=1e-8)


def test_ridge_lambda_chosen_on_validation():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 30))
    w = rng.normal(size=30)
    Y = np.stack([X @ w, rng.normal(size=600)], 1)  # noiseless signal | pure noise
    grid = [1e-3, 1.0, 1e2, 1e4, 1e6]
    fit = fit_ridge(X[:400], Y[:400], X[400:], Y[400:], grid)
    assert fit.lam[0, 0] == 1e-3 and fit.val_r2[0, 0] > 0.999  # clean signal: least shrinkage
    assert fit.lam[0, 1] >= 1e4 and abs(fit.val_r2[0, 1]) < 0.02  # noise: shrink to the mean


def test_r2_score_by_hand():
    y = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]])
    yhat = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [5.0, 1.0]])
    r2 = r2_score(y, yhat)
    assert r2[0] == pytest.approx(1 - 1 / 5) and np.isnan(r2[1])  # constant column: undefined
    assert r2_score(torch.tensor(y[:, 0]), torch.tensor(y[:, 0]))[0] == 1.0


# ------------------------------------------------------------------------------------------
# F, plan, grouping
# ------------------------------------------------------------------------------------------
def test_fluorescence_by_hand():
    r2 = np.array([[0.2, -0.1, np.nan], [0.5, -0.3, np.nan], [-0.1, -0.2, np.nan]])
    F = fluorescence(r2)
    np.testing.assert_allclose(F[:, 0], [0.4, 1.0, 0.0])
    np.testing.assert_array_equal(F[:, 1], [0.0, 0.0, 0.0])  # nothing lights up: F = 0
    assert np.isnan(F[:, 2]).all()


def test_segment_profiles_recovers_planted_cuts():
    rng = np.random.default_rng(0)
    means = rng.uniform(0, 1, (3, 12))
    P = np.concatenate([np.repeat(means[g][None], n, 0) for g, n in enumerate((4, 15, 12))])
    P += rng.normal(size=P.shape) * 0.03
    groups = segment_profiles(P, 3)
    assert groups == [list(range(0, 4)), list(range(4, 19)), list(range(19, 31))]


def test_segment_profiles_is_optimal():
    rng = np.random.default_rng(3)
    P = rng.normal(size=(9, 4))

    def sse(seg):
        return ((P[seg] - P[seg].mean(0)) ** 2).sum()

    best = min(itertools.combinations(range(1, 9), 2),
               key=lambda c: sse(slice(0, c[0])) + sse(slice(c[0], c[1])) + sse(slice(c[1], 9)))
    groups = segment_profiles(P, 3)
    assert [g[0] for g in groups[1:]] == list(best)
    assert sorted(sum(groups, [])) == list(range(9))


def test_thirds_and_plan_by_hand():
    assert thirds(31, 3) == [list(range(0, 11)), list(range(11, 21)), list(range(21, 31))]
    assert thirds(2, 3) == [[0], [1]]
    r2 = np.zeros((4, 3, 4))
    r2[2, :, IA] = [0.3, 0.1, 0.2]
    r2[1, :, IA] = [0.1, 0.5, 0.1]
    r2[3, 2, IA] = 0.4
    r2[:, :, 0] = r2[:, :, IA]
    r2[0, :, 1] = 0.9  # normal: layer 0 reads everything
    r2[:, :, 2] = np.nan  # volatile: not probed -> falls back to "all"
    plan = make_plan(r2, fluorescence(r2), "thirds", 2)
    assert plan["best_layer"] == {"mid": 2, "spread": 1, "volume": 3}
    assert plan["best_layer_by_regime"]["normal"] == {"mid": 0, "spread": 0, "volume": 0}
    assert plan["best_layer_by_regime"]["volatile"] == plan["best_layer"]
    # calm mean F per layer: l1 (1/3+1+1/4)/3, l2 (1+0.2+0.5)/3 -> l2 brightest
    assert plan["best_layer_regime"] == {"calm": 2, "normal": 0, "volatile": 2}
    assert plan["groups"] == [[0, 1], [2, 3]] and plan["group_names"] == ["shallow", "deep"]


# ------------------------------------------------------------------------------------------
# run_probe on planted ground truth
# ------------------------------------------------------------------------------------------
def test_planted_layers_light_up_per_regime(planted):
    res = planted.res
    assert res.r2.shape == (8, 3, 4) and res.regimes == REGIMES_ALL
    for r, per_task in PLANT.items():
        for t, layer in per_task.items():
            F = res.F[:, t, r]
            assert F[layer] == 1.0, (REGIMES[r], TASKS[t], F)
            assert np.delete(F, layer).max() < 0.1, (REGIMES[r], TASKS[t], F)
            assert res.r2[layer, t, r] > 0.8
            assert res.plan["best_layer_by_regime"][REGIMES[r]][TASKS[t]] == layer
    # "all": spread sits in layer 2 everywhere, volume mostly in 7, mid split over 1/3/5
    assert res.plan["best_layer"]["spread"] == 2 and res.plan["best_layer"]["volume"] == 7
    assert res.plan["best_layer"]["mid"] in (1, 3, 5)
    assert res.F[[0, 4], 0, IA].max() < 0.1


def test_F_range_and_a_one_per_column(planted):
    F = planted.res.F
    assert np.isfinite(F).all() and F.min() >= 0.0 and F.max() <= 1.0
    assert (F.max(axis=0) == 1.0).all()  # every (task, regime) column has its brightest layer


def test_shuffled_control_reads_nothing_and_selectivity(planted):
    res = planted.res
    assert np.abs(res.control_r2).max() < 0.05
    np.testing.assert_allclose(res.selectivity, res.r2 - res.control_r2)
    for r, per_task in PLANT.items():
        for t, layer in per_task.items():
            assert res.selectivity[layer, t, r] > 0.75


def test_raw_control_and_beats_raw(planted):
    res = planted.res
    assert set(res.raw_r2) == {"window"} and res.raw_r2["window"].shape == (3, 4)
    assert np.isfinite(res.raw_r2["window"]).all()
    beats = res.beats_raw  # decided on val: val R² above the raw control's val R² (and 0)
    np.testing.assert_array_equal(beats, res.r2_val > np.maximum(res.raw_r2_val["window"][None], 0.0))
    assert (res.raw_r2["window"][0] < 0.1).all()  # a random walk's next move is not in its window
    assert beats[[1, 3, 5], 0, [0, 1, 2]].all()  # ... but the planted layers hold it
    summ = res.summary()
    for k, t in enumerate(TASKS):  # the gain: the val-chosen layer's test R² minus the raw test R²
        assert summ[t]["raw"] == "window" and summ[t]["raw_r2"] == pytest.approx(res.raw_r2["window"][k, IA])
        assert summ[t]["gain"] == pytest.approx(summ[t]["r2"] - summ[t]["raw_r2"])
    tp = res.test_predictions  # the gain's inputs: its test R² recomputed from the saved predictions
    np.testing.assert_allclose(r2_score(tp["y"], tp["layer"]), [summ[t]["r2"] for t in TASKS], atol=1e-4)
    np.testing.assert_allclose(r2_score(tp["y"], tp["raw"]), [summ[t]["raw_r2"] for t in TASKS], atol=1e-4)


def test_everything_the_probe_chooses_is_blind_to_the_test_split(windows, planted):
    """Test features and targets replaced by noise: the plan, λ, val R², readout and beats-raw are
    the same values; only the test R² (what is reported) moves."""
    w, ids, res = windows.w, windows.ids, planted.res
    test = w.split[ids] == 2
    rng = np.random.default_rng(9)
    X = planted.X.copy()
    X[test] = rng.normal(size=X[test].shape).astype(np.float16)
    y = w.targets[ids].copy()
    y[test] = rng.normal(size=y[test].shape)
    raw = w.inputs(ids).reshape(len(ids), -1)
    raw[test] = rng.normal(size=raw[test].shape)
    other = run_probe(X, y, w.regime[ids], w.split[ids], raw_window=raw, cfg_probe=None)
    assert other.plan == res.plan
    np.testing.assert_array_equal(other.lam, res.lam)
    np.testing.assert_array_equal(other.r2_val, res.r2_val)
    np.testing.assert_array_equal(other.beats_raw, res.beats_raw)
    for k in ("mean", "std", "weight", "bias"):
        np.testing.assert_array_equal(getattr(other.readout_, k), getattr(res.readout_, k))
    assert np.abs(other.r2 - res.r2).max() > 0.5  # the reported test R² did change


def test_profile_grouping_recovers_planted_segments(windows):
    w, ids = windows.w, windows.ids
    # layer 0: mid; layers 1-5: spread; layers 6-7: volume (in every regime); thirds would cut 3|3|2
    plant = {(r, t): [0] if t == 0 else list(range(1, 6)) if t == 1 else [6, 7]
             for r in range(3) for t in range(3)}
    rng = np.random.default_rng(5)
    y, reg = w.targets[ids].astype(np.float64), w.regime[ids]
    X = rng.normal(size=(len(ids), 8, 12)) * 0.3
    for (r, t), layers in plant.items():
        rows = reg == r
        z = (y[rows, t] - y[rows, t].mean()) / y[rows, t].std()
        for l in layers:
            X[rows, l] += z[:, None] * rng.normal(size=12) / np.sqrt(12)
    cfg = SimpleNamespace(lambdas=[0.1, 10.0, 1e3], grouping="profile", n_groups=3, seed=0, min_windows=20)
    res = run_probe(X.astype(np.float16), y, reg, w.split[ids], cfg_probe=cfg)
    assert res.plan["groups"] == [[0], [1, 2, 3, 4, 5], [6, 7]]
    assert res.plan["group_names"] == ["shallow", "middle", "deep"]


def test_small_regime_is_nan_and_plan_falls_back(windows, planted):
    w, ids = windows.w, windows.ids
    split = w.split[ids].copy()
    split[(w.regime[ids] == 2) & (split == 2)] = -1  # no volatile test windows: chosen on val as usual,
    res = run_probe(planted.X, w.targets[ids], w.regime[ids], split, cfg_probe=None)  # no test R² to report
    assert np.isnan(res.r2[:, :, 2]).all() and np.isfinite(res.r2[:, :, [0, 1, 3]]).all()
    assert np.isfinite(res.r2_val[:, :, 2]).all() and res.n["test"]["volatile"] == 0
    assert res.plan == planted.res.plan  # test counts never decide what is probed or chosen
    split[(w.regime[ids] == 2) & (split == 1)] = -1  # no volatile val windows: not probed, plan falls back
    res = run_probe(planted.X, w.targets[ids], w.regime[ids], split, cfg_probe=None)
    assert np.isnan(res.r2_val[:, :, 2]).all() and np.isnan(res.r2[:, :, 2]).all()
    assert res.plan["best_layer_by_regime"]["volatile"] == res.plan["best_layer"]
    doc = json.loads(json.dumps(res.to_json()), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["r2"][0][0][2] is None


def test_too_few_windows_is_an_input_error():
    X = np.zeros((30, 2, 4), np.float16)
    with pytest.raises(CMMInputError, match="too few windows"):
        run_probe(X, np.zeros((30, 3)), np.zeros(30, int), np.repeat([0, 1, 2], 10), cfg_probe=None)


# ------------------------------------------------------------------------------------------
# readout, json, figures, stage
# ------------------------------------------------------------------------------------------
def test_readout_matches_best_layer_probe(windows, planted, tmp_path):
    w, ids, res = windows.w, windows.ids, planted.res
    best = [res.plan["best_layer"][t] for t in TASKS]
    ro = res.readout_
    np.testing.assert_array_equal(ro.layers, best)
    pred = res.readout(planted.X)
    assert pred.shape == (len(ids), 3)
    # same numbers as refitting the "all" probe on the best layer with the chosen λ
    train, test = w.split[ids] == 0, w.split[ids] == 2
    for t in range(3):
        X = planted.X[:, best[t]].astype(np.float64)
        W, mu, sd = _numpy_ridge(X[train], w.targets[ids][train][:, [t]], res.lam[best[t], t, IA])
        ref = ((X - mu) / sd) @ W + w.targets[ids][train][:, t].mean()
        np.testing.assert_allclose(pred[:, t], ref[:, 0], atol=2e-3)
    r2 = r2_score(w.targets[ids][test], pred[test])
    np.testing.assert_allclose(r2, [res.r2[best[t], t, IA] for t in range(3)], atol=1e-4)
    stacked = planted.X[:, best]  # [N, 3, H] best layer per task
    np.testing.assert_allclose(res.readout(stacked, stacked=True), pred, atol=1e-5)
    ro.save(tmp_path / "readout.npz")
    back = Readout.load(tmp_path / "readout.npz")
    np.testing.assert_allclose(back.predict(planted.X), pred, atol=1e-6)
    assert back.tasks == TASKS


def test_json_round_trip(planted, tmp_path):
    res = planted.res
    res.save(tmp_path)
    doc = json.loads((tmp_path / "probe.json").read_text())
    for key in ("r2", "F", "control_r2", "selectivity", "raw_r2", "beats_raw", "lambdas", "plan",
                "tasks", "regimes", "n", "axes", "summary"):
        assert key in doc, key
    assert doc["axes"] == ["layer", "task", "regime"] and doc["regimes"] == list(REGIMES_ALL)
    assert doc["n"]["train"]["all"] == int((planted.res.n["train"]["all"]))
    back = ProbeResult.load(tmp_path)
    np.testing.assert_allclose(back.r2, res.r2, atol=1e-5)
    np.testing.assert_allclose(back.F, res.F, atol=1e-5)
    np.testing.assert_allclose(back.r2_val, res.r2_val, atol=1e-5)
    assert back.plan == res.plan
    for k, v in res.test_predictions.items():
        np.testing.assert_array_equal(back.test_predictions[k], v)
    np.testing.assert_array_equal(back.beats_raw, res.beats_raw)
    np.testing.assert_allclose(back.readout(planted.X), res.readout(planted.X), atol=1e-6)


def test_heatmap_cells_and_marks():
    F = np.array([[1.0, 0.2], [0.5, 1.0], [0.0, 0.1]])
    r2 = np.array([[0.61, 0.1], [0.3, 0.55], [-0.02, 0.05]])
    beats = np.array([[True, False], [False, True], [False, False]])
    fig = heatmap(F, r2, [0, 1, 2], ["mid", "spread"], "t", beats_raw=beats)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.61*", "0.10", "0.30", "0.55*", "-0.02", "0.05"]
    assert len(fig.axes[0].patches) == 2


class _ImageLogger:
    def __init__(self):
        self.images = []

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0].shape))


def test_stage_writes_files_and_logs(windows, planted, tmp_path, capsys):
    w, ids = windows.w, windows.ids
    path = tmp_path / "feats.npy"
    np.save(path, planted.X)
    tf = SimpleNamespace(features=np.load(path, mmap_mode="r"), ids=ids)
    cfg = load_config(None, ["probe.grouping=profile"])
    raw_prompt = np.stack([w.book.mid[w.end[ids]] - w.book.mid[w.end[ids] - 1], w.book.spread[w.end[ids]]], 1)
    logger = _ImageLogger()
    res = run_probe_stage(cfg, w, tf, raw_prompt, tmp_path / "run", logger=logger)
    out = tmp_path / "run" / "probe"
    for name in ["probe.json", "readout.npz"] + [f"heatmap_{r}.png" for r in REGIMES_ALL]:
        assert (out / name).stat().st_size > 0, name
    assert (out / "heatmap_calm.png").read_bytes()[:4] == b"\x89PNG"
    assert [k for k, _ in logger.images] == [f"probe/heatmap_{r}" for r in REGIMES_ALL]
    assert set(res.raw_r2) == {"prompt", "window"}
    text = capsys.readouterr().out
    for t in TASKS:
        assert t in text
    assert "beats raw" in text and "best layer by regime" in text and "note:" in text
    assert json.loads((out / "probe.json").read_text())["plan"]["best_layer"]["spread"] == 2
    assert log_figure(None, "x", None) is False


@pytest.mark.slow
def test_timing_10k_windows_31_layers(tmp_path):
    """Speed target (docs/method.md, "Probe"): the whole probe for 10^4 windows x 31 layers x 576 in < 60 s on 2 cores."""
    import time

    N, L, H = 10_000, 31, 576
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=(N, L, H))
    for i in range(0, N, 2000):
        mm[i:i + 2000] = rng.standard_normal((2000, L, H), dtype=np.float32)
    mm.flush()
    feats = np.load(tmp_path / "f.npy", mmap_mode="r")
    split = np.repeat([0, 1, 2], [7000, 1500, 1500])
    t0 = time.perf_counter()
    res = run_probe(feats, rng.normal(size=(N, 3)), rng.integers(0, 3, N), split,
                    raw_prompt=rng.normal(size=(N, 40)), raw_window=rng.normal(size=(N, 736)), cfg_probe=None)
    assert time.perf_counter() - t0 < 60.0
    assert np.abs(res.r2).max() < 0.06  # random features read nothing

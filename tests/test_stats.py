"""cmm_lightning.stats: CI coverage by simulation, planted edges and null rejection rates of the
paired test, Holm by hand, R² differences, degenerate inputs. Seeds are fixed, so every count
below is deterministic; the thresholds leave a few binomial standard errors of room.

Loops of 200 simulations use fewer resamples (1999 for CIs, 999 for p-values) than the default
9999: coverage and test size do not depend on it, and the file stays fast on a loaded box."""

import math
import warnings

import numpy as np
import pytest

from cmm_lightning.stats import (BCA_MAX_UNITS, holm, mean_ci, paired_test, r2_ci, r2_diff_ci,
                                 ratio_ci, stratified_ratio, verdict)

N_SIM = 200


def _coverage(draw, truth, ci_fn, **kw):
    hits = 0
    for i in range(N_SIM):
        lo, hi = ci_fn(*draw(np.random.default_rng(10_000 + i)), n_resamples=1999, seed=i, **kw)
        hits += lo <= truth <= hi
    return hits / N_SIM


# ------------------------------------------------------------------------------ CI coverage

@pytest.mark.parametrize("name, draw, mean", [
    ("normal", lambda r: (r.normal(1.0, 2.0, 20),), 1.0),
    ("exponential", lambda r: (r.exponential(1.0, 20) - 0.5,), 0.5),  # skewness 2
], ids=["normal", "exponential"])
def test_mean_ci_covers_the_mean(name, draw, mean):
    # nominal 95 %; with n = 20 BCa reaches ~94 % (normal) and ~92 % (exponential) over 1000
    # simulations. 90 % of 200 is ~1-2 binomial SE below that.
    cov = _coverage(draw, mean, mean_ci)
    assert cov >= 0.90, f"{name}: coverage {cov:.3f}"


def test_ratio_ci_covers_the_pooled_ratio():
    # PnLMAP-like: den = MAP > 0 (lognormal), num = EPnL with true pooled ratio
    # E[num] / E[den] = 0.5 and noise growing with the position. Threshold 85 %: the ratio of
    # sums is biased at O(1/n) and a bootstrap CI from n = 20 episodes undercovers a little
    # (~92 % measured over 1000 simulations); 85 % is ~3.5 binomial SE below that, while a
    # broken CI (e.g. num and den resampled independently, or the wrong statistic) misses it.
    def draw(r):
        den = r.lognormal(0.0, 0.5, 20)
        return 0.5 * den + r.normal(0.0, 1.0, 20) * den, den
    cov = _coverage(draw, 0.5, ratio_ci)
    assert cov >= 0.85, f"coverage {cov:.3f}"


def test_ratio_ci_resamples_num_and_den_jointly():
    # num / den = 0.5 within 1 % in every episode, den spread over two orders of magnitude:
    # a paired bootstrap gives a tight CI around 0.5 (independent resampling would not)
    r = np.random.default_rng(1)
    den = np.exp(r.uniform(0, math.log(100), 30))
    num = 0.5 * den * (1 + 0.01 * r.standard_normal(30))
    lo, hi = ratio_ci(num, den)
    assert 0.49 < lo < num.sum() / den.sum() < hi < 0.51


@pytest.mark.parametrize("n", [400, BCA_MAX_UNITS + 500])  # BCa; percentile above the cap
def test_mean_ci_matches_normal_theory_for_large_n(n):
    x = np.random.default_rng(n).normal(3.0, 2.0, n)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(n)
    lo, hi = mean_ci(x, n_resamples=1999)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_ci_narrows_with_confidence_and_is_reproducible():
    x = np.random.default_rng(2).normal(size=25)
    assert mean_ci(x, seed=3) == mean_ci(x, seed=3)
    assert mean_ci(x, seed=np.random.default_rng(3)) == mean_ci(x, seed=np.random.default_rng(3))
    lo90, hi90 = mean_ci(x, confidence=0.90)
    lo99, hi99 = mean_ci(x, confidence=0.99)
    assert lo99 < lo90 < x.mean() < hi90 < hi99


# ------------------------------------------------------------------------------ paired test

def _episodes(r, n, edge):
    """Large market noise shared by both policies (sd 100) + small own noise (sd 0.5)."""
    market = r.normal(0.0, 100.0, n)
    b = market + r.normal(0.0, 0.5, n)
    a = market + r.normal(0.0, 0.5, n) + edge
    return a, b


def test_paired_test_finds_a_planted_edge():
    a, b = _episodes(np.random.default_rng(0), 40, edge=1.0)
    out = paired_test(a, b)
    assert out["n"] == 40
    assert out["diff"] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert abs(out["diff"] - 1.0) < 0.5
    assert out["p_value"] < 0.01
    assert out["ci"][0] > 0 and verdict(out) == "ahead"
    # the market noise (sd 100) cancels in the paired CI: its width is set by the own noise
    assert out["ci"][1] - out["ci"][0] < 1.0
    back = paired_test(b, a)
    assert back["p_value"] > 0.99 and verdict(back["ci"]) == "behind"


def test_paired_test_null_rejection_rate():
    rejections, ps = 0, []
    for i in range(N_SIM):
        a, b = _episodes(np.random.default_rng(20_000 + i), 20, edge=0.0)
        p = paired_test(a, b, n_resamples=999, seed=i)["p_value"]
        ps.append(p)
        rejections += p < 0.05
    rate = rejections / N_SIM
    assert 0.01 <= rate <= 0.10, f"null rejection rate {rate:.3f}"  # expected 0.05 (SE 0.015)
    assert 0.35 < np.mean(ps) < 0.65  # p-values ~ uniform under H0


def test_paired_test_fixed_null_case():
    a, b = _episodes(np.random.default_rng(7), 30, edge=0.0)
    out = paired_test(a, b)
    assert out["p_value"] > 0.05 and verdict(out) == "indistinguishable"


def test_paired_test_exact_when_all_swaps_fit():
    # n = 5: 2^5 = 32 <= n_resamples, so scipy enumerates every swap; A > B in every episode
    # and no swap pattern reaches the observed statistic except the identity -> p = 1/32
    a = np.array([3.0, 5.0, 1.0, 8.0, 2.0])
    out = paired_test(a, a - np.array([1.0, 2.0, 0.5, 3.0, 1.5]), n_resamples=999)
    assert out["p_value"] == pytest.approx(1 / 32)


def _ratio_episodes(r, n, edge):
    """(EPnL, MAP) per episode: shared market PnL noise (sd 20) and a shared MAP level per
    episode (lognormal around 5 shares), each policy with small own noise; A earns `edge`
    more per episode."""
    market = r.normal(0.0, 20.0, n)
    level = r.lognormal(math.log(5.0), 0.5, n)
    b_num = market + r.normal(0.0, 0.5, n)
    a_num = market + r.normal(0.0, 0.5, n) + edge
    b_den = level * (1 + 0.01 * r.standard_normal(n))
    a_den = level * (1 + 0.01 * r.standard_normal(n))
    return a_num, b_num, a_den, b_den


def test_paired_ratio_finds_a_planted_edge():
    a_num, b_num, a_den, b_den = _ratio_episodes(np.random.default_rng(0), 40, edge=1.0)
    out = paired_test(a_num, b_num, a_den, b_den)
    want = a_num.sum() / a_den.sum() - b_num.sum() / b_den.sum()
    assert out["diff"] == pytest.approx(want, rel=1e-12)
    assert out["diff"] > 0.1  # ~ 1 / 5 shares
    assert out["p_value"] < 0.01
    assert out["ci"][0] > 0 and verdict(out) == "ahead"
    assert paired_test(b_num, a_num, b_den, a_den)["p_value"] > 0.99


def test_paired_ratio_null_rejection_rate():
    rejections = 0
    for i in range(N_SIM):
        a_num, b_num, a_den, b_den = _ratio_episodes(np.random.default_rng(30_000 + i), 20, 0.0)
        rejections += paired_test(a_num, b_num, a_den, b_den, n_resamples=999,
                                  seed=i)["p_value"] < 0.05
    rate = rejections / N_SIM
    assert 0.01 <= rate <= 0.10, f"null rejection rate {rate:.3f}"


def test_paired_ratio_fixed_null_case():
    out = paired_test(*_ratio_episodes(np.random.default_rng(7), 30, 0.0))
    assert out["p_value"] > 0.05 and verdict(out) == "indistinguishable"


def test_paired_test_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0, 2.0], a_den=[1.0, 1.0])
    with pytest.raises(ValueError):
        mean_ci(np.ones((3, 2)))


# ------------------------------------------------------------------------------ Holm, verdict

def test_holm_hand_values():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.01, 0.02, 0.03, 0.04]) == pytest.approx([0.04, 0.06, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped
    assert holm([]) == []
    out = holm({"mlp": 0.04, "tcn": 0.01, "lstm": 0.03})
    assert list(out) == ["mlp", "tcn", "lstm"]
    assert out == pytest.approx({"mlp": 0.06, "tcn": 0.03, "lstm": 0.06})
    arr = holm(np.array([0.02, np.nan, 0.01]))  # NaN kept, not counted in m
    assert isinstance(arr, np.ndarray) and np.isnan(arr[1])
    assert arr[[0, 2]] == pytest.approx([0.02, 0.02])
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_holm_monotone_and_bounded():
    p = np.random.default_rng(3).uniform(0, 0.2, 50) ** 2
    adj = holm(p)
    assert np.all(adj >= p) and np.all(adj <= 1.0)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)  # same order as the raw p-values
    assert adj.min() == pytest.approx(len(p) * p.min())


def test_verdict():
    assert verdict((0.1, 2.0)) == "ahead"
    assert verdict([-2.0, -0.1]) == "behind"
    assert verdict((-1.0, 1.0)) == "indistinguishable"
    assert verdict((0.0, 1.0)) == "indistinguishable"
    assert verdict((math.nan, math.nan)) == "indistinguishable"
    assert verdict({"ci": [0.5, 1.0]}) == "ahead"


# ------------------------------------------------------------------------------ R²

def _r2(y, p):
    return 1 - np.sum((y - p) ** 2, axis=0) / np.sum((y - y.mean(axis=0)) ** 2, axis=0)


def test_r2_diff_better_predictor_is_ahead():
    r = np.random.default_rng(4)
    y = r.normal(0.0, 1.0, (300, 2)) + [5.0, -3.0]
    good = y + 0.2 * r.standard_normal(y.shape)
    bad = y + 1.0 * r.standard_normal(y.shape)
    out = r2_diff_ci(y, good, bad, n_resamples=1999)
    assert out["n"] == 300
    assert out["diff"] == pytest.approx(_r2(y, good) - _r2(y, bad), rel=1e-9)
    for d, ci in zip(out["diff"], out["ci"]):
        assert d > 0 and ci[0] > 0 and verdict(ci) == "ahead"
    one = r2_ci(y, good, n_resamples=1999)
    assert one["r2"] == pytest.approx(_r2(y, good), rel=1e-9)
    for v, (lo, hi) in zip(one["r2"], one["ci"]):
        assert lo < v < hi <= 1.0
    # 1-D input gives scalars
    flat = r2_diff_ci(y[:, 0], bad[:, 0], good[:, 0], n_resamples=1999)
    assert flat["diff"] < 0 and verdict(flat["ci"]) == "behind"


def test_r2_diff_identical_predictors_is_zero():
    r = np.random.default_rng(5)
    y = r.normal(size=(100, 3))
    p = y + r.normal(size=y.shape)
    out = r2_diff_ci(y, p, p.copy(), n_resamples=999)
    assert out["diff"] == [0.0, 0.0, 0.0]
    assert out["ci"] == [[0.0, 0.0]] * 3
    assert verdict(out["ci"][0]) == "indistinguishable"


def test_r2_block_bootstrap_widens_for_correlated_windows():
    # overlapping windows -> errors correlated over ~50 neighbours: the i.i.d. bootstrap over
    # windows is too narrow, the block bootstrap is wider. block=1 is the window bootstrap.
    r = np.random.default_rng(6)
    n = 1000
    y = r.normal(size=n)
    e = np.convolve(r.normal(size=n + 49), np.ones(50) / math.sqrt(50), mode="valid")
    p = y + 0.7 * e
    iid = r2_ci(y, p, n_resamples=999)
    blk = r2_ci(y, p, n_resamples=999, block=50)
    assert blk["r2"] == pytest.approx(iid["r2"], rel=1e-12)
    assert r2_ci(y, p, n_resamples=999, block=1) == iid
    assert blk["ci"][1] - blk["ci"][0] > 2 * (iid["ci"][1] - iid["ci"][0])


# ------------------------------------------------------------------------------ degenerate inputs

def test_degenerate_inputs_are_finite_or_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mean_ci([2.5] * 10) == (2.5, 2.5)
        assert all(math.isnan(v) for v in mean_ci([2.5]))
        assert all(math.isnan(v) for v in mean_ci([]))
        assert all(math.isnan(v) for v in mean_ci([1.0, np.nan, 2.0]))
        assert ratio_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((0.5, 0.5))
        assert all(math.isnan(v) for v in ratio_ci([1.0, 2.0], [0.0, 0.0]))  # never held a position
        assert all(math.isnan(v) for v in ratio_ci([1.0], [1.0]))
        lo, hi = ratio_ci([1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 3.0])  # most resamples fine
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi

        same = paired_test([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
        assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
        shift = paired_test([2.0] * 6, [1.0] * 6)  # constant edge
        assert shift["ci"] == [1.0, 1.0] and shift["p_value"] == pytest.approx(1 / 64)
        one = paired_test([1.0], [0.0])
        assert one["diff"] == 1.0 and math.isnan(one["p_value"]) and all(map(math.isnan, one["ci"]))
        zero_den = paired_test([1.0, 2.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0])
        assert math.isnan(zero_den["diff"]) and math.isnan(zero_den["p_value"])
        assert verdict(zero_den) == "indistinguishable"

        const = r2_ci(np.ones(10), np.arange(10.0))
        assert math.isnan(const["r2"]) and all(map(math.isnan, const["ci"]))
        tiny = r2_diff_ci([1.0], [1.0], [0.0])
        assert tiny["n"] == 1 and all(map(math.isnan, tiny["ci"]))
        assert holm([np.nan]) == [pytest.approx(np.nan, nan_ok=True)]


# ------------------------------------------------------------------ several datasets (strata)
def _two_datasets(rng, edge: float = 0.0):
    """Two datasets of 20 episodes, MAP ~ 100. Per dataset both policies earn the same PnL per
    unit MAP (0.9 and 0.0) up to own noise, + ``edge`` for A; B holds 6x A's inventory on dataset 1
    (Simpson's trap for one ratio of sums over both: there B's PnLMAP is ~0.13, A's ~0.45)."""
    strata = np.repeat([0, 1], 20)
    map_a = 100.0 * rng.uniform(0.8, 1.2, 40)
    map_b = map_a * np.where(strata == 0, 1.0, 6.0)
    rate = np.where(strata == 0, 0.9, 0.0)
    pnl_a = (rate + edge) * map_a + rng.normal(0, 0.5, 40)
    pnl_b = rate * map_b + rng.normal(0, 0.5, 40)
    return pnl_a, map_a, pnl_b, map_b, strata


def test_stratified_ratio_is_the_mean_of_the_datasets_ratios():
    num, den, strata = np.array([1.0, 2, 3, 4, 5]), np.array([1.0, 1, 2, 2, 6]), np.array(["x", "x", "y", "y", "y"])
    assert stratified_ratio(num, den, strata) == pytest.approx(((1 + 2) / 2 + (3 + 4 + 5) / 10) / 2, rel=1e-12)
    lo, hi = ratio_ci(num, den, strata=strata)
    assert lo <= stratified_ratio(num, den, strata) <= hi


def test_pooled_over_datasets_is_not_fooled_by_inventory_weights():
    a, ad, b, bd, strata = _two_datasets(np.random.default_rng(3))
    naive = paired_test(a, b, ad, bd)  # one ratio of sums over both datasets: B's big MAP on dataset 1 sinks it
    assert naive["diff"] > 0.3 and verdict(naive) == "ahead"
    out = paired_test(a, b, ad, bd, strata=strata)
    assert out["diff"] == pytest.approx(stratified_ratio(a, ad, strata) - stratified_ratio(b, bd, strata), rel=1e-12)
    assert abs(out["diff"]) < 0.05 and out["ci"][0] < 0 < out["ci"][1] and out["p_value"] > 0.05
    assert verdict(out, out["p_value"], out["p_less"]) == "indistinguishable"


def test_pooled_over_datasets_finds_a_planted_edge():
    a, ad, b, bd, strata = _two_datasets(np.random.default_rng(4), edge=0.1)
    out = paired_test(a, b, ad, bd, strata=strata)
    assert abs(out["diff"] - 0.1) < 0.05 and out["p_value"] < 0.01
    assert verdict(out, out["p_value"], out["p_less"]) == "ahead"
    with pytest.raises(ValueError, match="strata"):
        paired_test(a, b, strata=strata)

"""Paired, episode-level inference for backtest and probe comparisons (numpy + scipy.stats only).

The backtest cuts the test split into episodes and every policy is run on the *same* episodes, so
policy comparisons are paired: the episode (market noise shared by all policies) is the resampling
unit. Resampling is done by scipy:

    bootstrap CIs   ``scipy.stats.bootstrap(..., paired=True, method="BCa")``: the n units are
                    resampled with replacement, jointly across all arrays passed (so a ratio's
                    numerator and denominator, or two policies' records, stay together);
    p-values        ``scipy.stats.permutation_test(..., permutation_type="samples")``: within each
                    episode the two policies' records are swapped at random (sign-flip test).
    strata          episodes of several datasets (``evaluate``): ``strata`` labels each episode's
                    dataset; the statistic is the mean over datasets of each dataset's pooled ratio
                    (every dataset weighs the same, whatever its episodes' sizes: a ratio of sums
                    over all datasets would let the dataset where a policy holds the most
                    inventory decide its score), and the bootstrap resamples episodes within each
                    dataset (one scipy sample per dataset, ``paired=False``).

CI method: BCa (bias-corrected and accelerated, Efron & Tibshirani 1993 §14.3); where BCa is
undefined (NaN: constant or otherwise degenerate bootstrap distribution) the percentile interval
of the same resamples is used, taken over the finite replicates (a resample on which the statistic
is undefined, e.g. sum(den) = 0, is dropped; fewer than half finite -> NaN). BCa needs a
leave-one-out jackknife, O(n²) work, so above ``BCA_MAX_UNITS`` resampling units the percentile
interval is used directly (at that size the BCa correction is O(1/n) and negligible).

Conventions: fewer than 2 units, or a non-finite point estimate -> NaN CI (and NaN p-value);
``seed`` is an int or a ``np.random.Generator`` (results are reproducible for an int seed).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from scipy import stats

__all__ = ["BCA_MAX_UNITS", "mean_ci", "ratio_ci", "stratified_ratio", "paired_test", "holm", "r2_ci",
           "r2_diff_ci", "verdict"]

BCA_MAX_UNITS = 2000          # above this many resampling units: percentile instead of BCa
_BATCH_ELEMS = 1 << 21        # elements gathered per resample batch (~16 MB of float64 per array)


# --------------------------------------------------------------------------------------------
# helpers

def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per episode), got shape {a.shape}")
    return a


def _rngs(seed, k: int) -> list[np.random.Generator]:
    """k independent generators from one int seed (or the given Generator, shared)."""
    if isinstance(seed, np.random.Generator):
        return [seed] * k
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


def _batch(data) -> int:
    return max(1, _BATCH_ELEMS // max(1, sum(np.size(d) for d in data)))


def _ratio(num, den, axis=-1):
    """sum(num) / sum(den) along axis; NaN where sum(den) == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.sum(den, axis=axis)
        return np.where(d != 0, np.sum(num, axis=axis) / np.where(d != 0, d, 1.0), np.nan)


def _boot_ci(data, statistic, confidence: float, n_resamples: int, rng, paired: bool = True):
    """Bootstrap CI of ``statistic(*data, axis=-1)`` over the last axis (the units): the arrays
    resampled jointly (``paired``) or each on its own (strata: one array of units per stratum).

    Returns (theta, lo, hi) as float64 arrays of the statistic's shape."""
    data = [np.asarray(d) for d in data]
    n = min(d.shape[-1] for d in data)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # e.g. the mean of an empty array
        theta = np.asarray(statistic(*data, axis=-1), dtype=np.float64)
    lo, hi = np.full(theta.shape, np.nan), np.full(theta.shape, np.nan)
    if n < 2 or not np.isfinite(theta).any():
        return theta, lo, hi
    method = "BCa" if n <= BCA_MAX_UNITS else "percentile"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(data, statistic, n_resamples=n_resamples, batch=_batch(data),
                              vectorized=True, paired=paired, axis=-1, confidence_level=confidence,
                              method=method, rng=rng)
    lo = np.array(res.confidence_interval.low, dtype=np.float64, ndmin=0).reshape(theta.shape)
    hi = np.array(res.confidence_interval.high, dtype=np.float64, ndmin=0).reshape(theta.shape)
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    if bad.any():  # percentile interval over the finite replicates (same quantiles as scipy's)
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64).reshape(theta.shape + (-1,))
        dist = np.where(np.isfinite(dist), dist, np.nan)
        enough = np.mean(np.isfinite(dist), axis=-1) >= 0.5
        alpha = (1.0 - confidence) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            q = np.nanquantile(dist, [alpha, 1.0 - alpha], axis=-1)
        lo = np.where(bad, np.where(enough, q[0], np.nan), lo)
        hi = np.where(bad, np.where(enough, q[1], np.nan), hi)
    undefined = ~np.isfinite(theta)
    lo[undefined], hi[undefined] = np.nan, np.nan
    return theta, lo, hi


# --------------------------------------------------------------------------------------------
# episode-level CIs

def mean_ci(x, confidence: float = 0.95, n_resamples: int = 9999, seed=0) -> tuple[float, float]:
    """Bootstrap CI of the mean over episodes, x̄ = Σ x_i / n (BCa; percentile where BCa is NaN).

    All-equal data -> (v, v); n < 2 or non-finite data -> (nan, nan)."""
    x = _vec(x, "x")
    if x.size >= 1 and np.all(np.isfinite(x)) and np.all(x == x[0]):
        return (float(x[0]), float(x[0])) if x.size >= 2 else (np.nan, np.nan)
    _, lo, hi = _boot_ci((x,), np.mean, confidence, n_resamples, _rngs(seed, 1)[0])
    return float(lo), float(hi)


def _groups(strata, n: int) -> list[np.ndarray]:
    """Episode indices of each stratum (in order of first appearance)."""
    lab = np.asarray(strata)
    if lab.shape != (n,):
        raise ValueError(f"strata must label each of the {n} episodes, got shape {lab.shape}")
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    return [np.flatnonzero(inv == k) for k in np.argsort(first)]


def _stratum_ratios(num, den, index_arrays, axis=-1) -> np.ndarray:
    """[K, ...] pooled ratio Σ num / Σ den of each stratum, ``index_arrays[k]`` its episodes."""
    return np.stack([_ratio(num[np.asarray(i, np.intp)], den[np.asarray(i, np.intp)], axis) for i in index_arrays])


def stratified_ratio(num, den, strata) -> float:
    """Mean over strata of the stratum's pooled ratio, (1/K) Σ_k Σ_{i∈k} num_i / Σ_{i∈k} den_i."""
    num, den = _vec(num, "num"), _vec(den, "den")
    return float(np.mean(_stratum_ratios(num, den, _groups(strata, num.size)), 0))


def ratio_ci(num, den, confidence: float = 0.95, n_resamples: int = 9999,
             seed=0, strata=None) -> tuple[float, float]:
    """CI of the pooled ratio R = Σ num_i / Σ den_i (e.g. PnLMAP = ΣEPnL / ΣMAP) by a paired
    bootstrap over episodes: (num_i, den_i) are resampled jointly. NaN when Σ den = 0 or n < 2.
    With ``strata``: the CI of :func:`stratified_ratio`, episodes resampled within each stratum."""
    num, den = _vec(num, "num"), _vec(den, "den")
    if num.shape != den.shape:
        raise ValueError(f"num and den differ in length: {num.shape} vs {den.shape}")
    if strata is None:
        _, lo, hi = _boot_ci((num, den), _ratio, confidence, n_resamples, _rngs(seed, 1)[0])
        return float(lo), float(hi)

    def statistic(*groups, axis=-1):
        return np.mean(_stratum_ratios(num, den, groups, axis), 0)

    _, lo, hi = _boot_ci(_groups(strata, num.size), statistic, confidence, n_resamples, _rngs(seed, 1)[0],
                         paired=False)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# paired comparison of two policies on the same episodes

def paired_test(a_num, b_num, a_den=None, b_den=None, confidence: float = 0.95,
                n_resamples: int = 9999, seed=0, strata=None) -> dict:
    """Paired comparison of policy A with policy B on the same n episodes.

    Statistic (den None):   D = mean(a) − mean(b) = mean_i (a_i − b_i)
              (den given):  D = Σa_num/Σa_den − Σb_num/Σb_den   (pooled ratio, e.g. PnLMAP)
              (and strata): D = mean over strata of that difference within the stratum
                            (:func:`stratified_ratio` of A minus that of B); the bootstrap
                            resamples episodes within each stratum, the swaps stay per episode

    Returns {"diff": D, "ci": [lo, hi], "p_value": p, "p_less": p', "n": n}:
      ci       paired bootstrap CI of D (episodes resampled jointly for both policies);
      p_value  one-sided, H1: A > B, from a paired permutation (sign-flip) test: under H0 the two
               policies' records within an episode are exchangeable, so each episode's
               (num, den) records of A and B are swapped at random;
               p = (1 + #{D* ≥ D}) / (1 + n_resamples), or exact over all 2^n swaps when
               2^n ≤ n_resamples;
      p_less   the same test for H1: A < B (the same swaps).
    """
    a, b = _vec(a_num, "a_num"), _vec(b_num, "b_num")
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in length (episodes must be paired): {a.shape} vs {b.shape}")
    n = a.size
    if (a_den is None) != (b_den is None):
        raise ValueError("give both a_den and b_den (pooled ratio) or neither (mean)")
    if a_den is None:
        data = (a, b)

        def statistic(x, y, axis=-1):
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)
    else:
        ad, bd = _vec(a_den, "a_den"), _vec(b_den, "b_den")
        if ad.shape != a.shape or bd.shape != a.shape:
            raise ValueError("a_den and b_den must have one value per episode, like a_num")
        # one (num, den) record per row: rows 0..n-1 are A's episodes, n..2n-1 are B's; the two
        # samples are row indices, so a swap moves a whole record and the statistic looks it up
        num, den = np.concatenate([a, b]), np.concatenate([ad, bd])
        data = (np.arange(n), np.arange(n) + n)
        groups = None if strata is None else _groups(strata, n)  # positions of each stratum

        def statistic(ia, ib, axis=-1):
            ia, ib = np.asarray(ia, dtype=np.intp), np.asarray(ib, dtype=np.intp)
            if groups is None:
                return _ratio(num[ia], den[ia], axis) - _ratio(num[ib], den[ib], axis)
            # the permutation test keeps every episode at its position: position i is episode i
            return np.mean(_stratum_ratios(num, den, [ia[..., g] for g in groups], axis)
                           - _stratum_ratios(num, den, [ib[..., g] for g in groups], axis), 0)

    rng_boot, rng_perm = _rngs(seed, 2)
    if strata is not None and a_den is not None:  # episodes resampled within each stratum

        def by_stratum(*gs, axis=-1):
            return np.mean(_stratum_ratios(a, ad, gs, axis) - _stratum_ratios(b, bd, gs, axis), 0)

        diff, lo, hi = _boot_ci(groups, by_stratum, confidence, n_resamples, rng_boot, paired=False)
    else:
        if strata is not None:
            raise ValueError("strata go with a pooled ratio (a_den, b_den)")
        diff, lo, hi = _boot_ci(data, statistic, confidence, n_resamples, rng_boot)
    p = {"greater": np.nan, "less": np.nan}
    if n >= 2 and np.isfinite(diff):
        state = rng_perm.bit_generator.state
        for alternative in p:  # the same swaps for both directions
            rng_perm.bit_generator.state = state
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.permutation_test(data, statistic, permutation_type="samples",
                                             vectorized=True, n_resamples=n_resamples,
                                             batch=_batch(data) // 2 or 1, alternative=alternative,
                                             axis=-1, rng=rng_perm)
            p[alternative] = float(res.pvalue)
    return {"diff": float(diff), "ci": [float(lo), float(hi)], "p_value": p["greater"], "p_less": p["less"],
            "n": int(n)}


def holm(p_values):
    """Holm–Bonferroni step-down adjustment of m p-values.

    With p_(1) ≤ … ≤ p_(m):  p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j)).
    A dict, list/tuple or array in gives the same shape out (dict -> dict with the same keys,
    ndarray -> ndarray, otherwise a list). NaN p-values stay NaN and do not count in m."""
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    vals = [p_values[k] for k in keys] if keys is not None else p_values
    p = np.asarray(vals, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    flat = p.ravel()
    out = np.full(flat.shape, np.nan)
    ok = np.isfinite(flat)
    q = flat[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        tmp = np.empty(m)
        tmp[order] = adj
        out[ok] = tmp
    out = out.reshape(p.shape)
    if keys is not None:
        return {k: float(v) for k, v in zip(keys, out)}
    if isinstance(p_values, np.ndarray):
        return out
    return out.tolist()


def verdict(ci, p_greater=None, p_less=None, alpha: float = 0.05) -> str:
    """'ahead' if the CI of A − B lies above 0, 'behind' if below, else 'indistinguishable'
    (also for a NaN CI). Takes (lo, hi) or a dict with a "ci" entry (paired_test's output).
    With p-values (e.g. Holm-adjusted, one-sided for A > B and A < B), 'ahead' / 'behind' also
    need that direction's p below ``alpha``: the CI and the test must agree."""
    if isinstance(ci, Mapping):
        ci = ci["ci"]
    lo, hi = (float(v) for v in ci)
    if lo > 0 and (p_greater is None or float(p_greater) < alpha):
        return "ahead"
    if hi < 0 and (p_less is None or float(p_less) < alpha):
        return "behind"
    return "indistinguishable"


# --------------------------------------------------------------------------------------------
# R² of predictors on the same test windows
#
# The bootstrap runs over *units* (windows, or blocks of consecutive windows) with scipy, but the
# sample it resamples is the unit index 0..m-1: the statistic turns a resample of indices into
# counts w_u (how often unit u was drawn) and sums per-unit sufficient statistics as w @ U, one
# BLAS product for all tasks instead of gathering every array for every resample.

def _r2_bootstrap(y, preds, combine, confidence, n_resamples, seed, block):
    """Bootstrap CI over units of ``combine(sst, e)`` per column (task).

    y is centred by its column mean first (SST is shift-invariant; this avoids cancellation).
    Per unit u and column j:  c_u = #windows, s_uj = Σ y, q_uj = Σ y², e_uj = Σ err(y, preds);
    on any resample  SST_j = Σq − (Σs)² / Σc  (the resample's own mean) and E_j = Σe.
    ``preds`` -> err: one predictor: (y − p)²; two: (y − p_b)² − (y − p_a)² (exactly 0 per
    window when the predictors agree). Returns (theta, lo, hi) [k], squeeze (y was 1-D), n."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be [n] or [n, k], got shape {y.shape}")
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    ps = []
    for i, p in enumerate(preds):
        p = np.asarray(p, dtype=np.float64)
        if p.shape != y.shape:
            raise ValueError(f"prediction {i} has shape {p.shape}, y has {y.shape}")
        ps.append(p.reshape(y2.shape))
    if int(block) != block or block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    n, k = y2.shape
    err = (y2 - ps[0]) ** 2 if len(ps) == 1 else (y2 - ps[1]) ** 2 - (y2 - ps[0]) ** 2
    yc = y2 - y2.mean(axis=0) if n else y2
    U = np.concatenate([np.ones((n, 1)), yc, yc * yc, err], axis=1)
    if block > 1 and n:
        U = np.add.reduceat(U, np.arange(0, n, int(block)), axis=0)
    m = U.shape[0]

    def statistic(idx, axis=-1):
        # idx [..., m'] unit indices -> counts [rows, m] -> column sums S [1 + 3k, ...]
        idx = np.asarray(idx, dtype=np.intp)
        flat = idx.reshape(-1, idx.shape[-1])
        rows = flat.shape[0]
        w = np.bincount((flat + m * np.arange(rows)[:, None]).ravel(), minlength=rows * m)
        S = np.moveaxis(w.reshape(rows, m).astype(np.float64) @ U, -1, 0)
        S = S.reshape((U.shape[1],) + idx.shape[:-1])
        C, Sy, Q, E = S[0], S[1:1 + k], S[1 + k:1 + 2 * k], S[1 + 2 * k:]
        with np.errstate(divide="ignore", invalid="ignore"):
            sst = Q - Sy * Sy / C
            sst = np.where(sst > 1e-12 * Q, sst, np.nan)  # constant y (or rounding residue)
            return combine(sst, E)

    theta, lo, hi = _boot_ci((np.arange(m),), statistic, confidence, n_resamples,
                             _rngs(seed, 1)[0])
    return theta, lo, hi, squeeze, n


def _pack(theta, lo, hi, squeeze):
    if squeeze:
        return float(theta[0]), [float(lo[0]), float(hi[0])]
    return theta.tolist(), np.stack([lo, hi], axis=-1).tolist()


def r2_ci(y, pred, confidence: float = 0.95, n_resamples: int = 9999, seed=0,
          block: int = 1) -> dict:
    """R² = 1 − SSE/SST per column (task), SSE = Σ(y − ŷ)², SST = Σ(y − ȳ)², with a bootstrap CI
    over windows (each resample uses its own ȳ). y, pred: [n] or [n, k].

    block > 1 resamples consecutive non-overlapping blocks of that many windows instead of single
    windows (use it when windows overlap: neighbours are correlated and an i.i.d. bootstrap over
    windows is too narrow); it also cuts the cost, O(n_resamples · n / block). Returns
    {"r2", "ci", "n"}: a float and [lo, hi] for 1-D y, lists over columns for 2-D y.
    Constant y -> NaN."""
    theta, lo, hi, squeeze, n = _r2_bootstrap(y, [pred], lambda sst, e: 1.0 - e / sst,
                                              confidence, n_resamples, seed, block)
    r2, ci = _pack(theta, lo, hi, squeeze)
    return {"r2": r2, "ci": ci, "n": int(n)}


def r2_diff_ci(y, pred_a, pred_b, confidence: float = 0.95, n_resamples: int = 9999, seed=0,
               block: int = 1) -> dict:
    """Paired difference R²(a) − R²(b) = (SSE_b − SSE_a) / SST per column (task) on the same
    windows, with a paired bootstrap CI (one resample of windows serves both predictors and all
    columns). y, pred_a, pred_b: [n] or [n, k]; ``block`` as in :func:`r2_ci`.

    Returns {"diff", "ci", "n"}: a float and [lo, hi] for 1-D y, lists over columns for 2-D y.
    Identical predictors -> diff 0, CI [0, 0]."""
    theta, lo, hi, squeeze, n = _r2_bootstrap(y, [pred_a, pred_b], lambda sst, e: e / sst,
                                              confidence, n_resamples, seed, block)
    diff, ci = _pack(theta, lo, hi, squeeze)
    return {"diff": diff, "ci": ci, "n": int(n)}

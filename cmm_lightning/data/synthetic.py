"""The embedded synthetic market: a seeded, regime-switching limit-order book.

Model (all in ticks, one step = one snapshot, ``r_t`` the regime of snapshot ``t``):

* **Regimes** calm / normal / volatile follow a Markov chain with geometric spells of mean
  ``mean_regime_length`` snapshots; at a switch the next regime is one of the other two.
  They differ in fair-price volatility ``σ_r``, spread, depth, level gaps, trade intensity
  ``λ_r`` and event rate.
* **Order-flow imbalance** is a persistent latent AR(1) process
  ``x_t = φ x_{t-1} + sqrt(1-φ²) ε_t`` (stationary N(0,1)), ``I_t = tanh(x_t)``. It tilts the
  displayed sizes: level-1 bid/ask sizes ``∝ exp(±a·x_t + noise)``, deeper levels ``exp(±a/2·x_t)``,
  so the observed imbalance (b1 - a1)/(b1 + a1) is a noisy reading of ``x_t``.
* **Fair price** ``f_{t+1} = f_t + ofi_signal · D · I_t + σ_r · z_{t+1} - κ (f_t - f_0)`` with
  ``D = 0.3`` tick: the imbalance *genuinely* predicts the next mid moves (expected move over the
  next h snapshots ≈ ``ofi_signal · D · Σ_k φ^k I_t``), while the noise ``σ_r`` grows with the
  regime, so the signal-to-noise ratio is highest in calm markets. The weak pull ``κ = 2e-6`` to
  the start price (stationary s.d. of a few hundred ticks; stronger for a low-priced start) and
  reflection at a floor keep the mid
  positive over any horizon. With the defaults a ridge on the raw window reads the h = 10 mid
  move with R² ≈ 0.2 (measured on validation windows; see tests/test_data_synthetic.py).
* **Quotes** on the tick grid: spread ``s_t ∈ [s_min_r, s_max_r]`` from a persistent latent
  (1-2 ticks calm, wider volatile); the mid is the grid point (integer for even ``s``, half-integer
  for odd) nearest ``f_t``; deeper levels sit 1 tick apart, or 2 with probability ``gap_r``.
* **Trades** since the previous snapshot: ``n_t ~ Poisson(λ_r · exp(0.5 v_t - 1/8))`` with a
  persistent latent ``v_t``, volume ``~ Gamma(2 n_t, 50)`` shares, aggressor side ``+1`` with
  probability ``(1 + 0.6 I_t)/2``, price = the previous best on the hit side.
* **Timestamps** int64 ns, exponential inter-arrivals (150 / 100 / 50 ms by regime), strictly increasing.
* **Several days** (:func:`simulate_days`, ``data.synthetic.days``): day ``k`` uses seed ``seed + k``,
  starts at 09:30 of the next calendar day and continues from the previous day's last mid.

Everything is drawn up front from one ``numpy.random.Generator(seed)``; the AR(1) recursions and
the (linear) price path are log-depth prefix scans in numpy: 10^5 snapshots take < 0.1 s.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .lob import DEFAULT_LEVELS, Book

# per regime: calm, normal, volatile
SIGMA = np.array([0.12, 0.30, 0.75])  # fair-price s.d. per snapshot, ticks
SPREAD_MEAN = np.array([1.3, 2.4, 4.5])  # ticks
SPREAD_AMP = np.array([0.5, 0.8, 1.5])
SPREAD_MIN = np.array([1, 1, 2])
SPREAD_MAX = np.array([2, 4, 8])
DEPTH = np.array([800.0, 450.0, 200.0])  # mean shares at level 1
GAP_P = np.array([0.05, 0.2, 0.5])  # probability that the next level is 2 ticks away
TRADE_RATE = np.array([0.25, 0.7, 1.8])  # trades per snapshot
DT_MS = np.array([150.0, 100.0, 50.0])  # mean time between snapshots

PHI_IMB, PHI_SPREAD, PHI_VOL = 0.95, 0.9, 0.95  # persistence of the latent processes
SIZE_TILT = 0.8  # a: how strongly the imbalance latent tilts the level-1 sizes
DRIFT = 0.3  # ticks per snapshot of mid drift per unit of ofi_signal · I_t
KAPPA = 2e-6  # pull of the fair price towards the start price, per snapshot
START_NS = 1_704_187_800_000_000_000  # 2024-01-02 09:30:00 (naive exchange time)


def linear_scan(u: np.ndarray, phi: float) -> np.ndarray:
    """x_t = φ x_{t-1} + u_t with x_0 = u_0, as a log-depth prefix scan (exact up to rounding).

    After the pass with shift s every x_t holds Σ_{j<2s} φ^j u_{t-j}; passes stop once φ^s
    underflows, so φ = 0.95 takes ~11 vectorised passes and φ → 1 at most log2(N).
    """
    x = np.array(u, dtype=np.float64)
    s, p = 1, float(phi)
    while s < len(x) and p > 1e-18:
        x[s:] += p * x[:-s]
        s, p = 2 * s, p * p
    return x


def ar1(eps: np.ndarray, phi: float) -> np.ndarray:
    """Stationary N(0,1) AR(1): x_t = φ x_{t-1} + sqrt(1-φ²) ε_t, x_0 = ε_0."""
    u = np.sqrt(1.0 - phi * phi) * eps
    u[0] = eps[0]
    return linear_scan(u, phi)


def fair_price(f0: float, drift: np.ndarray, noise: np.ndarray, kappa: float, floor: float) -> np.ndarray:
    """f_t = f_{t-1} + drift_{t-1} + noise_t - κ (f_{t-1} - f0), f_0 = f0; reflected at ``floor``."""
    u = np.concatenate([[0.0], drift[:-1] + noise[1:]])
    return floor + np.abs(f0 + linear_scan(u, 1.0 - kappa) - floor)


def regime_path(n: int, mean_length: float, rng: np.random.Generator) -> np.ndarray:
    """int8 [n] Markov regimes with geometric spells (mean ``mean_length``), no self-switch."""
    p = 1.0 / max(float(mean_length), 1.0)
    n_spells = int(2 * n * p) + 16
    while True:
        lengths = rng.geometric(p, size=n_spells)
        if lengths.sum() >= n:
            break
        n_spells *= 2
    steps = rng.integers(1, 3, size=n_spells)  # +1 or +2 mod 3: always a different regime
    labels = (rng.integers(0, 3) + np.concatenate([[0], np.cumsum(steps[1:])])) % 3
    return np.repeat(labels.astype(np.int8), lengths)[:n]


def simulate(n_snapshots: int = 40_000, levels: Optional[int] = 5, seed: int = 7, start_price: float = 100.0,
             tick_size: float = 0.01, mean_regime_length: int = 500, ofi_signal: float = 0.7) -> Book:
    """A seeded synthetic book (see the module docstring). Same seed → identical arrays.
    ``levels=None``: ``DEFAULT_LEVELS`` (5)."""
    n, L = int(n_snapshots), int(DEFAULT_LEVELS if levels is None else levels)
    if n < 2 or L < 1:
        raise ValueError("simulate needs n_snapshots >= 2 and levels >= 1")
    rng = np.random.default_rng(seed)
    reg = regime_path(n, mean_regime_length, rng)
    r = reg.astype(np.int64)
    sigma = SIGMA[r]

    # latent processes: imbalance x, spread g, volume v
    x = ar1(rng.standard_normal(n), PHI_IMB)
    g = ar1(rng.standard_normal(n), PHI_SPREAD)
    v = ar1(rng.standard_normal(n), PHI_VOL)
    imb = np.tanh(x)

    # fair price (ticks) with imbalance-driven drift; mid/quotes on the grid around it
    floor = 4.0 * (SPREAD_MAX.max() + 2 * L) + 10.0
    f0 = max(float(start_price) / tick_size, 2.0 * floor)
    kappa = max(KAPPA, 0.5 * (5.0 / (f0 - floor)) ** 2)  # a low-priced stock reverts harder
    f = fair_price(f0, ofi_signal * DRIFT * imb, sigma * rng.standard_normal(n), kappa, floor)
    spread = np.clip(np.rint(SPREAD_MEAN[r] + SPREAD_AMP[r] * g), SPREAD_MIN[r], SPREAD_MAX[r]).astype(np.int64)
    odd = spread % 2
    # mid on the grid of its parity: even spread -> integer mid, odd -> half-integer mid
    mid2 = np.where(odd == 1, 2 * np.floor(f) + 1, 2 * np.rint(f)).astype(np.int64)  # 2 * mid
    bid1 = (mid2 - spread) // 2
    gaps = 1 + (rng.random((n, 2, max(L - 1, 0))) < GAP_P[r][:, None, None])
    bid_px = bid1[:, None] - np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(gaps[:, 0], axis=1)], axis=1)
    ask_px = (bid1 + spread)[:, None] + np.concatenate(
        [np.zeros((n, 1), np.int64), np.cumsum(gaps[:, 1], axis=1)], axis=1)

    # sizes: level k mean depth grows with k; imbalance tilts level 1 fully, deeper levels half
    tilt = SIZE_TILT * np.concatenate([np.ones(1), np.full(L - 1, 0.5)])[None, :] * x[:, None]
    depth = DEPTH[r][:, None] * (1.0 + 0.3 * np.arange(L))[None, :]
    noise_b, noise_a = 0.35 * rng.standard_normal((2, n, L))
    bid_sz = np.maximum(1.0, np.rint(depth * np.exp(tilt + noise_b - 0.06)))
    ask_sz = np.maximum(1.0, np.rint(depth * np.exp(-tilt + noise_a - 0.06)))

    # trades since the previous snapshot
    n_trades = rng.poisson(TRADE_RATE[r] * np.exp(0.5 * v - 0.125))
    traded = n_trades > 0
    vol = np.zeros(n)
    vol[traded] = np.ceil(rng.gamma(2.0 * n_trades[traded], 50.0))
    buy = rng.random(n) < 0.5 * (1.0 + 0.6 * imb)
    side = np.where(traded, np.where(buy, 1, -1), 0).astype(np.int8)
    prev_bid = np.concatenate([bid1[:1], bid1[:-1]])
    prev_ask = np.concatenate([ask_px[:1, 0], ask_px[:-1, 0]])
    trade_px = np.where(side > 0, prev_ask, np.where(side < 0, prev_bid, 0)).astype(np.int64)

    dt = 1 + np.floor(rng.exponential(DT_MS[r] * 1e6)).astype(np.int64)
    ts = START_NS + np.cumsum(dt) - dt[0]

    return Book(
        ts=ts, bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz, trade_px=trade_px,
        trade_sz=vol, trade_side=side, tick_size=float(tick_size),
        source=f"synthetic(seed={seed}, n={n}, levels={L})", regime=reg,
        meta={"imbalance_latent": x.astype(np.float32), "ofi_signal": float(ofi_signal)},
    )


DAY_NS = 86_400 * 1_000_000_000


def simulate_days(days: int = 1, n_snapshots: int = 40_000, levels: Optional[int] = 5, seed: int = 7,
                  start_price: float = 100.0, tick_size: float = 0.01, mean_regime_length: int = 500,
                  ofi_signal: float = 0.7) -> Book:
    """``days`` simulated days of ``n_snapshots`` each, concatenated into one multi-day Book.

    Day ``k`` is :func:`simulate` with seed ``seed + k``; its clock starts at 09:30 one calendar day
    after the previous day's (more days when a very long day runs past the next 09:30), so
    timestamps increase strictly across days. The price **continues**: day ``k`` starts from day
    ``k-1``'s last mid (its fair price, and the weak pull of the simulator, are anchored there), so a
    multi-day book has no artificial overnight jump back to ``start_price``; the regime chain and
    the latent processes restart each day. ``days=1`` returns exactly ``simulate(...)`` (no
    ``meta['day_start']``). See :func:`cmm_lightning.data.lob.concat_days` for the result's meta.
    """
    from .lob import concat_days

    days = int(days)
    if days < 1:
        raise ValueError("simulate_days needs days >= 1")
    levels = DEFAULT_LEVELS if levels is None else int(levels)
    kw = dict(n_snapshots=n_snapshots, levels=levels, tick_size=tick_size,
              mean_regime_length=mean_regime_length, ofi_signal=ofi_signal)
    if days == 1:
        return simulate(seed=seed, start_price=start_price, **kw)
    books, names, price, day = [], [], float(start_price), 0
    for k in range(days):  # a loop over days; each day is vectorised
        b = simulate(seed=seed + k, start_price=price, **kw)
        if books:
            day = max(day + 1, int(books[-1].ts[-1] - START_NS) // DAY_NS + 1)  # next 09:30 after the last row
            b.ts = b.ts + day * DAY_NS
        b.source = f"synthetic(seed={seed + k}, n={b.n}, levels={b.levels}, day {k + 1}/{days})"
        books.append(b)
        names.append(str(np.datetime64(int(b.ts[0]), "ns").astype("datetime64[D]")))
        price = float(b.mid[-1]) * float(tick_size)
    out = concat_days(books, names=names)
    out.source = f"synthetic(seed={seed}..{seed + days - 1}, n={n_snapshots}x{days} days, levels={levels})"
    return out

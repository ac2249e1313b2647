"""Closed-form ridge probes in torch, batched over layers, the whole λ grid from one Gram matrix.

For one layer, with features standardized by the TRAIN statistics (x̃ = (x − μ) / σ) and
centred targets (bias b = mean of the train targets), the ridge weights for penalty λ are

    W(λ) = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀ Ỹ                      primal (n ≥ d): one d x d Gram, then a
                                                   Cholesky per λ (or X̃ᵀX̃ = V diag(s) Vᵀ)
         = X̃ᵀ U diag(1 / (s + λ)) Uᵀ Ỹ            dual (n < d): X̃X̃ᵀ = U diag(s) Uᵀ

so the data are touched once per layer whatever the grid. λ is chosen per layer and per
target column by the validation MSE (= validation R²); λ is on the scale of the sum of
squares (sklearn's ``Ridge(alpha=λ)`` on standardized features).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


_NP = {torch.float32: np.float32, torch.float64: np.float64}


def as_float(x, dtype=torch.float32) -> Tensor:
    """numpy / memmap / tensor (any float dtype) -> torch tensor of ``dtype`` (no copy when possible)."""
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.from_numpy(np.asarray(x, dtype=_NP[dtype]))


def _layers(x) -> Tensor:
    x = as_float(x)
    return x.unsqueeze(0) if x.ndim == 2 else x


def _targets(y) -> Tensor:
    y = as_float(y, torch.float64)
    return y.unsqueeze(1) if y.ndim == 1 else y


def r2_score(y, yhat):
    """Per-column R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)², ȳ the mean of ``y`` itself.

    ``y`` [n, k] (or [n]), ``yhat`` [..., n, k]; returns [..., k] (NaN where y is constant).
    Numpy in -> numpy out; tensors in -> float64 tensor out.
    """
    is_np = not isinstance(y, Tensor)
    y, yhat = _targets(y), as_float(yhat, torch.float64)
    if yhat.ndim == 1:
        yhat = yhat.unsqueeze(1)
    sse = ((yhat - y) ** 2).sum(-2)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    r2 = 1.0 - sse / torch.where(sst > 0, sst, torch.nan)
    return r2.numpy() if is_np else r2


@dataclass
class RidgeFit:
    """A fitted probe per layer and target column: ŷ = ((x − mean) / std) · weight + bias."""

    mean: Tensor  # [Lyr, d] train feature means
    std: Tensor  # [Lyr, d] train feature stds (1 where constant)
    weight: Tensor  # [Lyr, d, k] on standardized features
    bias: Tensor  # [Lyr, k] train target means
    lam: Tensor  # [Lyr, k] chosen λ
    val_r2: Tensor  # [Lyr, k] validation R² at the chosen λ
    lambdas: Tensor  # [Λ] the grid

    def predict(self, X) -> Tensor:
        """X [Lyr, n, d] -> [Lyr, n, k] float32; an [n, d] X is read by every layer's probe."""
        Xc = _layers(X) - self.mean[:, None]
        return torch.baddbmm(self.bias[:, None, :], Xc, self.weight / self.std[:, :, None])

    def select(self, layers, columns=None) -> "RidgeFit":
        """The fit restricted to ``layers`` (and target ``columns``)."""
        cols = slice(None) if columns is None else columns
        return RidgeFit(self.mean[layers], self.std[layers], self.weight[layers][..., cols],
                        self.bias[layers][..., cols], self.lam[layers][..., cols],
                        self.val_r2[layers][..., cols], self.lambdas)


@contextmanager
def _one_thread():
    """LAPACK's threaded eigh collapses (10-50x slower) when the cores are shared with other
    processes; a 576 x 576 eigendecomposition gains little from threads anyway."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    with _one_thread():
        return torch.linalg.eigh(G.double())


def _safe_std(var: Tensor, eps: float = 1e-12) -> Tensor:
    """σ from σ²; constant columns get σ = 1 (centred, they read 0)."""
    return torch.where(var > eps, var, torch.ones_like(var)).sqrt()


def _grid_weights(G: Tensor, b: Tensor, lam_grid: Tensor) -> Tensor:
    """Primal ridge weights for every λ: (G + λI)⁻¹ b, G [Lyr, d, d], b [Lyr, d, k] (float64)
    -> [Lyr, d, Λ, k]. One Cholesky per λ while the grid is short (~4x fewer flops than an
    eigendecomposition for 7 λ); the eigendecomposition when it is long, has λ = 0, or G + λI
    is not numerically positive definite."""
    eye = torch.eye(G.shape[-1], dtype=G.dtype)
    if len(lam_grid) <= 12 and bool((lam_grid > 0).all()):
        with _one_thread():
            out = []
            for lam in lam_grid.tolist():
                L, info = torch.linalg.cholesky_ex(G + lam * eye)
                if bool((info != 0).any()):
                    break
                out.append(torch.cholesky_solve(b, L))
        if len(out) == len(lam_grid):
            return torch.stack(out, 2)
    s, V = _eigh(G)
    B = V.transpose(1, 2) @ b  # [Lyr, d, k]
    denom = s.clamp_min(0.0)[:, :, None, None] + lam_grid[:, None]  # [Lyr, d, Λ, 1]
    tiny = 1e-12 * s.abs().amax(1).clamp_min(1e-300)[:, None, None, None]  # λ = 0: pseudo-inverse
    coef = torch.where(denom > tiny, B[:, :, None, :] / denom, torch.zeros(()))  # [Lyr, d, Λ, k]
    return (V @ coef.flatten(2)).unflatten(2, coef.shape[2:])


def _check_grid(lambdas) -> Tensor:
    lam_grid = torch.as_tensor(list(lambdas), dtype=torch.float64).flatten()
    if lam_grid.numel() == 0 or (lam_grid < 0).any():
        raise ValueError("ridge: lambdas must be a non-empty list of non-negative numbers")
    return lam_grid


def fit_ridge(X_train, Y_train, X_val, Y_val, lambdas) -> RidgeFit:
    """Ridge for every layer and target column; λ from ``lambdas`` chosen on the validation set.

    X_* [Lyr, n, d] (or [n, d]); Y_* [n, k] (or [n]); any float dtype (float16 memmaps are
    converted to float32 here). With a single λ, ``X_val``/``Y_val`` may be None.
    """
    X = _layers(X_train)
    Y = _targets(Y_train)
    lam_grid = _check_grid(lambdas)
    Lyr, n, d = X.shape
    k, nl = Y.shape[1], len(lam_grid)
    if Y.shape[0] != n:
        raise ValueError(f"ridge: {n} feature rows but {Y.shape[0]} target rows")
    mean = X.mean(1)  # [Lyr, d]
    Xc = X - mean[:, None]  # centred, [Lyr, n, d] float32; σ is folded in below (no extra pass)
    y_mean = Y.mean(0)
    Yc = (Y - y_mean).to(torch.float32).expand(Lyr, n, -1)  # [Lyr, n, k]
    if n >= d:  # primal
        G = (Xc.transpose(1, 2) @ Xc).double()
        return fit_ridge_gram(G, (Xc.transpose(1, 2) @ Yc).double(), n, mean, y_mean, X_val, Y_val, lam_grid)
    # dual: n x n Gram, W(λ) = X̃ᵀ U diag(1/(s+λ)) Uᵀ Ỹ
    std = _safe_std(Xc.double().pow(2).mean(1))
    Xs = Xc / std[:, None].float()
    s, U = _eigh(Xs @ Xs.transpose(1, 2))
    coef = (U.transpose(1, 2) @ Yc.double())[:, :, None, :] / (
        s.clamp_min(0.0)[:, :, None, None] + lam_grid[:, None])  # [Lyr, n, Λ, k]
    W_grid = ((Xs.transpose(1, 2).double() @ U) @ coef.flatten(2)).unflatten(2, (nl, k))
    return _select(W_grid, mean, std.float(), y_mean, X_val, Y_val, lam_grid)


def fit_ridge_gram(G, XtY, n: int, mean, y_mean, X_val, Y_val, lambdas) -> RidgeFit:
    """The primal ridge from sufficient statistics of the train rows: the centred Gram
    G = Σ (x−μ)(x−μ)ᵀ [Lyr, d, d], XtY = Σ (x−μ)(y−ȳ)ᵀ [Lyr, d, k], n, μ [Lyr, d], ȳ [k].
    Standardization is folded in: G̃ = D⁻¹ G D⁻¹ with σ² = diag(G) / n."""
    lam_grid = _check_grid(lambdas)
    G, XtY = G.double(), XtY.double()
    std = _safe_std(torch.diagonal(G, dim1=1, dim2=2) / n)
    Gs = G / (std[:, :, None] * std[:, None, :])
    W_grid = _grid_weights(Gs, XtY / std[:, :, None], lam_grid)
    return _select(W_grid, mean.float(), std.float(), y_mean.double(), X_val, Y_val, lam_grid)


def _select(W_grid, mean, std, y_mean, X_val, Y_val, lam_grid) -> RidgeFit:
    """Pick λ per layer and column by validation R² from W_grid [Lyr, d, Λ, k] (standardized scale)."""
    Lyr, d, nl, k = W_grid.shape
    if nl == 1:
        best = torch.zeros(Lyr, k, dtype=torch.long)
        val_r2 = torch.full((Lyr, k), torch.nan, dtype=torch.float64)
    else:
        if X_val is None or Y_val is None:
            raise ValueError("ridge: a validation set is needed to choose among several lambdas")
        Xv = _layers(X_val) - mean[:, None]
        W_raw = (W_grid.flatten(2) / std[:, :, None].double()).float()  # σ folded into W
        pred = (Xv @ W_raw).double().unflatten(2, (nl, k)) + y_mean  # [Lyr, nv, Λ, k], every λ
        val = r2_score(_targets(Y_val), pred.transpose(1, 2))  # [Lyr, Λ, k] (max R² = min MSE)
        best = torch.nan_to_num(val, nan=-torch.inf).argmax(1)  # [Lyr, k]
        val_r2 = val.gather(1, best[:, None])[:, 0]
    W = W_grid.gather(2, best[:, None, None, :].expand(Lyr, d, 1, k))[:, :, 0]  # [Lyr, d, k]
    return RidgeFit(mean=mean, std=std, weight=W.float(), bias=y_mean.float().expand(Lyr, -1).clone(),
                    lam=lam_grid[best], val_r2=val_r2, lambdas=lam_grid)


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019) between representations X [n, d1] and Y [n, d2]:

        CKA = ‖Ỹᵀ X̃‖²_F / (‖X̃ᵀ X̃‖_F · ‖Ỹᵀ Ỹ‖_F),   X̃, Ỹ column-centred.

    In [0, 1]; invariant to orthogonal transforms and isotropic scaling of either side.
    Uses the n x n Gram form when n is smaller than the widths.
    """
    X, Y = as_float(X, torch.float64), as_float(Y, torch.float64)
    X = X.reshape(len(X), -1)
    Y = Y.reshape(len(Y), -1)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    if len(X) < X.shape[1] + Y.shape[1]:
        K, L = X @ X.T, Y @ Y.T
        num, den = (K * L).sum(), K.norm() * L.norm()
    else:
        num = (Y.T @ X).pow(2).sum()
        den = (X.T @ X).norm() * (Y.T @ Y).norm()
    return float(num / den) if den > 0 else float("nan")

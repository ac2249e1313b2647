"""Hájek-MoE fusion as pure functions (docs/method.md, "Hájek-MoE"), batched over windows: e [B, S, m].

Student i gives a prediction ŷ_i and an embedding e_i = Q_i h_i ∈ R^m in a shared space.

    k(a, b) = exp(−‖a − b‖² / 2σ²)                                    RBF kernel
    σ²      = median_{i≠j} ‖e_i − e_j‖²  (median heuristic, over the batch; the module keeps a
              running average while fitting and uses it at inference)
    U       = 1/(N(N−1)) Σ_{i≠j} k(e_i, e_j)                           mean pairwise agreement (U-statistic)
    c_i     = 1/(N−1) Σ_{j≠i} k(e_i, e_j) − U                          Hájek projection: i's contribution
    w       = softmax((κ · c + g(x)) / τ)                              ŷ = Σ_i w_i ŷ_i

Σ_i c_i = 0. Since k(e_i, e_i) = 1, with r_i = Σ_j k(e_i, e_j) (row sums, diagonal included):
c_i = (r_i − mean_j r_j)/(N − 1), and softmax is shift-invariant, so
w = softmax(κ r/(τ(N−1)) + g/τ): the exported CMM uses this form (no U, no diagonal mask).
A student far from the others (a noisy one) has small r_i, hence c_i < 0 and, for κ > 0,
a lower weight than the students that agree.
"""

from __future__ import annotations

from typing import Optional

import torch


def pairwise_sq_dists(e: torch.Tensor) -> torch.Tensor:
    """e [B, S, m] → ‖e_i − e_j‖² [B, S, S] (exact zeros on the diagonal, never negative)."""
    diff = e.unsqueeze(2) - e.unsqueeze(1)
    return (diff * diff).sum(-1)


def median_sigma2(e: torch.Tensor) -> torch.Tensor:
    """Median heuristic: σ² = median over windows and pairs i≠j of ‖e_i − e_j‖² (a scalar)."""
    S = e.shape[1]
    d2 = pairwise_sq_dists(e)
    off = ~torch.eye(S, dtype=torch.bool, device=e.device)
    return d2[:, off].median().clamp_min(1e-12)


def rbf_kernel(e: torch.Tensor, sigma2) -> torch.Tensor:
    """K [B, S, S] with K_ij = exp(−‖e_i − e_j‖² / 2σ²); σ² a float or a tensor broadcastable to [B, 1, 1]."""
    return torch.exp(-pairwise_sq_dists(e) / (2 * sigma2))


def u_statistic(K: torch.Tensor) -> torch.Tensor:
    """U = 1/(N(N−1)) Σ_{i≠j} K_ij → [B]."""
    N = K.shape[-1]
    off = K.sum((-1, -2)) - K.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off / (N * (N - 1))


def hajek_contributions(K: torch.Tensor) -> torch.Tensor:
    """c_i = 1/(N−1) Σ_{j≠i} K_ij − U → [B, S] (sums to 0 over i)."""
    N = K.shape[-1]
    row = (K.sum(-1) - K.diagonal(dim1=-2, dim2=-1)) / (N - 1)
    return row - u_statistic(K)[:, None]


def hajek_weights(c: Optional[torch.Tensor], kappa=1.0, tau=1.0, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w = softmax((κ·c + g) / τ) over students → [B, S]; either term may be None (not both)."""
    if c is None and gate is None:
        raise ValueError("hajek_weights needs the contributions c, a gate g, or both")
    logits = (kappa * c if c is not None else 0.0) + (gate if gate is not None else 0.0)
    return torch.softmax(logits / tau, dim=-1)


def mix(w: torch.Tensor, yhat: torch.Tensor) -> torch.Tensor:
    """ŷ = Σ_i w_i ŷ_i: w [B, S], yhat [B, S, k] → [B, k]."""
    return torch.einsum("bs,bsk->bk", w, yhat)

"""The OFDD loss (docs/method.md, "OFDD students"), per student, with a per-student window mask.

For student s over the windows b it sees (mask m_sb ∈ {0, 1}; data students see one regime):

    L_s = α · L_feat,s + β · L_task,s + γ · L_kd,s

    L_feat,s = Σ_b m_sb ‖p_sb − t_sb‖² / Σ_b m_sb ‖t_sb‖²                    (nmse; t centred on train)
             = Σ_b m_sb (1 − cos(p_sb, t_sb)) / Σ_b m_sb                      (cosine)
    L_task,s = Σ_k w_sk MSE_sk(ŷ, y) / Σ_k w_sk   over the tasks k = mid, spread, volume
    L_kd,s   = Σ_k w_sk MSE_sk(ŷ, ŷ^teacher) / Σ_k w_sk

p = proj(h) the student's projection head, t its (standardized, PCA-reduced) teacher slice,
y the standardized targets, ŷ^teacher the teacher readout (a ridge on the best layer per task),
w_sk the task weights (a task student up-weights its task). Every term is returned per student
([S]) so that the module logs each separately; the total optimised is Σ_s L_s (the students
share no parameters, so each one's gradient is that of its own loss).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as Fn


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """v, mask [S, B] → [S]: mean over the windows each student sees (0 if it sees none)."""
    return (v * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def feat_loss(proj: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "nmse") -> torch.Tensor:
    """proj, target [S, B, D]; mask [S, B] → [S]."""
    if kind == "nmse":
        num = ((proj - target) ** 2).sum(-1)
        den = (target ** 2).sum(-1)
        return (num * mask).sum(1) / (den * mask).sum(1).clamp_min(1e-8)
    if kind == "cosine":
        return _masked_mean(1.0 - Fn.cosine_similarity(proj, target, dim=-1, eps=1e-8), mask)
    raise ValueError(f"unknown feat_loss '{kind}' (nmse | cosine)")


def weighted_mse(yhat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, task_w: torch.Tensor) -> torch.Tensor:
    """yhat [S, B, 3], y [B, 3] or [S, B, 3], mask [S, B], task_w [S, 3] → [S]."""
    per_task = ((yhat - y) ** 2 * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # [S, 3]
    return (per_task * task_w).sum(1) / task_w.sum(1)


def ofdd_loss(yhat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, task_w: torch.Tensor,
              proj: Optional[torch.Tensor] = None, target: Optional[torch.Tensor] = None,
              kd: Optional[torch.Tensor] = None, alpha: float = 1.0, beta: float = 1.0,
              gamma: float = 0.5, feat_kind: str = "nmse",
              teacher_mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """{"total", "feat", "task", "kd"} → each [S]. A term without its inputs is 0 (and not added).

    ``teacher_mask`` [B]: 1 where teacher features exist; the feat and KD terms average over those
    windows only, the task term over every window the student sees.
    """
    zero = yhat.new_zeros(yhat.shape[0])
    task = weighted_mse(yhat, y, mask, task_w)
    tmask = mask if teacher_mask is None else mask * teacher_mask[None, :].to(mask)
    feat = feat_loss(proj, target, tmask, feat_kind) if target is not None and proj is not None else zero
    kdl = weighted_mse(yhat, kd, tmask, task_w) if kd is not None else zero
    total = beta * task
    if target is not None and alpha:
        total = total + alpha * feat
    if kd is not None and gamma:
        total = total + gamma * kdl
    return {"total": total, "feat": feat, "task": task, "kd": kdl}

"""All S students as ONE module: stacked encoder → h, one fused head → (ŷ, proj).

    h_s   = encoder_s(x)                 [S, B, d]
    ŷ_s   = W^task_s h_s + b^task_s       [S, B, 3]   (standardized targets: mid, spread, volume)
    proj_s = W^proj_s h_s + b^proj_s      [S, B, D]   (prediction of student s's teacher slice)

The task and projection heads are one ``StackedLinear`` d → 3 + D (one ``baddbmm``). Every
parameter carries the student dim first, so ``select`` (a subset of students) and ``concat``
(students of several modules) are slicing and ``torch.cat`` of the state dict: the MoE stacks
the layer, task and data students into one module this way, and the equality "stacked ==
loop over separate students" holds by construction (tested).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .encoders import StackedLinear, build_encoder

N_TASKS = 3


class StackedStudents(nn.Module):
    def __init__(self, n_students: int, window: int, n_features: int, encoder: str = "tcn",
                 hidden: int = 48, channels: int = 24, kernel: int = 8, proj_dim: int = 0):
        super().__init__()
        self._spec = dict(n_students=int(n_students), window=int(window), n_features=int(n_features),
                          encoder=str(encoder), hidden=int(hidden), channels=int(channels),
                          kernel=int(kernel), proj_dim=int(proj_dim))
        self.n_students, self.proj_dim = int(n_students), int(proj_dim)
        self.encoder = build_encoder(encoder, n_students, window, n_features, hidden, channels, kernel)
        self.head = StackedLinear(n_students, hidden, N_TASKS + proj_dim)

    def spec(self) -> dict:
        """Plain-dict constructor arguments (checkpoint/hparams friendly)."""
        return dict(self._spec)

    @classmethod
    def from_spec(cls, spec: dict, **changes) -> "StackedStudents":
        return cls(**{**spec, **changes})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, F] (standardized) → (ŷ [S, B, 3], h [S, B, d], proj [S, B, D])."""
        h = self.encoder(x)
        out = self.head(h)
        return out[..., :N_TASKS], h, out[..., N_TASKS:]

    def params_per_student(self) -> int:
        return sum(p.numel() for p in self.parameters()) // self.n_students

    def select(self, idx: Sequence[int], proj_dim: int | None = None) -> "StackedStudents":
        """A new module holding copies of students ``idx`` (optionally dropping/cutting the proj head)."""
        keep = self.proj_dim if proj_dim is None else proj_dim
        out = self.from_spec(self._spec, n_students=len(idx), proj_dim=keep)
        ix = torch.as_tensor(list(idx), dtype=torch.long)
        sd = {k: v.detach()[ix].clone() for k, v in self.state_dict().items()}
        for k in ("head.weight", "head.bias"):
            sd[k] = sd[k][..., : N_TASKS + keep]
        out.load_state_dict(sd)
        return out

    @classmethod
    def concat(cls, parts: Sequence["StackedStudents"]) -> "StackedStudents":
        """One module with the students of ``parts`` in order (same encoder spec and proj_dim)."""
        spec = {k: v for k, v in parts[0].spec().items() if k != "n_students"}
        for p in parts[1:]:
            other = {k: v for k, v in p.spec().items() if k != "n_students"}
            if other != spec:
                raise ValueError(f"cannot stack students with different specs: {spec} vs {other}")
        out = cls(n_students=sum(p.n_students for p in parts), **spec)
        sds = [p.state_dict() for p in parts]
        out.load_state_dict({k: torch.cat([sd[k].detach() for sd in sds], 0).clone() for k in sds[0]})
        return out

"""Window encoders for S students at once: every weight has a leading student dim S.

A window x ∈ R^{T×F} becomes a code h_s ∈ R^d for each student s. All S students run as one
module with one batched matmul per layer (``StackedLinear``: weight [S, i, o], ``baddbmm``),
never a Python loop over students. Because every parameter is stacked along dim 0, selecting
or concatenating students is slicing / ``torch.cat`` of the state dict (``stacked.py``).

The first op of every encoder is a stacked linear map of *patches* of k consecutive snapshots
(``first``, input k·F, rows ordered (snapshot in patch, feature)); an affine per-feature input
transform x' = x·scale + shift therefore folds exactly into it (``fold_input_affine``), which is
how the exported CMM absorbs the input normaliser (zero ops at inference).

Encoders (``students.encoder``):

* ``tcn`` (default): two NON-dilated temporal convolutions with ReLU, the fast path:
      conv1  Conv1d(F→C, kernel k, stride k) over the last T₁·k snapshots (T₁ = T // k)
      conv2  Conv1d(C→d, kernel T₁) over what remains of time         →  h ∈ R^d
  As matmuls: patches P ∈ R^{B·T₁ × kF} (a reshape), Z = ReLU(P W₁ + b₁), h = ReLU(vec(Z) W₂ + b₂):
  two batched GEMMs and two ReLUs for all students (the speed section of issue 6 shapes this).
* ``gru``: one GRU layer per student (PyTorch's gate equations), h = h_T.
* ``mixer``: patch embedding, one MLP-mixer block (token mixing over patches, channel MLP,
  pre-LayerNorm, residuals), mean over patches, Linear C→d, ReLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn
from einops import rearrange
from torch import nn


class StackedLinear(nn.Module):
    """S independent affine maps y_s = x_s W_s + b_s as one batched matmul.

    weight [S, i, o], bias [S, 1, o]. Input [S, N, i] → [S, N, o]; a 2-D input [N, i] is
    shared by all students (broadcast matmul) → [S, N, o]. Init as ``nn.Linear``.
    """

    def __init__(self, n_students: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n_students, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_students, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.matmul(x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class StackedEncoder(nn.Module):
    """Base: ``first`` is the StackedLinear on patches of ``patch`` snapshots (input patch·F)."""

    kind = "base"

    def __init__(self, n_students: int, window: int, n_features: int, hidden: int, patch: int):
        super().__init__()
        self.n_students, self.window, self.n_features = n_students, window, n_features
        self.out_dim, self.patch = hidden, patch

    def patches(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x [B, T, F] → ([B·P, k·F], P) with P = T // k patches of the most recent P·k snapshots."""
        T, F = self.window, self.n_features
        P = T // self.patch
        x = x[:, T - P * self.patch:] if T % self.patch else x
        return x.reshape(-1, self.patch * F), P


@torch.no_grad()
def fold_input_affine(first: StackedLinear, scale: torch.Tensor, shift: torch.Tensor, patch: int) -> None:
    """Make ``first`` compute on x what it computed on x' = x·scale + shift (per feature, in place).

    Rows of W are ordered (snapshot in patch, feature): W'[s, (k,f), :] = W·scale[f],
    b'_s = b_s + Σ_{k,f} shift[f]·W[s, (k,f), :].
    """
    sc = scale.to(first.weight).repeat(patch)[None, :, None]
    sh = shift.to(first.weight).repeat(patch)
    first.bias += torch.einsum("i,sio->so", sh, first.weight)[:, None, :]
    first.weight *= sc


class TCNEncoder(StackedEncoder):
    kind = "tcn"

    def __init__(self, n_students, window, n_features, hidden=48, channels=24, kernel=8):
        k = max(1, min(kernel, window))
        super().__init__(n_students, window, n_features, hidden, k)
        self.channels, self.n_patches = channels, window // k
        self.first = StackedLinear(n_students, k * n_features, channels)
        self.second = StackedLinear(n_students, self.n_patches * channels, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        p, P = self.patches(x)
        z = self.first(p).relu_()  # [S, B·P, C]: conv1 (kernel k, stride k) + ReLU
        return self.second(z.view(self.n_students, B, P * self.channels)).relu_()  # conv2 over P + ReLU


class GRUEncoder(StackedEncoder):
    """r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + … ), n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
    h' = (1 − z) ⊙ n + z ⊙ h; the input projection of all steps is one matmul, one bmm per step."""

    kind = "gru"

    def __init__(self, n_students, window, n_features, hidden=48, channels=24, kernel=8):
        super().__init__(n_students, window, n_features, hidden, 1)
        self.first = StackedLinear(n_students, n_features, 3 * hidden)  # W_i{r,z,n}, b_i{r,z,n}
        self.recurrent = StackedLinear(n_students, hidden, 3 * hidden)  # W_h{r,z,n}, b_h{r,z,n}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, F = x.shape[0], self.window, self.n_features
        S, d = self.n_students, self.out_dim
        gi = self.first(x.reshape(B * T, F)).view(S, B, T, 3 * d)
        h = x.new_zeros(S, B, d)
        for t in range(T):
            gh = self.recurrent(h)
            ir, iz, inn = gi[:, :, t].chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            h = (1 - z) * n + z * h
        return h


class StackedLayerNorm(nn.Module):
    """LayerNorm over the last dim with a per-student affine (γ, β of shape [S, 1, 1, C])."""

    def __init__(self, n_students: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_students, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n_students, 1, 1, dim))

    def forward(self, x):  # [S, B, P, C]
        return Fn.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class MixerEncoder(StackedEncoder):
    """z = embed(patches); z += TokenMix(LN z) (Linear over the P patches); z += W₂ GELU(W₁ LN z);
    h = ReLU(Linear(mean_P LN z))."""

    kind = "mixer"

    def __init__(self, n_students, window, n_features, hidden=48, channels=24, kernel=8):
        k = max(1, min(kernel, window))
        super().__init__(n_students, window, n_features, hidden, k)
        S, C, P = n_students, channels, window // k
        self.channels, self.n_patches = C, P
        self.first = StackedLinear(S, k * n_features, C)
        self.ln1, self.ln2, self.ln3 = (StackedLayerNorm(S, C) for _ in range(3))
        self.token = StackedLinear(S, P, P)
        self.mlp1, self.mlp2 = StackedLinear(S, C, 2 * C), StackedLinear(S, 2 * C, C)
        self.out = StackedLinear(S, C, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        S, C = self.n_students, self.channels
        p, P = self.patches(x)
        z = self.first(p).view(S, B, P, C)
        t = rearrange(self.ln1(z), "s b p c -> s (b c) p")
        z = z + rearrange(self.token(t), "s (b c) p -> s b p c", b=B)
        u = self.ln2(z).reshape(S, B * P, C)
        z = z + self.mlp2(Fn.gelu(self.mlp1(u))).view(S, B, P, C)
        return self.out(self.ln3(z).mean(2)).relu_()


def build_encoder(kind: str, n_students: int, window: int, n_features: int, hidden: int = 48,
                  channels: int = 24, kernel: int = 8) -> StackedEncoder:
    """The encoder registered as ``kind`` (``registry.ENCODERS``: tcn, gru, mixer, or your own
    ``StackedEncoder`` subclass with this constructor)."""
    from ..registry import ENCODERS

    return ENCODERS.get(kind)(n_students, window, n_features, hidden=hidden, channels=channels, kernel=kernel)

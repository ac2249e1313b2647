"""The trained CMM as one plain ``torch.nn.Module`` (no Lightning, no transformers to run it).

``export_cmm(module)`` takes a ``HajekMoE`` (or one students module: their uniform average) and
folds everything that is constant at inference into the weights:

* input normaliser   x̃ = (x − μ_x)/σ_x         → into every student's first layer (exact, per feature)
* target normaliser  y = ỹ σ_y + μ_y           → into the task heads
* kernel width       e' = e / (σ√2)            → into Q_i, so K_ij = exp(−‖e'_i − e'_j‖²)
* Hájek logits       κc/τ ≡ a·r_i, a = κ/(τ(N−1)), r_i = Σ_j K_ij   (softmax is shift-invariant)
* gate               g(x)/τ with its window summary [x̃_T, mean_t x̃_t] composed into one matrix on vec(x)

so that ``forward(x [B, T, F]) -> [B, 3]`` (mid, spread, volume in target units) is: the stacked
encoder, one fused head d → 3 + m, the kernel row sums, the gate and a softmax.

``decide(x)`` is the batch-1 decision path from a prepared window: for the default ``tcn``
encoder one fused (numba-compiled, single-threaded) kernel over the same weights
(:func:`cmm_kernel`), no per-op dispatch at all; other encoders fall back to ``forward``. The
kernel's weights are laid out by :meth:`CMMDecision.prepare_fast` (transposed so that every
output's weights are a contiguous row, zero-padded to whole vectors); every matmul is dot products
with the accumulators in registers, several outputs per pass, float32, no allocation (a
workspace of :func:`kernel_work_size` floats is passed in). It stays within ~3e-7 (relative to
max(1, |y|)) of the float64 forward, closer than torch's own float32 forward.
``decide_book(book, row)`` is the whole decision from the book rows, the teacher's input (it
renders its prompt from them): the window ending at ``row`` built by the compiled
:func:`~cmm_lightning.data.windows.window_from_book`, then the fused kernel, in one compiled call
(:func:`book_decision`, module-level and cached, so other numba code can call it with
``*model.kernel_args()``); other encoders build the window the same way and run ``forward``.
:func:`decision_latency_us` times ``decide`` (model only); :func:`book_decision_latency_us` times
``decide_book``, the like-for-like figure against the teacher's (batch 1, one thread, both).
``save_cmm`` / ``load_cmm`` round-trip through ``torch.load(weights_only=True)``: a state dict
plus a plain dict of hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from numba import njit
from torch import nn

from .data.lob import Book
from .data.windows import book_arrays, window_from_book
from .io import atomic_path
from .registry import MOE_MODES
from .students.encoders import fold_input_affine
from .students.stacked import N_TASKS, StackedStudents

FORMAT = "cmm_decision/1"


class CMMDecision(nn.Module):
    """Raw windows x [B, T, F] → predictions [B, 3]; every student + the Hájek-MoE in one module."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = dict(spec)
        st = spec["students"]
        S, F, T = st["n_students"], st["n_features"], st["window"]
        self.mode, self.names = spec["mode"], list(spec["names"])
        self.uses_hajek, self.uses_gate = MOE_MODES.get(self.mode)
        self.students = StackedStudents.from_spec(st)  # proj slot = the scaled embedding e' (m dims)
        G = int(spec.get("gate_hidden", 1))
        self.register_buffer("gate_w1", torch.zeros(T * F, G))
        self.register_buffer("gate_b1", torch.zeros(G))
        self.register_buffer("gate_w2", torch.zeros(G, S))
        self.register_buffer("gate_b2", torch.zeros(S))
        self.register_buffer("hajek_a", torch.zeros(()))
        self._fused = None
        self._work = None  # decide's kernel workspace, float32 [kernel_work_size]
        self._scratch = None  # decide_book's window + workspace, float32 [scratch_size()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _, e = self.students(x)  # [S, B, 3], _, [S, B, m]
        if not (self.uses_gate or self.uses_hajek):
            return y.mean(0)
        logits = torch.zeros(x.shape[0], y.shape[0], dtype=y.dtype, device=y.device)
        if self.uses_gate:
            u = torch.addmm(self.gate_b1, x.reshape(x.shape[0], -1), self.gate_w1).relu_()
            logits = logits + torch.addmm(self.gate_b2, u, self.gate_w2)
        if self.uses_hajek:
            e = e.transpose(0, 1)
            diff = e.unsqueeze(2) - e.unsqueeze(1)
            logits = logits + self.hajek_a * torch.exp(-(diff * diff).sum(-1)).sum(-1)
        return torch.einsum("bs,sbk->bk", torch.softmax(logits, -1), y)

    @torch.no_grad()
    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] mixture weights (uniform mode: 1/S)."""
        y, _, e = self.students(x)
        S, B = y.shape[:2]
        logits = x.new_zeros(B, S)
        if self.uses_gate:
            logits += torch.addmm(self.gate_b2, torch.addmm(self.gate_b1, x.reshape(B, -1), self.gate_w1).relu(),
                                  self.gate_w2)
        if self.uses_hajek:
            e = e.transpose(0, 1)
            logits += self.hajek_a * torch.exp(-torch.cdist(e, e) ** 2).sum(-1)
        return torch.softmax(logits, -1)

    predict_windows = forward

    # -- the batch-1 fused path -----------------------------------------------------------------
    def load_state_dict(self, *args, **kwargs):
        self._fused = self._scratch = None
        return super().load_state_dict(*args, **kwargs)

    def prepare_fast(self) -> None:
        """Lay the weights out for the fused kernel (call again after changing weights).

        Every matmul of :func:`cmm_kernel` is a set of dot products over a contiguous reduction axis
        (weights transposed so that each output's weights are one contiguous row), zero-padded where
        that keeps the vector loops whole: the patch length k·F to a multiple of ``LANES`` (16 float32,
        one 512-bit vector), the conv1 channels S·C, the gate width G and the head outputs to
        multiples of 4 (the head's Hájek embedding to a multiple of ``LANES``). Zero weights add
        exact zeros: the padding changes no output."""
        enc = self.students.encoder
        if enc.kind != "tcn":
            self._fused = False
            return
        self._fused = _fused_layout(self)
        self._work = np.zeros(kernel_work_size(*self._fused), np.float32)
        # compile (or load the cached machine code) now, not on the first decision
        cmm_kernel(np.zeros(self._window_size(), np.float32), *self._fused, np.empty(N_TASKS, np.float32),
                   self._work)

    def _window_size(self) -> int:
        st = self.spec["students"]
        return int(st["window"]) * int(st["n_features"])

    def scratch_size(self) -> int:
        """Floats of the ``scratch`` buffer :func:`book_decision` takes to run without allocating:
        the window (T·F) and the kernel's workspace (:func:`kernel_work_size`); tcn only."""
        return self._window_size() + kernel_work_size(*self.kernel_args())

    def kernel_args(self) -> tuple:
        """The fused kernel's weights ``(w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags)``,
        laid out for :func:`cmm_kernel` / :func:`book_decision` by :meth:`prepare_fast` (``kF`` = k·F
        floats per patch, ``P`` patches; ``tcn`` only: ValueError otherwise)."""
        if self._fused is None:
            self.prepare_fast()
        if self._fused is False:
            raise ValueError(f"the fused kernel exists for the tcn encoder only, not "
                             f"{self.spec['students']['encoder']!r}")
        return self._fused

    def decide(self, x, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One decision: x [T, F] (or [1, T, F]) raw window → float32 [3] (mid, spread, volume)."""
        if self._fused is None:
            self.prepare_fast()
        if self._fused is False:
            st = self.spec["students"]
            xt = torch.as_tensor(x, dtype=torch.float32).reshape(1, st["window"], st["n_features"])
            with torch.no_grad():
                return self(xt)[0].numpy()
        xn = x.numpy() if isinstance(x, torch.Tensor) else x
        if xn.dtype != np.float32 or not xn.flags.c_contiguous:
            xn = np.ascontiguousarray(xn, dtype=np.float32)
        if out is None:
            out = np.empty(N_TASKS, np.float32)
        cmm_kernel(xn.reshape(-1), *self._fused, out, self._work)
        return out

    def decide_book(self, book, row: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """One decision from the book itself: the window ending at book row ``row`` (the decision
        snapshot, ``windows.end[i]``) → float32 [3]; equals ``decide(windows.inputs([i])[0])``.

        ``book`` is a :class:`~cmm_lightning.data.lob.Book` or its :func:`book_arrays` tuple
        ``(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side)``. ``tcn``: one compiled call,
        :func:`book_decision` (window + fused kernel). Other encoders: the window is built by the
        same compiled :func:`~cmm_lightning.data.windows.window_from_book`, then the torch ``forward``.
        The window buffer and the kernel's workspace are the model's own: one thread per model at a
        time (:meth:`decide` too).
        """
        if self._fused is None:
            self.prepare_fast()
        arrs = book_arrays(book) if isinstance(book, Book) else book
        scratch = self._scratch
        if scratch is None:
            n = self._window_size() if self._fused is False else self.scratch_size()
            scratch = self._scratch = np.empty(n, np.float32)
        T = self.spec["students"]["window"]
        if self._fused is False:
            scratch = scratch[:self._window_size()]
            window_from_book(*arrs, row, T, scratch)
            with torch.no_grad():
                y = self(torch.from_numpy(scratch).view(1, T, -1))[0].numpy()
            if out is None:
                return y
            out[:] = y
            return out
        if out is None:
            out = np.empty(N_TASKS, np.float32)
        book_decision(*arrs, row, T, *self._fused, scratch, out)
        return out


LANES = 16  # float32 per 512-bit vector: the padding unit of the reduction axes (prepare_fast)


def _pad(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def _fused_layout(model: CMMDecision) -> tuple:
    """:meth:`CMMDecision.prepare_fast`'s layout: each weight matrix transposed so that every
    output's weights are one contiguous row (the kernel's dot products), zero-padded."""
    enc, head = model.students.encoder, model.students.head
    f = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    S, C, P = enc.n_students, enc.channels, enc.n_patches
    w1 = f(enc.first.weight)  # [S, kF, C]
    kF, SC = w1.shape[1], S * C
    w1t = np.zeros((_pad(SC, 4), _pad(kF, LANES)), np.float32)  # [s·C + c, j]
    w1t[:SC, :kF] = w1.transpose(0, 2, 1).reshape(SC, kF)
    b1 = np.zeros(_pad(SC, 4), np.float32)
    b1[:SC] = f(enc.first.bias).reshape(SC)
    d = enc.second.weight.shape[-1]  # conv2 inputs (patch p, channel c) reordered to (c, p): conv1 writes them so
    w2t = np.ascontiguousarray(f(enc.second.weight).reshape(S, P, C, d).transpose(0, 3, 2, 1).reshape(S, d, C * P))
    b2 = np.ascontiguousarray(f(enc.second.bias).reshape(S, -1))
    wh = f(head.weight)  # [S, d, 3 + m]
    no = wh.shape[2]
    OW = _pad(3 + _pad(no - 3, LANES), 4)  # (mid, spread, volume, e'): e' padded to whole vectors
    wht = np.zeros((S, OW, wh.shape[1]), np.float32)
    wht[:, :no] = wh.transpose(0, 2, 1)
    bh = np.zeros((S, OW), np.float32)
    bh[:, :no] = f(head.bias).reshape(S, -1)
    gw1 = f(model.gate_w1)  # [T·F, G]
    G = gw1.shape[1]
    gw1t = np.zeros((_pad(G, 4), gw1.shape[0]), np.float32)
    gw1t[:G] = gw1.T
    gb1 = np.zeros(_pad(G, 4), np.float32)
    gb1[:G] = f(model.gate_b1)
    gw2 = np.zeros((_pad(G, 4), S), np.float32)
    gw2[:G] = f(model.gate_w2)
    flags = (2 if model.uses_hajek else 0) + (1 if model.uses_gate else 0)
    return (w1t, b1, w2t, b2, wht, bh, gw1t, gb1, gw2, np.ascontiguousarray(f(model.gate_b2)),
            np.float32(model.hajek_a), int(kF), int(P), flags)


@njit(cache=True, nogil=True)
def kernel_work_size(w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags):  # pragma: no cover - jit
    """Floats of :func:`cmm_kernel`'s workspace for these weights (``*kernel_args()``): the padded
    patches, conv1's output (each student's conv2 inputs), hidden and head outputs, the gate, the logits."""
    SCq, Kp = w1.shape
    S, d, PC = w2.shape
    return P * Kp + P * SCq + S * d + S * wh.shape[1] + gw1.shape[0] + S


@njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
def _conv1(xp, w1, b1, z):  # pragma: no cover - jit
    """z [N, P] = ReLU(b1 + w1 xpᵀ): xp [P, Kp] patches, w1 [N, Kp] (N a multiple of 4), z channel-major
    (student s's conv2 inputs are then rows s·C .. s·C + C − 1: contiguous). 4 patches × 4 channels
    per pass over the reduction axis: 16 accumulators, 8 loads per 16 multiply-adds."""
    P, Kp = xp.shape
    N = w1.shape[0]
    p = 0
    while p + 4 <= P:
        for c in range(0, N, 4):
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
            a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
            for j in range(Kp):
                w0, w1_, w2_, w3_ = w1[c, j], w1[c + 1, j], w1[c + 2, j], w1[c + 3, j]
                x0, x1, x2, x3 = xp[p, j], xp[p + 1, j], xp[p + 2, j], xp[p + 3, j]
                a00 += x0 * w0
                a01 += x1 * w0
                a02 += x2 * w0
                a03 += x3 * w0
                a10 += x0 * w1_
                a11 += x1 * w1_
                a12 += x2 * w1_
                a13 += x3 * w1_
                a20 += x0 * w2_
                a21 += x1 * w2_
                a22 += x2 * w2_
                a23 += x3 * w2_
                a30 += x0 * w3_
                a31 += x1 * w3_
                a32 += x2 * w3_
                a33 += x3 * w3_
            z[c, p], z[c, p + 1] = max(b1[c] + a00, 0.0), max(b1[c] + a01, 0.0)
            z[c, p + 2], z[c, p + 3] = max(b1[c] + a02, 0.0), max(b1[c] + a03, 0.0)
            z[c + 1, p], z[c + 1, p + 1] = max(b1[c + 1] + a10, 0.0), max(b1[c + 1] + a11, 0.0)
            z[c + 1, p + 2], z[c + 1, p + 3] = max(b1[c + 1] + a12, 0.0), max(b1[c + 1] + a13, 0.0)
            z[c + 2, p], z[c + 2, p + 1] = max(b1[c + 2] + a20, 0.0), max(b1[c + 2] + a21, 0.0)
            z[c + 2, p + 2], z[c + 2, p + 3] = max(b1[c + 2] + a22, 0.0), max(b1[c + 2] + a23, 0.0)
            z[c + 3, p], z[c + 3, p + 1] = max(b1[c + 3] + a30, 0.0), max(b1[c + 3] + a31, 0.0)
            z[c + 3, p + 2], z[c + 3, p + 3] = max(b1[c + 3] + a32, 0.0), max(b1[c + 3] + a33, 0.0)
        p += 4
    while p < P:  # patches left over (P not a multiple of 4)
        for c in range(N):
            acc = np.float32(0.0)
            for j in range(Kp):
                acc += xp[p, j] * w1[c, j]
            z[c, p] = max(b1[c] + acc, 0.0)
        p += 1


@njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
def _rows_dot(v, w, b, y, s, relu):  # pragma: no cover - jit
    """Block ``s``: y[s, q] = b[s, q] + Σ_m v[s, m] w[s, q, m] (ReLU'd with ``relu``) for every row q
    of w[s] [Q, M]: 8 rows per pass over v[s] (one load of v per 8 multiply-adds), then 4, then
    one at a time. Whole arrays and an index, not views: a view costs an atomic reference count."""
    Q, M = w.shape[1], w.shape[2]
    q = 0
    while q + 8 <= Q:
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for m in range(M):
            t = v[s, m]
            a0 += t * w[s, q, m]
            a1 += t * w[s, q + 1, m]
            a2 += t * w[s, q + 2, m]
            a3 += t * w[s, q + 3, m]
            a4 += t * w[s, q + 4, m]
            a5 += t * w[s, q + 5, m]
            a6 += t * w[s, q + 6, m]
            a7 += t * w[s, q + 7, m]
        y[s, q], y[s, q + 1], y[s, q + 2], y[s, q + 3] = (b[s, q] + a0, b[s, q + 1] + a1, b[s, q + 2] + a2,
                                                          b[s, q + 3] + a3)
        y[s, q + 4], y[s, q + 5], y[s, q + 6], y[s, q + 7] = (b[s, q + 4] + a4, b[s, q + 5] + a5,
                                                              b[s, q + 6] + a6, b[s, q + 7] + a7)
        q += 8
    while q + 4 <= Q:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for m in range(M):
            t = v[s, m]
            a0 += t * w[s, q, m]
            a1 += t * w[s, q + 1, m]
            a2 += t * w[s, q + 2, m]
            a3 += t * w[s, q + 3, m]
        y[s, q], y[s, q + 1], y[s, q + 2], y[s, q + 3] = (b[s, q] + a0, b[s, q + 1] + a1, b[s, q + 2] + a2,
                                                          b[s, q + 3] + a3)
        q += 4
    while q < Q:
        a0 = np.float32(0.0)
        for m in range(M):
            a0 += v[s, m] * w[s, q, m]
        y[s, q] = b[s, q] + a0
        q += 1
    if relu:
        for q in range(Q):
            y[s, q] = max(y[s, q], 0.0)


@njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
def cmm_kernel(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out, work=None):  # pragma: no cover - jit
    """The whole CMM decision (tcn students + MoE) at batch 1, single-threaded: flat raw window
    ``x`` float32 [T·F] → ``out`` float32 [3] (mid, spread, volume). ``w1 .. flags`` are
    :meth:`CMMDecision.kernel_args`; ``work`` float32 [:func:`kernel_work_size`] is the workspace
    (None: allocated per call, ~0.1 µs).

    Per student ``s``: conv1 (kernel k, stride k) over the ``P`` patches of the most recent P·k
    snapshots + ReLU, conv2 over the patches + ReLU, the fused head (3 predictions and the scaled
    embedding e'); then the gate logits, the Hájek logits a·Σ_j exp(−‖e'_i − e'_j‖²) and the softmax
    mixture. Every matmul is dot products over a contiguous axis with the accumulators in
    registers (several outputs per pass, so each input load feeds several multiply-adds);
    float32 throughout, ``fastmath`` (reassociated sums): within ~1e-7 relative of the torch
    forward."""
    if work is None:
        work = np.empty(kernel_work_size(w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags), np.float32)
    _cmm_core(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out, work)
    return out


@njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
def _cmm_core(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out, work):  # pragma: no cover - jit
    SCq, Kp = w1.shape
    S, d, PC = w2.shape
    OW = wh.shape[1]
    Gq = gw1.shape[0]
    i = 0
    xp = work[i:i + P * Kp].reshape((P, Kp))
    i += P * Kp
    z = work[i:i + SCq * P].reshape((SCq, P))
    zs = work[i:i + S * PC].reshape((S, PC))  # the same floats: student s's inputs, (channel, patch) order
    i += SCq * P
    h = work[i:i + S * d].reshape((S, d))
    i += S * d
    o = work[i:i + S * OW].reshape((S, OW))
    i += S * OW
    u = work[i:i + Gq]
    i += Gq
    logit = work[i:i + S]
    off = x.shape[0] - P * kF  # the most recent P·k snapshots, as P patches of kF floats (zero-padded)
    for p in range(P):
        src = off + p * kF
        for j in range(kF):
            xp[p, j] = x[src + j]
        for j in range(kF, Kp):
            xp[p, j] = 0.0
    _conv1(xp, w1, b1, z)  # conv1 + ReLU, all students at once: z [S·C, P]
    for s in range(S):
        _rows_dot(zs, w2, b2, h, s, True)  # conv2 over the P patches + ReLU
        _rows_dot(h, wh, bh, o, s, False)  # the fused head: (mid, spread, volume, e')
    for s in range(S):
        logit[s] = 0.0
    if flags & 1:  # gate: u = ReLU(gb1 + x gw1), logits = gb2 + u gw2
        _rows_dot(x.reshape((1, x.shape[0])), gw1.reshape((1, Gq, x.shape[0])), gb1.reshape((1, Gq)),
                  u.reshape((1, Gq)), 0, True)
        for s in range(S):
            logit[s] = gb2[s]
        for g in range(Gq):
            for s in range(S):
                logit[s] += u[g] * gw2[g, s]
    if flags & 2:  # Hájek: a · Σ_j exp(−‖e'_i − e'_j‖²); K is symmetric with K_ii = 1
        for i in range(S):
            for j in range(i + 1, S):
                dd = np.float32(0.0)
                for qb in range(3, OW - LANES + 1, LANES):  # e' padded with zeros to whole vectors
                    for q in range(qb, qb + LANES):
                        t = o[i, q] - o[j, q]
                        dd += t * t
                e = a * np.exp(-dd)
                logit[i] += e
                logit[j] += e
            logit[i] += a
    mx = logit[0]
    for s in range(1, S):
        mx = max(mx, logit[s])
    tot = np.float32(0.0)
    for s in range(S):
        logit[s] = np.exp(logit[s] - mx)
        tot += logit[s]
    o0 = o1 = o2 = np.float32(0.0)
    for s in range(S):
        w = logit[s] / tot
        o0 += w * o[s, 0]
        o1 += w * o[s, 1]
        o2 += w * o[s, 2]
    out[0], out[1], out[2] = o0, o1, o2


@njit(cache=True, nogil=True)
def book_decision(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side, row, T,
                  w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, scratch, out):  # pragma: no cover - jit
    """Book rows → predictions, all compiled: the window ending at ``row``
    (:func:`~cmm_lightning.data.windows.window_from_book`, into ``scratch[:T·F]``) then
    :func:`cmm_kernel` → ``out`` float32 [3]. Callable from other numba code (an ``@njit``
    strategy loop) with ``*CMMDecision.kernel_args()`` as the weights; ``tcn`` encoders only.
    ``scratch`` float32 [``CMMDecision.scratch_size()``] also holds the kernel's workspace; a
    scratch of just T·F floats works too (the workspace is then allocated per call).

    numba's cache keys a function on its own file only: after editing ``data/windows.py``, clear
    this module's ``__pycache__/*.nbi|*.nbc`` (or touch this file) so the cached copy is rebuilt.
    """
    n = T * (4 * bid_px.shape[1] + 3)
    x = scratch[:n]
    window_from_book(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side, row, T, x)
    if scratch.shape[0] >= n + kernel_work_size(w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags):
        cmm_kernel(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out, scratch[n:])
    else:
        cmm_kernel(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out)
    return out


def _fused_decision():
    """The fused kernel (kept for callers of the old closure factory): :func:`cmm_kernel`."""
    return cmm_kernel


@torch.no_grad()
def export_cmm(module) -> CMMDecision:
    """HajekMoE (or a students module: uniform average of its students) → ``CMMDecision`` (eval, CPU)."""
    is_moe = hasattr(module, "embed") and hasattr(module, "mode")
    src = module.students
    spec_st = src.spec()
    S, F, T = spec_st["n_students"], spec_st["n_features"], spec_st["window"]
    mode = module.mode if is_moe else "uniform"
    uses_hajek, uses_gate = MOE_MODES.get(mode)
    m = module.embed.weight.shape[-1] if is_moe and uses_hajek else 0
    G = module.gate[0].out_features if is_moe else 1
    names = list(module.student_names)
    spec = {"format": FORMAT, "mode": mode, "names": names, "gate_hidden": int(G),
            "dimensions": list(module.hparams["spec"]["dimensions"]) if is_moe else [module.dimension] * S,
            "students": {**spec_st, "proj_dim": int(m)}}
    out = CMMDecision(spec)
    cpu = lambda t: t.detach().float().cpu()
    x_mean, x_std, y_mean, y_std = (cpu(getattr(module, k)) for k in ("x_mean", "x_std", "y_mean", "y_std"))
    st = out.students
    st.encoder.load_state_dict({k: cpu(v) for k, v in src.encoder.state_dict().items()})
    fold_input_affine(st.encoder.first, 1.0 / x_std, -x_mean / x_std, st.encoder.patch)
    hw, hb = cpu(src.head.weight)[..., :N_TASKS], cpu(src.head.bias)[..., :N_TASKS]
    weight, bias = [hw * y_std], [hb * y_std + y_mean]
    if m:
        s2 = torch.exp(2 * cpu(module.log_sigma)) if module.cfg["sigma"] == "learned" else cpu(module.sigma2)
        if s2 <= 0:
            raise ValueError("export_cmm: the MoE's kernel width is not calibrated (train or calibrate it first)")
        scale = 1.0 / torch.sqrt(2 * s2)
        weight.append(cpu(module.embed.weight) * scale)
        bias.append(cpu(module.embed.bias) * scale)
        tau = float(module.tau)
        out.hajek_a.fill_(float(module.kappa) / (tau * (S - 1)) if S > 1 else 0.0)
    st.head.weight.copy_(torch.cat(weight, -1)); st.head.bias.copy_(torch.cat(bias, -1))
    if is_moe and uses_gate:
        tau = float(module.tau)
        W1, b1 = cpu(module.gate[0].weight).T, cpu(module.gate[0].bias)  # [2F, G]
        # summary s = [x̃_T, mean_t x̃_t], x̃ = (x − μ)/σ: s = vec(x) A + a0
        A = torch.zeros(T * F, 2 * F)
        A[(T - 1) * F:, :F] = torch.diag(1.0 / x_std)
        A[:, F:] = torch.diag(1.0 / (T * x_std)).repeat(T, 1)
        a0 = torch.cat([-x_mean / x_std, -x_mean / x_std])
        out.gate_w1.copy_(A @ W1); out.gate_b1.copy_(a0 @ W1 + b1)
        out.gate_w2.copy_(cpu(module.gate[2].weight).T / tau); out.gate_b2.copy_(cpu(module.gate[2].bias) / tau)
    return out.eval().requires_grad_(False)


def save_cmm(model: CMMDecision, path) -> Path:
    """Atomic ``torch.save`` of {format, spec (plain dict), state_dict}; loads with weights_only=True."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "spec": model.spec, "state_dict": model.state_dict()}, tmp)
    return path


def load_cmm(path) -> CMMDecision:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a CMM export (format {blob.get('format')!r}, expected {FORMAT})")
    model = CMMDecision(blob["spec"])
    model.load_state_dict(blob["state_dict"])
    return model.eval().requires_grad_(False)


def random_cmm(n_students: int = 9, window: int = 32, n_features: int = 23, hidden: int = 48, channels: int = 24,
               kernel: int = 8, embed_dim: int = 16, gate_hidden: int = 16, mode: str = "hajek_gate",
               seed: int = 0, encoder: str = "tcn") -> CMMDecision:
    """A CMM of the default shape with random weights (latency does not depend on the values).

    Deterministic in ``seed``: the students' default initialisation draws from torch's global RNG
    seeded with ``seed`` inside ``fork_rng`` (the caller's RNG state is left as it was), the gate
    and the Hájek scale from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    m = embed_dim if MOE_MODES.get(mode)[0] else 0
    spec = {"format": FORMAT, "mode": mode, "names": [f"s{i}" for i in range(n_students)],
            "gate_hidden": gate_hidden, "dimensions": ["random"] * n_students,
            "students": dict(n_students=n_students, window=window, n_features=n_features, encoder=encoder,
                             hidden=hidden, channels=channels, kernel=kernel, proj_dim=m)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CMMDecision(spec)
    with torch.no_grad():
        for t in model.buffers():
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        model.hajek_a.fill_(0.5)
    return model.eval().requires_grad_(False)


def decision_latency_us(model: CMMDecision, x, calls: int = 5000, warmup: int = 500) -> tuple[float, float]:
    """(median, 10th percentile) µs per ``model.decide(x)`` at batch 1 on one CPU thread.

    ``x`` is one raw window [T, F]. Machine-load noise only ever adds time, so p10 is the cleaner figure.
    """
    import time

    xn = np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    out = np.empty(N_TASKS, np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model.decide(xn, out)
            pc, ts = time.perf_counter_ns, np.empty(calls)
            for i in range(calls):
                t = pc()
                model.decide(xn, out)
                ts[i] = pc() - t
    finally:
        torch.set_num_threads(threads)
    ts /= 1e3
    return float(np.median(ts)), float(np.percentile(ts, 10))


def book_decision_latency_us(model: CMMDecision, book, rows, calls: int = 5000,
                             warmup: int = 500) -> tuple[float, float]:
    """(median, 10th percentile) µs per ``model.decide_book(book, row)`` at batch 1 on one CPU thread:
    book rows → window → predictions, the same span the teacher's latency covers (rows → prompt →
    features; ``teacher.cache.measure_latency_us``). ``rows`` are decision rows (``windows.end[ids]``),
    taken in turn. Timed exactly as :func:`decision_latency_us`.
    """
    import time

    arrs = book_arrays(book) if isinstance(book, Book) else tuple(book)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        raise ValueError("book_decision_latency_us: no rows")
    rl = [int(r) for r in rows]
    nr = len(rl)
    out = np.empty(N_TASKS, np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(warmup):
                model.decide_book(arrs, rl[i % nr], out)
            pc, ts = time.perf_counter_ns, np.empty(calls)
            for i in range(calls):
                r = rl[i % nr]
                t = pc()
                model.decide_book(arrs, r, out)
                ts[i] = pc() - t
    finally:
        torch.set_num_threads(threads)
    ts /= 1e3
    return float(np.median(ts)), float(np.percentile(ts, 10))

"""The fused CMM decision kernel: numba, batch 1, one thread, no allocation (docs/method.md, "Hájek-MoE").

The weights of an exported :class:`~cmm_lightning.export.CMMDecision` (tcn students) laid out by
:func:`fused_layout`: every weight matrix transposed so that each output's weights are one
contiguous row, zero-padded to whole vectors (the reduction axes to ``LANES`` floats, output
groups to 4). Every matmul is then dot products over a contiguous axis with the accumulators in
registers, several outputs per pass, float32 throughout.

    cmm_kernel(x [T·F], *weights, out [3])          window -> (mid, spread, volume)
    book_decision(book rows, row, T, *weights, ...)  book -> window (data.windows) -> cmm_kernel

Both are module-level and cached, so other numba code (an ``@njit`` hftbacktest strategy,
``market/hft_strategy.py``) calls them with ``*CMMDecision.kernel_args()``. numba's cache keys a
function on its own file only: after editing ``data/windows.py`` clear this package's
``__pycache__/*.nbi|*.nbc`` (or touch this file).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .data.windows import window_from_book

LANES = 16  # float32 per 512-bit vector: the padding unit of the reduction axes (prepare_fast)


def _pad(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def fused_layout(model) -> tuple:
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

    """
    n = T * (4 * bid_px.shape[1] + 3)
    x = scratch[:n]
    window_from_book(bid_px, bid_sz, ask_px, ask_sz, trade_sz, trade_side, row, T, x)
    if scratch.shape[0] >= n + kernel_work_size(w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags):
        cmm_kernel(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out, scratch[n:])
    else:
        cmm_kernel(x, w1, b1, w2, b2, wh, bh, gw1, gb1, gw2, gb2, a, kF, P, flags, out)
    return out

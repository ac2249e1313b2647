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
encoder the fused numba kernel over the same weights (``fused_kernel.py``: its layout, formulas
and the workspace it needs), no per-op dispatch at all; other encoders fall back to ``forward``.
It stays within ~3e-7 (relative to max(1, |y|)) of the float64 forward, closer than torch's own
float32 forward. ``decide_book(book, row)`` is the whole decision from the book rows, the
teacher's input (it renders its prompt from them): the window ending at ``row`` and the kernel in
one compiled call (:func:`~cmm_lightning.fused_kernel.book_decision`); other encoders build the
window the same way and run ``forward``. :func:`decision_latency_us` times ``decide`` (model
only); :func:`book_decision_latency_us` times ``decide_book``, the like-for-like figure against
the teacher's (batch 1, one thread, both).
``save_cmm`` / ``load_cmm`` round-trip through ``torch.load(weights_only=True)``: a state dict
plus a plain dict of hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from .data.lob import Book
from .data.windows import book_arrays, window_from_book
from .fused_kernel import book_decision, cmm_kernel, fused_layout, kernel_work_size
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
        self._fused = fused_layout(self)
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

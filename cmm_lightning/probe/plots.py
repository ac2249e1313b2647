"""Probe figures (headless, Agg): the layer x task fluorescence heatmap and the student probe bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # plain Figures (no pyplot): headless, nothing to close
from matplotlib.patches import Rectangle

from ..io import atomic_path


def heatmap(F, r2, layers, tasks, title: str = "", beats_raw=None) -> Figure:
    """Layers (rows) x tasks (columns), colour = F in [0, 1], the test R² written in each cell;
    cells whose layer beats the raw-input control are outlined in red and starred."""
    F, r2 = np.asarray(F, dtype=float), np.asarray(r2, dtype=float)
    n_l, n_t = F.shape
    fig = Figure(figsize=(1.6 + 1.3 * n_t, 1.2 + 0.26 * n_l))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(F), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest")
    fs = 7 if n_l > 16 else 9
    for i in range(n_l):
        for j in range(n_t):
            star = beats_raw is not None and bool(np.asarray(beats_raw)[i, j])
            txt = "n/a" if not np.isfinite(r2[i, j]) else f"{r2[i, j]:.2f}" + ("*" if star else "")
            dark = not np.isfinite(F[i, j]) or F[i, j] < 0.6
            ax.text(j, i, txt, ha="center", va="center", fontsize=fs, color="white" if dark else "black")
            if star:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_xticks(range(n_t), list(tasks))
    ax.set_yticks(range(n_l), [str(l) for l in layers])
    ax.set_ylabel("layer (0 = embeddings)")
    ax.set_title(title + ("\n* / red: R² above the raw-input ridge" if beats_raw is not None else ""),
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="F")
    fig.tight_layout()
    return fig


def student_bars(r2, cka, names, tasks, title: str = "student probes") -> Figure:
    """Grouped bars: R² per task for each student, and its linear CKA to its teacher slice."""
    r2 = np.asarray(r2, dtype=float)
    cka = np.asarray(cka, dtype=float)
    S, T = r2.shape
    fig = Figure(figsize=(2.0 + 0.9 * S * (T + 1) / 3, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / (T + 1)
    x = np.arange(S)
    for k, t in enumerate(tasks):
        ax.bar(x + (k - T / 2) * width, np.nan_to_num(r2[:, k]), width, label=f"R² {t}")
    ax.bar(x + (T - T / 2) * width, np.nan_to_num(cka), width, label="CKA", color="grey")
    ax.set_xticks(x, list(names), rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylim(min(-0.1, float(np.nanmin(r2, initial=0))), 1.0)
    ax.legend(fontsize=7, ncol=T + 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 [H, W, 3] rendering of a figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_figure(logger, key: str, fig: Figure, step=None) -> bool:
    """Log ``fig`` to a Lightning logger (or a list of them) that takes images: W&B via
    ``log_image``, TensorBoard via ``add_figure``; other loggers are skipped. True if logged."""
    if logger is None:
        return False
    if isinstance(logger, (list, tuple)):
        return any([log_figure(lg, key, fig, step) for lg in logger])
    if hasattr(logger, "log_image"):  # WandbLogger (and Neptune/Comet-style loggers)
        logger.log_image(key=key, images=[figure_to_array(fig)], step=step)
        return True
    exp = getattr(logger, "experiment", None) if type(logger).__name__ == "TensorBoardLogger" else None
    if exp is not None and hasattr(exp, "add_figure"):
        exp.add_figure(key, fig, global_step=step, close=False)
        return True
    return False


__all__ = ["heatmap", "student_bars", "save_figure", "figure_to_array", "log_figure"]

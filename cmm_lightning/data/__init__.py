"""Data stage: LOB sources -> validated snapshot arrays -> windows, targets, regimes, splits."""

from .lob import Book, validate_book
from .windows import REGIMES, SPLITS, TASKS, WindowSet, make_windows


def load_book(data_cfg) -> Book:
    """Read and validate the book chosen by ``data.source`` / ``data.path``."""
    src = data_cfg.source
    if src == "synthetic":
        from .synthetic import simulate

        s = data_cfg.synthetic
        return simulate(n_snapshots=s.n_snapshots, levels=data_cfg.levels, seed=s.seed,
                        start_price=s.start_price, tick_size=data_cfg.tick_size,
                        mean_regime_length=s.mean_regime_length, ofi_signal=s.ofi_signal).validate()
    if src == "lobster":
        from .lobster import read_lobster

        return read_lobster(data_cfg.path, levels=data_cfg.levels).validate()
    from .table import read_table

    return read_table(data_cfg.path, fmt=src, tick_size=data_cfg.tick_size, levels=data_cfg.levels).validate()


def build_windows(data_cfg, book: Book | None = None) -> WindowSet:
    book = load_book(data_cfg) if book is None else book
    return make_windows(book, window=data_cfg.window, horizon=data_cfg.horizon, stride=data_cfg.stride,
                        split=tuple(data_cfg.split), gap=data_cfg.gap, max_windows=data_cfg.max_windows)


__all__ = ["Book", "WindowSet", "TASKS", "REGIMES", "SPLITS", "load_book", "build_windows",
           "make_windows", "validate_book"]

"""Data stage: LOB sources -> validated snapshot arrays -> windows, targets, regimes, splits.

``data.path`` is one file or folder, or a list of them. One LOBSTER pair (file, or a folder with
one pair), one table file or one hftbacktest event file is read as today. A LOBSTER folder with
several days of ONE ticker, a folder of CSV/Parquet files or of hftbacktest ``.npz`` files, or a
list of files/folders is several days of one instrument: each day is read and validated on its
own, then concatenated in the order given (folders sorted by ticker, date / by name) into one Book
(:func:`concat_days`; ``meta['day_start']``). Several tickers in one book are an error:
``evaluate`` reads each dataset of :func:`dataset_paths` on its own.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CMMInputError
from .lob import DEFAULT_LEVELS, Book, concat_days, day_of_row, day_starts, validate_book
from .windows import REGIMES, SPLIT_BY, SPLITS, TASKS, WindowSet, check_learnable, make_windows, window_ends

TABLE_SUFFIXES = {"csv": (".csv",), "parquet": (".parquet", ".pq")}
EVENT_SUFFIXES = (".npz",)  # data.source=hftbacktest: the files of a folder (a .npy file is read when named)
SOURCES = ("synthetic", "lobster", *TABLE_SUFFIXES, "hftbacktest")


def _path_list(path) -> list:
    """``data.path`` (None, str/Path or a list / ListConfig of them) -> list of entries."""
    if path is None or isinstance(path, (str, Path)):
        return [path]
    try:
        items = list(path)
    except TypeError:
        return [path]
    if not items:
        raise CMMInputError("data.path is an empty list; give a file, a folder or a list of them")
    return items


def _table_files(folder: Path, source: str) -> list[Path]:
    """The files of ``folder`` a table or event source reads (by suffix), sorted by name."""
    suffixes = EVENT_SUFFIXES if source == "hftbacktest" else TABLE_SUFFIXES[source]
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(suffixes))
    if not files:
        raise CMMInputError(f"{folder}: no {source} file ({', '.join('*' + s for s in suffixes)}) in this folder")
    return files


def _expand(source: str, path) -> list:
    """Every entry of ``data.path`` -> one item per day: orderbook Paths (LOBSTER), table / event files."""
    from .lobster import find_pairs

    out = []
    for entry in _path_list(path):
        if entry is None:
            raise CMMInputError(f"data.path is required for data.source={source}")
        p = Path(str(entry)).expanduser()
        if not p.exists():
            raise CMMInputError(f"{p}: file or folder not found")
        if p.is_dir():
            out += [ob for ob, _ in find_pairs(p)] if source == "lobster" else _table_files(p, source)
        else:
            out.append(p)
    return out


def dataset_paths(source: str, path) -> list:
    """``data.path`` -> one ``data.path`` value (a str) per dataset, for ``evaluate``.

    LOBSTER: a folder -> the orderbook file of each pair, sorted by ticker then date (one dataset
    per day); a file -> itself. csv / parquet / hftbacktest: a folder -> its ``*.csv`` /
    ``*.parquet|*.pq`` / ``*.npz`` files sorted by name; a file -> itself. A list expands each entry
    in order. synthetic: ``[path]`` (one dataset, the simulator config). Missing paths or empty
    folders are CMMInputErrors.
    """
    if source == "synthetic":
        return [path]
    if source not in SOURCES:
        raise CMMInputError(f"data.source={source!r} is not one of {', '.join(SOURCES)}")
    return [str(p) for p in _expand(source, path)]


def _check_one_ticker(orderbooks: list[Path], path) -> None:
    """Several tickers (from LOBSTER file names) or two files of one day are CMMInputErrors."""
    from .lobster import NAME

    names = [NAME.match(p.name) for p in orderbooks]
    tickers = sorted({m["ticker"] for m in names if m})
    where = path if isinstance(path, (str, Path)) else "data.path"
    if len(tickers) > 1:
        raise CMMInputError(f"{where}: LOBSTER files of {len(tickers)} tickers ({', '.join(tickers)}): one "
                            "instrument per book; evaluate reads each as its own dataset")
    seen: dict = {}
    for p, m in zip(orderbooks, names):
        if m and (m["ticker"], m["date"]) in seen:
            raise CMMInputError(f"{p}: a second LOBSTER file for {m['ticker']} on {m['date']} "
                                f"(also {seen[m['ticker'], m['date']].name}); one pair per day")
        if m:
            seen[m["ticker"], m["date"]] = p


def _file_depth(source: str, path) -> int | None:
    """Book levels of one data file, read from its first line / header / schema (None: unknown;
    the reader then reports what is wrong with the file)."""
    if source == "hftbacktest":
        return None  # events hold the full depth: data.levels unset reads 5
    try:
        if source == "lobster":
            from .lobster import find_pair

            with open(find_pair(path)[0], encoding="utf-8", errors="replace") as f:
                n = f.readline().count(",") + 1
            return n // 4 if n % 4 == 0 else None
        from .table import table_depth

        p = Path(str(path)).expanduser()
        if source == "parquet":
            import pyarrow.parquet as pq

            return table_depth(pq.read_schema(p).names)
        import pandas as pd

        return table_depth(pd.read_csv(p, nrows=0).columns)
    except CMMInputError:
        raise
    except Exception:
        return None


def _levels(data_cfg, items: list) -> int | None:
    """``data.levels``, or when unset: 5, or the depth of the shallowest file when it has fewer
    (said in one printed line). None: let the reader find out (a file it cannot read)."""
    if data_cfg.levels is not None:
        return int(data_cfg.levels)
    depths = [(d, item) for item in items if (d := _file_depth(data_cfg.source, item))]
    if not depths:
        return None
    depth, where = min(depths, key=lambda t: t[0])
    if depth < DEFAULT_LEVELS:
        print(f"data.levels not set: {where} has {depth} book level{'s' if depth > 1 else ''}, "
              f"using data.levels={depth}")
        return depth
    return DEFAULT_LEVELS


def _read_one(data_cfg, path, levels) -> Book:
    src = data_cfg.source
    if src == "lobster":
        from .lobster import read_lobster

        return read_lobster(path, levels=levels).validate()
    if src == "hftbacktest":
        from .hftbacktest import read_hftbacktest

        hb = getattr(data_cfg, "hftbacktest", None)
        return read_hftbacktest(path, tick_size=data_cfg.tick_size, levels=levels,
                                interval_ns=getattr(hb, "interval_ns", None), lot_size=getattr(hb, "lot_size", None),
                                crossed=getattr(hb, "crossed", "error") or "error").validate()
    from .table import read_table

    return read_table(path, fmt=src, tick_size=data_cfg.tick_size, levels=levels).validate()


def load_book(data_cfg) -> Book:
    """Read and validate the book chosen by ``data.source`` / ``data.path`` (one or several days).

    ``data.levels`` unset (None): 5 levels (synthetic, hftbacktest), or the depth of the files when
    they have fewer (tables, LOBSTER; one printed line says so)."""
    src = data_cfg.source
    if src == "synthetic":
        from .synthetic import simulate, simulate_days

        s = data_cfg.synthetic
        levels = DEFAULT_LEVELS if data_cfg.levels is None else data_cfg.levels
        kw = dict(n_snapshots=s.n_snapshots, levels=levels, seed=s.seed, start_price=s.start_price,
                  tick_size=data_cfg.tick_size, mean_regime_length=s.mean_regime_length,
                  ofi_signal=s.ofi_signal)
        days = int(getattr(s, "days", 1) or 1)
        return (simulate(**kw) if days == 1 else simulate_days(days=days, **kw)).validate()
    entries = _path_list(data_cfg.path)
    if len(entries) == 1 and (entries[0] is None or not Path(str(entries[0])).expanduser().is_dir()):
        # one file: exactly as before (a one-pair folder reads the same)
        levels = _levels(data_cfg, entries) if entries[0] is not None else data_cfg.levels
        return _size_hint(data_cfg, _read_one(data_cfg, entries[0], levels))
    files = _expand(src, data_cfg.path)
    if src == "lobster":
        _check_one_ticker(files, data_cfg.path)
    levels = _levels(data_cfg, files)
    books = [_read_one(data_cfg, f, levels) for f in files]  # each day validated on its own (file + row)
    return _size_hint(data_cfg, books[0] if len(books) == 1 else concat_days(books))


def _size_hint(data_cfg, book: Book) -> Book:
    """hftbacktest events with fractional sizes and no lot size: one printed line (the market's
    quote sizes are then in the file's units, e.g. coins)."""
    if book.meta.get("fractional_sizes"):
        print(f"{book.source}: fractional sizes read as they are; set data.hftbacktest.lot_size (the exchange's "
              "quantity step) to read them in whole lots")
    return book


def build_windows(data_cfg, book: Book | None = None) -> WindowSet:
    """Windows of ``data_cfg``'s book (or of ``book``), checked to be learnable (:func:`check_learnable`)."""
    book = load_book(data_cfg) if book is None else book
    windows = make_windows(book, window=data_cfg.window, horizon=data_cfg.horizon, stride=data_cfg.stride,
                           split=tuple(data_cfg.split), gap=data_cfg.gap, max_windows=data_cfg.max_windows,
                           split_by=getattr(data_cfg, "split_by", "fraction") or "fraction")
    check_learnable(windows)
    return windows


__all__ = ["Book", "WindowSet", "TASKS", "REGIMES", "SPLITS", "SPLIT_BY", "DEFAULT_LEVELS", "load_book",
           "build_windows", "make_windows", "window_ends", "validate_book", "check_learnable", "concat_days",
           "day_starts", "day_of_row", "dataset_paths"]

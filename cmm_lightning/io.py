"""File plumbing: atomic writes, size + checksum records, one-line reports of damaged files.

Atomic writes: write to a temp path beside the target, then rename (nothing half-written). The
temp file is created like ``open(path, "w")`` creates a file — mode ``0o666 & ~umask`` (and the
folder's default ACL) — so a team sharing a cache or a run folder can read what it wrote.

Integrity (docs: README, "Damaged files"). Whoever writes an artefact records its size and a
blake2b-128 digest where the artefact is referenced (``done.json`` records ``best.ckpt``, the
teacher cache's ``meta.json`` its arrays; :func:`file_record`). Every read checks sizes, and the
digests of small files (:func:`check_file`); JSON that does not parse is *damaged*, never a
traceback (:func:`read_json_or_none`). A damaged artefact is reported in one line
(:func:`report_damaged`) and recomputed by its stage; where that is impossible the stage raises a
``CMMInputError`` naming the file to delete. ``--verify`` (env ``CMM_VERIFY=1``) also checks the
digests of the big memory-mapped arrays (otherwise checked only when they hold non-finite values
that were not there when they were written).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

VERIFY_ENV = "CMM_VERIFY"  # "1": check the checksums of every artefact read, big arrays included
DIGEST = "blake2b"  # 128-bit blake2b, hex
CHUNK = 1 << 22


# ------------------------------------------------------------------------------------ atomic writes
def _create_temp(target: Path) -> Path:
    """A new empty file beside ``target``, created with mode 0o666 and so masked by the umask
    (``tempfile.mkstemp`` would make it 0600, which ``os.replace`` then keeps)."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file (raises ``OSError`` / ``ValueError``; see :func:`read_json_or_none`)."""
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------ checksums
def new_digest():
    """The streaming hash every record uses (blake2b, 16-byte digest)."""
    return hashlib.blake2b(digest_size=16)


def digest_bytes(data) -> str:
    """Hex digest of a bytes-like object (a C-contiguous numpy array is one)."""
    h = new_digest()
    h.update(data)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = new_digest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | os.PathLike, digest: Optional[str] = None) -> dict:
    """``{"size", "blake2b"}`` of a file just written (``digest``: already known, not re-read)."""
    return {"size": os.stat(path).st_size, DIGEST: digest or file_digest(path)}


def check_file(path: str | os.PathLike, record: dict, digest: bool = True) -> Optional[str]:
    """None when ``path`` matches its ``record`` (size; and digest when ``digest``), else why not."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if not isinstance(record, dict):
        return "no valid record of it"
    want = record.get("size")
    if want is not None and size != want:
        return f"{size:,} bytes, {want:,} were written"
    if digest and record.get(DIGEST) and file_digest(path) != record[DIGEST]:
        return "checksum mismatch"
    return None


def verify_requested() -> bool:
    """``--verify`` on the CLI (or env ``CMM_VERIFY=1``): check the big arrays' checksums too."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def verifying(on: bool = True) -> Iterator[None]:
    """Within the block, every read checks every checksum (what ``--verify`` sets for a command)."""
    old = os.environ.get(VERIFY_ENV)
    if on:
        os.environ[VERIFY_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(VERIFY_ENV, None)
        else:
            os.environ[VERIFY_ENV] = old


# ------------------------------------------------------------------------------------ damage
class DamagedFile(Exception):
    """An artefact that is not what was written: ``path`` and ``why`` (one line)."""

    def __init__(self, path: str | os.PathLike, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


_reported: set = set()


def report_damaged(path: str | os.PathLike, why: str, action: str) -> None:
    """One line on stderr (global rank 0 only, once per file state): what is damaged, why, what now."""
    from .dist import is_global_zero

    try:
        st = os.stat(path)
        state = (st.st_size, st.st_mtime_ns)
    except OSError:
        state = None
    key = (str(path), why, state)
    if key in _reported or not is_global_zero():
        return
    _reported.add(key)
    print(f"damaged: {path} ({why}); {action}", file=sys.stderr, flush=True)


def load_json_checked(path: str | os.PathLike) -> Optional[dict]:
    """The JSON object in ``path``; None when the file does not exist; ``DamagedFile`` when it
    exists but is not a JSON object (truncated, overwritten, not UTF-8)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedFile(path, "a folder, not a file") from None
    try:
        obj = json.loads(text.decode("utf-8"))
    except ValueError:
        raise DamagedFile(path, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"JSON {type(obj).__name__}, not an object")
    return obj


def read_json_or_none(path: str | os.PathLike, action: str = "recomputing it") -> Optional[dict]:
    """Like :func:`load_json_checked`, but a damaged file is reported in one line and read as absent."""
    try:
        return load_json_checked(path)
    except DamagedFile as e:
        report_damaged(e.path, e.why, action)
        return None

"""One writer at a time: an OS file lock on a run folder (and on a teacher cache entry being written).

``hold(folder)`` takes ``fcntl.flock`` on ``folder/.lock`` without waiting; the lock file records
who holds it (pid, host, command, since when). A second process gets a one-line
``CMMInputError`` naming the holder (exit 2 from the CLI) and the first finishes undisturbed. The
OS releases the lock when its holder dies, however it dies, so a crashed run never leaves a stale
lock behind (unlike a marker file). The ranks of one DDP job share their launcher's lock: only
global rank 0 takes it (``pipeline.run``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CMMInputError

LOCK_NAME = ".lock"


@contextmanager
def hold(folder, what: str = "run.dir", wait: bool = False) -> Iterator[Path]:
    """Hold the lock on ``folder`` for the ``with`` block (``wait``: block until it is free)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = _describe(fh.read())
            if not wait:
                raise CMMInputError(f"{what} {folder} is in use by {holder}; wait for it to finish or use "
                                    f"another {what}") from None
            print(f"{what} {folder} is being written by {holder}: waiting for it", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%H:%M:%S"),
                             "command": " ".join(sys.argv[1:])[:200]}))
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the lock


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} since {h['since']} ({h['command'] or 'python'})"
    except (ValueError, KeyError, TypeError):
        return "another process"


__all__ = ["LOCK_NAME", "hold"]

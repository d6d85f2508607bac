"""An exclusive file lock: the compare-and-swap an MLflow registry does not offer.

`flock` locks belong to an open file description, so two threads of one process that each
open the file exclude each other exactly as two processes do. The kernel drops the lock when
its holder dies, so a crashed promoter never wedges the next one.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | Path, timeout: float = 300.0) -> Iterator[Path]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: still locked after {timeout:.0f}s by another promotion") from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock

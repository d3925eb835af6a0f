"""An exclusive lock on a local folder, for runs that must not overlap (e.g. two reindex runs)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from regionrank.storage.shards import StoreLockedError, _FileLock

__all__ = ["StoreLockedError", "exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    A second holder waits up to ``timeout`` seconds, then raises :class:`StoreLockedError`
    naming the process that holds it. The lock dies with its process (kill -9 included).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = _FileLock(str(p), timeout)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()

"""The one file lock of regionrank: an exclusive advisory lock on a local file (``fcntl.flock``), waited for
until a deadline, naming its holder when it stays busy. Shard writers, index publishers and runs that must
not overlap (e.g. two reindex runs) all take this lock."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = ["FileLock", "StoreLockedError", "exclusive_lock"]


class StoreLockedError(RuntimeError):
    """Another writer holds the store's write lock."""


class FileLock:
    """An exclusive advisory lock on a local file, polled until a deadline.

    The holder writes ``"pid <pid> since <UTC time>"`` into the file, so a waiter that gives up can say
    who holds it; the lock dies with its process (kill -9 included). Two ``FileLock`` objects on the
    same path exclude each other even inside one process (each opens its own file description).

    Args:
        path: the lock file (its folder must exist; created if needed).
        timeout: seconds to wait for another holder (0: try once).
        poll: seconds between attempts while waiting.
        busy_error: builds the exception raised on timeout from the holder's text; default
            :class:`StoreLockedError` ("another writer holds the lock on <folder> (<holder>) ...").
    """

    def __init__(
        self, path: str | os.PathLike[str], timeout: float, *, poll: float = 0.05,
        busy_error: Callable[[str], Exception] | None = None,
    ) -> None:
        self.path, self.timeout, self.poll = str(path), timeout, poll
        self.busy_error = busy_error or self._store_locked
        self._fh: IO[str] | None = None

    def _store_locked(self, holder: str) -> Exception:
        return StoreLockedError(
            f"another writer holds the lock on {os.path.dirname(self.path)} ({holder}); "
            f"wait for it to finish, or pass a longer lock_timeout (was {self.timeout:.0f} s)"
        )

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds.

        Raises:
            Exception: what ``busy_error`` builds (default :class:`StoreLockedError`) when still held
                by another after ``timeout``.
        """
        import fcntl

        fh = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    fh.close()
                    raise self.busy_error(holder) from None
                time.sleep(self.poll)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Give the lock back (no-op when not held)."""
        if self._fh is not None:
            import fcntl

            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    A second holder waits up to ``timeout`` seconds, then raises :class:`StoreLockedError`
    naming the process that holds it. The lock dies with its process (kill -9 included).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(p, timeout):
        yield

"""Versioned index directories: atomic publication, a ``CURRENT`` pointer, rollback and a writer lock.

Layout of an index directory::

    out_dir/
      CURRENT              # "v000003\n", replaced atomically (write temp, fsync, os.replace, fsync dir)
      LOCK                 # flock()ed by the one publisher at a time (storage.locks.FileLock); holds its pid
      versions/v000002/    # the previous version, kept for rollback
      versions/v000003/    # manifest.json, global.faiss, region.faiss, ids.txt, idmap.npz, probes
      versions/.tmp-*/     # a version being written; never read, removed on failure

A reader resolves ``CURRENT`` once and then reads only that directory, which is complete before it is
renamed into place, so no reader ever sees a half-written index.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from regionrank.storage.locks import FileLock

__all__ = ["IndexBusyError", "VersionedDir"]

_VERSION_RE = re.compile(r"v(\d{6})")


class IndexBusyError(RuntimeError):
    """Another process holds the index directory's publisher lock past the timeout."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


class VersionedDir:
    """Versions of one index directory.

    Args:
        root: the index directory (created on first publication).
        keep: how many versions to keep (at least 2: the current one and the previous for rollback).
    """

    def __init__(self, root: str | Path, *, keep: int = 3) -> None:
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (current + previous for rollback); got {keep}")
        self.root = Path(root)
        self.keep = keep

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def versions(self) -> list[int]:
        """Published version numbers, ascending."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.versions_dir.iterdir() if (m := _VERSION_RE.fullmatch(p.name)))

    def current(self) -> int | None:
        """The version ``CURRENT`` points to, or ``None`` before the first publication."""
        try:
            text = (self.root / "CURRENT").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        m = _VERSION_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"{self.root / 'CURRENT'} holds {text!r}, not a version name like 'v000001'")
        return int(m.group(1))

    def path(self, version: int | None = None) -> Path:
        """Directory of ``version`` (default: the current one).

        Raises:
            FileNotFoundError: nothing is published, or ``version`` does not exist (lists what does).
        """
        if version is None:
            version = self.current()
            if version is None:
                raise FileNotFoundError(f"no index has been published in {self.root}; build one with index.build_indexes")
        p = self.versions_dir / f"v{version:06d}"
        if not p.is_dir():
            raise FileNotFoundError(f"index version {version} does not exist in {self.root}; available: {self.versions()}")
        return p

    @contextlib.contextmanager
    def lock(self, timeout: float = 60.0, poll: float = 0.05) -> Iterator[None]:
        """Hold the exclusive publisher lock; wait up to ``timeout`` seconds for another holder.

        Raises:
            IndexBusyError: still locked after ``timeout`` (names the lock file and the holder's pid).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "LOCK"

        def busy(holder: str) -> IndexBusyError:
            return IndexBusyError(
                f"index directory {self.root} is locked by another publisher ({holder}, lock file {path}) "
                f"for more than {timeout:g} s; wait for it to finish or raise lock_timeout"
            )

        with FileLock(path, timeout, poll=poll, busy_error=busy):
            yield

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A fresh temporary directory to write a version into; removed if the block raises."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def next_version(self) -> int:
        """The number the next :meth:`publish` will use (stable while the lock is held)."""
        existing = self.versions()
        return (existing[-1] if existing else 0) + 1

    def publish(self, staged: Path, version: int | None = None) -> int:
        """Make ``staged`` the next version and point ``CURRENT`` at it (call under :meth:`lock`).

        Files are fsynced, the directory is renamed into place, then ``CURRENT`` is replaced atomically.
        Versions beyond ``keep`` (oldest first, never the current one) are deleted.

        Raises:
            ValueError: ``version`` is given and is not :meth:`next_version`.
        """
        expected = self.next_version()
        if version is not None and version != expected:
            raise ValueError(f"cannot publish version {version}: the next version of {self.root} is {expected}")
        version = expected
        _fsync_tree(staged)
        final = self.versions_dir / f"v{version:06d}"
        os.rename(staged, final)
        _fsync_dir(self.versions_dir)
        self._point_to(version)
        self._prune()
        return version

    def rollback(self) -> int:
        """Point ``CURRENT`` at the newest version older than the current one (call under :meth:`lock`).

        Raises:
            FileNotFoundError: there is no older version to go back to.
        """
        cur = self.current()
        older = [v for v in self.versions() if cur is None or v < cur]
        if not older:
            raise FileNotFoundError(f"no version older than {cur} to roll back to in {self.root}; versions: {self.versions()}")
        self._point_to(older[-1])
        return older[-1]

    def _point_to(self, version: int) -> None:
        tmp = self.root / f".CURRENT.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"v{version:06d}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "CURRENT")
        _fsync_dir(self.root)

    def _prune(self) -> None:
        versions = self.versions()
        cur = self.current()
        for v in versions[: -self.keep]:
            if v != cur:
                shutil.rmtree(self.versions_dir / f"v{v:06d}", ignore_errors=True)

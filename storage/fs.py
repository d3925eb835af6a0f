"""Where shards live: a local path or any URI that pyarrow.fs or fsspec resolves.

Everything in ``storage`` goes through a :class:`Location` so that s3://, gs://,
memory:// (fsspec) and local folders use the same code; only locking is local-only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["Location", "resolve_location"]


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path inside it."""

    fs: pafs.FileSystem
    root: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def makedirs(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def list_files(self) -> list[str]:
        """Base names of the files directly under the root (sorted); [] when the root is absent."""
        info = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True, recursive=False))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.File)

    def publish(self, tmp_path: str, final_path: str) -> None:
        """Move a finished temporary file to its final name (atomic on local filesystems)."""
        if self.is_local:
            os.replace(tmp_path, final_path)
        else:
            self.fs.move(tmp_path, final_path)


def resolve_location(where: str | os.PathLike[str] | Location) -> Location:
    """Resolve a local path or URI into a :class:`Location`.

    Local paths are made absolute. URIs with a scheme go to ``pyarrow.fs`` first
    (s3://, gs://, hdfs://, file://) and fall back to fsspec (memory://, and any
    scheme an installed fsspec implementation provides).

    Raises:
        ValueError: the URI's scheme is known to neither pyarrow nor fsspec.
    """
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if "://" not in text:
        path = str(Path(text).expanduser().absolute())
        return Location(pafs.LocalFileSystem(), path, path)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
        return Location(fs, path, text)
    except (pafs.ArrowInvalid if hasattr(pafs, "ArrowInvalid") else ValueError, ValueError, OSError):
        pass
    try:
        import fsspec

        ffs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"cannot resolve storage location {text!r}: neither pyarrow.fs nor fsspec knows its scheme; "
            f"use a local path or install the fsspec implementation for it (e.g. s3fs, gcsfs)"
        ) from exc
    return Location(pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), path, text)

"""Integrity of published index versions: the size and sha256 of every file of a version, computed when
it is published (recorded in its manifest) and checked when it is opened, so a truncated or overwritten
file is named, with its fix, instead of failing deep inside faiss."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from regionrank.index.manifest import FileChecksum, Manifest

__all__ = [
    "IndexDamagedError",
    "checksum_files",
    "damaged_error",
    "file_problems",
    "opened_files",
    "read_checked_manifest",
    "reading",
]

MANIFEST_FILE = "manifest.json"


class IndexDamagedError(ValueError):
    """A published index version has a missing, truncated, overwritten or unreadable file.

    Attributes:
        problems: one line per damaged file, naming it and what is wrong.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksum_files(
    directory: Path, *, previous_dir: Path | None = None, previous: Mapping[str, FileChecksum] | None = None
) -> dict[str, FileChecksum]:
    """Size and sha256 of every file under ``directory`` (relative posix paths), ``manifest.json`` excepted.

    A file that is the very same file (a hard link) as the one of that name in ``previous_dir`` takes the
    checksum ``previous`` recorded for it instead of being read again (the region matrix's segments are
    hard-linked from version to version).
    """
    out: dict[str, FileChecksum] = {}
    for p in sorted(directory.rglob("*")):
        if not p.is_file():
            continue
        name = p.relative_to(directory).as_posix()
        if name == MANIFEST_FILE:
            continue
        size = p.stat().st_size
        known = (previous or {}).get(name)
        if known is not None and previous_dir is not None and known.size == size and _same_file(p, previous_dir / name):
            out[name] = known
        else:
            out[name] = FileChecksum(size=size, sha256=_sha256(p))
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def file_problems(
    directory: Path, files: Mapping[str, FileChecksum], *, hashed: Iterable[str] | None = None
) -> list[str]:
    """What is wrong with the files of a version against their recorded checksums (empty: intact).

    Args:
        directory: the version directory.
        files: the manifest's ``relative path -> FileChecksum``.
        hashed: names whose sha256 is checked too (default: all); every recorded file's size is checked.

    Returns:
        One line per damaged file, naming it and what is wrong.
    """
    to_hash = set(files) if hashed is None else set(hashed)
    problems = []
    for name, want in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != want.size:
            problems.append(f"{name}: {size} bytes, {want.size} when published (truncated or overwritten)")
        elif name in to_hash and _sha256(path) != want.sha256:
            problems.append(f"{name}: sha256 differs from the one recorded when published (overwritten or corrupted)")
    return problems


def damaged_error(version_dir: Path, problems: list[str]) -> IndexDamagedError:
    """The :class:`IndexDamagedError` for a version directory (``<index>/versions/vNNNNNN``) and its problems."""
    digits = version_dir.name[1:]
    label = str(int(digits)) if digits.isdigit() else version_dir.name
    return IndexDamagedError(
        f"index version {label} of {version_dir.parent.parent} is damaged: {'; '.join(problems)}. "
        f"Roll back to an intact version (regionrank.index.rollback, or open_index(..., version=N)) "
        f"or rebuild the index (regionrank.index.build_indexes / `regionrank index`)",
        problems,
    )


def opened_files(manifest: Manifest) -> list[str]:
    """The files of a version that opening it reads whole (indexes, their tombstones, the id map)."""
    names = ["ids.txt", "idmap.npz"]
    for info in manifest.indexes.values():
        names += [info.file, f"{info.file}.tombstones.npy"]
    return names


def read_checked_manifest(version_dir: Path, *, with_probes: bool = False) -> Manifest:
    """Read a version's manifest and check its files: every recorded size, and the sha256 of
    :func:`opened_files` (and of the recall probes, ``<kind>.probe.npz``, ``with_probes``: an update reads them).

    Raises:
        IndexDamagedError: the manifest is missing or unreadable, or a file is missing or differs from
            what was recorded when the version was published.
    """
    try:
        manifest = Manifest.read(version_dir)
    except FileNotFoundError as exc:
        raise damaged_error(version_dir, [f"{MANIFEST_FILE}: missing"]) from exc
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise damaged_error(version_dir, [f"{MANIFEST_FILE}: unreadable ({exc})"]) from exc
    probes = [f"{kind}.probe.npz" for kind in manifest.indexes] if with_probes else []
    problems = file_problems(version_dir, manifest.files, hashed=[*opened_files(manifest), *probes])
    if problems:
        raise damaged_error(version_dir, problems)
    return manifest


@contextlib.contextmanager
def reading(version_dir: Path, name: str, manifest: Manifest) -> Iterator[None]:
    """Turn an error while reading file ``name`` of a version into :class:`IndexDamagedError` (faiss's
    ``RuntimeError`` on a truncated file included), for versions published without checksums and for
    damage the checks did not see."""
    try:
        yield
    except (RuntimeError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, IndexDamagedError):
            raise
        hint = "" if manifest.files else "; the version was published without checksums"
        raise damaged_error(version_dir, [f"{name}: cannot be read ({type(exc).__name__}: {exc}){hint}"]) from exc

"""Reading published index versions: the read-only :class:`IndexHandle` (memory-mapped indexes, id map,
region matrix) and :func:`open_index`, which checks a version's files before opening it and falls back
from a damaged current version to the newest intact older one; :func:`versions`, :func:`verify_version`
and :func:`rollback`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from regionrank.index._faiss import check_ngpu, import_faiss
from regionrank.index.ann import AnnIndex
from regionrank.index.idmap import IdMap
from regionrank.index.integrity import IndexDamagedError, file_problems, read_checked_manifest, reading
from regionrank.index.manifest import Manifest
from regionrank.index.regions import RegionMatrix
from regionrank.index.source import MULTI_KIND
from regionrank.index.spec import IndexSpec
from regionrank.index.version import VersionedDir

__all__ = ["IndexHandle", "open_index", "rollback", "verify_version", "versions"]

logger = logging.getLogger(__name__)


class IndexHandle:
    """A read-only view of one published version (indexes memory-mapped where faiss supports it).

    Opening checks the version first: the size of every file recorded in its manifest, and the sha256 of
    the files it reads (indexes, tombstones, id map); a version published before checksums were recorded
    is checked by reading it.

    Args:
        path: the version directory.
        mmap: memory-map the indexes.
        ngpu: GPUs to search on, a resolved count (0 = CPU).

    Attributes:
        manifest: the version's :class:`Manifest`.
        idmap: the version's :class:`IdMap`.
        indexes: ``kind -> AnnIndex`` with the tuned search parameters set.
        path: the version directory.
        regions: the version's region matrix (opened on first use), or ``None``.

    Raises:
        IndexDamagedError: a file of the version is missing, truncated, overwritten or unreadable.
        ValueError: ``ngpu`` is not a GPU count faiss can serve.
    """

    def __init__(self, path: Path, *, mmap: bool = True, ngpu: int = 0) -> None:
        import_faiss()  # a missing faiss is an install problem, not a damaged version
        n_gpu = check_ngpu(ngpu)
        self.path = path
        self.manifest = read_checked_manifest(path)
        with reading(path, "ids.txt / idmap.npz", self.manifest):
            self.idmap = IdMap.load(path)
        self.indexes: dict[str, AnnIndex] = {}
        for kind, info in self.manifest.indexes.items():
            with reading(path, info.file, self.manifest):
                self.indexes[kind] = AnnIndex.load(path / info.file, IndexSpec.parse(info.spec), info.dim,
                                                   search_value=info.search_value, mmap=mmap, ngpu=n_gpu)
        self._regions: RegionMatrix | None | bool = False  # False: not opened yet

    @property
    def regions(self) -> RegionMatrix | None:
        """The version's memory-mapped :class:`index.regions.RegionMatrix`, or ``None`` when it has none
        (a caption index, or an image index published before region matrices existed)."""
        if self._regions is False:
            try:
                self._regions = RegionMatrix(self.path, self.idmap.image_ids)
            except FileNotFoundError:
                self._regions = None
        return self._regions  # type: ignore[return-value]

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def multi_kind(self) -> str:
        return MULTI_KIND[self.manifest.corpus]

    def _get(self, kind: str) -> AnnIndex:
        if kind not in self.indexes:
            raise ValueError(f"index version {self.version} has no {kind!r} index (it has {sorted(self.indexes)}); "
                             f"build it with kind=(..., {kind!r})")
        return self.indexes[kind]

    def search_global(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by global vector.

        Args:
            xq: ``float32[Q, E]`` query vectors.
            k: results per query.

        Returns:
            ``(scores float32[Q, k], item_int int64[Q, k])``, the items' int ids (``idmap.image_id``
            names them), ``-1`` where missing (missing results come last in a row).
        """
        return self._get("global").search(np.atleast_2d(xq), k)

    def search_multi(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest regions (or caption words) of each query vector.

        Args:
            xq: ``float32[L, E]`` one row per query word (or per region, for image-to-text).
            k: vectors per row.

        Returns:
            ``(scores float32[L, k], item_int int64[L, k], slot int64[L, k])``; ``-1`` where missing.
        """
        scores, ids = self._get(self.multi_kind).search(np.atleast_2d(xq), k)
        item, slot = IdMap.split_region_ids(ids)
        return scores, item, slot


def open_index(out_dir: str | Path, version: int | None = None, *, mmap: bool = True, ngpu: int = 0) -> IndexHandle:
    """Open a published version read-only, memory-mapped with ``mmap``.

    With ``version=None`` this opens the current version, or, when that one is damaged (a file missing,
    truncated or overwritten since it was published), the newest intact version older than it, with a
    warning naming the damaged version, the file and what is wrong.

    Args:
        out_dir: an index directory made by :func:`index.build_indexes` / :func:`index.build_caption_indexes`.
        version: the version to open (default: the current one, see above).
        mmap: memory-map the indexes.
        ngpu: GPUs to search on, a resolved count (0 = CPU; ``index.available_gpus()`` for all).

    Raises:
        FileNotFoundError: nothing is published, or ``version`` does not exist.
        IndexDamagedError: ``version`` is given and damaged, or no kept version is intact.
    """
    vd = VersionedDir(out_dir)
    if version is not None:
        return IndexHandle(vd.path(version), mmap=mmap, ngpu=ngpu)
    vd.path()  # FileNotFoundError when nothing is published
    current = vd.current()
    assert current is not None
    damaged: list[IndexDamagedError] = []
    for v in [current, *(v for v in reversed(vd.versions()) if v < current)]:
        try:
            handle = IndexHandle(vd.path(v), mmap=mmap, ngpu=ngpu)
        except FileNotFoundError:  # pruned by a publisher meanwhile
            continue
        except IndexDamagedError as exc:
            logger.warning("%s; opening the newest intact older version instead", exc)
            damaged.append(exc)
            continue
        if damaged:
            logger.warning("opened index version %d of %s: the current version is damaged", handle.version, vd.root)
        return handle
    if not damaged:  # every version was pruned while we looked: open what is current now
        return IndexHandle(vd.path(), mmap=mmap, ngpu=ngpu)
    raise IndexDamagedError(
        f"no intact index version is left in {vd.root}; rebuild it (regionrank.index.build_indexes / "
        f"`regionrank index`). The current one: {damaged[0]}",
        [p for exc in damaged for p in exc.problems],
    ) from damaged[0]


def verify_version(out_dir: str | Path, version: int | None = None, *, thorough: bool = False) -> list[str]:
    """What is wrong with a published version (empty when intact), as :func:`open_index` checks it.

    Args:
        out_dir: an index directory.
        version: the version to check (default: the current one).
        thorough: hash every file of the version (the region matrix too), not only those opening reads.

    Returns:
        One line per damaged file, naming it and what is wrong.

    Raises:
        FileNotFoundError: nothing is published, or ``version`` does not exist.
    """
    path = VersionedDir(out_dir).path(version)
    try:
        handle = IndexHandle(path)
    except IndexDamagedError as exc:
        return exc.problems
    return file_problems(path, handle.manifest.files) if thorough else []


def versions(out_dir: str | Path) -> list[Manifest]:
    """Manifests of every version kept in ``out_dir``, oldest first."""
    vd = VersionedDir(out_dir)
    return [Manifest.read(vd.path(v)) for v in vd.versions()]


def rollback(out_dir: str | Path, *, lock_timeout: float = 60.0) -> Manifest:
    """Point ``CURRENT`` back at the previous version; returns its manifest.

    Raises:
        FileNotFoundError: there is no older version.
    """
    vd = VersionedDir(out_dir)
    with vd.lock(lock_timeout):
        return Manifest.read(vd.path(vd.rollback()))

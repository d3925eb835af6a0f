"""Shard stores: atomic Parquet shard writing, a key -> (shard, row) catalog, fast reads by id.

A store is one folder holding ``<prefix>-00000.parquet``, ``<prefix>-00001.parquet``, ...
(immutable once published), ``failures-*.parquet`` (inputs that could not be
processed) and ``_catalog.parquet`` (a cache of which key lives in which shard and
row, rebuilt from the shards whenever they disagree: the shards are the truth).

Writers stream one row group at a time into ``*.parquet.tmp`` and publish a shard
by renaming it, so a reader never sees a partial shard and a crash loses at most
the rows of the shard in progress. Re-running over the same inputs writes
nothing new: keys already stored are skipped.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regionrank.storage.codecs import CAPTION_EMBEDDINGS, IMAGE_EMBEDDINGS, REGIONS, Codec
from regionrank.storage.fs import Location, resolve_location
from regionrank.storage.locks import StoreLockedError
from regionrank.storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord, RegionRecord
from regionrank.storage.schema import read_schema_meta
from regionrank.storage.writer import WRITER_OWNER, ShardWriter

__all__ = [
    "CaptionEmbeddingStore",
    "CorruptShardError",
    "ImageEmbeddingStore",
    "RegionStore",
    "ShardStore",
    "ShardWriter",
    "StoreLockedError",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

CATALOG_FILE = "_catalog.parquet"
_CATALOG_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("producer", pa.string()),
    ]
)


class CorruptShardError(ValueError):
    """A published shard cannot be read (truncated or damaged)."""


@dataclass
class _ShardInfo:
    name: str
    row_group_starts: np.ndarray  # first row of each row group
    num_rows: int


class ShardStore(Generic[R]):
    """A folder of Parquet shards of one kind, keyed by a string id.

    Args:
        root: local folder or URI (s3://, gs://, memory://, ...); created on first write.
        codec: the shard kind (regions, image embeddings, caption embeddings).
        cache_files: how many opened shard files to keep for id lookups.
    """

    def __init__(self, root: str | os.PathLike[str] | Location, codec: Codec, *, cache_files: int = 32) -> None:
        self.location = resolve_location(root)
        self.codec = codec
        self._cache_files = cache_files
        self._files: OrderedDict[str, pq.ParquetFile] = OrderedDict()
        self._lock = threading.RLock()
        self._catalog: dict[str, tuple[int, int]] = {}
        self._producers: dict[str, str] = {}
        self._shards: list[_ShardInfo] = []
        self._dim: int | None = None
        self._corrupt: list[str] = []
        self._seen_listing: tuple[str, ...] | None = None

    # --- discovery -------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self.location.uri

    def _shard_re(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.codec.prefix)}-(\d{{5,}})\.parquet$")

    def shard_names(self) -> list[str]:
        """Published shard file names, in shard order."""
        pat = self._shard_re()
        names = [n for n in self.location.list_files() if pat.match(n)]
        return sorted(names, key=lambda n: int(pat.match(n).group(1)))  # type: ignore[union-attr]

    def _open(self, name: str) -> pq.ParquetFile:
        pf = self._files.get(name)
        if pf is not None:
            self._files.move_to_end(name)
            return pf
        path = self.location.join(name)
        try:
            if self.location.is_local:
                pf = pq.ParquetFile(path, memory_map=True)
            else:
                pf = pq.ParquetFile(self.location.fs.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptShardError(
                f"shard {path} cannot be read ({exc}); it is damaged or truncated. Delete it and re-run the "
                f"stage that wrote it: the other shards are unaffected and only its rows will be redone"
            ) from exc
        _, kind, dim = read_schema_meta(pf.schema_arrow, path)
        if kind and kind != self.codec.kind:
            raise ValueError(f"{path} holds {kind!r} shards, not {self.codec.kind!r}; point the store at the right folder")
        if dim is not None:
            if self._dim is not None and dim != self._dim:
                raise ValueError(
                    f"{path} has vector width {dim} but the store's other shards have {self._dim}; "
                    f"one store holds one width: move it to its own folder"
                )
            self._dim = dim
        self._files[name] = pf
        while len(self._files) > self._cache_files:
            self._files.popitem(last=False)
        return pf

    def refresh(self) -> None:
        """Bring the catalog up to date with the published shards (cheap when nothing changed)."""
        with self._lock:
            names = tuple(self.shard_names())
            if names == self._seen_listing:
                return
            cached = self._read_catalog_file()
            keys: list[str] = []
            shards_col: list[str] = []
            rows: list[int] = []
            producers: list[str] = []
            self._shards, self._corrupt = [], []
            self._catalog, self._producers = {}, {}
            dirty = False
            for name in names:
                try:
                    pf = self._open(name)
                except CorruptShardError as exc:
                    log.warning("%s", exc)
                    self._corrupt.append(name)
                    dirty = True
                    continue
                md = pf.metadata
                sizes = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], dtype=np.int64)
                starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else np.zeros(0, np.int64)
                shard_idx = len(self._shards)
                self._shards.append(_ShardInfo(name, starts, int(md.num_rows)))
                if name in cached:
                    k, p = cached[name]
                else:
                    t = pf.read(columns=[self.codec.key, self.codec.producer_column])
                    k = t.column(0).to_pylist()
                    p = t.column(1).to_pylist()
                    dirty = True
                for row, (key, prod) in enumerate(zip(k, p)):
                    self._catalog.setdefault(key, (shard_idx, row))
                    self._producers.setdefault(key, prod or "")
                keys.extend(k)
                producers.extend(p)
                shards_col.extend([name] * len(k))
                rows.extend(range(len(k)))
            if set(cached) - set(names):
                dirty = True
            if dirty and names:
                self._write_catalog_file(keys, shards_col, rows, producers)
            self._seen_listing = names

    def _read_catalog_file(self) -> dict[str, tuple[list[str], list[str]]]:
        path = self.location.join(CATALOG_FILE)
        if not self.location.exists(path):
            return {}
        try:
            if self.location.is_local:
                t = pq.read_table(path)
            else:
                t = pq.read_table(path, filesystem=self.location.fs)
        except (pa.ArrowInvalid, OSError) as exc:
            log.warning("catalog %s unreadable (%s); rebuilding it from the shards", path, exc)
            return {}
        out: dict[str, tuple[list[str], list[str]]] = {}
        for key, shard, prod in zip(t.column("key").to_pylist(), t.column("shard").to_pylist(), t.column("producer").to_pylist()):
            ks, ps = out.setdefault(shard, ([], []))
            ks.append(key)
            ps.append(prod)
        return out

    def _write_catalog_file(self, keys: list[str], shards: list[str], rows: list[int], producers: list[str]) -> None:
        table = pa.table(
            {"key": keys, "shard": shards, "row": pa.array(rows, pa.int32()), "producer": producers}, schema=_CATALOG_SCHEMA
        )
        final = self.location.join(CATALOG_FILE)
        tmp = self.location.join(f"{CATALOG_FILE}.{uuid.uuid4().hex[:8]}.{WRITER_OWNER}.tmp")
        try:
            self.location.makedirs()
            pq.write_table(table, tmp, filesystem=self.location.fs, compression="zstd")
            self.location.publish(tmp, final)
        except OSError as exc:  # the catalog is a cache: a read-only store still works
            log.warning("could not write catalog %s (%s); it will be rebuilt next time", final, exc)

    # --- queries ---------------------------------------------------------------------------

    @property
    def corrupt_shards(self) -> list[str]:
        """Published shards that could not be read (skipped; their keys count as missing)."""
        self.refresh()
        return list(self._corrupt)

    def __len__(self) -> int:
        self.refresh()
        return len(self._catalog)

    def __contains__(self, key: object) -> bool:
        self.refresh()
        return key in self._catalog

    def ids(self) -> list[str]:
        """All stored keys, in shard order."""
        self.refresh()
        return list(self._catalog)

    @property
    def dim(self) -> int | None:
        """Vector width of the store (features D or embedding E); ``None`` while empty."""
        self.refresh()
        return self._dim

    def producer_of(self, key: str) -> str:
        """The config/encoder hash that produced ``key``."""
        self.refresh()
        return self._producers[key]

    def missing(self, keys: Iterable[str], *, producer: str | None = None) -> list[str]:
        """Keys not stored yet (input order kept, duplicates dropped).

        Args:
            keys: candidate keys.
            producer: when given, keys stored by a different producer hash also count as missing.
        """
        self.refresh()
        out, seen = [], set()
        for k in keys:
            if k in seen:
                continue
            seen.add(k)
            if k not in self._catalog or (producer is not None and self._producers.get(k) != producer):
                out.append(k)
        return out

    def locate(self, key: str) -> tuple[str, int]:
        """Return ``(shard file name, row)`` of ``key``."""
        self.refresh()
        shard_idx, row = self._catalog[key]
        return self._shards[shard_idx].name, row

    def get(self, keys: Sequence[str]) -> list[R]:
        """Fetch records by key, in the given order, reading only the row groups that hold them.

        Raises:
            KeyError: some keys are not stored (the message lists up to 5 of them).
        """
        out: list[Any] = [None] * len(keys)
        for table, placed in self._row_groups(keys, None):
            decoded = self._decode_table(table)  # decode the (small) row groups whole: cheaper than a take
            for pos, local in placed:
                out[pos] = decoded[local]
        return out

    def read_rows(self, keys: Sequence[str], *, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of ``keys`` (in that order) as an Arrow table, reading only ``columns`` of the
        row groups that hold them: cheap when only small columns are needed (``num_regions``, ...).

        Raises:
            KeyError: some keys are not stored (the message lists up to 5 of them).
        """
        parts, order = [], []
        for table, placed in self._row_groups(keys, columns):
            parts.append(table.take(pa.array([local for _, local in placed], pa.int64())))
            order.extend(pos for pos, _ in placed)
        schema = self.codec.schema if not columns else pa.schema([self.codec.schema.field(c) for c in columns])
        if not parts:
            return schema.empty_table()
        table = pa.concat_tables(parts)
        return table.take(pa.array(np.argsort(np.array(order), kind="stable"), pa.int64()))

    def _row_groups(self, keys: Sequence[str], columns: Sequence[str] | None) -> Iterator[tuple[pa.Table, list[tuple[int, int]]]]:
        """Per shard holding some of ``keys``: its needed row groups (``columns`` only), and for each
        key its position in ``keys`` and its row in that table."""
        self.refresh()
        unknown = [k for k in keys if k not in self._catalog]
        if unknown:
            raise KeyError(
                f"{len(unknown)} {self.codec.key}(s) not in store {self.root}: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; run the stage that writes them first"
            )
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, k in enumerate(keys):
            s, r = self._catalog[k]
            by_shard.setdefault(s, []).append((pos, r))
        with self._lock:
            for s, items in by_shard.items():
                info = self._shards[s]
                pf = self._open(info.name)
                rows = np.array([r for _, r in items])
                rgs = np.searchsorted(info.row_group_starts, rows, side="right") - 1
                wanted = sorted(set(rgs.tolist()))
                table = pf.read_row_groups(wanted, columns=list(columns) if columns else None)
                base, acc = {}, 0
                for rg in wanted:
                    base[rg] = acc
                    acc += pf.metadata.row_group(rg).num_rows
                yield table, [(pos, base[rg] + (r - int(info.row_group_starts[rg])))
                              for (pos, _), r, rg in zip(items, rows.tolist(), rgs.tolist())]

    def _decode_table(self, table: pa.Table) -> list[R]:
        dim = self._dim or 1
        recs: list[Any] = []
        for batch in table.combine_chunks().to_batches():
            recs.extend(self.codec.decode(batch, dim))
        return recs

    def iter_batches(self, *, columns: Sequence[str] | None = None, batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream record batches from every shard, reading only ``columns``."""
        self.refresh()
        for info in list(self._shards):
            pf = self._open(info.name)
            yield from pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)

    def iter_records(self, *, batch_size: int = 256) -> Iterator[R]:
        """Stream every record, shard by shard (first occurrence of each key only)."""
        self.refresh()
        dim = self._dim or 1
        for s, info in enumerate(list(self._shards)):
            pf = self._open(info.name)
            row = 0
            for batch in pf.iter_batches(batch_size=batch_size):
                keys = batch.column(self.codec.key).to_pylist()
                recs = self.codec.decode(batch, dim)
                for i, rec in enumerate(recs):
                    if self._catalog.get(keys[i]) == (s, row + i):
                        yield rec
                row += batch.num_rows

    def failures(self) -> list[dict[str, Any]]:
        """Inputs recorded as unprocessable, latest reason per uri."""
        latest: dict[str, dict[str, Any]] = {}
        for name in self.location.list_files():
            if not (name.startswith("failures-") and name.endswith(".parquet")):
                continue
            try:
                t = pq.read_table(self.location.join(name), filesystem=self.location.fs)
            except (pa.ArrowInvalid, OSError) as exc:
                log.warning("failure table %s unreadable: %s", name, exc)
                continue
            for row in t.to_pylist():
                latest[row["uri"]] = row
        return sorted(latest.values(), key=lambda r: (r["recorded_at"], r["uri"]))

    def writer(self, *, dim: int, rows_per_shard: int = 256, row_group_bytes: int = 128 << 10,
               lock_timeout: float = 60.0, **provenance: str) -> ShardWriter[R]:
        """Open a :class:`ShardWriter` on this store (use as a context manager)."""
        return ShardWriter(self, dim=dim, rows_per_shard=rows_per_shard, row_group_bytes=row_group_bytes,
                           lock_timeout=lock_timeout, provenance=provenance)


class RegionStore(ShardStore[RegionRecord]):
    """Region feature shards (``regions-NNNNN.parquet``): one row per image."""

    def __init__(self, root: str | os.PathLike[str] | Location, **kw: Any) -> None:
        super().__init__(root, REGIONS, **kw)

    @property
    def feature_dim(self) -> int | None:
        return self.dim

    def writer(self, *, detector: str, config_hash: str, weights_hash: str, feature_dim: int,  # type: ignore[override]
               rows_per_shard: int = 256, row_group_bytes: int = 128 << 10, lock_timeout: float = 60.0) -> ShardWriter[RegionRecord]:
        """Open a writer; ``detector``/``config_hash``/``weights_hash`` fill each record's provenance."""
        return super().writer(dim=feature_dim, rows_per_shard=rows_per_shard, row_group_bytes=row_group_bytes,
                              lock_timeout=lock_timeout, detector=detector, config_hash=config_hash, weights_hash=weights_hash)


class ImageEmbeddingStore(ShardStore[ImageEmbeddingRecord]):
    """Image embedding shards (``images-NNNNN.parquet``): region embeddings + global vector per image."""

    def __init__(self, root: str | os.PathLike[str] | Location, **kw: Any) -> None:
        super().__init__(root, IMAGE_EMBEDDINGS, **kw)

    @property
    def embed_dim(self) -> int | None:
        return self.dim

    def writer(self, *, encoder: str, encoder_hash: str, embed_dim: int, rows_per_shard: int = 512,  # type: ignore[override]
               row_group_bytes: int = 128 << 10, lock_timeout: float = 60.0) -> ShardWriter[ImageEmbeddingRecord]:
        return super().writer(dim=embed_dim, rows_per_shard=rows_per_shard, row_group_bytes=row_group_bytes,
                              lock_timeout=lock_timeout, encoder=encoder, encoder_hash=encoder_hash)


class CaptionEmbeddingStore(ShardStore[CaptionEmbeddingRecord]):
    """Caption embedding shards (``captions-NNNNN.parquet``): word embeddings + global vector per caption."""

    def __init__(self, root: str | os.PathLike[str] | Location, **kw: Any) -> None:
        super().__init__(root, CAPTION_EMBEDDINGS, **kw)

    @property
    def embed_dim(self) -> int | None:
        return self.dim

    def writer(self, *, encoder: str, encoder_hash: str, embed_dim: int, rows_per_shard: int = 2048,  # type: ignore[override]
               row_group_bytes: int = 128 << 10, lock_timeout: float = 60.0) -> ShardWriter[CaptionEmbeddingRecord]:
        return super().writer(dim=embed_dim, rows_per_shard=rows_per_shard, row_group_bytes=row_group_bytes,
                              lock_timeout=lock_timeout, encoder=encoder, encoder_hash=encoder_hash)

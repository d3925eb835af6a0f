"""The shard writer: records appended to a store as new Parquet shards, atomically.

Rows stream one row group at a time into ``<prefix>-NNNNN.parquet.<host>-<pid>.tmp``; a full shard (or
the last one, at close or on an exception) is published by renaming it, so a reader never sees a partial
shard and a crash loses at most the rows of the shard in progress. Inputs that could not be processed go
to ``failures-*.parquet``. :class:`regionrank.storage.shards.ShardStore` opens writers (``store.writer``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from regionrank.storage.locks import FileLock
from regionrank.storage.schema import FAILURE_SCHEMA, with_meta

if TYPE_CHECKING:
    from regionrank.storage.shards import ShardStore

__all__ = ["LOCK_FILE", "WRITER_OWNER", "ShardWriter", "WriteStats", "final_shard_name", "tmp_owner_is_dead"]

log = logging.getLogger(__name__)

R = TypeVar("R")

LOCK_FILE = ".write.lock"
WRITER_HOST = socket.gethostname().replace(".", "_")
WRITER_OWNER = f"{WRITER_HOST}-{os.getpid()}"


def final_shard_name(name: str) -> str:
    """``regions-00005.parquet.host-123.tmp`` -> ``regions-00005.parquet`` (other names unchanged)."""
    return name.split(".parquet", 1)[0] + ".parquet" if name.endswith(".tmp") and ".parquet" in name else name


def tmp_owner_is_dead(name: str) -> bool:
    """Is a temporary file stale? Yes when it names no ``<host>-<pid>`` owner, or its owner was a
    process on this host that is gone; other hosts' temporaries are never touched."""
    owner = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
    host, _, pid = owner.rpartition("-")
    if not host or not pid.isdigit():
        return True
    if host != WRITER_HOST:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False



@dataclass
class WriteStats:
    """What one writer session did."""

    written: int = 0
    skipped_existing: int = 0
    failures: int = 0
    shards: list[str] = field(default_factory=list)


class ShardWriter(Generic[R]):
    """Append records to a store as new shards, atomically.

    Streams one row group at a time (about ``row_group_bytes`` each, so a lookup by id
    reads little) into ``<prefix>-NNNNN.parquet.tmp`` and renames it to its final name
    once ``rows_per_shard`` rows are in (or at close). On an exception (Ctrl-C included)
    the completed rows are still published, so a re-run resumes after them.

    Several writers may append to one local store at once (mapped tasks, Dask workers): each
    reserves its shard numbers under a short lock (waiting up to ``lock_timeout`` seconds, then
    :class:`StoreLockedError`) by creating ``<prefix>-NNNNN.parquet.<host>-<pid>.tmp``; leftovers
    of dead writers on this host are removed when a writer opens. Callers give concurrent writers
    disjoint inputs (the flows partition them); were a key written twice, readers use its first
    shard. Stores behind other filesystems (s3://, ...) take one writer at a time.
    """

    def __init__(self, store: "ShardStore[R]", *, dim: int, rows_per_shard: int, row_group_bytes: int,
                 lock_timeout: float, provenance: dict[str, str]) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive vector width; got {dim}")
        if rows_per_shard <= 0:
            raise ValueError(f"rows_per_shard must be positive; got {rows_per_shard}")
        self.store, self.dim = store, int(dim)
        self.rows_per_shard, self.row_group_bytes = rows_per_shard, row_group_bytes
        self.provenance = {k: v for k, v in provenance.items() if v is not None}
        self.stats = WriteStats()
        self._lock = FileLock(store.location.join(LOCK_FILE), lock_timeout) if store.location.is_local else None
        self._buffer: list[Any] = []
        self._buffer_bytes = 0
        self._session_keys: set[str] = set()
        self._pq: pq.ParquetWriter | None = None
        self._tmp: str | None = None
        self._final: str | None = None
        self._rows_in_shard = 0
        self._failures: list[dict[str, Any]] = []
        self._open = False

    def __enter__(self) -> "ShardWriter[R]":
        loc = self.store.location
        loc.makedirs()
        with self._short_lock():
            for name in loc.list_files():  # leftovers of crashed writers: never visible, safe to drop
                if name.endswith(".tmp") and tmp_owner_is_dead(name):
                    loc.fs.delete_file(loc.join(name))
        self.store._seen_listing = None
        self.store.refresh()
        if self.store._dim is not None and self.store._dim != self.dim:
            raise ValueError(
                f"store {self.store.root} holds vectors of width {self.store._dim}, the writer was opened with "
                f"dim={self.dim}; use a separate store folder for a different detector/encoder width"
            )
        self._open = True
        return self

    @contextlib.contextmanager
    def _short_lock(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def write(self, record: R) -> bool:
        """Buffer one record; return False (and write nothing) when its key is already stored.

        Raises:
            ValueError: the record's vector width differs from the writer's, or its key was
                already written in this session (a duplicate within one batch).
        """
        if not self._open:
            raise RuntimeError("ShardWriter.write called outside its `with` block")
        codec = self.store.codec
        key = codec.key_of(record)
        if key in self._session_keys:
            raise ValueError(
                f"duplicate {codec.key}={key!r} in one batch (uri={getattr(record, 'uri', '')!r}); "
                f"de-duplicate inputs before writing (identical file contents share one id)"
            )
        d = codec.dim_of(record)
        if d != self.dim:
            raise ValueError(
                f"{codec.matrix_column} of {codec.key}={key!r} has width {d}, this writer stores {self.dim}; "
                f"check the detector/encoder configuration"
            )
        if key in self.store._catalog:
            self.stats.skipped_existing += 1
            return False
        for attr, value in self.provenance.items():
            if hasattr(record, attr) and not getattr(record, attr):
                setattr(record, attr, value)
        self._session_keys.add(key)
        self._buffer.append(record)
        self._buffer_bytes += codec.nbytes_of(record)
        if self._buffer_bytes >= self.row_group_bytes or self._rows_in_shard + len(self._buffer) >= self.rows_per_shard:
            self._flush_row_group()
        return True

    def add_failure(self, uri: str, reason: str) -> None:
        """Record an input that could not be processed; it is written at close."""
        self._failures.append({"uri": str(uri), "reason": str(reason), "recorded_at": datetime.now(timezone.utc)})
        self.stats.failures += 1

    def _reserve_shard(self) -> tuple[str, str]:
        """Pick the next free shard number and create its temporary file (under the short lock)."""
        loc = self.store.location
        pat = self.store._shard_re()
        with self._short_lock():
            nums = [int(m.group(1)) for n in loc.list_files() if (m := pat.match(final_shard_name(n)))]
            final = loc.join(f"{self.store.codec.prefix}-{(max(nums) + 1) if nums else 0:05d}.parquet")
            tmp = f"{final}.{WRITER_OWNER}.tmp"
            with loc.fs.open_output_stream(tmp):
                pass
        return final, tmp

    def _flush_row_group(self) -> None:
        if not self._buffer:
            return
        loc = self.store.location
        if self._pq is None:
            self._final, self._tmp = self._reserve_shard()
            schema = with_meta(self.store.codec.schema, self.store.codec.kind, self.dim, self.provenance)
            self._pq = pq.ParquetWriter(
                self._tmp, schema, filesystem=loc.fs, compression="zstd", compression_level=3,
                use_dictionary=[self.store.codec.key, "uri", "detector", "config_hash", "weights_hash", "encoder", "encoder_hash"],
                write_statistics=[self.store.codec.key],
            )
        batch = self.store.codec.encode(self._buffer, self.dim)
        self._pq.write_batch(batch, row_group_size=batch.num_rows)
        self._rows_in_shard += batch.num_rows
        self._buffer, self._buffer_bytes = [], 0
        if self._rows_in_shard >= self.rows_per_shard:
            self._publish()

    def _publish(self) -> None:
        if self._pq is None:
            return
        self._pq.close()
        self._pq = None
        assert self._tmp is not None and self._final is not None
        self.store.location.publish(self._tmp, self._final)
        self.stats.shards.append(os.path.basename(self._final))
        self.stats.written += self._rows_in_shard
        log.debug("published %s (%d rows)", self._final, self._rows_in_shard)
        self._rows_in_shard = 0
        self._tmp = self._final = None

    def _write_failures(self) -> None:
        if not self._failures:
            return
        loc = self.store.location
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        final = loc.join(f"failures-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
        tmp = f"{final}.{WRITER_OWNER}.tmp"
        pq.write_table(pa.Table.from_pylist(self._failures, schema=FAILURE_SCHEMA), tmp, filesystem=loc.fs)
        loc.publish(tmp, final)
        self._failures = []

    def close(self) -> None:
        """Flush and publish everything buffered, write the failure table, release the lock."""
        if not self._open:
            return
        try:
            self._flush_row_group()
            self._publish()
            self._write_failures()
        finally:
            self._open = False
            if self._pq is not None:  # publishing failed half-way: never leave a visible partial shard
                try:
                    self._pq.close()
                finally:
                    self._pq = None
            self.store._seen_listing = None

"""The search service's engine: the opened index version queries run on, switched hot when a new
version is published, and the bounded pool the queries run in.

A query takes the current version when it starts and keeps it to the end (:meth:`SearchEngine.lease`);
a watcher thread notices a new ``CURRENT`` (reindex, schedule, rollback), opens and warms that version
beside the old one, then swaps it in between two queries. The old version is closed once its last query
has finished, which frees its memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar

__all__ = ["EngineBusyError", "EngineNotReadyError", "IndexVersion", "SearchEngine"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class IndexVersion(Protocol):
    """What the engine needs of an opened version (``backend.OpenedVersion`` in the service)."""

    version: int
    n_images: int

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


class EngineNotReadyError(RuntimeError):
    """No index version is loaded yet (still starting, or nothing published)."""


class EngineBusyError(RuntimeError):
    """The query queue is full."""


@dataclass
class _Slot:
    opened: Any
    active: int = 0
    retired: bool = False


@dataclass
class EngineState:
    """What ``/readyz`` and ``/metrics`` report."""

    ready: bool = False
    version: int | None = None
    n_images: int = 0
    switches: int = 0
    last_switch_s: float | None = None
    load_error: str | None = None
    retired_open: int = 0
    inflight: int = 0
    queued: int = 0
    started_at: float = field(default_factory=time.time)


class SearchEngine:
    """Opens the workspace's current index version, keeps it current, and runs queries on a bounded pool.

    Args:
        open_version: opens the current published version (returns an :class:`IndexVersion`).
        pointer: returns the index directory's current pointer (cheap; polled).
        workers: queries run at once.
        queue_limit: queries waiting for a worker before new ones are refused (:class:`EngineBusyError`).
        poll_interval: seconds between two looks at the pointer.
        worker_init: run once in each query thread and in the thread that opens versions, before any
            query (e.g. :func:`limit_query_threads`).
    """

    def __init__(self, open_version: Callable[[], Any], pointer: Callable[[], str], *, workers: int = 2,
                 queue_limit: int = 64, poll_interval: float = 0.5,
                 worker_init: Callable[[], None] | None = None) -> None:
        if workers < 1 or queue_limit < 0 or poll_interval <= 0:
            raise ValueError(f"workers must be >= 1, queue_limit >= 0, poll_interval > 0; got {workers}, {queue_limit}, {poll_interval}")
        self._open = open_version
        self._pointer = pointer
        self.workers = workers
        self.queue_limit = queue_limit
        self.poll_interval = poll_interval
        self._worker_init = worker_init
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="regionrank-query",
                                                           initializer=worker_init)
        self._lock = threading.Lock()
        self._slot: _Slot | None = None
        self._retired: list[_Slot] = []
        self._seen_pointer: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.state = EngineState()

    # lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm the current version, then watch for new ones (all in a background thread)."""
        self._watcher = threading.Thread(target=self._watch, name="regionrank-index-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching, finish queued queries, close every open version."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        self._pool.shutdown(wait=True)
        with self._lock:
            slots = [s for s in [self._slot, *self._retired] if s is not None]
            self._slot, self._retired = None, []
        for s in slots:
            s.opened.close()

    def wait_ready(self, timeout: float) -> bool:
        """Block until a version is loaded (or loading failed); True when ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.ready or self.state.load_error:
                return self.state.ready
            time.sleep(0.05)
        return self.state.ready

    def _watch(self) -> None:
        if self._worker_init is not None:  # the warm-up runs here: under the query threads' settings
            self._worker_init()
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # keep serving the old version; report why the new one did not load
                log.exception("could not open the newly published index version")
                self.state.load_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(self.poll_interval)

    def refresh(self) -> bool:
        """Switch to the published version if the pointer moved; True when it switched."""
        pointer = self._pointer()
        if pointer == self._seen_pointer or not pointer:
            return False
        t0 = time.perf_counter()
        opened = self._open()
        opened.warm_up()
        with self._lock:
            old, self._slot = self._slot, _Slot(opened)
            if old is not None:
                old.retired = True
                self._retired.append(old)
            self._seen_pointer = pointer
        st = self.state
        st.version, st.n_images, st.ready, st.load_error = opened.version, opened.n_images, True, None
        if old is not None:
            st.switches += 1
            st.last_switch_s = time.perf_counter() - t0
            log.info("switched to index version %s in %.2f s", opened.version, st.last_switch_s)
        self._release_retired()
        return True

    def _release_retired(self) -> None:
        with self._lock:
            done = [s for s in self._retired if s.active == 0]
            self._retired = [s for s in self._retired if s.active > 0]
            self.state.retired_open = len(self._retired)
        for slot in done:
            slot.opened.close()
        if done:
            del slot, done
            gc.collect()  # faiss indexes and memory maps held in reference cycles go now, not at some later collection

    # queries ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[Any]:
        """The current version, kept open until the block ends even if a newer one is switched in.

        Raises:
            EngineNotReadyError: nothing is loaded yet.
        """
        with self._lock:
            slot = self._slot
            if slot is None:
                raise EngineNotReadyError(self.state.load_error or "the service is still loading the models and the index")
            slot.active += 1
        try:
            yield slot.opened
        finally:
            with self._lock:
                slot.active -= 1
                last = slot.retired and slot.active == 0
            if last:
                self._release_retired()

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(version)`` on the query pool with a leased version.

        Raises:
            EngineBusyError: more than ``queue_limit`` queries are already waiting.
            EngineNotReadyError: nothing is loaded yet.
        """
        st = self.state
        with self._lock:
            if st.queued + st.inflight >= self.workers + self.queue_limit:
                raise EngineBusyError(f"{st.queued} queries are queued (queue limit {self.queue_limit}); retry shortly")
            st.queued += 1

        def call() -> T:
            with self._lock:
                st.queued -= 1
                st.inflight += 1
            try:
                with self.lease() as opened:
                    return fn(opened)
            finally:
                with self._lock:
                    st.inflight -= 1

        try:
            fut = self._pool.submit(call)
        except RuntimeError:
            with self._lock:
                st.queued -= 1
            raise EngineNotReadyError("the service is shutting down") from None
        return await asyncio.wrap_future(fut)


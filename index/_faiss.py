"""The one place regionrank imports faiss (optional: a missing faiss fails at first use with an
actionable error), and the GPU helpers.

Every other module of ``index`` obtains faiss through :func:`import_faiss` (public as
``regionrank.index.faiss_module``), so a missing faiss fails
with one clear message, and every GPU path is guarded on ``faiss.get_num_gpus() > 0`` (a faiss-gpu
build on a CPU-only machine returns an *empty* index from ``index_cpu_to_all_gpus``; ENVIRONMENT.md §4).
"""

from __future__ import annotations

import contextlib
import logging
import operator
from types import ModuleType
from typing import Any, Iterator

__all__ = ["available_gpus", "check_ngpu", "import_faiss", "omp_threads", "to_cpu", "to_gpus"]

logger = logging.getLogger(__name__)


try:  # faiss is optional (extras cpu / gpu): a missing one fails at first use with the install hint
    import faiss as _faiss_module
except ImportError as _exc:  # pragma: no cover - exercised only without faiss
    _faiss_module = None
    _FAISS_IMPORT_ERROR: ImportError | None = _exc
else:
    _FAISS_IMPORT_ERROR = None


def import_faiss() -> ModuleType:
    """Return the ``faiss`` module.

    Raises:
        RuntimeError: faiss is not installed, with the install command.
    """
    if _faiss_module is None:  # pragma: no cover - exercised only without faiss
        raise RuntimeError("faiss is not installed: pip install 'regionrank[cpu]' (or [gpu], never both)") from _FAISS_IMPORT_ERROR
    return _faiss_module


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the block with faiss's OpenMP thread count at ``n`` in the calling thread (OpenMP settings are
    per thread), restoring the thread's own count after."""
    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def available_gpus() -> int:
    """Number of GPUs faiss can use (0 with faiss-cpu, or with faiss-gpu on a machine without a GPU)."""
    faiss = import_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def check_ngpu(ngpu: int) -> int:
    """Check a resolved GPU count (0 = CPU, n = n GPUs) against the GPUs faiss sees; return it.

    Library code takes resolved counts only: ``"auto"`` / ``-1`` are resolved in ``flows/device.py``
    (``resolve_faiss_gpus``), from :func:`available_gpus`.

    Raises:
        ValueError: ``ngpu`` is not a count >= 0 (``-1`` / ``"auto"`` included), or asks for more GPUs than
            faiss sees.
    """
    try:
        n = operator.index(ngpu)
    except TypeError:
        n = -1
    if isinstance(ngpu, bool) or n < 0:
        raise ValueError(
            f"ngpu must be a resolved GPU count (0 = CPU, n = n GPUs); got {ngpu!r}. For all GPUs pass "
            f"index.available_gpus() (flows resolve 'auto' / -1 with flows.device.resolve_faiss_gpus)"
        )
    if n == 0:
        return 0
    have = available_gpus()
    if n > have:
        raise ValueError(
            f"ngpu={n} GPUs requested but faiss sees {have}; pass ngpu=0 for CPU "
            f"(a GPU needs the faiss-gpu build: pip install 'regionrank[gpu]')"
        )
    return n


def to_gpus(index: Any, ngpu: int) -> Any:
    """Move ``index`` onto ``ngpu`` GPUs (replicas); return it unchanged when ``ngpu == 0``.

    Index types without a GPU implementation (HNSW, OPQ with an HNSW coarse quantiser, ...) stay on
    the CPU, with a log line saying so.
    """
    if ngpu <= 0:
        return index
    faiss = import_faiss()
    if available_gpus() <= 0:  # never call the GPU functions without a GPU (they return an empty index)
        return index
    try:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = False
        return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=ngpu)
    except (RuntimeError, AttributeError) as exc:
        logger.info("index type %s has no GPU implementation; it stays on the CPU (%s)", type(index).__name__, exc)
        return index


def to_cpu(index: Any) -> Any:
    """Copy a GPU index back to the CPU (identity for a CPU index)."""
    faiss = import_faiss()
    if available_gpus() <= 0:
        return index
    try:
        return faiss.index_gpu_to_cpu(index)
    except (RuntimeError, AttributeError):
        return index

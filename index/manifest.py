"""The JSON manifest of one published index version: what was built, from what, how it was tuned,
what it measured, what happened to it since (adds, removals, rebuilds), and the size and sha256 of every
file it holds (checked when it is opened, ``index.integrity``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_VERSION", "FileChecksum", "IndexInfo", "Manifest"]

FORMAT_VERSION = 1


@dataclass
class IndexInfo:
    """One faiss index of a version.

    Attributes:
        kind: ``"global"`` (one vector per item), ``"region"`` (image regions) or ``"word"`` (caption words).
        spec: the index key (``str(IndexSpec)``), parsed again with ``IndexSpec.parse``.
        file: file name inside the version directory.
        dim / n_vectors: dimension and stored vectors (tombstoned HNSW vectors excluded).
        n_at_train: vectors present when the quantiser was trained (growth is measured against it).
        train_size: vectors the quantiser was trained on (0 for Flat/HNSW).
        search_param / search_value: ``"nprobe"`` / ``"efSearch"`` and the tuned value (``None`` for Flat).
        k / target_recall: the tuning objective (recall@k against exact search).
        measured_recall: recall@k on the held-out probe queries when tuned.
        current_recall: recall@k on the probe after the latest add/remove (drift detection).
        target_met: whether ``measured_recall >= target_recall``.
        memory_bytes: serialised size of the index; estimated_memory_bytes: the model used to choose it.
        memory_budget: the budget the choice was made under, in bytes.
        build_s / tune_s: wall-clock seconds of train+add and of tuning.
        tombstones: removed-but-stored vectors (HNSW only).
        tried: recall measured per probed parameter value during tuning.
        chosen_by: ``"auto"`` or ``"user"``.
        tuned_on: ``"data"`` (held-out database vectors, leave-one-out) or ``"<n> given queries"``.
        tune_queries: probe queries tuned on (more for targets close to 1, ``index.tuning.tune_queries_needed``).
        recall_lower: the 95 % lower confidence bound of ``measured_recall`` (``index.tuning.recall_lower_bound``).
        certified: whether ``recall_lower >= target_recall`` (else the point estimate decided).
        predicted: recall per grid value computed without searching (IVF,Flat; ``tried`` holds what was searched).
        truth: what recall is measured against: ``"exact"`` (exact search over the vectors) or ``"codes"``
            (exact search over the index's own decoded codes: a compressed region index, whose first
            stage scores the codes, is tuned to find what exhaustive search of its codes finds).
    """

    kind: str
    spec: str
    file: str
    dim: int
    n_vectors: int
    n_at_train: int
    train_size: int
    search_param: str | None
    search_value: int | None
    k: int
    target_recall: float
    measured_recall: float
    current_recall: float
    target_met: bool
    memory_bytes: int
    estimated_memory_bytes: int
    memory_budget: int
    build_s: float
    tune_s: float
    tombstones: int = 0
    tried: dict[str, float] = field(default_factory=dict)
    chosen_by: str = "auto"
    tuned_on: str = "data"
    tune_queries: int = 0
    recall_lower: float = float("nan")
    certified: bool = False
    predicted: dict[str, float] = field(default_factory=dict)
    truth: str = "exact"


@dataclass(frozen=True)
class FileChecksum:
    """Size and content hash of one file of a version, recorded when the version is published.

    Attributes:
        size: bytes.
        sha256: hex digest of the file's bytes.
    """

    size: int
    sha256: str


@dataclass
class Manifest:
    """Everything a reader or a later incremental update needs to know about one version.

    Attributes:
        version: the version number (directory ``versions/v{version:06d}``).
        corpus: ``"images"`` or ``"captions"``.
        source: the embedding store the vectors came from (its root).
        embed_dim: embedding dimension.
        n_items: images (or captions) indexed.
        indexes: ``kind -> IndexInfo``.
        build: the build parameters, reused by rebuilds (kind, memory_budget, target_recall, k, seed,
            growth_factor, drift_tolerance, max_tombstone_fraction, specs).
        rebuild_due: why a rebuild is due (``None`` when not); set when ``auto_rebuild`` was off.
        parent_version: the version this one was derived from (``None`` for a fresh build).
        history: one line per operation since the last full build (``"build"``, ``"add 12"``, ...).
        encoder / encoder_hash: provenance of the embeddings, when the store records it.
        files: ``relative path -> FileChecksum`` of every file of the version but ``manifest.json``;
            empty for versions published before checksums were recorded.
        region_layout: how re-scoring reads region vectors: ``"float16"`` (the region matrix) or
            ``"codes"`` (the region index's PQ codes; float16 vectors only for the final candidates),
            see ``index.spec.choose_region_layout``.
        bytes_per_region: bytes on disk per indexed region, by part: ``"region_index"``, ``"codes"``,
            ``"global_index"`` (per image, spread over its regions), ``"float16_matrix"`` (vectors and
            boxes), and ``"search"``, what the search reads for every query's candidates: the indexes plus
            the codes (compressed layout) or the float16 matrix (float16 layout). Empty for captions.
        sharded: how a sharded build ran (``index.shards``): ``tasks``, ``shard_vectors``, ``merge``, the
            largest ``task_bytes_bound`` (the formula of :func:`index.shards.shard_task_bytes`), the largest
            ``worker_peak_rss_bytes`` measured, and the wall ``seconds`` of its phases (``sample``, ``train``,
            ``add``, ``merge``; ``build_s`` of its indexes is their sum); empty for a build in one process.
    """

    version: int
    corpus: str
    source: str
    embed_dim: int
    n_items: int
    indexes: dict[str, IndexInfo]
    build: dict[str, Any]
    created_at: str
    rebuild_due: str | None = None
    parent_version: int | None = None
    history: list[str] = field(default_factory=list)
    encoder: str = ""
    encoder_hash: str = ""
    files: dict[str, FileChecksum] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    region_layout: str = "float16"
    bytes_per_region: dict[str, float] = field(default_factory=dict)
    sharded: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"index manifest format {data.get('format_version')!r} is not supported (expected {FORMAT_VERSION}); "
                f"rebuild the index with this version of regionrank"
            )
        data["indexes"] = {k: IndexInfo(**v) for k, v in data["indexes"].items()}
        data["files"] = {k: FileChecksum(**v) for k, v in data.get("files", {}).items()}
        return cls(**data)

    def write(self, directory: Path) -> None:
        Path(directory, "manifest.json").write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = Path(directory, "manifest.json")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; {directory} is not a published index version")
        return cls.from_json(path.read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} into an index manifest")

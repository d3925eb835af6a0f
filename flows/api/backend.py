"""The search service's one door into the library: an opened index version of a workspace.

Every call into ``regionrank.index`` and ``flows.components`` the service makes is here, so that a
change of the search API (``SearchParams``) touches this module only: :func:`search_options` maps
the request's ``k`` / ``rerank_k`` / ``fusion`` onto today's arguments.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionrank.flows.config import SearchConfig, Workspace

__all__ = ["ImageInfo", "OpenedVersion", "current_version", "hit_json", "search_options"]

log = logging.getLogger(__name__)

_MAX_SEARCHERS = 4  # distinct (rerank_k, fusion) settings kept open per version
_WARMUP_QUERY = "a photo of a person"


def current_version(index_dir: Path) -> str:
    """The index's current version as a pointer token (``"v000003"``; ``""`` before the first publication),
    read by the index's own reader of ``CURRENT`` (:meth:`regionrank.index.VersionedDir.current`): one
    small read, cheap enough to poll."""
    from regionrank.index.version import VersionedDir

    n = VersionedDir(index_dir).current()
    return "" if n is None else f"v{n:06d}"


def search_options(rerank_k: int | None, fusion: str | None, default: SearchConfig) -> SearchConfig:
    """The request's search options over the service's defaults (``SearchParams`` validates them)."""
    updates: dict[str, Any] = {}
    if rerank_k is not None:
        updates["rerank_k"] = rerank_k
    if fusion is not None:
        updates["fusion"] = fusion
    return default.model_copy(update={"params": dataclasses.replace(default.params, **updates)})


@dataclass(frozen=True)
class ImageInfo:
    """What the service may show of one indexed image: never a path taken from a request."""

    image_id: str
    uri: str
    width: int
    height: int
    labels: tuple[str, ...] | None

    @property
    def local_path(self) -> Path | None:
        """The image file when its uri is a local path that exists."""
        uri = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
        if "://" in uri:
            return None
        p = Path(uri)
        return p if p.is_file() else None


_INFO_COLUMNS = ("image_id", "uri", "width", "height", "labels")
_INFO_CACHE_SIZE = 65536


class _ImageInfoCache:
    """What the service shows of indexed images, read in one column-pruned batch per query (the image
    id, uri, size and region labels, never the embeddings) and kept in a bounded LRU table. Image ids
    are content hashes: what is stored under one never changes, so the table is shared by versions."""

    def __init__(self, maxsize: int = _INFO_CACHE_SIZE) -> None:
        self.maxsize = maxsize
        self._table: collections.OrderedDict[tuple[str, str], ImageInfo] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._stores: dict[str, Any] = {}  # one opened store per folder: its catalog is read once, then refreshed
        self._read_lock = threading.Lock()

    def get_many(self, embeddings: str, image_ids: list[str]) -> dict[str, ImageInfo]:
        out: dict[str, ImageInfo] = {}
        with self._lock:
            for i in image_ids:
                info = self._table.get((embeddings, i))
                if info is not None:
                    self._table.move_to_end((embeddings, i))
                    out[i] = info
        missing = list(dict.fromkeys(i for i in image_ids if i not in out))
        if missing:
            from regionrank.storage import ImageEmbeddingStore

            with self._read_lock:
                store = self._stores.get(embeddings)
                if store is None:
                    store = self._stores[embeddings] = ImageEmbeddingStore(embeddings)
                present = [i for i in missing if i in store]
                rows = store.read_rows(present, columns=list(_INFO_COLUMNS)).to_pylist() if present else []
            with self._lock:
                for r in rows:
                    info = ImageInfo(r["image_id"], r["uri"] or "", int(r["width"] or 0), int(r["height"] or 0),
                                     tuple(r["labels"]) if r["labels"] else None)
                    out[info.image_id] = self._table[(embeddings, info.image_id)] = info
                while len(self._table) > self.maxsize:
                    self._table.popitem(last=False)
        return out


_INFOS = _ImageInfoCache()


def _num(x: float) -> float | None:
    return float(x) if x == x and abs(x) != float("inf") else None


def hit_json(hit: Any, info: ImageInfo | None) -> dict[str, Any]:
    """A :class:`regionrank.index.SearchHit` as the service's JSON object (non-finite scores become null)."""
    labels = info.labels if info else None
    return {
        "image_id": hit.image_id, "uri": hit.uri, "score": _num(hit.score),
        "stage_scores": {k: _num(v) for k, v in hit.stage_scores.items()},
        "width": int(hit.width or (info.width if info else 0)), "height": int(hit.height or (info.height if info else 0)),
        "explanation": [
            {"word": e.token, "region": e.region, "box": list(e.box) if e.box is not None else None,
             "label": labels[e.region] if labels and 0 <= e.region < len(labels) else None,
             "weight": _num(e.weight), "similarity": _num(e.similarity)}
            for e in hit.explanation
        ],
    }


class OpenedVersion:
    """One published index version of a workspace with its models, opened once and shared by queries.

    Args:
        ws: the workspace.
        default: the search options used when a request gives none (and for the warm-up).
    """

    def __init__(self, ws: Workspace, default: SearchConfig) -> None:
        from regionrank.flows.settings import load_workspace_config

        self.ws = ws
        self.default = default
        extract, self._encode, _ = load_workspace_config(ws)
        self._detector = extract.detector
        self._lock = threading.Lock()  # the searcher table, and the text encoder (tokenizers are not thread-safe)
        first = self._make(default, None)
        self.version: int = int(first.handle.version)
        self.n_images: int = len(first.handle.idmap)
        self._idmap = first.handle.idmap
        self._searchers: dict[tuple[int, str], Any] = {(default.params.rerank_k, default.params.fusion): first}
        self._caption_handle: Any = None
        if current_version(ws.caption_index_dir):
            from regionrank.index import open_index

            self._caption_handle = open_index(ws.caption_index_dir)

    def _make(self, cfg: SearchConfig, version: int | None) -> Any:
        from regionrank.flows.components import make_searcher

        return make_searcher(self.ws, self._encode, self._detector, cfg, version=version)

    def _searcher(self, cfg: SearchConfig) -> Any:
        key = (cfg.params.rerank_k, cfg.params.fusion)
        with self._lock:
            s = self._searchers.get(key)
            if s is None:
                if len(self._searchers) >= _MAX_SEARCHERS:  # drop the oldest non-default one
                    del self._searchers[next(k for k in self._searchers if k != (self.default.params.rerank_k, self.default.params.fusion))]
                s = self._searchers[key] = self._make(cfg, self.version)
            return s

    def _encode_query(self, searcher: Any, text: str) -> Any:
        with self._lock:
            return searcher.query_encoder.encode_query(text)

    @property
    def has_captions(self) -> bool:
        return self._caption_handle is not None

    def warm_up(self) -> None:
        """One query through every stage, so that the first real query is as fast as the rest."""
        self.search(_WARMUP_QUERY, 1, self.default)

    def search(self, text: str, k: int, cfg: SearchConfig) -> list[dict[str, Any]]:
        """Text-to-image search; hits as JSON objects (:func:`hit_json`)."""
        searcher = self._searcher(cfg)
        hits = searcher.search_embedding(self._encode_query(searcher, text), k)
        infos = _INFOS.get_many(str(self.ws.image_embeddings), [h.image_id for h in hits])
        return [hit_json(h, infos.get(h.image_id)) for h in hits]

    def image(self, image_id: str) -> ImageInfo | None:
        """An indexed image of this version, or ``None`` (not indexed, or removed)."""
        if image_id not in self._idmap:
            return None
        return _INFOS.get_many(str(self.ws.image_embeddings), [image_id]).get(image_id)

    def explain_png(self, image_id: str, text: str) -> bytes:
        """The per-word heatmap of ``text`` on one indexed image, as PNG bytes.

        Raises:
            KeyError: the image is not indexed; FileNotFoundError: its file is not readable here.
        """
        from regionrank.index import exhaustive_search, render_heatmap
        from regionrank.storage import ImageEmbeddingStore

        info = self.image(image_id)
        if info is None:
            raise KeyError(image_id)
        if info.local_path is None:
            raise FileNotFoundError(f"the file of image {image_id} ({info.uri}) is not readable by the service")
        searcher = self._searcher(self.default)
        query = self._encode_query(searcher, text)
        records = ImageEmbeddingStore(self.ws.image_embeddings).get([image_id])
        (hit,) = exhaustive_search(query, records, searcher.reranker, 1, fusion=searcher.params.fusion,
                                   fusion_weight=searcher.params.fusion_weight)
        buf = io.BytesIO()
        render_heatmap(info.local_path, hit).save(buf, format="PNG")
        return buf.getvalue()

    def captions(self, image_id: str, k: int) -> list[dict[str, Any]]:
        """Image-to-text: the best captions of an indexed image (needs a caption index).

        Raises:
            KeyError: the image is not indexed; ValueError: the workspace has no caption index.
        """
        from regionrank.index import caption_search
        from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore

        if self._caption_handle is None:
            raise ValueError("this workspace has no caption index (build one with `regionrank index` over captions)")
        if self.image(image_id) is None:
            raise KeyError(image_id)
        (image,) = ImageEmbeddingStore(self.ws.image_embeddings).get([image_id])
        hits = caption_search(image, self._caption_handle, CaptionEmbeddingStore(self.ws.caption_embeddings), k)
        return [{"caption_id": h.caption_id, "image_id": h.image_id, "text": h.text, "score": _num(h.score),
                 "stage_scores": {n: _num(v) for n, v in h.stage_scores.items()}} for h in hits]

    def close(self) -> None:
        """Drop the searchers (their indexes and memory maps go with the last reference)."""
        with self._lock:
            self._searchers.clear()
        self._caption_handle = None

"""Stable int64 ids for image ids (content hashes), and region ids derived from them.

An image keeps its int id forever (removal only marks it dead; re-adding revives the same id), so
ids stored inside faiss indexes never need rewriting. A region id packs the image's int id and the
region's slot: ``region_id = (image_int << SLOT_BITS) | slot``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["MAX_REGIONS", "SLOT_BITS", "IdMap"]

SLOT_BITS = 12
MAX_REGIONS = 1 << SLOT_BITS  # 4096 regions per image


class IdMap:
    """The persisted mapping image_id (str) <-> int64, with liveness and region counts.

    Attributes:
        image_ids: ``list[str]``; position = int id.
        alive: ``bool[N]`` whether the image is currently indexed.
        n_regions: ``int32[N]`` regions indexed for the image (0 when it has no region vectors).
    """

    def __init__(self, image_ids: Sequence[str] = (), alive: np.ndarray | None = None, n_regions: np.ndarray | None = None) -> None:
        self.image_ids: list[str] = list(image_ids)
        n = len(self.image_ids)
        self.alive = np.ones(n, dtype=bool) if alive is None else np.asarray(alive, dtype=bool).copy()
        self.n_regions = np.zeros(n, dtype=np.int32) if n_regions is None else np.asarray(n_regions, dtype=np.int32).copy()
        self._pos = {s: i for i, s in enumerate(self.image_ids)}
        if len(self._pos) != n:
            raise ValueError("image ids in an id map must be unique; the stored id map is corrupt")

    def __len__(self) -> int:
        return int(self.alive.sum())

    def __contains__(self, image_id: object) -> bool:
        i = self._pos.get(image_id)  # type: ignore[arg-type]
        return i is not None and bool(self.alive[i])

    def alive_ids(self) -> list[str]:
        """The image ids currently indexed, in int-id order."""
        return [self.image_ids[i] for i in np.flatnonzero(self.alive)]

    def assign(self, image_ids: Sequence[str], n_regions: Sequence[int]) -> np.ndarray:
        """Give each image an int id (reusing a removed image's old id) and mark it alive.

        Args:
            image_ids: ids to add (must not be alive already).
            n_regions: the region count of each image (``< MAX_REGIONS``).

        Returns:
            ``int64[len(image_ids)]`` int ids.

        Raises:
            ValueError: an id is already alive, duplicated, malformed, or has too many regions.
        """
        if len(image_ids) != len(n_regions):
            raise ValueError(f"{len(image_ids)} image ids but {len(n_regions)} region counts")
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("image_ids contains duplicates; pass each image once")
        out = np.empty(len(image_ids), dtype=np.int64)
        grow_alive, grow_regions = [], []
        for j, (image_id, nr) in enumerate(zip(image_ids, n_regions, strict=True)):
            if not isinstance(image_id, str) or not image_id or "\n" in image_id:
                raise ValueError(f"image_id must be a non-empty single-line string; got {image_id!r}")
            if not 0 <= int(nr) < MAX_REGIONS:
                raise ValueError(f"image {image_id!r} has {nr} regions; at most {MAX_REGIONS - 1} can be indexed")
            i = self._pos.get(image_id)
            if i is None:
                i = len(self.image_ids)
                self.image_ids.append(image_id)
                self._pos[image_id] = i
                grow_alive.append(True)
                grow_regions.append(int(nr))
            elif self.alive[i]:
                raise ValueError(f"image {image_id!r} is already indexed (int id {i}); remove it first to replace it")
            else:
                self.alive[i] = True
                self.n_regions[i] = int(nr)
            out[j] = i
        if grow_alive:
            self.alive = np.concatenate([self.alive, np.asarray(grow_alive, dtype=bool)])
            self.n_regions = np.concatenate([self.n_regions, np.asarray(grow_regions, dtype=np.int32)])
        return out

    def lookup(self, image_ids: Iterable[str], *, alive_only: bool = True) -> np.ndarray:
        """Int ids of ``image_ids``.

        Raises:
            KeyError: an id is unknown (or not alive with ``alive_only``), naming it.
        """
        out = []
        for s in image_ids:
            i = self._pos.get(s)
            if i is None or (alive_only and not self.alive[i]):
                raise KeyError(f"image {s!r} is not in the index")
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def kill(self, int_ids: np.ndarray) -> None:
        """Mark images dead (their int ids stay reserved)."""
        self.alive[np.asarray(int_ids, dtype=np.int64)] = False

    def image_id(self, int_id: int) -> str:
        return self.image_ids[int(int_id)]

    def region_ids(self, int_ids: np.ndarray) -> np.ndarray:
        """All region ids (``int64[sum n_regions]``) of images ``int_ids``, image by image, slot order."""
        int_ids = np.asarray(int_ids, dtype=np.int64)
        return IdMap.region_ids_of(int_ids, self.n_regions[int_ids])

    @staticmethod
    def region_ids_of(int_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Region ids (``int64[sum counts]``) of images ``int_ids`` holding ``counts`` regions each, image by
        image, slot order (what :meth:`region_ids` gives once the counts are assigned)."""
        int_ids = np.asarray(int_ids, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        owners = np.repeat(int_ids, counts)
        slots = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return (owners << SLOT_BITS) | slots

    @staticmethod
    def split_region_ids(region_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(image_int int64[...], slot int64[...])`` from region ids (``-1`` stays ``-1`` in both)."""
        region_ids = np.asarray(region_ids, dtype=np.int64)
        missing = region_ids < 0
        img = np.where(missing, -1, region_ids >> SLOT_BITS)
        slot = np.where(missing, -1, region_ids & (MAX_REGIONS - 1))
        return img, slot

    def save(self, directory: Path) -> None:
        """Write ``ids.txt`` (one image id per line, line = int id) and ``idmap.npz``."""
        Path(directory, "ids.txt").write_text("".join(s + "\n" for s in self.image_ids), encoding="utf-8")
        with open(Path(directory, "idmap.npz"), "wb") as f:
            np.savez(f, alive=self.alive, n_regions=self.n_regions)

    @classmethod
    def load(cls, directory: Path) -> IdMap:
        text = Path(directory, "ids.txt").read_text(encoding="utf-8")
        ids = text.split("\n")[:-1] if text else []
        with np.load(Path(directory, "idmap.npz")) as z:
            return cls(ids, alive=z["alive"], n_regions=z["n_regions"])

    def copy(self) -> IdMap:
        return IdMap(self.image_ids, self.alive, self.n_regions)

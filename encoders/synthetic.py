"""Seeded compositional synthetic image-caption data, for proving that region-word models learn.

There is no real training corpus on the build machines. This module generates one whose structure
rewards fine-grained region-word alignment:

* every image is a set of regions; each region shows one **object** with one **attribute** (a
  colour or material) at a box position, and its feature is ``object_prototype + attr_weight ·
  attribute_prototype + noise`` (prototypes are fixed by ``prototype_seed``, so train and test sets
  drawn with different ``seed`` s share them);
* captions name objects with their attributes and spatial relations computed from the boxes
  ("a red dog left of a blue car"), 5 per image, caption ``5i + k`` belongs to image ``i``;
* with ``hard_negatives`` part of the images come in **attribute-swap twins**: the same objects at the
  same places with the attributes rotated among them. Their mean region feature is the same (up to
  noise) and their captions use the same bag of words, so a global-pooling model cannot tell a twin
  from its partner; a model that binds attributes to regions can.

Features are plain Gaussian mixtures (no ReLU sparsity like real bottom-up features); they stand in
for region features only in their compositional structure. Generation is deterministic per image
group (one ``numpy`` generator seeded with ``(seed, group)``), so :func:`iter_compositional_chunks`
yields exactly the images of :func:`make_compositional_dataset` in bounded memory, e.g. 10^5 images
× 2048-d for an index benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regionrank.storage import Caption, RegionRecord, RegionStore, external_image_id, write_caption_table

__all__ = [
    "ATTRIBUTE_NAMES",
    "OBJECT_NAMES",
    "SyntheticDataset",
    "iter_compositional_chunks",
    "binding_ceiling",
    "make_compositional_dataset",
    "twin_accuracy",
    "write_to_store",
]

OBJECT_NAMES: tuple[str, ...] = (
    "dog", "car", "cat", "horse", "bus", "boat", "chair", "table", "bird", "tree", "person", "bicycle",
    "truck", "kite", "cup", "bottle", "umbrella", "train", "sheep", "cow", "clock", "bench", "pizza", "laptop",
    "vase", "book", "bowl", "lamp", "door", "window", "sofa", "bed", "plane", "elephant", "zebra", "giraffe",
    "bear", "phone", "oven", "sink", "ball", "hat", "bag", "shoe", "kettle", "fence", "sign", "flower",
)
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "brown", "orange", "pink", "purple", "gray", "silver",
    "wooden", "striped", "metal", "golden",
)
_PREFIXES = ("a photo of", "there is", "an image with", "we see")
_DETECTOR = "synthetic-compositional"


@dataclass
class SyntheticDataset:
    """Synthetic images (sets of regions) and their captions.

    Attributes:
        region_feats: per image ``float32[R_i, feature_dim]``.
        boxes: per image ``float32[R_i, 4]`` ``(x1, y1, x2, y2)`` in pixels, inside ``[0, W] × [0, H]``.
        widths / heights: ``int64[N]`` image sizes in pixels.
        objects / attributes: per image ``int64[R_i]`` object and attribute id of every region.
        captions: ``5 N`` strings (``captions_per_image`` per image); caption ``k·i + j`` ↔ image ``i``.
        caption_regions: per caption, the indices (into its image's regions) of the regions it names, in
            mention order: the ground-truth word-region grounding.
        caption_image: ``int64[len(captions)]`` image index (local to this dataset) of each caption.
        twin: ``int64[N]`` global index of the image's attribute-swap twin, ``-1`` when it has none.
        image_ids: ``N`` ids (sha256 of the generator settings and the image's global index).
        offset: global index of the first image (non-zero for chunks).
        object_names / attribute_names: the words for object and attribute ids.
    """

    region_feats: list[np.ndarray]
    boxes: list[np.ndarray]
    widths: np.ndarray
    heights: np.ndarray
    objects: list[np.ndarray]
    attributes: list[np.ndarray]
    captions: list[str]
    caption_regions: list[tuple[int, ...]]
    caption_image: np.ndarray
    twin: np.ndarray
    image_ids: list[str]
    offset: int = 0
    object_names: tuple[str, ...] = field(default=OBJECT_NAMES)
    attribute_names: tuple[str, ...] = field(default=ATTRIBUTE_NAMES)

    def __len__(self) -> int:
        return len(self.region_feats)

    @property
    def feature_dim(self) -> int:
        return int(self.region_feats[0].shape[1]) if self.region_feats else 0

    @property
    def region_lens(self) -> np.ndarray:
        """``int64[N]`` region count per image."""
        return np.array([f.shape[0] for f in self.region_feats], dtype=np.int64)

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zero-padded arrays: ``(feats float32[N, R_max, F], boxes float32[N, R_max, 4], region_lens int64[N])``."""
        lens = self.region_lens
        r_max = int(lens.max()) if len(lens) else 0
        feats = np.zeros((len(self), r_max, self.feature_dim), dtype=np.float32)
        boxes = np.zeros((len(self), r_max, 4), dtype=np.float32)
        for i, (f, b) in enumerate(zip(self.region_feats, self.boxes, strict=True)):
            feats[i, : len(f)] = f
            boxes[i, : len(b)] = b
        return feats, boxes, lens

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """In-memory model inputs: ``(region_feats FloatTensor[N, R_max, F], region_lens LongTensor[N])``."""
        feats, _, lens = self.padded()
        return torch.from_numpy(feats).to(device), torch.from_numpy(lens).to(device)

    def twin_pairs(self) -> np.ndarray:
        """``int64[P, 2]`` local indices ``(a, b)``, ``a < b``, of the twin pairs fully inside this dataset."""
        local = self.twin - self.offset
        a = np.flatnonzero((self.twin >= 0) & (local > np.arange(len(self))) & (local < len(self)))
        return np.stack([a, local[a]], axis=1).astype(np.int64) if a.size else np.zeros((0, 2), dtype=np.int64)


def _names(base: tuple[str, ...], n: int, stem: str) -> tuple[str, ...]:
    return base[:n] if n <= len(base) else base + tuple(f"{stem}{k}" for k in range(len(base), n))


def _relation(box_a: np.ndarray, box_b: np.ndarray) -> str:
    """Spatial relation of box a to box b from their centres (image y grows downwards)."""
    dx = (box_b[0] + box_b[2] - box_a[0] - box_a[2]) / 2
    dy = (box_b[1] + box_b[3] - box_a[1] - box_a[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


class _Generator:
    def __init__(
        self, *, feature_dim: int, regions_per_image: tuple[int, int], captions_per_image: int, n_objects: int,
        n_attributes: int, seed: int, prototype_seed: int, hard_negatives: bool, hard_fraction: float,
        attr_weight: float, noise: float,
    ) -> None:
        self.feature_dim, self.regions, self.cpi = feature_dim, regions_per_image, captions_per_image
        self.seed, self.hard, self.hard_fraction = seed, hard_negatives, hard_fraction
        self.objects = _names(OBJECT_NAMES, n_objects, "object")
        self.attributes = _names(ATTRIBUTE_NAMES, n_attributes, "attribute")
        proto = np.random.default_rng([prototype_seed, 7919])
        self.obj_proto = proto.standard_normal((n_objects, feature_dim), dtype=np.float32)
        self.attr_proto = proto.standard_normal((n_attributes, feature_dim), dtype=np.float32) * np.float32(attr_weight)
        self.noise = np.float32(noise)
        settings = dict(
            f=feature_dim, r=list(regions_per_image), c=captions_per_image, o=n_objects, a=n_attributes, seed=seed,
            p=prototype_seed, h=hard_negatives, hf=hard_fraction, w=attr_weight, n=noise,
        )
        self.namespace = "synthetic-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def _caption(
        self, rng: np.random.Generator, objs: np.ndarray, attrs: np.ndarray, boxes: np.ndarray
    ) -> tuple[str, tuple[int, ...]]:
        def np_(r: int) -> str:
            return f"a {self.attributes[attrs[r]]} {self.objects[objs[r]]}"

        k = len(objs)
        kind = rng.choice(4, p=(0.5, 0.25, 0.1, 0.15)) if k >= 3 else rng.choice(3, p=(0.6, 0.3, 0.1))
        pick = [int(r) for r in rng.permutation(k)]
        if kind == 0:
            text, used = f"{np_(pick[0])} {_relation(boxes[pick[0]], boxes[pick[1]])} {np_(pick[1])}", pick[:2]
        elif kind == 1:
            text, used = f"{np_(pick[0])} and {np_(pick[1])}", pick[:2]
        elif kind == 2:
            text, used = np_(pick[0]), pick[:1]
        else:
            text, used = f"{np_(pick[0])} , {np_(pick[1])} and {np_(pick[2])}", pick[:3]
        if rng.random() < 0.3:
            text = f"{_PREFIXES[rng.integers(len(_PREFIXES))]} {text}"
        return text, tuple(used)

    def _image(
        self, rng: np.random.Generator, objs: np.ndarray, attrs: np.ndarray, boxes: np.ndarray, wh: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        feats = self.obj_proto[objs] + self.attr_proto[attrs]
        feats += self.noise * rng.standard_normal(feats.shape, dtype=np.float32)
        jitter = rng.uniform(-0.02, 0.02, size=boxes.shape) * np.array([wh[0], wh[1], wh[0], wh[1]])
        b = boxes + jitter
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, wh[0])
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, wh[1])
        caps = [self._caption(rng, objs, attrs, b) for _ in range(self.cpi)]  # (text, mentioned regions)
        return feats, b.astype(np.float32), caps

    def group(self, g: int, size: int) -> list[tuple[np.ndarray, ...]]:
        """Images ``2g`` and ``2g + 1`` (only ``2g`` when ``size == 1``), drawn from generator ``(seed, g)``."""
        rng = np.random.default_rng([self.seed, g])
        twin = self.hard and size == 2 and rng.random() < self.hard_fraction
        out = []
        for member in range(size):
            if member == 0 or not twin:
                k = int(rng.integers(self.regions[0], self.regions[1] + 1))
                objs = rng.choice(len(self.objects), size=k, replace=False)
                attrs = rng.choice(len(self.attributes), size=k, replace=False)
                w, h = int(rng.integers(320, 641)), int(rng.integers(320, 641))
                sizes = rng.uniform(0.15, 0.45, size=(k, 2)) * [w, h]
                x1 = rng.uniform(0, 1, size=k) * (w - sizes[:, 0])
                y1 = rng.uniform(0, 1, size=k) * (h - sizes[:, 1])
                boxes = np.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], axis=1)
            else:
                attrs = np.roll(attrs, 1)  # distinct attributes rotated: every region changes attribute
            feats, b, caps = self._image(rng, objs, attrs, boxes, (w, h))
            out.append((feats, b, np.array([w, h]), objs.astype(np.int64), attrs.astype(np.int64), caps, twin))
        return out

    def build(self, start: int, stop: int) -> SyntheticDataset:
        """Images ``[start, stop)`` (``start`` even)."""
        feats, boxes, sizes, objs, attrs, caps, twin = [], [], [], [], [], [], []
        mentions: list[tuple[int, ...]] = []
        for g in range(start // 2, (stop + 1) // 2):
            size = min(2, stop - 2 * g)  # the last group of an odd total holds one image
            for m, (f, b, wh, o, a, c, tw) in enumerate(self.group(g, size)):
                feats.append(f)
                boxes.append(b)
                sizes.append(wh)
                objs.append(o)
                attrs.append(a)
                caps.extend(text for text, _ in c)
                mentions.extend(used for _, used in c)
                twin.append(2 * g + (1 - m) if tw else -1)
        n = len(feats)
        wh_arr = np.array(sizes, dtype=np.int64).reshape(n, 2)
        return SyntheticDataset(
            region_feats=feats, boxes=boxes, widths=wh_arr[:, 0], heights=wh_arr[:, 1], objects=objs,
            attributes=attrs, captions=caps, caption_regions=mentions, caption_image=np.arange(n * self.cpi, dtype=np.int64) // self.cpi,
            twin=np.array(twin, dtype=np.int64), image_ids=[external_image_id(self.namespace, start + i) for i in range(n)],
            offset=start, object_names=self.objects, attribute_names=self.attributes,
        )


def _generator(
    n_images: int, *, feature_dim: int, regions_per_image: int | tuple[int, int], captions_per_image: int,
    n_objects: int, n_attributes: int, seed: int, prototype_seed: int, hard_negatives: bool, hard_fraction: float,
    attr_weight: float, noise: float,
) -> _Generator:
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1; got {n_images}")
    regions = (regions_per_image, regions_per_image) if isinstance(regions_per_image, int) else tuple(regions_per_image)
    if len(regions) != 2 or not 2 <= regions[0] <= regions[1]:
        raise ValueError(
            f"regions_per_image must be an int >= 2 or a (min, max) pair with 2 <= min <= max; got {regions_per_image!r}"
        )
    if n_objects < regions[1] or n_attributes < regions[1]:
        raise ValueError(
            f"every region of an image has a distinct object and attribute: n_objects ({n_objects}) and "
            f"n_attributes ({n_attributes}) must be >= the maximum regions per image ({regions[1]})"
        )
    if feature_dim < 1 or captions_per_image < 1:
        raise ValueError(f"feature_dim and captions_per_image must be >= 1; got {feature_dim}, {captions_per_image}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must lie in [0, 1]; got {hard_fraction}")
    return _Generator(
        feature_dim=feature_dim, regions_per_image=(int(regions[0]), int(regions[1])),
        captions_per_image=captions_per_image, n_objects=n_objects, n_attributes=n_attributes, seed=seed,
        prototype_seed=prototype_seed, hard_negatives=hard_negatives, hard_fraction=hard_fraction,
        attr_weight=attr_weight, noise=noise,
    )


def make_compositional_dataset(
    n_images: int,
    *,
    feature_dim: int = 2048,
    regions_per_image: int | tuple[int, int] = (3, 8),
    captions_per_image: int = 5,
    n_objects: int = 40,
    n_attributes: int = 12,
    seed: int = 0,
    prototype_seed: int = 0,
    hard_negatives: bool = True,
    hard_fraction: float = 0.5,
    attr_weight: float = 0.7,
    noise: float = 1.0,
) -> SyntheticDataset:
    """Generate a compositional synthetic dataset in memory.

    Images are generated in groups of two; with ``hard_negatives`` the second image of a group is,
    with probability ``hard_fraction``, the attribute-swap twin of the first (same objects and
    boxes up to a 2 % jitter, attributes rotated by one among the regions, fresh noise, its own
    captions), otherwise an independent image.

    Args:
        n_images: number of images ``N >= 1``.
        feature_dim: region feature size ``F`` (2048 like bottom-up features; smaller for fast demos).
        regions_per_image: fixed count or an inclusive ``(min, max)`` range, ``min >= 2``.
        captions_per_image: captions per image (5 for COCO/Flickr-style evaluation).
        n_objects / n_attributes: vocabulary sizes; each ``>=`` the maximum regions per image. Beyond the
            built-in word lists, names ``object<k>`` / ``attribute<k>`` are used.
        seed: sampling seed (use different seeds for train and test).
        prototype_seed: seed of the object/attribute prototypes; keep it equal across splits.
        hard_negatives: create attribute-swap twins.
        hard_fraction: probability that a group is a twin pair.
        attr_weight: scale of the attribute prototype relative to the object prototype.
        noise: standard deviation of the per-entry Gaussian noise (prototype entries have std 1).

    Returns:
        A :class:`SyntheticDataset` with ``offset == 0``.

    Raises:
        ValueError: on inconsistent sizes (the message names the constraint).
    """
    gen = _generator(
        n_images, feature_dim=feature_dim, regions_per_image=regions_per_image, captions_per_image=captions_per_image,
        n_objects=n_objects, n_attributes=n_attributes, seed=seed, prototype_seed=prototype_seed,
        hard_negatives=hard_negatives, hard_fraction=hard_fraction, attr_weight=attr_weight, noise=noise,
    )
    return gen.build(0, n_images)


def iter_compositional_chunks(
    n_images: int,
    *,
    chunk_size: int = 1024,
    feature_dim: int = 2048,
    regions_per_image: int | tuple[int, int] = (3, 8),
    captions_per_image: int = 5,
    n_objects: int = 40,
    n_attributes: int = 12,
    seed: int = 0,
    prototype_seed: int = 0,
    hard_negatives: bool = True,
    hard_fraction: float = 0.5,
    attr_weight: float = 0.7,
    noise: float = 1.0,
) -> Iterator[SyntheticDataset]:
    """Yield the images of :func:`make_compositional_dataset` (same arguments) in chunks.

    Chunk ``k`` holds images ``[k·chunk_size, (k+1)·chunk_size)`` with ``offset`` set accordingly;
    concatenating the chunks gives exactly the in-memory dataset. Memory is bounded by one chunk.

    Args:
        n_images: total images.
        chunk_size: images per chunk; must be even so twin pairs never straddle two chunks.
        others: as in :func:`make_compositional_dataset`.

    Raises:
        ValueError: if ``chunk_size`` is not a positive even number, or as :func:`make_compositional_dataset`.
    """
    if chunk_size < 2 or chunk_size % 2:
        raise ValueError(f"chunk_size must be a positive even number (twin pairs stay together); got {chunk_size}")
    gen = _generator(
        n_images, feature_dim=feature_dim, regions_per_image=regions_per_image, captions_per_image=captions_per_image,
        n_objects=n_objects, n_attributes=n_attributes, seed=seed, prototype_seed=prototype_seed,
        hard_negatives=hard_negatives, hard_fraction=hard_fraction, attr_weight=attr_weight, noise=noise,
    )
    for start in range(0, n_images, chunk_size):
        yield gen.build(start, min(start + chunk_size, n_images))


def write_to_store(
    ds: SyntheticDataset,
    region_root: str | os.PathLike[str],
    captions_path: str | os.PathLike[str],
    *,
    split: str = "train",
    rows_per_shard: int = 256,
) -> tuple[list[str], list[Caption]]:
    """Write the dataset like real data: region shards in a :class:`storage.RegionStore` and a caption table.

    Regions become :class:`storage.RegionRecord` rows (features stored as float16 by the store;
    ``class_ids`` = object ids, ``attr_ids`` = attribute ids, ``uri`` = ``synthetic://<id>``).
    Images already in the store are skipped (the store's writer is idempotent). Caption ids are
    ``"<image_id[:16]>-<k>"``.

    Args:
        ds: the dataset (or one chunk of it).
        region_root: region store folder (local path or pyarrow-fs URI).
        captions_path: Parquet caption table to (over)write.
        split: the caption rows' split name.
        rows_per_shard: rows per region shard.

    Returns:
        ``(image_ids, captions)`` as written.
    """
    store = RegionStore(region_root)
    config_hash = ds.image_ids[0][:16] if len(ds) else ""
    with store.writer(
        detector=_DETECTOR, config_hash=config_hash, weights_hash="", feature_dim=ds.feature_dim,
        rows_per_shard=rows_per_shard,
    ) as writer:
        for i, image_id in enumerate(ds.image_ids):
            writer.write(
                RegionRecord(
                    image_id=image_id, uri=f"synthetic://{image_id}", width=int(ds.widths[i]), height=int(ds.heights[i]),
                    boxes=ds.boxes[i], features=ds.region_feats[i], class_ids=ds.objects[i], attr_ids=ds.attributes[i],
                )
            )
    per_image = np.bincount(ds.caption_image, minlength=len(ds))
    k_of = np.arange(len(ds.captions)) - np.concatenate([[0], np.cumsum(per_image)[:-1]])[ds.caption_image]
    captions = [
        Caption(image_id=ds.image_ids[img], caption_id=f"{ds.image_ids[img][:16]}-{k}", text=text, split=split)
        for text, img, k in zip(ds.captions, ds.caption_image.tolist(), k_of.tolist(), strict=True)
    ]
    Path(captions_path).parent.mkdir(parents=True, exist_ok=True)
    write_caption_table(captions_path, captions)
    return list(ds.image_ids), captions


def twin_accuracy(sims: np.ndarray | torch.Tensor, ds: SyntheticDataset) -> dict[str, float]:
    """How often a model prefers the right image of an attribute-swap twin pair (chance: 0.5).

    Args:
        sims: ``float[len(ds), len(ds.captions)]`` scores of the dataset's images against its captions.
        ds: the dataset (its :meth:`SyntheticDataset.twin_pairs` are used).

    Returns:
        ``{"t2i": fraction of the pairs' captions scoring higher with their own image than with the twin,
        "i2t": fraction of the pairs' images whose best caption among (own ∪ twin's captions) is their own,
        "pairs": number of twin pairs}``; exact ties count one half.

    Raises:
        ValueError: if ``sims`` has the wrong shape or the dataset has no twin pair.
    """
    arr = sims.detach().cpu().double().numpy() if isinstance(sims, torch.Tensor) else np.asarray(sims, dtype=np.float64)
    if arr.shape != (len(ds), len(ds.captions)):
        raise ValueError(f"sims must have shape ({len(ds)}, {len(ds.captions)}); got {tuple(arr.shape)}")
    pairs = ds.twin_pairs()
    if not len(pairs):
        raise ValueError("the dataset has no twin pair; generate it with hard_negatives=True")

    def win(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a > b) + 0.5 * (a == b)

    t2i, i2t = [], []
    for img, other in np.concatenate([pairs, pairs[:, ::-1]]):
        own = np.flatnonzero(ds.caption_image == img)
        theirs = np.flatnonzero(ds.caption_image == other)
        t2i.append(win(arr[img, own], arr[other, own]))
        i2t.append(win(arr[img, own].max(), arr[img, theirs].max()))
    return {"t2i": float(np.concatenate(t2i).mean()), "i2t": float(np.mean(i2t)), "pairs": int(len(pairs))}


def binding_ceiling(ds: SyntheticDataset) -> float:
    """Expected text→image R@1 (percent) of an ideal model that ignores spatial relations.

    The ideal model knows exactly which (attribute, object) pairs every image holds and scores a
    caption by whether all its named pairs are present; ties (several images hold all of them, e.g.
    for a one-object caption) are broken at random. Region-word models without box geometry
    (SCAN) cannot exceed this on average; relations ("left of") are needed to go beyond it.

    Returns:
        ``100 · mean_c 1 / #{images holding every pair named by caption c}``.
    """
    held = [set(zip(a.tolist(), o.tolist(), strict=True)) for a, o in zip(ds.attributes, ds.objects, strict=True)]
    share = []
    for img, regions in zip(ds.caption_image.tolist(), ds.caption_regions, strict=True):
        named = {(int(ds.attributes[img][r]), int(ds.objects[img][r])) for r in regions}
        share.append(1.0 / sum(named <= h for h in held))
    return float(100.0 * np.mean(share))

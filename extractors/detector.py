"""The detector contract shared by every backend, and the registry that builds them.

A backend is split in two so that decoding and resizing can run in DataLoader
worker processes without shipping the network there:

* a :class:`Preprocessor` (small, picklable): ``uint8[H, W, 3]`` RGB image ->
  :class:`PreparedImage` (the network input tensor plus the scale that maps it
  back to original pixels);
* a :class:`Detector` (holds the network): a list of prepared images of one
  shape -> one :class:`Detections` per image, boxes in *original* pixels and one
  feature row per box, pooled from that exact box.

Backends register a factory under a kebab-case name with :func:`register_detector`;
:func:`get_detector` builds one, :func:`list_detectors` names them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "BoxDescriber",
    "Detections",
    "Detector",
    "PreparedImage",
    "Preprocessor",
    "StageTimer",
    "config_hash",
    "get_detector",
    "list_detectors",
    "register_detector",
    "rgb_to_tensor",
    "weights_sha256",
]

logger = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """One image ready for a detector's network.

    Args:
        tensor: ``FloatTensor[3, H', W']`` network input (backend-specific colour
            order and normalisation), on the CPU.
        scale: factor from original to network pixels (``H' ~= scale * height``).
        width: original image width in pixels.
        height: original image height in pixels.
        extras: backend-specific CPU tensors (for example a second input of
            another size); must be picklable.
    """

    tensor: torch.Tensor
    scale: float
    width: int
    height: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_key(self) -> tuple[int, ...]:
        """Images with equal keys can be stacked into one batch without padding."""
        return tuple(self.tensor.shape) + tuple(
            s for v in self.extras.values() if isinstance(v, torch.Tensor) for s in v.shape
        )


@dataclass
class Detections:
    """The regions a detector returns for one image (the common output contract).

    Args:
        boxes: ``float32[n, 4]`` ``(x1, y1, x2, y2)`` in original-image pixels,
            ``0 <= x1 <= x2 <= width`` (the bottom-up detector follows Caffe's
            inclusive convention and clips to ``width - 1``).
        features: ``float32[n, D]`` pooled features, row ``i`` pooled from ``boxes[i]``.
        class_ids: ``int64[n]`` detector class ids, or ``None``.
        class_scores: ``float32[n]`` confidences of ``class_ids``, or ``None``.
        attr_ids: ``int64[n]`` attribute ids, or ``None``.
        attr_scores: ``float32[n]`` confidences of ``attr_ids``, or ``None``.
    """

    boxes: np.ndarray
    features: np.ndarray
    class_ids: np.ndarray | None = None
    class_scores: np.ndarray | None = None
    attr_ids: np.ndarray | None = None
    attr_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (n, 4); got {tuple(self.boxes.shape)}")
        if self.features.ndim != 2 or self.features.shape[0] != self.boxes.shape[0]:
            raise ValueError(
                f"features must be (n, D) with n={self.boxes.shape[0]} boxes; got {tuple(self.features.shape)}"
            )

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])


def rgb_to_tensor(rgb: np.ndarray, *, bgr: bool = False) -> torch.Tensor:
    """``uint8[H, W, 3]`` RGB -> ``float32[3, H, W]`` (0..255; channel order reversed when ``bgr``).

    Raises:
        ValueError: ``rgb`` is not a ``uint8[H, W, 3]`` array.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8[H, W, 3] RGB image; got {rgb.dtype}{list(rgb.shape)}")
    arr = rgb[:, :, ::-1] if bgr else rgb
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()


@runtime_checkable
class Preprocessor(Protocol):
    """Picklable image transform of one backend (runs in DataLoader workers)."""

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """``(H', W')`` of the network input for an original ``width x height`` image."""
        ...

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        """``uint8[H, W, 3]`` RGB -> :class:`PreparedImage`."""
        ...


@runtime_checkable
class Detector(Protocol):
    """A region detector: what :func:`extractors.extract` needs from a backend.

    Attributes:
        name: registry name, recorded in every shard.
        feature_dim: width ``D`` of the region features.
        config: JSON-serialisable dict of everything that changes the output
            (architecture, thresholds, pre-processing); hashed into ``config_hash``.
        weights_hash: sha256 of the weights file, or ``"random-init-seed-<n>"``.
        device: the torch device the network runs on.
    """

    name: str
    feature_dim: int
    config: dict[str, Any]
    weights_hash: str
    device: torch.device

    @property
    def preprocessor(self) -> Preprocessor: ...

    def detect(self, images: Sequence[PreparedImage], timer: StageTimer | None = None) -> list[Detections]:
        """Detect regions in a batch of prepared images (any shapes; equal shapes run together)."""
        ...


@runtime_checkable
class BoxDescriber(Protocol):
    """A detector that can also describe boxes it is given (``extract(given_boxes=...)``, ``--boxes``)."""

    def describe_boxes(self, image: PreparedImage, boxes: np.ndarray) -> Detections:
        """Features, classes and attributes of ``boxes`` (``float[n, 4]``, original pixels), one row each, in order."""
        ...


class StageTimer:
    """Accumulates wall-clock seconds per named stage.

    On CUDA the timer synchronises the device at each stage boundary so that the
    seconds belong to the stage that queued the work (costs a little throughput;
    pass ``timer=None`` to a detector to skip it).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    def merge(self, other: Mapping[str, float]) -> None:
        for stage, s in other.items():
            self.add(stage, s)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.add(name, time.perf_counter() - t0)


@contextmanager
def timed(timer: StageTimer | None, name: str) -> Iterator[None]:
    """``timer.stage(name)`` when a timer is given, else nothing."""
    if timer is None:
        yield
    else:
        with timer.stage(name):
            yield


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``config`` (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def weights_sha256(path: str | Path) -> str:
    """sha256 hex of a weights file, read in 1 MiB chunks.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist; pass the path of a local weights file")
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


DetectorFactory = Callable[..., Detector]
_REGISTRY: dict[str, DetectorFactory] = {}
_BUILTINS_LOADED = False


def register_detector(name: str, factory: DetectorFactory | None = None) -> Any:
    """Register ``factory(*, weights, device, **cfg) -> Detector`` under ``name``.

    Usable directly or as a decorator (``@register_detector("my-det")``).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def _register(f: DetectorFactory) -> DetectorFactory:
        if name in _REGISTRY:
            raise ValueError(f"a detector is already registered under the name {name!r}; pick another name")
        _REGISTRY[name] = f
        return f

    return _register(factory) if factory is not None else _register


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        # Importing the backend modules registers them; none imports an optional
        # dependency at module level.
        from regionrank.extractors import butd, d2, frcnn, ssd  # noqa: F401


def list_detectors() -> list[str]:
    """Names of the registered detectors, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_detector(
    name: str, *, weights: str | Path | None = None, device: torch.device | str = "cpu", **cfg: Any
) -> Detector:
    """Build the detector registered under ``name``.

    Args:
        name: a name from :func:`list_detectors`, e.g. ``"butd-r101-c4"``.
        weights: local weights file, or ``None`` for the backend's documented
            default (random initialisation with a logged warning for the
            Faster R-CNN backends; the packaged files for ``ssd-mobilenet-coco``).
            Nothing is ever downloaded.
        device: torch device for the network (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        **cfg: backend options (thresholds, sizes, seed, ...); unknown keys raise.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or bad option.
    """
    _load_builtins()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known detectors: {', '.join(sorted(_REGISTRY))}") from None
    return factory(weights=weights, device=device, **cfg)

"""Extractor test fixtures: small seeded photos-to-be, one of every kind of bad input, and detectron2
importable from a snapshot of airsplay's fork (:func:`detectron2_fork`, skipped without one)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def huge_png_header(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb that costs nothing to write)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def write_good_images(folder: Path, rng: np.random.Generator, n: int = 3) -> list[Path]:
    """``n`` random 80x120 PNGs (same aspect ratio -> one batch) plus one 120x80 portrait."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"good{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    p = folder / "portrait.png"
    Image.fromarray(rng.integers(0, 256, size=(120, 80, 3), dtype=np.uint8)).save(p)
    paths.append(p)
    return paths


def write_bad_images(folder: Path, rng: np.random.Generator) -> dict[str, Path]:
    """One input per failure kind; keys are the expected reason tags."""
    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[str, Path] = {}
    full = folder / "full.jpg"
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    bad["truncated"] = folder / "truncated.jpg"
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["empty-file"] = folder / "zero.png"
    bad["empty-file"].write_bytes(b"")
    bad["not-an-image"] = folder / "notes.jpg"
    bad["not-an-image"].write_text("these are not pixels\n")
    bad["too-small"] = folder / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(bad["too-small"])
    bad["too-large"] = folder / "bomb.png"
    huge_png_header(bad["too-large"], 40_000, 40_000)
    bad["not-a-file"] = folder / "folder.png"
    bad["not-a-file"].mkdir()
    bad["permission-denied"] = folder / "secret.png"  # readable bytes; tests make open() fail for it
    Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(bad["permission-denied"])
    return bad


@pytest.fixture
def deny_read(monkeypatch):
    """Make reading the given paths raise PermissionError, as chmod 000 would for a non-root user.

    The tests run as root here, where chmod does not stop reads, so the denial is
    injected at the one place the extractor reads files (``Path.read_bytes``).
    """
    denied: set[str] = set()
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if str(self) in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return denied.add


@pytest.fixture
def good_images(tmp_path, rng) -> list[Path]:
    return write_good_images(tmp_path / "good", rng)


@pytest.fixture
def bad_images(tmp_path, rng) -> dict[str, Path]:
    return write_bad_images(tmp_path / "bad", rng)


D2_SOURCE_ENV = "REGIONRANK_D2_SOURCE"
D2_EXTRA_PATH_ENV = "REGIONRANK_D2_EXTRA_PATH"
_D2_DEPENDENCIES = ("fvcore", "yacs", "iopath", "termcolor", "tabulate", "cloudpickle", "portalocker")


@pytest.fixture(scope="module")
def detectron2_fork() -> Iterator[Path]:
    """detectron2 importable from a snapshot of airsplay/py-bottom-up-attention, as ``make_butd.py`` runs it.

    ``REGIONRANK_D2_SOURCE``: the snapshot's root (it holds ``detectron2/`` and ``configs/``); unset or
    absent, the test is skipped with the reason. ``REGIONRANK_D2_EXTRA_PATH`` (optional, ``os.pathsep``
    separated): folders appended to ``sys.path`` for detectron2's pure-Python dependencies (fvcore, yacs,
    iopath, ...) where they are not installed, e.g. the site-packages of the venv that made the fixtures;
    appended, so this environment's torch and numpy still win.

    Shims, as in ``tests/fixtures/reference/make_butd.py`` (nothing of the snapshot is edited): an empty
    ``detectron2._C`` (the C4 caffemaxpool path uses torchvision's RoIPool and NMS), ``PIL.Image.LINEAR``
    and ``collections.Mapping`` & co. restored. All are undone, and the fork's modules dropped, after the
    module's tests.
    """
    import collections
    import collections.abc
    import importlib
    import importlib.util
    import os
    import sys
    import types
    import warnings

    import PIL.Image

    src = os.environ.get(D2_SOURCE_ENV)
    if not src:
        pytest.skip(f"{D2_SOURCE_ENV} is not set: point it at a snapshot of airsplay/py-bottom-up-attention@85ec9b77 "
                    f"to test the detectron2 backend")  # fmt: skip
    root = Path(src)
    if not (root / "detectron2" / "__init__.py").is_file():
        pytest.skip(f"{D2_SOURCE_ENV}={src} holds no detectron2/ package; a snapshot of airsplay/py-bottom-up-attention is expected")
    extras = [p for p in os.environ.get(D2_EXTRA_PATH_ENV, "").split(os.pathsep) if p]
    with pytest.MonkeyPatch.context() as mp:
        for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Iterator", "Callable", "Set"):
            mp.setattr(collections, name, getattr(collections.abc, name), raising=False)
        mp.setattr(PIL.Image, "LINEAR", PIL.Image.BILINEAR, raising=False)
        mp.setattr(sys, "path", [str(root), *sys.path, *extras])
        mp.setitem(sys.modules, "detectron2._C", types.ModuleType("detectron2._C"))
        importlib.invalidate_caches()
        missing = [m for m in _D2_DEPENDENCIES if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"detectron2's dependencies {missing} are not importable: pip install them, or set "
                        f"{D2_EXTRA_PATH_ENV} to a site-packages folder that holds them")  # fmt: skip
        before = set(sys.modules)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fork's 2020 code: invalid escapes, deprecated aliases
                for module in ("detectron2.config", "detectron2.modeling", "detectron2.checkpoint"):
                    importlib.import_module(module)
            yield root
        finally:
            for name in set(sys.modules) - before:
                if name.split(".")[0] in ("detectron2", *_D2_DEPENDENCIES):
                    del sys.modules[name]


REFERENCE_BUTD = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "butd"


@pytest.fixture(scope="session")
def airsplay_fixture_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference fixtures' weights (``tests/fixtures/reference/butd``) in the fork's own ``.pkl`` layout
    (``faster_rcnn_from_caffe_attr.pkl``), rebuilt bit for bit from ``weights_recipe.json`` (~250 MB, slow tests)."""
    import importlib.util
    import json
    import pickle

    spec = importlib.util.spec_from_file_location("butd_weights", REFERENCE_BUTD.parent / "butd_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = module.build_weights(json.loads((REFERENCE_BUTD / "weights_recipe.json").read_text()))
    path = tmp_path_factory.mktemp("airsplay") / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": weights, "__author__": "regionrank fixture"}, fh, protocol=4)
    return path

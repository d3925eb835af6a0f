"""Image fixtures for the extractor tests: small seeded photos-to-be and one of every kind of bad input."""

from __future__ import annotations

import struct
import zlib
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

"""Content-hash image ids: sha256 of the bytes, chunked file reads, namespaced external ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from regionrank.storage import external_image_id, image_id_for_bytes, image_id_for_file, is_image_id


def test_image_id_is_the_sha256_of_the_bytes() -> None:
    assert image_id_for_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_id_for_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 3])  # around the 1 MiB read chunk
def test_file_id_matches_bytes_id_across_chunk_boundaries(tmp_path: Path, rng: np.random.Generator, size: int) -> None:
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "a.jpg").write_bytes(data)
    assert image_id_for_file(tmp_path / "a.jpg") == image_id_for_bytes(data) == hashlib.sha256(data).hexdigest()
    assert image_id_for_file(str(tmp_path / "a.jpg")) == image_id_for_bytes(data)


def test_id_depends_only_on_content(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "one.jpg").write_bytes(data)
    (tmp_path / "sub" / "copy.png").write_bytes(data)
    (tmp_path / "edited.jpg").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert image_id_for_file(tmp_path / "one.jpg") == image_id_for_file(tmp_path / "sub" / "copy.png")
    assert image_id_for_file(tmp_path / "edited.jpg") != image_id_for_file(tmp_path / "one.jpg")


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        image_id_for_file(tmp_path / "nope.jpg")


def test_external_ids_are_namespaced_hashes() -> None:
    assert external_image_id("coco", 42) == hashlib.sha256(b"coco:42").hexdigest()
    assert external_image_id("coco", 42) == external_image_id("coco", "42")
    assert external_image_id("coco", 42) != external_image_id("f30k", 42)
    assert is_image_id(external_image_id("f30k", "1000092795.jpg"))
    with pytest.raises(ValueError, match="namespace must be non-empty"):
        external_image_id("", 1)


def test_is_image_id_accepts_only_lowercase_sha256_hex() -> None:
    good = image_id_for_bytes(b"x")
    assert is_image_id(good)
    assert not is_image_id(good.upper())
    assert not is_image_id(good[:-1])
    assert not is_image_id(good + "0")
    assert not is_image_id("g" + good[1:])
    assert not is_image_id("")

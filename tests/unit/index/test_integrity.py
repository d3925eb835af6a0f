"""Damaged index versions: checksums recorded at publication, checked on open; a damaged current version
is skipped with a warning, an explicitly asked-for one raises IndexDamagedError."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from regionrank import index
from regionrank.index import IndexDamagedError

from index_testdata import BagOfWordsEncoder, Scene, write_images


@pytest.fixture
def two_versions(tmp_path: Path, scene: Scene) -> tuple[Path, object, list]:
    """An image index with version 1 (40 images) and version 2 (+20 images), and its store."""
    records = scene.images(60)
    store = write_images(tmp_path / "emb", records)
    idx = tmp_path / "idx"
    index.build_indexes(store, idx, image_ids=[r.image_id for r in records[:40]])
    index.add_images(idx, store, [r.image_id for r in records[40:]])
    return idx, store, records


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite(path: Path) -> None:
    """Same size, other bytes (past the header, so only the hash can tell)."""
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(16)
    path.write_bytes(bytes(data))


def test_the_manifest_records_size_and_sha256_of_every_file(two_versions) -> None:
    idx, _, _ = two_versions
    vdir = index.open_index(idx).path
    m = index.Manifest.read(vdir)
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m.files) == on_disk and {"global.faiss", "region.faiss", "ids.txt", "idmap.npz"} <= on_disk
    assert any(name.startswith("regions/") for name in m.files)
    for name, c in m.files.items():
        data = (vdir / name).read_bytes()
        assert c.size == len(data) and c.sha256 == hashlib.sha256(data).hexdigest()
    assert index.Manifest.from_json(m.to_json()) == m  # round trip, FileChecksum objects included
    assert index.verify_version(idx) == [] and index.verify_version(idx, 1, thorough=True) == []


@pytest.mark.parametrize("damage", [_truncate, _overwrite])
def test_a_damaged_current_version_is_skipped_with_a_warning(two_versions, scene: Scene, damage, caplog) -> None:
    idx, store, records = two_versions
    damage(index.open_index(idx, 2).path / "global.faiss")
    with caplog.at_level(logging.WARNING, logger="regionrank.index"):
        h = index.open_index(idx)
    assert h.version == 1 and h.manifest.n_items == 40
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "index version 2" in warning and "global.faiss" in warning
    assert ("truncated" if damage is _truncate else "sha256") in warning
    # search works, on version 1
    q = np.asarray(records[3].global_embedding, np.float32)[None]
    _, got = h.search_global(q, 1)
    assert h.idmap.image_id(int(got[0, 0])) == records[3].image_id
    s = index.Searcher(idx, store, BagOfWordsEncoder(scene.prototypes), fusion="mrsw")
    hits = s.search("c1 c5", 5)
    assert s.handle.version == 1 and len(hits) == 5
    assert {h.image_id for h in hits} <= {r.image_id for r in records[:40]}


def test_an_explicitly_asked_for_damaged_version_raises(two_versions) -> None:
    idx, _, _ = two_versions
    _truncate(index.open_index(idx, 2).path / "region.faiss")
    with pytest.raises(IndexDamagedError, match=r"index version 2 .*region\.faiss: \d+ bytes.*truncated.*[Rr]oll back.*rebuild"):
        index.open_index(idx, version=2)
    assert index.open_index(idx, version=1).version == 1
    problems = index.verify_version(idx, 2)
    assert len(problems) == 1 and problems[0].startswith("region.faiss:")
    # an update must not build on a damaged version either
    with pytest.raises(IndexDamagedError, match="region.faiss"):
        index.remove_images(idx, ["img000001"])


def test_a_version_without_checksums_still_opens_and_its_damage_is_named(two_versions) -> None:
    idx, _, _ = two_versions
    vdir = index.open_index(idx).path
    old = index.Manifest.read(vdir)
    old.files = {}  # published before checksums existed
    old.write(vdir)
    assert index.open_index(idx).version == 2 and index.verify_version(idx) == []
    _truncate(vdir / "global.faiss")
    with pytest.raises(IndexDamagedError, match=r"global\.faiss: cannot be read.*without checksums"):
        index.open_index(idx, version=2)
    assert index.open_index(idx).version == 1  # never faiss's RuntimeError


def test_no_intact_version_left(two_versions) -> None:
    idx, _, _ = two_versions
    for v in (1, 2):
        (index.open_index(idx, v).path / "idmap.npz").unlink()
    with pytest.raises(IndexDamagedError, match=r"no intact index version.*idmap\.npz: missing"):
        index.open_index(idx)

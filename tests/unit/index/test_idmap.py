"""Stable int ids, region id packing and persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regionrank.index.idmap import MAX_REGIONS, SLOT_BITS, IdMap


def test_ids_are_stable_across_remove_and_re_add(tmp_path: Path) -> None:
    m = IdMap()
    a = m.assign(["a", "b", "c"], [2, 0, 3])
    np.testing.assert_array_equal(a, [0, 1, 2])
    m.kill(m.lookup(["b"]))
    assert "b" not in m and len(m) == 2 and m.alive_ids() == ["a", "c"]
    with pytest.raises(KeyError, match="'b'"):
        m.lookup(["b"])
    np.testing.assert_array_equal(m.assign(["d", "b"], [1, 4]), [3, 1])  # b gets its old id back
    m.save(tmp_path)
    back = IdMap.load(tmp_path)
    assert back.image_ids == ["a", "b", "c", "d"] and back.alive_ids() == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(back.n_regions, [2, 4, 3, 1])


def test_region_ids_pack_and_split() -> None:
    m = IdMap()
    ints = m.assign(["x", "y", "z"], [3, 0, 2])
    rids = m.region_ids(ints)
    expected = [(0 << SLOT_BITS) | s for s in range(3)] + [(2 << SLOT_BITS) | s for s in range(2)]
    np.testing.assert_array_equal(rids, expected)
    img, slot = IdMap.split_region_ids(np.array([*rids, -1]))
    np.testing.assert_array_equal(img, [0, 0, 0, 2, 2, -1])
    np.testing.assert_array_equal(slot, [0, 1, 2, 0, 1, -1])


@pytest.mark.parametrize(
    ("ids", "counts", "match"),
    [(["a", "a"], [1, 1], "duplicates"), (["a\nb"], [1], "single-line"), ([""], [1], "non-empty"),
     (["a"], [MAX_REGIONS], "at most"), (["a"], [1, 2], "region counts")],
)
def test_assign_rejects_bad_input(ids: list[str], counts: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IdMap().assign(ids, counts)


def test_assign_rejects_already_alive() -> None:
    m = IdMap()
    m.assign(["a"], [1])
    with pytest.raises(ValueError, match="already indexed"):
        m.assign(["a"], [1])


def test_lookup_of_dead_ids_and_region_ids_of_empty_images() -> None:
    m = IdMap()
    ints = m.assign(["a", "b"], [0, 2])
    m.kill(ints[:1])
    np.testing.assert_array_equal(m.lookup(["a", "b"], alive_only=False), [0, 1])
    assert m.region_ids(ints[:1]).tolist() == [] and m.region_ids(ints[:1]).dtype == np.int64
    assert m.image_id(1) == "b" and m.alive.dtype == bool and m.n_regions.dtype == np.int32


def test_copy_is_independent(tmp_path: Path) -> None:
    m = IdMap()
    m.assign(["a", "b"], [1, 2])
    c = m.copy()
    c.kill(c.lookup(["a"]))
    c.assign(["z"], [3])
    assert m.alive_ids() == ["a", "b"] and m.image_ids == ["a", "b"]
    assert c.alive_ids() == ["b", "z"]


def test_empty_map_round_trips_and_corrupt_ids_are_refused(tmp_path: Path) -> None:
    IdMap().save(tmp_path)
    back = IdMap.load(tmp_path)
    assert back.image_ids == [] and len(back) == 0 and back.alive.shape == (0,)
    with pytest.raises(ValueError, match="must be unique; the stored id map is corrupt"):
        IdMap(["a", "a"])

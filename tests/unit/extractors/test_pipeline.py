"""extract(): decoding workers, failures table, idempotent re-runs, provenance, stored features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from regionrank.extractors import config_hash, decode_image, extract, get_detector, list_images
from regionrank.storage import RegionStore, image_id_for_file

TINY = dict(
    blocks=(1, 1, 1, 1), num_classes=21, num_attributes=9, rpn_post_nms_top_n=16, rpn_pre_nms_top_n=300,
    roi_pool_size=5, min_size=64, max_size=100, min_boxes=3, max_boxes=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def detector():
    return get_detector("butd-r101-c4", seed=0, **TINY)


def test_extract_writes_records_failures_and_provenance(tmp_path, good_images, bad_images, deny_read, detector):
    deny_read(str(bad_images["permission-denied"]))
    inputs = [str(p) for p in good_images] + [str(p) for p in bad_images.values()]
    store = RegionStore(tmp_path / "store")
    rep = extract(inputs, store, detector=detector, batch_size=2, num_workers=0, rows_per_shard=3)

    assert (rep.n_seen, rep.n_extracted, rep.n_failed, rep.n_skipped_existing) == (len(inputs), 4, len(bad_images), 0)
    reasons = {f["uri"]: f["reason"] for f in rep.failures}
    for tag, path in bad_images.items():
        assert reasons[str(path)].startswith(tag + ":"), (tag, reasons[str(path)])
    stored_failures = {f["uri"]: f["reason"] for f in store.failures()}
    assert stored_failures == reasons

    ids = [image_id_for_file(p) for p in good_images]
    assert sorted(store.ids()) == sorted(ids)
    assert rep.image_ids == ids  # readable inputs now stored, in input order; failures left out
    assert len(store.shard_names()) == 2  # 4 rows, 3 per shard
    for path, rec in zip(good_images, store.get(ids), strict=True):
        assert rec.detector == "butd-r101-c4"
        assert rec.config_hash == config_hash(detector.config) == rep.config_hash
        assert rec.weights_hash == "random-init-seed-0"
        rgb = decode_image(path)
        assert (rec.width, rec.height) == (rgb.shape[1], rgb.shape[0])
        (want,) = detector.detect([detector.preprocessor(rgb)])  # one by one, no loader
        # Same boxes up to float rounding: a batch of 2 and a batch of 1 take different oneDNN/MKL kernels
        # on some CPUs (seen on AVX-512 Zen 4: 1.9e-5 px apart), so bitwise equality is not a contract.
        np.testing.assert_allclose(rec.boxes, want.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(rec.features.astype(np.float32), want.features.astype(np.float16), atol=1e-4 * np.abs(want.features).max())
        np.testing.assert_array_equal(rec.class_ids, want.class_ids)
    assert {"hash", "decode", "transform", "trunk", "rpn", "roi_head", "nms", "write"} <= set(rep.stage_seconds)


def test_rerun_skips_stored_ids_and_duplicate_contents(tmp_path, good_images, detector):
    store_root = tmp_path / "store"
    first = extract([str(p) for p in good_images[:2]], store_root, detector=detector, num_workers=0)
    assert first.n_extracted == 2
    copy = tmp_path / "copy_of_good0.png"
    shutil.copy(good_images[0], copy)
    inputs = [str(p) for p in good_images] + [str(copy)]
    second = extract(inputs, store_root, detector=detector, num_workers=0)
    assert (second.n_extracted, second.n_skipped_existing, second.n_duplicates) == (2, 2, 1)
    assert len(RegionStore(store_root)) == 4


def test_worker_processes_and_progress(tmp_path, good_images, detector):
    calls: list[tuple[int, int]] = []
    rep = extract(tmp_path / "good", tmp_path / "store", detector=detector, num_workers=2, batch_size=3,
                  progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert rep.n_extracted == len(good_images)
    assert calls[-1] == (len(good_images), len(good_images))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    # 3 landscape images share one forward pass, the portrait gets its own batch
    assert len(calls) == 2


def test_detector_by_name_records_the_seeded_init(tmp_path, good_images):
    rep = extract([str(good_images[0])], tmp_path / "s", detector="butd-r101-c4", num_workers=0,
                  detector_options={**TINY, "seed": 7})  # fmt: skip
    assert rep.weights_hash == "random-init-seed-7" and rep.n_extracted == 1


def test_list_images_walks_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.png", "a/readme.txt", "z.webp"):
        (tmp_path / name).write_bytes(b"")
    assert list_images(tmp_path) == [str(tmp_path / "a/b/y.png"), str(tmp_path / "a/x.JPG"), str(tmp_path / "z.webp")]
    assert list_images([tmp_path / "a/readme.txt"]) == [str(tmp_path / "a/readme.txt")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_bad_arguments(tmp_path, detector):
    with pytest.raises(ValueError, match="batch_size"):
        extract([], tmp_path / "s", detector=detector, batch_size=0)
    with pytest.raises(ValueError, match="already built"):
        extract([], tmp_path / "s", detector=detector, weights="w.pth")
    with pytest.raises(ValueError, match="unknown detector 'nope'; known detectors: butd-r101-c4"):
        extract([], tmp_path / "s", detector="nope")


def test_each_input_is_read_once_over_several_windows(tmp_path, good_images, detector, monkeypatch):
    from file_reads import count_reads

    copy = tmp_path / "copy_of_good0.png"
    shutil.copy(good_images[0], copy)
    inputs = [str(p) for p in good_images] + [str(copy)]
    first = extract(inputs[:1], tmp_path / "store", detector=detector, num_workers=0)  # one already stored
    assert first.n_extracted == 1
    opens = count_reads(monkeypatch, inputs)
    calls: list[tuple[int, int]] = []
    rep = extract(inputs, tmp_path / "store", detector=detector, num_workers=0, read_window=2,
                  progress=lambda done, total: calls.append((done, total)))
    assert (rep.n_extracted, rep.n_skipped_existing, rep.n_duplicates, rep.n_failed) == (3, 1, 1, 0)
    assert opens == {str(p): 1 for p in [*good_images, copy]}  # hashed, probed and decoded from one read
    assert rep.image_ids == [image_id_for_file(p) for p in good_images]
    assert calls[-1] == (3, 3) and all(done <= total for done, total in calls)


def test_a_symlink_loop_is_a_recorded_failure(tmp_path, good_images, detector):
    (tmp_path / "good" / "a.png").symlink_to(tmp_path / "good" / "b.png")
    (tmp_path / "good" / "b.png").symlink_to(tmp_path / "good" / "a.png")
    store = RegionStore(tmp_path / "store")
    rep = extract(tmp_path / "good", store, detector=detector, num_workers=0)
    assert rep.n_extracted == len(good_images)
    loops = {str(tmp_path / "good" / n) for n in ("a.png", "b.png")}
    assert {f["uri"] for f in rep.failures} == loops
    assert {f["uri"]: f["reason"].split(":")[0] for f in store.failures()} == dict.fromkeys(loops, "unreadable")

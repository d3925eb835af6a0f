"""Given boxes: the boxes file reader, and ``extract(given_boxes=...)`` describing exactly those boxes.

The records of the images named must equal :meth:`BottomUpDetector.describe_boxes` on the same
image (tiny seeded ``butd-r101-c4``); every bad input is refused with the line and the value named,
and what was stored before the error stays stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from regionrank.extractors import config_hash, extract, get_detector
from regionrank.extractors.decode import decode_image
from regionrank.extractors.given_boxes import GivenBoxes, given_boxes_config, read_boxes_file
from regionrank.storage import RegionStore, image_id_for_file

TINY_BUTD = {"blocks": [1, 1, 1, 1], "rpn_pre_nms_top_n": 200, "rpn_post_nms_top_n": 30, "min_size": 64, "max_size": 96,
             "min_boxes": 2, "max_boxes": 6}


@pytest.fixture(scope="module")
def tiny_butd() -> Any:
    return get_detector("butd-r101-c4", seed=0, **TINY_BUTD)


def _write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- the boxes file ------------------------------------------------------------------------------


def test_boxes_file_reads_paths_and_ids(tmp_path: Path) -> None:
    image_id = "ab" * 32
    f = _write_lines(tmp_path / "boxes.jsonl", [{"image": "photos/a.png", "boxes": [[0, 0, 10, 20], [5, 5, 6, 6]]}, "",
                                                 {"image": image_id, "boxes": [[1.5, 2, 3, 4]]}])
    given = read_boxes_file(f)
    assert [e.key for e in given.entries] == ["photos/a.png", image_id]
    assert [e.where for e in given.entries] == [f"{f}:1", f"{f}:3"]
    np.testing.assert_array_equal(given.entries[0].boxes, np.array([[0, 0, 10, 20], [5, 5, 6, 6]], np.float32))
    assert given.entries[1].boxes.dtype == np.float32
    # a path matches however it is spelled; an id matches the content
    assert given.lookup("./photos/../photos/a.png", "0" * 64) is given.entries[0]
    assert given.lookup("elsewhere.png", image_id) is given.entries[1]
    assert given.lookup("elsewhere.png", "0" * 64) is None
    assert [e.key for e in given.path_keys_not_in(["photos/b.png"])] == ["photos/a.png"]
    assert given.path_keys_not_in([str(Path("photos/a.png").absolute())]) == []
    assert [e.key for e in given.restricted_to(["photos/b.png"]).entries] == [image_id]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"boxes.jsonl:2: not valid JSON"),
    ('["a.png", [[0, 0, 1, 1]]]', r"boxes.jsonl:2: expected an object with exactly the keys 'image' and 'boxes', got list"),
    ('{"image": "a.png"}', r"boxes.jsonl:2: expected an object .* got \['image'\]"),
    ('{"image": 7, "boxes": [[0, 0, 1, 1]]}', r"boxes.jsonl:2: 'image' must be an image path or a 64-hex image id; got 7"),
    ('{"image": "b.png", "boxes": []}', r"boxes.jsonl:2: no boxes given"),
    ('{"image": "b.png", "boxes": [[0, 0, 1]]}', r"boxes.jsonl:2: boxes must be a list of \[x1, y1, x2, y2\]; got shape \(1, 3\)"),
    ('{"image": "b.png", "boxes": [["x", 0, 1, 1]]}', r"boxes.jsonl:2: boxes must be a list of \[x1, y1, x2, y2\] numbers"),
    ('{"image": "b.png", "boxes": [[0, 0, 4, 4], [10, 0, 5, 8]]}', r"boxes.jsonl:2: box 1 \[10.0, 0.0, 5.0, 8.0\] is inverted"),
    ('{"image": "b.png", "boxes": [[-1, 0, 4, 4]]}', r"boxes.jsonl:2: box 0 \[-1.0, 0.0, 4.0, 4.0\] has a negative"),
    ('{"image": "b.png", "boxes": [[0, 0, NaN, 4]]}', r"boxes.jsonl:2: box 0 .* non-finite"),
    ('{"image": "./a.png", "boxes": [[0, 0, 1, 1]]}', r"boxes.jsonl:2: image './a.png' already has boxes at .*boxes.jsonl:1"),
])
def test_a_bad_line_is_refused_naming_the_line_and_value(tmp_path: Path, line: str, message: str) -> None:
    f = _write_lines(tmp_path / "boxes.jsonl", [{"image": "a.png", "boxes": [[0, 0, 1, 1]]}, line])
    with pytest.raises(ValueError, match=message):
        read_boxes_file(f)


def test_a_missing_boxes_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"boxes file .*nope.jsonl' does not exist; pass a JSON-lines file"):
        read_boxes_file(tmp_path / "nope.jsonl")


# ---- extract(given_boxes=...) ----------------------------------------------------------------------


def _described(det: Any, path: Path, boxes: np.ndarray) -> Any:
    return det.describe_boxes(det.preprocessor(decode_image(str(path))), boxes)


def test_extract_describes_exactly_the_given_boxes(tmp_path: Path, good_images: list[Path], tiny_butd: Any) -> None:
    by_path = np.array([[0, 0, 60, 40], [10, 20, 119.5, 79], [30, 30, 30, 30]], np.float32)
    by_id = np.array([[5, 5, 70, 110]], np.float32)  # the 80x120 portrait
    portrait_id = image_id_for_file(good_images[3])
    store = tmp_path / "store"
    rep = extract(good_images, store, detector=tiny_butd, num_workers=0,
                  given_boxes={str(good_images[0]): by_path, portrait_id: by_id})
    assert (rep.n_extracted, rep.n_given_boxes, rep.given_boxes_unmatched) == (4, 2, [])

    records = {r.uri: r for r in RegionStore(store).get(rep.image_ids)}
    for path, boxes in ((good_images[0], by_path), (good_images[3], by_id)):
        rec, ref = records[str(path)], _described(tiny_butd, path, boxes)
        np.testing.assert_array_equal(rec.boxes, boxes)  # exactly the given boxes, in the given order
        np.testing.assert_allclose(rec.features.astype(np.float32), ref.features, rtol=1e-2, atol=1e-3)  # stored as float16
        np.testing.assert_array_equal(rec.class_ids, ref.class_ids)
        np.testing.assert_array_equal(rec.attr_ids, ref.attr_ids)
        np.testing.assert_allclose(rec.class_scores, ref.class_scores, rtol=1e-6)
        assert rec.config_hash == config_hash(given_boxes_config(tiny_butd.config, boxes)) != config_hash(tiny_butd.config)
        assert rec.detector == "butd-r101-c4"
    detected = records[str(good_images[1])]
    assert detected.config_hash == config_hash(tiny_butd.config)
    assert 2 <= detected.num_regions <= 6

    again = extract(good_images, store, detector=tiny_butd, num_workers=0,
                    given_boxes={str(good_images[0]): by_path, portrait_id: by_id})
    assert (again.n_extracted, again.n_skipped_existing) == (0, 4)  # a re-run with the same boxes resumes


def test_an_image_stored_with_other_regions_is_refused(tmp_path: Path, good_images: list[Path], tiny_butd: Any) -> None:
    store = tmp_path / "store"
    extract(good_images[:1], store, detector=tiny_butd, num_workers=0)
    with pytest.raises(ValueError, match=r"given_boxes\[.*good0.png'\]: image .*good0.png' .* is already stored with other "
                                         r"regions .* another workspace"):
        extract(good_images[:2], store, detector=tiny_butd, num_workers=0,
                given_boxes={str(good_images[0]): np.array([[0, 0, 8, 8]], np.float32)})


def test_a_box_outside_its_image_is_refused_and_earlier_images_stay(tmp_path: Path, good_images: list[Path],
                                                                      tiny_butd: Any) -> None:
    store = tmp_path / "store"
    boxes = _write_lines(tmp_path / "boxes.jsonl", [{"image": str(good_images[1]), "boxes": [[0, 0, 10, 10], [0, 0, 121, 80]]}])
    with pytest.raises(ValueError, match=r"boxes.jsonl:1: box 1 \[0.0, 0.0, 121.0, 80.0\] lies outside image .*good1.png' "
                                         r"\(120x80 pixels .*\); .* x2 <= 120 and y2 <= 80"):
        extract(good_images[:2], store, detector=tiny_butd, num_workers=0, read_window=1,
                given_boxes=read_boxes_file(boxes))
    assert [r.uri for r in RegionStore(store).get(RegionStore(store).ids())] == [str(good_images[0])]  # nothing lost


def test_a_path_not_among_the_inputs_is_refused_before_any_work(tmp_path: Path, good_images: list[Path], tiny_butd: Any) -> None:
    store = tmp_path / "store"
    with pytest.raises(ValueError, match=r"given_boxes\['elsewhere/x.png'\]: image 'elsewhere/x.png' is not among the images "
                                         r"of this run; pass its folder or file"):
        extract(good_images, store, detector=tiny_butd, num_workers=0,
                given_boxes={"elsewhere/x.png": [[0, 0, 1, 1]]})
    assert len(RegionStore(store)) == 0


def test_an_unmatched_image_id_is_reported(tmp_path: Path, good_images: list[Path], tiny_butd: Any) -> None:
    rep = extract(good_images[:1], tmp_path / "store", detector=tiny_butd, num_workers=0,
                  given_boxes=GivenBoxes.from_mapping({"f" * 64: [[0, 0, 1, 1]]}))
    assert (rep.n_extracted, rep.n_given_boxes, rep.given_boxes_unmatched) == (1, 0, ["f" * 64])


def test_a_detector_without_given_box_mode_is_refused(tmp_path: Path, good_images: list[Path], tiny_butd: Any) -> None:
    class DetectOnly:
        name, feature_dim, config, weights_hash = "detect-only", 2048, {}, "-"
        device = tiny_butd.device
        preprocessor = tiny_butd.preprocessor
        detect = tiny_butd.detect

    with pytest.raises(ValueError, match=r"detector 'detect-only' cannot describe given boxes; use detector 'butd-r101-c4'"):
        extract(good_images, tmp_path / "store", detector=DetectOnly(), num_workers=0,
                given_boxes={str(good_images[0]): [[0, 0, 1, 1]]})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["000000000802", "000000011813"])
def test_extract_with_given_boxes_gives_the_references_given_box_outputs(tmp_path: Path, airsplay_fixture_weights: Path,
                                                                          name: str) -> None:
    """Through ``extract`` (the image file decoded and pre-processed here) against airsplay's given-box mode."""
    from PIL import Image

    from regionrank.extractors.butd import create_butd_detector

    ref_dir = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "butd"
    with np.load(ref_dir / f"{name}.npz") as npz:
        z = dict(npz)
    image = ref_dir / f"{name}.jpg"
    width, height = Image.open(image).size
    given = z["given_boxes"]
    # the reference's boxes are jittered: it clips those that leave the image and runs inverted ones; both are refused here
    ok = (given[:, 2] >= given[:, 0]) & (given[:, 3] >= given[:, 1]) & (given[:, 2] <= width) & (given[:, 3] <= height)
    assert ok.sum() >= 6
    det = create_butd_detector(weights=airsplay_fixture_weights, min_size=160, max_size=256, rpn_post_nms_top_n=300)
    rep = extract([image], tmp_path / "store", detector=det, num_workers=0, given_boxes={str(image): given[ok]})
    assert rep.n_given_boxes == 1
    (rec,) = RegionStore(tmp_path / "store").get(rep.image_ids)
    np.testing.assert_array_equal(rec.boxes, given[ok])
    ref = z["given_features"][ok]
    rel = np.linalg.norm(rec.features.astype(np.float32) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 2e-3  # float16 storage (the network itself agrees to 1e-4: test_butd_reference.py)
    ref_ids = z["given_cls_ids"][ok]
    fg = ref_ids != 1600  # the reference's argmax includes background (last)
    np.testing.assert_array_equal(rec.class_ids[fg], ref_ids[fg] + 1)
    np.testing.assert_array_equal(rec.attr_ids, z["given_attr_ids"][ok] + 1)

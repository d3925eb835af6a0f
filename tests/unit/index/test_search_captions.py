"""Image-to-text search against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from index_testdata import BagOfWordsEncoder, mrsw_loop, write_images

from regionrank import index


def test_search_captions_equals_brute_force(tmp_path: Path, caption_store) -> None:
    captions, cap_records, images = caption_store
    img_store = write_images(tmp_path / "imgs", images)
    index.build_indexes(img_store, tmp_path / "img-idx", kind=("global",))
    m = index.build_caption_indexes(captions, tmp_path / "cap-idx")
    assert m.corpus == "captions" and set(m.indexes) == {"global", "word"}
    enc = BagOfWordsEncoder(np.eye(32, dtype=np.float32))
    searcher = index.Searcher(tmp_path / "img-idx", img_store, enc, fusion="mrsw",
                              caption_index_dir=tmp_path / "cap-idx", captions=captions)
    stored_caps = list(captions.iter_records())
    hits_at_5 = 0
    for img in images[:25]:
        regions = np.asarray(img_store.get([img.image_id])[0].region_embeddings, np.float32)
        ref = sorted(stored_caps, key=lambda c: -mrsw_loop(np.asarray(c.word_embeddings, np.float32), regions))[:5]
        hits = searcher.search_captions(img.image_id, k=5)
        assert [h.caption_id for h in hits] == [c.caption_id for c in ref]
        assert hits[0].score == pytest.approx(mrsw_loop(np.asarray(ref[0].word_embeddings, np.float32), regions), abs=1e-5)
        hits_at_5 += img.image_id in {h.image_id for h in hits}
    # captions name the image's own concepts, so one of its 2 (out of 400) captions is usually in the top 5
    assert hits_at_5 >= 10  # chance: ~0.6 of 25

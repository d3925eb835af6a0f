"""bench.muvera's two candidate counters agree with brute force on a tiny scene."""

from __future__ import annotations

import numpy as np

from bench.muvera import Fde, needed, region_candidates_needed, region_entry_depth


def test_entry_depth_is_the_union_of_every_words_nearest_regions() -> None:
    rng = np.random.default_rng(0)
    regions = rng.normal(size=(40, 6)).astype(np.float32)
    owner = np.repeat(np.arange(10), 4)
    words = rng.normal(size=(3, 6)).astype(np.float32)
    entry = region_entry_depth(words, regions, owner, 10)
    sims = words @ regions.T
    for d in (1, 3, 7, 20, 40):
        union = {int(owner[j]) for row in sims for j in np.argsort(-row)[:d]}
        assert union == set(np.flatnonzero(entry <= d).tolist())
    truth = {0, 5}
    deepest = max(entry[0], entry[5])
    assert region_candidates_needed(entry, truth, 1.0) == int((entry <= deepest).sum())


def test_fde_with_one_partition_and_no_sketch_is_sum_times_mean() -> None:
    rng = np.random.default_rng(1)
    fde = Fde(4, k_sim=0, d_proj=4, reps=1)
    fde.sketch[0] = np.eye(4, dtype=np.float32)  # no projection: one partition holds everything
    q, doc = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    assert np.isclose(fde.encode(q, query=True) @ fde.encode(doc, query=False), q.sum(0) @ doc.mean(0), atol=1e-5)
    assert needed(np.array([4, 2, 9, 1]), {9, 1}, 1.0) == 4 and needed(np.array([4, 2, 9, 1]), {9, 1}, 0.5) == 3

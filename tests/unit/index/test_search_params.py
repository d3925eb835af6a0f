"""SearchParams: one set of defaults, and each bad value refused with a message naming it and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from regionrank.index import SearchParams


def test_defaults_are_the_documented_ones() -> None:
    p = SearchParams()
    assert (p.k, p.rerank_k, p.max_rerank_k, p.fusion, p.fusion_weight) == (10, 128, None, "weighted", 0.5)
    assert (p.region_k, p.max_region_k, p.global_k, p.n_candidates, p.pad_regions_to) == (256, 4096, 128, None, 36)
    assert p.reranks and p.rerank_limit == 128
    assert not SearchParams(rerank_k=0).reranks  # 0 = no re-ranking, a valid value
    assert SearchParams(rerank_k=10, max_rerank_k=50).rerank_limit == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(p, "k", 3)


@pytest.mark.parametrize(("field", "value", "fix"), [
    ("k", 0, "at least one result"),
    ("k", 2.5, "integer"),
    ("rerank_k", -1, "0 to turn re-ranking off"),
    ("max_rerank_k", 64, "rerank_k is 128"),
    ("fusion", "max", "expected 'scan', 'mrsw' or 'weighted'"),
    ("fusion_weight", 1.5, r"\[0, 1\]"),
    ("fusion_weight", -0.1, r"\[0, 1\]"),
    ("region_k", 0, "at least one region"),
    ("max_region_k", 100, "region_k is 256"),
    ("global_k", -1, "0 to leave the global index out"),
    ("n_candidates", 0, "None to score the whole candidate union"),
    ("pad_regions_to", 0, "None to turn the zero fill off"),
    ("rerank_k", True, "integer"),
])
def test_each_bad_value_is_refused_by_name(field: str, value: object, fix: str) -> None:
    with pytest.raises(ValueError, match=field) as err:
        SearchParams(**{field: value})
    assert repr(value) in str(err.value) or str(value) in str(err.value)
    assert err.match(fix)

"""Fixtures of the encoders tests: the padded torch oracle of SCAN's score estimate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from regionrank.encoders.scan import Agg, Direction, RawNorm, _aggregate, _attention, check_choice, checked_lengths


def _padded_score_estimates(
    sims: torch.Tensor,
    region_lens: Any | None = None,
    *,
    direction: Direction = "t2i",
    raw_feature_norm: RawNorm = "clipped_l2norm",
    agg_func: Agg = "LogSumExp",
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
) -> torch.Tensor:
    """The padded torch formulation of ``encoders.scan_estimate.scan_score_estimates`` (the test oracle):
    ``sims [n_image, R, L]`` with padded regions 0, ``region_lens`` or None; returns ``[n_image]``."""
    check_choice("direction", direction, Direction)
    check_choice("raw_feature_norm", raw_feature_norm, RawNorm)
    check_choice("agg_func", agg_func, Agg)
    if not isinstance(sims, torch.Tensor) or sims.ndim != 3 or not sims.is_floating_point():
        raise ValueError(f"sims must be a floating-point [n_image, R, L] tensor; got {getattr(sims, 'shape', type(sims))}")
    n_image, n_region, _ = sims.shape
    mask = None
    if region_lens is not None:
        reg_len = checked_lengths("region_lens", region_lens, n_image, n_region, sims.device)
        mask = torch.arange(n_region, device=sims.device)[None, :] < reg_len[:, None]  # [ni, R]
    if direction == "t2i":  # context = regions (dim 1), query = words (dim 2)
        alpha = _attention(sims, raw_feature_norm, lambda_softmax, None if mask is None else mask[..., None], None,
                           cdim=1, qdim=2)
        return _aggregate((alpha * sims).sum(dim=1), agg_func, lambda_lse, None)
    # i2t: context = words (dim 2), query = regions (dim 1)
    alpha = _attention(sims, raw_feature_norm, lambda_softmax, None, None if mask is None else mask[..., None],
                       cdim=2, qdim=1)
    return _aggregate((alpha * sims).sum(dim=2), agg_func, lambda_lse, mask)


@pytest.fixture
def scan_estimate_oracle() -> Callable[..., torch.Tensor]:
    """SCAN scores estimated from raw cosines on a padded tensor (what ``scan_score_estimates`` computes
    on the stacked layout), itself tested against the reference loop in ``test_scan.py``."""
    return _padded_score_estimates

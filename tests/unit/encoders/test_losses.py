"""Tests for encoders.losses.contrastive_loss against an explicit double loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders.losses import contrastive_loss


def _loop_loss(s: np.ndarray, margin: float, max_violation: bool) -> float:
    n = s.shape[0]
    cap = np.zeros((n, n))
    img = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                cap[i, j] = max(0.0, margin + s[i, j] - s[i, i])
                img[i, j] = max(0.0, margin + s[i, j] - s[j, j])
    if max_violation:
        return float(cap.max(axis=1).sum() + img.max(axis=0).sum())
    return float(cap.sum() + img.sum())


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_loop_and_keeps_dtype(max_violation: bool, dtype: torch.dtype) -> None:
    gen = np.random.default_rng(0)
    s = gen.uniform(-1, 1, size=(7, 7))
    got = contrastive_loss(torch.tensor(s, dtype=dtype), margin=0.2, max_violation=max_violation)
    assert got.dtype == dtype and got.ndim == 0
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert abs(got.item() - _loop_loss(s, 0.2, max_violation)) < tol


def test_is_sum_not_mean() -> None:
    # doubling the batch with the same per-pair structure doubles the loss (reference quirk: sum)
    s = torch.tensor([[0.5, 0.6], [0.1, 0.5]], dtype=torch.float64)
    big = torch.full((4, 4), -10.0, dtype=torch.float64)
    big[:2, :2] = s
    big[2:, 2:] = s
    assert torch.isclose(contrastive_loss(big), 2 * contrastive_loss(s))
    # hand value: cap row0: [0.2+0.6-0.5]=0.3; img col1: [0.2+0.6-0.5]=0.3; others clamp to 0
    assert torch.isclose(contrastive_loss(s), torch.tensor(0.6, dtype=torch.float64))


def test_zero_when_positives_dominate_and_gradient_flows() -> None:
    s = torch.eye(5, dtype=torch.float64).requires_grad_()
    loss = contrastive_loss(s, margin=0.2)
    assert loss.item() == 0.0
    s2 = (torch.eye(5, dtype=torch.float64) * 0.1).requires_grad_()
    contrastive_loss(s2, margin=0.2, max_violation=True).backward()
    assert s2.grad is not None and s2.grad.diagonal().lt(0).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        contrastive_loss(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(torch.zeros(2, 2), margin=-1.0)
    with pytest.raises(ValueError, match="empty"):
        contrastive_loss(torch.zeros(0, 0))

"""Ranking losses for joint image-text embeddings (VSE++ / SCAN / TERAN hinge loss).

Owns :func:`contrastive_loss`, the bidirectional hinge (triplet) loss on a square score
matrix, exactly as the reference ``ContrastiveLoss`` of VSE++, SCAN and TERAN computes it
(ALGORITHMS.md §3.4, §4.5).
"""

from __future__ import annotations

import torch

__all__ = ["contrastive_loss"]


def contrastive_loss(scores: torch.Tensor, *, margin: float = 0.2, max_violation: bool = False) -> torch.Tensor:
    """Bidirectional hinge loss over a batch of matched image-caption pairs.

    ``scores[i, j]`` is the similarity of image ``i`` and caption ``j``; the pair ``(i, i)`` is the
    positive. With ``d = diag(scores)``::

        cost_cap[i, j] = max(0, margin + scores[i, j] - d[i])   # image i ranking captions
        cost_img[i, j] = max(0, margin + scores[i, j] - d[j])   # caption j ranking images

    both zeroed on the diagonal. Without ``max_violation`` the loss is the **sum** of all entries of
    both matrices; with it (VSE++'s hardest negative) it is ``sum_i max_j cost_cap[i, j] +
    sum_j max_i cost_img[i, j]``.

    Reference quirk kept on purpose: the loss is a sum over the batch, not a mean, so its scale
    grows with the batch size (the reference learning rates assume that).

    Args:
        scores: ``FloatTensor[B, B]`` (float32 or float64, any device), rows images, columns captions.
        margin: hinge margin alpha, ``>= 0``.
        max_violation: keep only the hardest negative per positive (VSE++ / SCAN ``--max_violation``).

    Returns:
        A 0-d tensor with the dtype and device of ``scores``.

    Raises:
        TypeError: if ``scores`` is not a floating-point tensor.
        ValueError: if ``scores`` is not square or ``margin`` is negative.
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(
            f"scores must be a floating-point torch.Tensor; got {type(scores).__name__}"
            + (f" of dtype {scores.dtype}" if isinstance(scores, torch.Tensor) else "")
            + " (convert with torch.as_tensor(x, dtype=torch.float32))"
        )
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(
            f"scores must be a square [B, B] matrix of matched pairs (image i <-> caption i); "
            f"got shape {tuple(scores.shape)}. Repeat each image once per caption to build the batch."
        )
    if scores.shape[0] == 0:
        raise ValueError("scores must hold at least one pair; got an empty [0, 0] matrix")
    if margin < 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    diagonal = scores.diagonal().unsqueeze(1)  # [B, 1]
    cost_cap = (margin + scores - diagonal).clamp(min=0)  # [B, B]: row i against d[i]
    cost_img = (margin + scores - diagonal.t()).clamp(min=0)  # [B, B]: column j against d[j]
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_cap = cost_cap.masked_fill(eye, 0.0)
    cost_img = cost_img.masked_fill(eye, 0.0)
    if max_violation:
        return cost_cap.max(dim=1).values.sum() + cost_img.max(dim=0).values.sum()
    return cost_cap.sum() + cost_img.sum()

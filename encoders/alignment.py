"""TERAN's region-word alignment: the alignment matrix pooled into an image-caption score.

``alignment_scores`` (numpy or torch, any of TERAN's poolings: MrSw, MwSr, symm, MrAVGw, sum, mean,
scan-sentences) and the row trimming TERAN's reference applies to the text branch's output before it aligns
(``trim_for_alignment``, ``caption_rows``). ALGORITHMS.md §4.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["POOLINGS", "Pooling", "alignment_scores", "caption_rows", "length_mask", "trim_for_alignment"]

Pooling = Literal["MrSw", "MwSr", "symm", "MrAVGw", "sum", "mean", "scan-sentences"]
POOLINGS: tuple[str, ...] = ("MrSw", "MwSr", "symm", "MrAVGw", "sum", "mean", "scan-sentences")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _alignment_scores_torch(
    regions: torch.Tensor, region_lens: torch.Tensor, words: torch.Tensor, word_lens: torch.Tensor, pooling: str
) -> torch.Tensor:
    n_img, r_pad, _ = regions.shape
    n_cap, w_pad, _ = words.shape
    rmask = length_mask(region_lens, r_pad)  # [Ni, R]
    wmask = length_mask(word_lens, w_pad)  # [Nc, W]
    valid = rmask[:, None, :, None] & wmask[None, :, None, :]  # [Ni, Nc, R, W]
    align = torch.einsum("ire,cwe->icrw", regions, words).masked_fill(~valid, 0.0)  # zero fill, not -inf
    if pooling == "MrSw":
        return align.amax(dim=2).sum(dim=2)
    if pooling == "MwSr":
        return align.amax(dim=3).sum(dim=2)
    if pooling == "symm":
        return align.amax(dim=2).sum(dim=2) + align.amax(dim=3).sum(dim=2)
    if pooling == "MrAVGw":
        # Reference divides by the trimmed word count; a caption with no words left divides by zero there.
        return align.amax(dim=2).sum(dim=2) / word_lens.to(align.dtype)[None, :]
    if pooling == "sum":
        return align.sum(dim=(2, 3))
    if pooling == "mean":
        return align.sum(dim=(2, 3)) / float(r_pad * w_pad)  # padded sizes: the reference quirk
    if pooling == "scan-sentences":
        pos = F.relu(align)
        pos = pos / pos.norm(dim=2, keepdim=True).clamp_min(1e-12)  # L2 over the regions of each word
        # Softmax over the caption's valid words; padded regions are zeroed afterwards (the reference
        # produces NaN rows there and masks them to 0). A caption with no words gets a zero score.
        logits = pos.masked_fill(~wmask[None, :, None, :], float("-inf"))
        empty = ~wmask.any(dim=1)  # [Nc]
        logits = logits.masked_fill(empty[None, :, None, None], 0.0)
        weights = torch.softmax(logits, dim=3)  # [Ni, Nc, R, W]
        attended = torch.einsum("icrw,cwe->icre", weights, words)  # [Ni, Nc, R, E]
        dots = torch.einsum("ire,icre->icr", regions, attended)
        denom = (regions.norm(dim=-1)[:, None, :] * attended.norm(dim=-1)).clamp_min(1e-8)
        cos = (dots / denom).masked_fill(~rmask[:, None, :], 0.0)
        cos = cos.masked_fill(empty[None, :, None], 0.0)
        return cos.sum(dim=2)
    raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")


def alignment_scores(
    regions: ArrayT,
    region_lens: ArrayT | Sequence[int],
    words: ArrayT,
    word_lens: ArrayT | Sequence[int],
    *,
    pooling: str = "MrSw",
) -> ArrayT:
    """TERAN's pooled region-word alignment score for every (image, caption) pair.

    ``A[i, c, r, w] = <v_ir, t_cw>`` for valid r, w and **0** for padded entries (the reference fills
    with zero, not -inf, so a word's max over an image with padded regions is max(valid, 0)). Pooling
    (``R_pad``, ``W_pad`` the padded widths of the inputs):

    * ``MrSw``: sum_w max_r A; ``MwSr``: sum_r max_w A; ``symm``: their sum;
    * ``MrAVGw``: MrSw / W_c; ``sum``: sum_r sum_w A; ``mean``: sum / (R_pad W_pad) (padded sizes, so
      the value depends on the padding, as in the reference);
    * ``scan-sentences``: B = relu(A) L2-normalised over regions per word (eps 1e-12), softmax over the
      caption's words per region, u_r = sum_w beta_rw t_w, S = sum over valid regions of cos(v_r, u_r)
      (eps 1e-8).

    Args:
        regions: ``float[N_img, R_pad, E]`` region embeddings, reserved slot already removed.
        region_lens: ``int[N_img]`` valid regions per image.
        words: ``float[N_cap, W_pad, E]`` word embeddings, special tokens already removed.
        word_lens: ``int[N_cap]`` valid words per caption.
        pooling: one of :data:`POOLINGS`.

    Returns:
        ``[N_img, N_cap]`` scores of the input's type (numpy or torch) and dtype (float32 or float64).
        Differentiable for torch inputs.

    Raises:
        ValueError: unknown pooling, shape mismatches, or lengths outside ``[0, padded width]``.
        TypeError: non-floating or mixed dtypes.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    as_numpy = isinstance(regions, np.ndarray)
    reg = torch.from_numpy(regions) if as_numpy else regions
    wrd = torch.from_numpy(np.asarray(words)) if as_numpy else words
    if not isinstance(wrd, torch.Tensor):
        raise TypeError(f"regions and words must both be numpy arrays or both torch tensors; got {type(words)}")
    if reg.ndim != 3 or wrd.ndim != 3 or reg.shape[2] != wrd.shape[2]:
        raise ValueError(
            f"regions must be [N_img, R, E] and words [N_cap, W, E] with the same E; "
            f"got {tuple(reg.shape)} and {tuple(wrd.shape)}"
        )
    if not (reg.dtype.is_floating_point and reg.dtype == wrd.dtype):
        raise TypeError(f"regions and words must share a floating dtype; got {reg.dtype} and {wrd.dtype}")
    rlen = torch.as_tensor(np.asarray(region_lens) if not isinstance(region_lens, torch.Tensor) else region_lens)
    wlen = torch.as_tensor(np.asarray(word_lens) if not isinstance(word_lens, torch.Tensor) else word_lens)
    rlen, wlen = rlen.to(reg.device, torch.long), wlen.to(reg.device, torch.long)
    if rlen.shape != (reg.shape[0],) or wlen.shape != (wrd.shape[0],):
        raise ValueError(
            f"region_lens must have shape ({reg.shape[0]},) and word_lens ({wrd.shape[0]},); "
            f"got {tuple(rlen.shape)} and {tuple(wlen.shape)}"
        )
    if bool((rlen < 0).any() | (rlen > reg.shape[1]).any() | (wlen < 0).any() | (wlen > wrd.shape[1]).any()):
        raise ValueError(
            f"lengths must lie in [0, padded width]; region_lens={rlen.tolist()} (R_pad={reg.shape[1]}), "
            f"word_lens={wlen.tolist()} (W_pad={wrd.shape[1]})"
        )
    scores = _alignment_scores_torch(reg, rlen, wrd, wlen, pooling)
    return scores.numpy() if as_numpy else scores


def trim_for_alignment(
    region_emb: torch.Tensor,
    region_lens: torch.Tensor,
    word_emb: torch.Tensor,
    word_lens: torch.Tensor,
    *,
    reference_trim: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove the reserved image slot and the caption's special tokens before alignment.

    Images drop slot 0 (length - 1). Captions drop position 0 (``[CLS]``) and, with ``reference_trim``
    (the reference quirk), the **last two positions of the padded tensor** with every length reduced by
    3: for a caption of n word-pieces, ``[SEP]`` and the last word-piece w_n are excluded. With
    ``reference_trim=False`` only ``[CLS]`` and ``[SEP]`` are dropped (lengths - 2).

    Args:
        region_emb: ``[B_img, 1 + R, E]``; region_lens: ``[B_img]`` (slot included).
        word_emb: ``[B_cap, T, E]``; word_lens: ``[B_cap]`` (special tokens included).

    Returns:
        ``(regions [B_img, R, E], region_lens, words [B_cap, W, E], word_lens)``; lengths clamp at 0.
    """
    regions, rlens = region_emb[:, 1:], (region_lens - 1).clamp_min(0)
    if reference_trim:
        words, wlens = word_emb[:, 1:-2], (word_lens - 3).clamp_min(0)
    else:
        words, wlens = word_emb[:, 1:-1], (word_lens - 2).clamp_min(0)
    return regions, rlens, words, wlens.clamp_max(words.shape[1])


def caption_rows(lengths: torch.Tensor, reference_trim: bool) -> list[slice]:
    """Rows of TERAN's word output that the alignment uses, per caption (see :func:`trim_for_alignment`)."""
    drop_tail = 2 if reference_trim else 1
    return [slice(1, max(1, int(n) - drop_tail)) for n in lengths]



"""TERAN (Messina et al., ACM TOMM 2021): architecture config, region and word encoders, alignment pooling.

Reproduces the reference code (mesnico/TERAN) as restated in ALGORITHMS.md §4, quirks included:

* images get a **reserved slot 0** (zero feature, zero box) that passes through the spatial MLP and
  the transformers like any region; its output is the image's global vector;
* the alignment drops ``[CLS]``, ``[SEP]`` **and the last word-piece** of every caption
  (``reference_trim=True``, the default; ``False`` drops only ``[CLS]``/``[SEP]``);
* padded alignment entries are **0, not -inf**, before max/sum/mean pooling;
* ``mean`` pooling divides by the **padded** sizes.

Deviations (recorded in each model config's ``deviations``): the offline text backbone is
all-MiniLM-L6-v2 (384-d) instead of bert-base-uncased cut to 6 layers (768-d); the global vectors
(slot 0 / ``[CLS]``) are trained with an added matching hinge so that a first-stage ANN index can use
them (the released MrSw configs train alignment only); the optimiser is AdamW.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from regionrank.encoders.alignment import (
    POOLINGS,
    alignment_scores,
    caption_rows,
    length_mask,
    trim_for_alignment,
)
from regionrank.encoders.fingerprint import config_and_weights_hash
from regionrank.encoders.protocol import EncodedCaption, EncodedImage
from regionrank.encoders.text import (
    TokenizedBatch,
    build_random_text_model,
    default_text_model_path,
    drop_stop_words,
    load_text_model,
    load_tokenizer,
    tokenize,
)
from regionrank.storage.records import RegionRecord

__all__ = [
    "POOLINGS",
    "RegionBatch",
    "TeranCfg",
    "TeranModel",
    "TeranOutput",
    "TEXT_DIR",
    "alignment_scores",
    "build_text_backbone",
    "caption_rows",
    "region_batch",
    "spatial_features",
    "trim_for_alignment",
]

_FUSIONS = ("concat-and-process", "project-and-sum")
#: The text backbone's config and tokenizer files in a checkpoint folder (the weights are in the state dict).
TEXT_DIR = "text_model"



# --------------------------------------------------------------------------------------------------
# Architecture config
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeranCfg:
    """TERAN architecture and training defaults (one JSON file in ``encoders/model_configs``).

    Attributes:
        name: registry name (kebab-case, dataset suffix).
        embed_dim: joint space width E (1024).
        feature_dim: region feature width F (2048 for bottom-up features).
        spatial_fusion: ``"concat-and-process"`` (released configs) or ``"project-and-sum"``.
        visual_layers / visual_heads / visual_ff: the first image transformer (4 layers at width F,
            4 heads, feed-forward 2048).
        top_layers / top_heads / top_ff: the transformer after the projection to E (2 layers, 4 heads,
            feed-forward 2048), one per modality unless ``shared_top``.
        shared_top: the image branch reuses the text branch's top transformer (``*_sharedTE``).
        dropout: dropout of every transformer layer.
        text_model: ``"all-minilm-l6-v2"`` (the installed package), ``"random"`` (a randomly
            initialised BERT built from ``text_bert_config``; tests and tiny configs) or a local folder.
        text_dim: the text backbone's hidden width H (384 for MiniLM, 768 for bert-base).
        text_bert_config: ``BertConfig`` keyword arguments for ``text_model="random"``.
        text_layers: extra transformer layers on the backbone output (reference ``text-model.layers``, 0).
        max_tokens: caption truncation in word-pieces, special tokens included (TERAN pads to 88).
        exclude_stopwords: drop English stop words from each caption before tokenisation, so they
            never enter the alignment (reference ``exclude-stopwords``, default False; the list is
            :data:`encoders.text.STOP_WORDS`). A caption made only of stop words is kept whole.
        pooling: alignment pooling, one of :data:`POOLINGS` (MrSw in the released configs).
        reference_trim: drop the last word-piece too (the reference quirk, ALGORITHMS.md §4.4).
        margin / max_violation: hinge loss (0.2, hardest negative).
        matching_weight: weight of the global-vector matching hinge added to the alignment loss
            (0 disables it, as in the released configs).
        lr / lr_step_epochs / lr_gamma / warmup_iters / batch_size / epochs / grad_clip: training
            defaults (ALGORITHMS.md §4.6).
        description / deviations: free text recorded with checkpoints.
    """

    name: str
    embed_dim: int = 1024
    feature_dim: int = 2048
    spatial_fusion: str = "concat-and-process"
    visual_layers: int = 4
    visual_heads: int = 4
    visual_ff: int = 2048
    top_layers: int = 2
    top_heads: int = 4
    top_ff: int = 2048
    shared_top: bool = False
    dropout: float = 0.1
    text_model: str = "all-minilm-l6-v2"
    text_dim: int = 384
    text_bert_config: Mapping[str, Any] = field(default_factory=dict)
    text_layers: int = 0
    max_tokens: int = 88
    exclude_stopwords: bool = False
    pooling: str = "MrSw"
    reference_trim: bool = True
    margin: float = 0.2
    max_violation: bool = True
    matching_weight: float = 1.0
    lr: float = 1e-5
    lr_step_epochs: int = 20
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    batch_size: int = 40
    epochs: int = 30
    grad_clip: float = 2.0
    description: str = ""
    deviations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {self.pooling!r} in config {self.name!r}")
        if self.spatial_fusion not in _FUSIONS:
            raise ValueError(
                f"spatial_fusion must be one of {_FUSIONS}; got {self.spatial_fusion!r} in config {self.name!r}"
            )
        for attr in ("embed_dim", "feature_dim", "visual_heads", "top_heads", "text_dim", "max_tokens"):
            if int(getattr(self, attr)) <= 0:
                raise ValueError(f"{attr} must be positive; got {getattr(self, attr)!r} in config {self.name!r}")
        if self.feature_dim % self.visual_heads or self.embed_dim % self.top_heads:
            raise ValueError(
                f"feature_dim ({self.feature_dim}) must be divisible by visual_heads ({self.visual_heads}) and "
                f"embed_dim ({self.embed_dim}) by top_heads ({self.top_heads}) in config {self.name!r}"
            )
        object.__setattr__(self, "deviations", tuple(self.deviations))
        object.__setattr__(self, "text_bert_config", dict(self.text_bert_config))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TeranCfg:
        """Build from a JSON mapping; unknown keys raise ``ValueError`` listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TeranCfg keys {unknown}; known keys: {sorted(known)}")
        if "name" not in data:
            raise ValueError("a TeranCfg needs a 'name'")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["deviations"] = list(self.deviations)
        out["text_bert_config"] = dict(self.text_bert_config)
        return out

    def replace(self, **changes: Any) -> TeranCfg:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------
# Region inputs
# --------------------------------------------------------------------------------------------------


def spatial_features(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """TERAN's 5-d spatial vector per region: normalised corners and normalised area.

    Args:
        boxes: ``FloatTensor[..., 4]`` ``(x1, y1, x2, y2)`` in original-image pixels.
        sizes: ``FloatTensor[..., 2]`` ``(width, height)`` in pixels, broadcastable to ``boxes[..., :2]``.

    Returns:
        ``FloatTensor[..., 5]`` ``(x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W H))``.
    """
    scale = torch.cat([sizes, sizes], dim=-1)  # [..., 4] = (W, H, W, H)
    norm = boxes / scale
    area = (norm[..., 2] - norm[..., 0]) * (norm[..., 3] - norm[..., 1])
    return torch.cat([norm, area.unsqueeze(-1)], dim=-1)


@dataclass
class RegionBatch:
    """Padded region inputs of a batch of images.

    Attributes:
        features: ``FloatTensor[B, S, F]``; with ``reserved_slot`` position 0 is the zero slot.
        spatial: ``FloatTensor[B, S, 5]`` (see :func:`spatial_features`), 0 in the reserved slot/padding.
        lengths: ``LongTensor[B]`` valid positions per image (the reserved slot included).
        boxes: per image ``float32[n, 4]`` pixel boxes (no slot), kept for embedding records.
    """

    features: torch.Tensor
    spatial: torch.Tensor
    lengths: torch.Tensor
    boxes: list[np.ndarray]

    def to(self, device: torch.device | str) -> RegionBatch:
        return RegionBatch(self.features.to(device), self.spatial.to(device), self.lengths.to(device), self.boxes)


def region_batch(records: Sequence[RegionRecord], *, reserved_slot: bool = True) -> RegionBatch:
    """Stack region records into a padded float32 batch (features are stored as float16).

    Args:
        records: the images' region records (same feature width).
        reserved_slot: prepend TERAN's zero slot 0 (zero feature, zero box); SCAN uses ``False``.

    Raises:
        ValueError: empty input or mixed feature widths.
    """
    if len(records) == 0:
        raise ValueError("region_batch needs at least one RegionRecord")
    dims = {r.feature_dim for r in records}
    if len(dims) != 1:
        raise ValueError(f"region records mix feature widths {sorted(dims)}; encode one detector's shards at a time")
    dim = dims.pop()
    off = 1 if reserved_slot else 0
    width = off + max(r.num_regions for r in records)
    feats = torch.zeros(len(records), width, dim)
    spatial = torch.zeros(len(records), width, 5)
    lengths = torch.zeros(len(records), dtype=torch.long)
    for i, rec in enumerate(records):
        n = rec.num_regions
        feats[i, off : off + n] = torch.tensor(np.asarray(rec.features, dtype=np.float32))
        boxes = torch.tensor(np.asarray(rec.boxes, dtype=np.float32))
        size = torch.tensor([float(rec.width), float(rec.height)])
        spatial[i, off : off + n] = spatial_features(boxes, size.expand(n, 2))
        lengths[i] = off + n
    return RegionBatch(feats, spatial, lengths, [np.asarray(r.boxes, dtype=np.float32) for r in records])


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _transformer(d_model: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=d_model, nhead=heads, dim_feedforward=ff, dropout=dropout, activation="relu", batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class TeranVisualEncoder(nn.Module):
    """Spatial fusion, transformer at the feature width, projection to E (ALGORITHMS.md §4.2, steps 1-3)."""

    def __init__(self, cfg: TeranCfg) -> None:
        super().__init__()
        d = cfg.feature_dim
        self.fusion = cfg.spatial_fusion
        if cfg.spatial_fusion == "concat-and-process":
            self.spatial_map: nn.Module = nn.Sequential(nn.Linear(d + 5, d), nn.ReLU(), nn.Linear(d, d))
        else:
            self.spatial_map = nn.Linear(5, d)
        self.transformer = _transformer(d, cfg.visual_heads, cfg.visual_ff, cfg.visual_layers, cfg.dropout)
        self.proj = nn.Linear(d, cfg.embed_dim)

    def forward(self, features: torch.Tensor, spatial: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """features ``[B, S, F]``, spatial ``[B, S, 5]``, pad_mask ``[B, S]`` (True = padding) -> ``[B, S, E]``."""
        if self.fusion == "concat-and-process":
            x = self.spatial_map(torch.cat([features, spatial], dim=-1))
        else:
            x = features + self.spatial_map(spatial)
        x = self.transformer(x, src_key_padding_mask=pad_mask)
        return self.proj(x)


@dataclass
class TeranOutput:
    """Scores of a batch: ``alignment`` ``[B_img, B_cap]`` (pooled) and ``global_sims`` (dot of global vectors)."""

    alignment: torch.Tensor
    global_sims: torch.Tensor


class TeranModel(nn.Module):
    """TERAN: region encoder + BERT word encoder into one space, scored by pooled alignment.

    Compose with ``encoders.registry.create_encoder`` (registry + weights) or directly from parts:
    ``TeranModel(cfg, text_model, tokenizer)``. Implements ``encoders.protocol.CheckpointableModel``.

    Args:
        cfg: the architecture.
        text_model: a BERT-family module whose output has ``last_hidden_state`` ``[B, T, text_dim]``.
        tokenizer: the matching Hugging Face tokenizer (kept for :meth:`tokenize` and checkpoints).
    """

    kind: ClassVar[str] = "teran"

    def __init__(self, cfg: TeranCfg, text_model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        hidden = getattr(getattr(text_model, "config", None), "hidden_size", cfg.text_dim)
        if int(hidden) != cfg.text_dim:
            raise ValueError(
                f"text model hidden size {hidden} does not match text_dim={cfg.text_dim} of config {cfg.name!r}; "
                f"set text_dim to the backbone's width"
            )
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.visual = TeranVisualEncoder(cfg)
        self.text_backbone = text_model
        self.text_extra = (
            _transformer(cfg.text_dim, 4, 2048, cfg.text_layers, cfg.dropout) if cfg.text_layers > 0 else None
        )
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.text_top = _transformer(cfg.embed_dim, cfg.top_heads, cfg.top_ff, cfg.top_layers, cfg.dropout)
        self.image_top = (
            None
            if cfg.shared_top
            else _transformer(cfg.embed_dim, cfg.top_heads, cfg.top_ff, cfg.top_layers, cfg.dropout)
        )

    @property
    def device(self) -> torch.device:
        return self.text_proj.weight.device

    def tokenize(self, texts: Sequence[str]) -> TokenizedBatch:
        """Word-piece batch of captions (``[CLS] ... [SEP]``, truncated to ``cfg.max_tokens``; stop words
        removed first when ``cfg.exclude_stopwords``)."""
        if self.cfg.exclude_stopwords and not isinstance(texts, str):
            texts = [drop_stop_words(t) for t in texts]
        return tokenize(self.tokenizer, texts, max_length=self.cfg.max_tokens)

    def encode_regions(self, batch: RegionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a region batch built with the reserved slot.

        Returns:
            ``(region_emb [B, S, E], global_emb [B, E])``, both L2-normalised; ``region_emb[:, 0]`` is the
            reserved slot, padded positions hold unmasked values that scoring ignores.
        """
        pad_mask = ~length_mask(batch.lengths, batch.features.shape[1])
        x = self.visual(batch.features, batch.spatial, pad_mask)
        top = self.text_top if self.image_top is None else self.image_top
        x = top(x, src_key_padding_mask=pad_mask)
        x = F.normalize(x, dim=-1)
        return x, x[:, 0]

    def encode_text(self, tokens: TokenizedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a word-piece batch.

        Returns:
            ``(word_emb [B, T, E], global_emb [B, E])`` L2-normalised; position 0 is ``[CLS]`` (the global).
        """
        mask = tokens.attention_mask
        x = self.text_backbone(input_ids=tokens.input_ids, attention_mask=mask).last_hidden_state
        pad_mask = mask == 0
        if self.text_extra is not None:
            x = self.text_extra(x, src_key_padding_mask=pad_mask)
        x = self.text_top(self.text_proj(x), src_key_padding_mask=pad_mask)
        x = F.normalize(x, dim=-1)
        return x, x[:, 0]

    def score_embeddings(
        self,
        region_emb: torch.Tensor,
        region_lens: torch.Tensor,
        word_emb: torch.Tensor,
        word_lens: torch.Tensor,
        *,
        pooling: str | None = None,
    ) -> torch.Tensor:
        """Pooled alignment ``[B_img, B_cap]`` of encoded (untrimmed) regions and words."""
        regions, rlens, words, wlens = trim_for_alignment(
            region_emb, region_lens, word_emb, word_lens, reference_trim=self.cfg.reference_trim
        )
        return alignment_scores(regions, rlens, words, wlens.to(regions.device), pooling=pooling or self.cfg.pooling)

    # ------------------------------------------------------------------ RetrievalModel

    @property
    def encoder_name(self) -> str:
        """The config name."""
        return str(self.cfg.name)

    @property
    def feature_dim(self) -> int:
        """Width F of the region features the model reads."""
        return int(self.cfg.feature_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.cfg.embed_dim)

    def fingerprint(self) -> str:
        return config_and_weights_hash({"kind": self.kind, "config": self.checkpoint_config()}, self)

    def embed_image_records(
        self, records: Sequence[RegionRecord], *, device: torch.device | str | None = None
    ) -> list[EncodedImage]:
        """The R region vectors of each record (reserved slot 0 removed) and the slot-0 output as global."""
        batch = region_batch(records).to(device or self.device)
        region_emb, glob = self.encode_regions(batch)
        region_np, glob_np = region_emb.float().cpu().numpy(), glob.float().cpu().numpy()
        return [EncodedImage(region_np[i, 1 : 1 + r.num_regions].copy(), glob_np[i].copy()) for i, r in enumerate(records)]

    def embed_caption_texts(
        self, texts: Sequence[str], *, device: torch.device | str | None = None
    ) -> list[EncodedCaption]:
        """The word-piece rows the alignment uses (see :func:`caption_rows`) and ``[CLS]`` as global."""
        tokens = self.tokenize(texts).to(device or self.device)
        word_emb, glob = self.encode_text(tokens)
        word_np, glob_np = word_emb.float().cpu().numpy(), glob.float().cpu().numpy()
        rows = caption_rows(tokens.lengths, self.cfg.reference_trim)
        return [
            EncodedCaption(list(tokens.tokens[i][rows[i]]), word_np[i, rows[i]].copy(), glob_np[i].copy())
            for i in range(len(texts))
        ]

    def score_encoded(
        self, regions: torch.Tensor, region_lens: torch.Tensor, words: torch.Tensor, word_lens: torch.Tensor
    ) -> torch.Tensor:
        """:func:`alignment_scores` with the config's pooling (the encoded captions are already trimmed)."""
        dev = regions.device
        return alignment_scores(regions, region_lens.to(dev), words, word_lens.to(dev), pooling=self.cfg.pooling)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_config(self) -> dict[str, Any]:
        """The config plus ``_text_pooler`` (whether the text backbone has BERT's pooler layer)."""
        cfg = self.cfg.to_dict()
        cfg["_text_pooler"] = getattr(self.text_backbone, "pooler", None) is not None
        return cfg

    def save_checkpoint_files(self, folder: Path) -> None:
        """Write the text backbone's config and tokenizer files into ``folder/text_model``."""
        self.text_backbone.config.save_pretrained(str(folder / TEXT_DIR))
        self.tokenizer.save_pretrained(str(folder / TEXT_DIR))

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], folder: Path, *, text_model_path: str | Path | None = None
    ) -> TeranModel:
        """The model of a checkpoint's config, its text backbone built from ``folder/text_model`` (or
        ``text_model_path``) without weights."""
        from transformers import AutoConfig, AutoModel

        data = dict(config)
        pooler = bool(data.pop("_text_pooler", True))
        cfg = TeranCfg.from_dict(data)
        text_dir = Path(text_model_path) if text_model_path is not None else folder / TEXT_DIR
        bert_cfg = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
        kwargs = {} if pooler else {"add_pooling_layer": False}
        text_model = AutoModel.from_config(bert_cfg, **kwargs)
        return cls(cfg, text_model, load_tokenizer(text_dir))

    def forward(self, regions: RegionBatch, tokens: TokenizedBatch) -> TeranOutput:
        """Score every image of ``regions`` against every caption of ``tokens``."""
        region_emb, img_global = self.encode_regions(regions)
        word_emb, cap_global = self.encode_text(tokens)
        align = self.score_embeddings(region_emb, regions.lengths, word_emb, tokens.lengths.to(word_emb.device))
        return TeranOutput(alignment=align, global_sims=img_global @ cap_global.t())

    def loss(self, out: TeranOutput) -> torch.Tensor:
        """Alignment hinge (+ ``matching_weight`` x global hinge) on matched pairs along the diagonal."""
        from regionrank.encoders.losses import contrastive_loss

        total = contrastive_loss(out.alignment, margin=self.cfg.margin, max_violation=self.cfg.max_violation)
        if self.cfg.matching_weight > 0:
            total = total + self.cfg.matching_weight * contrastive_loss(
                out.global_sims, margin=self.cfg.margin, max_violation=self.cfg.max_violation
            )
        return total


def build_text_backbone(
    cfg: TeranCfg, text_model_path: str | Path | None = None, *, pretrained: bool = True
) -> tuple[Any, nn.Module]:
    """``(tokenizer, text model)`` for a config: the installed MiniLM, a local folder, or a random tiny BERT.

    Raises:
        ValueError: ``text_model="random"`` without ``text_bert_config``.
        FileNotFoundError: the folder does not exist.
    """
    if cfg.text_model == "random" and text_model_path is None:
        if not cfg.text_bert_config:
            raise ValueError(f"config {cfg.name!r} has text_model='random' but no text_bert_config")
        return build_random_text_model(cfg.text_bert_config)
    if text_model_path is None:
        text_model_path = default_text_model_path() if cfg.text_model == "all-minilm-l6-v2" else cfg.text_model
    return load_text_model(text_model_path, pretrained=pretrained)

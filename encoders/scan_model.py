"""SCAN's trainable model (Lee et al., ECCV 2018): config, region and word encoders, :class:`ScanModel`.

:class:`ScanModel` scores with the stacked cross attention of ``encoders.scan``; :class:`MeanPoolBaseline`
keeps its encoders and scores with global pooling instead. Both implement
``encoders.protocol.CheckpointableModel`` (registered in ``encoders.registry`` as ``"scan"`` and
``"scan-meanpool"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from regionrank.encoders.fingerprint import config_and_weights_hash
from regionrank.encoders.protocol import EncodedCaption, EncodedImage
from regionrank.encoders.scan import (
    DEFAULT_CHUNK_PAIRS,
    Agg,
    Direction,
    RawNorm,
    check_choice,
    checked_lengths,
    l2norm,
    mean_pool_scores,
    xattn_scores,
)
from regionrank.encoders.teran import region_batch
from regionrank.encoders.vocab import Vocabulary
from regionrank.storage.records import RegionRecord

__all__ = ["VOCAB_FILE", "MeanPoolBaseline", "ScanCfg", "ScanImageEncoder", "ScanModel", "ScanTextEncoder"]

#: The vocabulary's file in a checkpoint folder.
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class ScanCfg:
    """Architecture and scoring configuration of a SCAN model (reference ``train.py`` options).

    ``bi_gru`` defaults to True because every published SCAN model was trained with ``--bi_gru``
    (the reference flag defaults to False). ``direction`` / ``lambda_*`` / ``agg_func`` default to
    the t2i LogSumExp model.
    """

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300
    num_layers: int = 1
    bi_gru: bool = True
    direction: Direction = "t2i"
    raw_feature_norm: RawNorm = "clipped_l2norm"
    agg_func: Agg = "LogSumExp"
    lambda_softmax: float = 9.0
    lambda_lse: float = 6.0
    no_imgnorm: bool = False
    no_txtnorm: bool = False
    weight_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "img_dim", "embed_size", "word_dim", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ScanCfg.{name} must be >= 1; got {getattr(self, name)}")
        if self.vocab_size < 5:
            raise ValueError(f"ScanCfg.vocab_size must count the 4 special tokens plus words; got {self.vocab_size}")
        check_choice("direction", self.direction, Direction)
        check_choice("raw_feature_norm", self.raw_feature_norm, RawNorm)
        check_choice("agg_func", self.agg_func, Agg)
        if self.lambda_softmax <= 0 or self.lambda_lse <= 0:
            raise ValueError(f"lambda_softmax and lambda_lse must be > 0; got {self.lambda_softmax}, {self.lambda_lse}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (``ScanCfg(**d)`` rebuilds it)."""
        return asdict(self)


class ScanImageEncoder(nn.Module):
    """SCAN's precomputed-feature image encoder: one affine map per region, then SCAN's L2 norm.

    ``weight_norm=False`` (``precomp_enc_type basic``): weights uniform in ``±√6/√(in + out)``, bias 0.
    ``weight_norm=True``: the layer under weight normalisation with one scale for the whole matrix
    and PyTorch's default Linear init (the reference does not re-initialise that variant).

    Args:
        img_dim: input feature size (2048 for bottom-up features).
        embed_size: joint space size.
        no_imgnorm: skip the final normalisation.
        weight_norm: use the weight-normalised layer.
    """

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, *, no_imgnorm: bool = False, weight_norm: bool = False) -> None:
        super().__init__()
        self.no_imgnorm = no_imgnorm
        fc = nn.Linear(img_dim, embed_size)
        if weight_norm:
            self.fc: nn.Module = nn.utils.parametrizations.weight_norm(fc, dim=None)
        else:
            bound = math.sqrt(6.0) / math.sqrt(img_dim + embed_size)
            nn.init.uniform_(fc.weight, -bound, bound)
            nn.init.zeros_(fc.bias)
            self.fc = fc

    def forward(self, region_feats: torch.Tensor) -> torch.Tensor:
        """``FloatTensor[B, R, img_dim]`` → ``FloatTensor[B, R, embed_size]`` (L2-normalised per region)."""
        emb = self.fc(region_feats)
        return emb if self.no_imgnorm else l2norm(emb)


class ScanTextEncoder(nn.Module):
    """SCAN's text encoder: word embedding (init ``U(-0.1, 0.1)``) → GRU over packed sequences → L2 norm per word.

    With ``bi_gru`` the forward and backward outputs are **averaged** (reference), not concatenated.

    Args:
        vocab_size: number of word ids.
        word_dim: word embedding size (300).
        embed_size: GRU hidden size = joint space size.
        num_layers: GRU layers.
        bi_gru: bidirectional GRU.
        no_txtnorm: skip the final normalisation.
    """

    def __init__(
        self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024, *, num_layers: int = 1,
        bi_gru: bool = True, no_txtnorm: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=bi_gru)
        self.bi_gru = bi_gru
        self.no_txtnorm = no_txtnorm
        self.embed_size = embed_size

    def forward(self, cap_tokens: torch.Tensor, cap_lens: Any) -> torch.Tensor:
        """``LongTensor[B, L]`` token ids and ``int[B]`` lengths → ``FloatTensor[B, L, embed_size]``.

        Positions beyond a caption's length are zero.
        """
        if cap_tokens.ndim != 2 or cap_tokens.dtype != torch.long:
            raise ValueError(f"cap_tokens must be a LongTensor[B, L]; got {cap_tokens.dtype} {tuple(cap_tokens.shape)}")
        lens = checked_lengths("cap_lens", cap_lens, cap_tokens.shape[0], cap_tokens.shape[1], torch.device("cpu"))
        packed = pack_padded_sequence(self.embed(cap_tokens), lens, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        emb, _ = pad_packed_sequence(out, batch_first=True, total_length=cap_tokens.shape[1])  # [B, L, H or 2H]
        if self.bi_gru:
            emb = (emb[..., : self.embed_size] + emb[..., self.embed_size :]) / 2
        return emb if self.no_txtnorm else l2norm(emb)


class ScanModel(nn.Module):
    """SCAN: region encoder + word encoder + stacked cross attention scorer.

    Args:
        vocab_size: vocabulary size (see :mod:`encoders.vocab`).
        img_dim / embed_size / word_dim / num_layers / bi_gru / no_imgnorm / no_txtnorm / weight_norm:
            encoder architecture (:class:`ScanCfg`).
        direction / raw_feature_norm / agg_func / lambda_softmax / lambda_lse: scorer (:func:`xattn_scores`).
        chunk_size: image-caption pairs scored at once (memory bound; not part of the config).

    The configuration is available as ``model.cfg`` (a frozen :class:`ScanCfg`); the vocabulary that
    turns caption texts into token ids as ``model.vocab`` (set by training or a checkpoint).
    """

    kind: ClassVar[str] = "scan"
    #: the encoded collections carry a global vector (the normalised mean the baseline scores with)
    stores_global_vector: ClassVar[bool] = False

    def __init__(
        self,
        vocab_size: int,
        *,
        img_dim: int = 2048,
        embed_size: int = 1024,
        word_dim: int = 300,
        num_layers: int = 1,
        bi_gru: bool = True,
        direction: Direction = "t2i",
        raw_feature_norm: RawNorm = "clipped_l2norm",
        agg_func: Agg = "LogSumExp",
        lambda_softmax: float = 9.0,
        lambda_lse: float = 6.0,
        no_imgnorm: bool = False,
        no_txtnorm: bool = False,
        weight_norm: bool = False,
        chunk_size: int = DEFAULT_CHUNK_PAIRS,
    ) -> None:
        super().__init__()
        self.cfg = ScanCfg(
            vocab_size=vocab_size, img_dim=img_dim, embed_size=embed_size, word_dim=word_dim, num_layers=num_layers,
            bi_gru=bi_gru, direction=direction, raw_feature_norm=raw_feature_norm, agg_func=agg_func,
            lambda_softmax=lambda_softmax, lambda_lse=lambda_lse, no_imgnorm=no_imgnorm, no_txtnorm=no_txtnorm,
            weight_norm=weight_norm,
        )
        self.chunk_size = chunk_size
        self.vocab: Vocabulary | None = None
        self.image_encoder = ScanImageEncoder(img_dim, embed_size, no_imgnorm=no_imgnorm, weight_norm=weight_norm)
        self.text_encoder = ScanTextEncoder(
            vocab_size, word_dim, embed_size, num_layers=num_layers, bi_gru=bi_gru, no_txtnorm=no_txtnorm
        )

    @classmethod
    def from_cfg(
        cls, cfg: ScanCfg, *, weights: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu",
        chunk_size: int = DEFAULT_CHUNK_PAIRS,
    ) -> ScanModel:
        """Build a model from a :class:`ScanCfg`, randomly initialised or from a local ``state_dict`` file.

        Args:
            cfg: the configuration.
            weights: path to a ``torch.save(model.state_dict())`` file, or None for random init (never downloads).
            device: where to put the model.
            chunk_size: see :class:`ScanModel`.

        Raises:
            FileNotFoundError: if ``weights`` does not exist.
        """
        model = cls(**cfg.to_dict(), chunk_size=chunk_size)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"SCAN weights file {str(path)!r} does not exist; pass a local state_dict path")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def encoder_name(self) -> str:
        """``scan-<direction>`` (``scan-meanpool`` for the baseline)."""
        return f"scan-{self.cfg.direction}"

    @property
    def feature_dim(self) -> int:
        """Width F of the region features the model reads."""
        return int(self.cfg.img_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.cfg.embed_size)

    def fingerprint(self) -> str:
        return config_and_weights_hash({"kind": self.kind, "config": self.checkpoint_config()}, self)

    def checkpoint_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def save_checkpoint_files(self, folder: Path) -> None:
        """Write the vocabulary (``vocab.json``); ValueError when none is attached."""
        if self.vocab is None:
            raise ValueError("a SCAN model needs its vocabulary to be checkpointed: set model.vocab = Vocabulary(...)")
        self.vocab.save(folder / VOCAB_FILE)

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], folder: Path, *, text_model_path: str | Path | None = None
    ) -> ScanModel:
        """The model of a checkpoint's config with its vocabulary (``text_model_path`` is unused)."""
        model = cls(**dict(config))
        model.vocab = Vocabulary.load(folder / VOCAB_FILE)
        return model

    def embed_image_records(
        self, records: Sequence[RegionRecord], *, device: torch.device | str | None = None
    ) -> list[EncodedImage]:
        """The projected region vectors of each record (no reserved slot); a global vector only for the baseline."""
        batch = region_batch(records, reserved_slot=False).to(device or self.device)
        emb = self.embed_regions(batch.features)
        out = []
        for i, r in enumerate(records):
            vecs = emb[i, : r.num_regions].float()
            glob = F.normalize(vecs.mean(dim=0), dim=0).cpu().numpy() if self.stores_global_vector else None
            out.append(EncodedImage(vecs.cpu().numpy(), glob))
        return out

    def embed_caption_texts(
        self, texts: Sequence[str], *, device: torch.device | str | None = None
    ) -> list[EncodedCaption]:
        """Every token's vector, ``<start>``/``<end>`` included (they take part in SCAN's attention).

        Raises:
            ValueError: no vocabulary attached.
        """
        vocab = self.vocab
        if vocab is None:
            raise ValueError("this SCAN model has no vocabulary attached: set model.vocab or load it from a checkpoint")
        ids, lens = vocab.encode_batch(list(texts))
        emb = self.embed_words(ids.to(device or self.device), lens)
        out = []
        for i in range(len(texts)):
            n = int(lens[i])
            vecs = emb[i, :n].float()
            glob = F.normalize(vecs.mean(dim=0), dim=0).cpu().numpy() if self.stores_global_vector else None
            out.append(EncodedCaption([vocab.id_to_word(int(t)) for t in ids[i, :n]], vecs.cpu().numpy(), glob))
        return out

    def score_encoded(
        self, regions: torch.Tensor, region_lens: torch.Tensor, words: torch.Tensor, word_lens: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`score` of padded encoded collections (an empty caption counts as one word)."""
        return self.score(regions, region_lens, words, word_lens.clamp_min(1))

    def embed_regions(self, region_feats: torch.Tensor) -> torch.Tensor:
        """``FloatTensor[B, R, img_dim]`` → ``FloatTensor[B, R, embed_size]``."""
        return self.image_encoder(region_feats)

    def embed_words(self, cap_tokens: torch.Tensor, cap_lens: Any) -> torch.Tensor:
        """``LongTensor[B, L]`` → ``FloatTensor[B, L, embed_size]`` (zeros beyond each length)."""
        return self.text_encoder(cap_tokens, cap_lens)

    def score(
        self, img_emb: torch.Tensor, region_lens: Any | None, cap_emb: torch.Tensor, cap_lens: Any
    ) -> torch.Tensor:
        """Scores ``[n_image, n_caption]`` of encoded images and captions with this model's scorer."""
        c = self.cfg
        return xattn_scores(
            img_emb, cap_emb, cap_lens, direction=c.direction, raw_feature_norm=c.raw_feature_norm,
            agg_func=c.agg_func, lambda_softmax=c.lambda_softmax, lambda_lse=c.lambda_lse,
            region_lens=region_lens, chunk_size=self.chunk_size,
        )

    def forward(
        self, region_feats: torch.Tensor, region_lens: Any | None, cap_tokens: torch.Tensor, cap_lens: Any
    ) -> torch.Tensor:
        """Score every image of the batch against every caption.

        Args:
            region_feats: ``FloatTensor[B_img, R, img_dim]`` region features (zero-padded).
            region_lens: ``int[B_img]`` valid regions per image, or None when all R are valid.
            cap_tokens: ``LongTensor[B_cap, L]`` token ids (``<start> ... <end>``, ``<pad>``-padded).
            cap_lens: ``int[B_cap]`` caption lengths including ``<start>`` and ``<end>``.

        Returns:
            ``FloatTensor[B_img, B_cap]`` similarity scores.
        """
        return self.score(self.embed_regions(region_feats), region_lens, self.embed_words(cap_tokens, cap_lens), cap_lens)


class MeanPoolBaseline(ScanModel):
    """SCAN's encoders with a global-pooling scorer (:func:`mean_pool_scores`) instead of cross attention.

    A bag-of-regions baseline: it cannot tell two images apart whose regions differ only in which
    attribute goes with which object. Same constructor as :class:`ScanModel` (scorer options unused).
    """

    kind: ClassVar[str] = "scan-meanpool"
    stores_global_vector: ClassVar[bool] = True

    @property
    def encoder_name(self) -> str:
        return "scan-meanpool"

    def score(
        self, img_emb: torch.Tensor, region_lens: Any | None, cap_emb: torch.Tensor, cap_lens: Any
    ) -> torch.Tensor:
        """Cosine of mean region and mean word vectors, ``[n_image, n_caption]``."""
        return mean_pool_scores(img_emb, cap_emb, cap_lens, region_lens=region_lens)

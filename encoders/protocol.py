"""The protocol every retrieval model of ``encoders`` implements, and what its encoders return.

:class:`RetrievalModel` is what the embedding writers (``encoders.embed``), training and evaluation
(``encoders.training``) and the query adapters ask of a model: encode region records and caption texts
into exactly the rows its scorer uses, score already-encoded collections, and say its name, width and
fingerprint. :class:`CheckpointableModel` adds what ``encoders.checkpoint`` needs to write a model and
rebuild it. TERAN (``encoders.teran.TeranModel``), SCAN (``encoders.scan_model.ScanModel`` and its
mean-pool baseline) and the label-grounded encoder (``encoders.grounded.GroundedEncoder``, not
checkpointable: nothing is trained) declare them; nobody branches on a model's kind string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from regionrank.storage.records import RegionRecord

__all__ = ["CheckpointableModel", "EncodedCaption", "EncodedImage", "RetrievalModel"]


@dataclass
class EncodedImage:
    """One encoded image: ``region_embeddings`` ``float32[n, E]`` and ``global_embedding`` ``float32[E]`` or None.

    ``labels``: one human-readable label per region where the encoder has them (label-grounded), else None.
    """

    region_embeddings: np.ndarray
    global_embedding: np.ndarray | None
    labels: list[str] | None = None


@dataclass
class EncodedCaption:
    """One encoded caption: ``tokens`` (one per row), ``word_embeddings`` ``float32[L, E]``, ``global_embedding``."""

    tokens: list[str]
    word_embeddings: np.ndarray
    global_embedding: np.ndarray | None


@runtime_checkable
class RetrievalModel(Protocol):
    """An image-text retrieval model over region features (see the module docstring).

    ``embed_image_records`` and ``embed_caption_texts`` run as they are called (the caller sets eval mode
    and no-grad: ``encoders.embed.encode_region_records`` / ``encode_texts``); ``device`` None means the
    model's own device.
    """

    @property
    def encoder_name(self) -> str:
        """The name recorded in the embedding stores."""
        ...

    @property
    def embed_dim(self) -> int:
        """Width E of the joint space."""
        ...

    def fingerprint(self) -> str:
        """sha256 hex of everything that decides the embeddings (config and weights): the stores'
        ``encoder_hash``."""
        ...

    def embed_image_records(
        self, records: Sequence[RegionRecord], *, device: torch.device | str | None = None
    ) -> list[EncodedImage]:
        """One :class:`EncodedImage` per record, with exactly ``record.num_regions`` region rows."""
        ...

    def embed_caption_texts(
        self, texts: Sequence[str], *, device: torch.device | str | None = None
    ) -> list[EncodedCaption]:
        """One :class:`EncodedCaption` per text, its rows exactly those the model's scorer uses."""
        ...

    def score_encoded(
        self, regions: torch.Tensor, region_lens: torch.Tensor, words: torch.Tensor, word_lens: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``[n_image, n_caption]`` of padded encoded images (``regions [n, R, E]``) and captions
        (``words [m, W, E]``), as :meth:`embed_image_records` / :meth:`embed_caption_texts` return them."""
        ...


@runtime_checkable
class CheckpointableModel(RetrievalModel, Protocol):
    """A trainable :class:`RetrievalModel` that ``encoders.checkpoint`` writes and rebuilds.

    ``kind`` is the family name the registry (``encoders.registry``) maps back to the class.
    """

    kind: ClassVar[str]

    @property
    def feature_dim(self) -> int:
        """Width F of the region features the model reads."""
        ...

    def checkpoint_config(self) -> dict[str, Any]:
        """The JSON config that rebuilds the architecture (with :meth:`from_checkpoint`)."""
        ...

    def save_checkpoint_files(self, folder: Path) -> None:
        """Write what the weights do not hold (tokenizer, vocabulary) into the checkpoint ``folder``."""
        ...

    @classmethod
    def from_checkpoint(
        cls, config: Mapping[str, Any], folder: Path, *, text_model_path: str | Path | None = None
    ) -> CheckpointableModel:
        """The randomly initialised model of a checkpoint's config and files (weights are loaded after)."""
        ...

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...

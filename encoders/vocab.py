"""Word vocabulary and tokenizer for SCAN's GRU text encoder (ALGORITHMS.md §3.1).

Owns :class:`Vocabulary` (word ↔ id, JSON save/load), :func:`tokenize` and
:func:`build_vocab`. SCAN lowercases captions, tokenises them with NLTK's ``word_tokenize`` and
keeps the words seen at least 4 times, plus ``<pad>``, ``<start>``, ``<end>``, ``<unk>`` (ids 0-3).
NLTK is not installed on the build machines: :func:`tokenize` uses the regular expression
``\\w+|[^\\w\\s]`` (runs of word characters, and every other non-space character on its own),
which agrees with NLTK on plain caption text and differs on contractions ("don't" →
``don ' t`` here, ``do n't`` in NLTK) and on some abbreviations.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["PAD", "SPECIAL_TOKENS", "START", "END", "UNK", "Vocabulary", "build_vocab", "tokenize"]

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, START, END, UNK)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_FORMAT = "regionrank-vocab-v1"


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words and punctuation marks (NLTK stand-in, see module doc)."""
    return _TOKEN_RE.findall(text.lower())


class Vocabulary:
    """A fixed word ↔ id mapping whose first four ids are ``<pad>, <start>, <end>, <unk>``.

    Args:
        words: the vocabulary in id order; must start with :data:`SPECIAL_TOKENS` and hold no duplicates.

    Raises:
        ValueError: if the special tokens are missing or misplaced, or a word repeats.
    """

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"a vocabulary must start with {list(SPECIAL_TOKENS)}; got {words[:4]} (build it with build_vocab)"
            )
        self._idx2word = words
        self._word2idx = {w: i for i, w in enumerate(words)}
        if len(self._word2idx) != len(words):
            dup = next(w for w in words if words.count(w) > 1)
            raise ValueError(f"duplicate word {dup!r} in the vocabulary")

    def __len__(self) -> int:
        return len(self._idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self._word2idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._idx2word == other._idx2word

    __hash__ = None  # type: ignore[assignment]

    @property
    def words(self) -> list[str]:
        """The words in id order (a copy)."""
        return list(self._idx2word)

    def word_to_id(self, word: str) -> int:
        """The id of ``word``, or the id of ``<unk>`` for an unknown word."""
        return self._word2idx.get(word, self._word2idx[UNK])

    def id_to_word(self, idx: int) -> str:
        """The word with id ``idx``.

        Raises:
            ValueError: if ``idx`` is outside ``[0, len(self))``.
        """
        if not 0 <= idx < len(self._idx2word):
            raise ValueError(f"word id {idx} is outside [0, {len(self._idx2word)})")
        return self._idx2word[idx]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``<start> tokenize(text) <end>`` (SCAN includes both markers; they attend too)."""
        return [self._word2idx[START], *(self.word_to_id(w) for w in tokenize(text)), self._word2idx[END]]

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and right-pad a batch of captions with ``<pad>`` (id 0).

        Args:
            texts: ``B`` captions.

        Returns:
            ``(tokens LongTensor[B, L_max], lens LongTensor[B])`` where ``lens`` counts ``<start>`` and ``<end>``.

        Raises:
            ValueError: if ``texts`` is empty.
        """
        if len(texts) == 0:
            raise ValueError("texts is empty: encode at least one caption")
        ids = [self.encode(t) for t in texts]
        lens = torch.tensor([len(x) for x in ids], dtype=torch.long)
        tokens = torch.zeros(len(ids), int(lens.max()), dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens, lens

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the vocabulary as JSON (``{"format": ..., "words": [...]}``) and return the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps({"format": _FORMAT, "words": self._idx2word}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a regionrank vocabulary.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"vocabulary file {str(p)!r} does not exist; build one with build_vocab(...).save(path)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(p)!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("words"), list):
            raise ValueError(f"{str(p)!r} is not a regionrank vocabulary (expected format {_FORMAT!r})")
        return cls(data["words"])


def build_vocab(captions: Iterable[str], *, threshold: int = 4) -> Vocabulary:
    """Build SCAN's vocabulary: every word seen at least ``threshold`` times, after the special tokens.

    SCAN counts the train + dev captions with a threshold of 4. Its word order came from a Python 2
    dict (arbitrary); regionrank orders words by descending count, then alphabetically, so the
    same captions always give the same ids.

    Args:
        captions: raw caption strings.
        threshold: minimum count, ``>= 1``.

    Returns:
        The :class:`Vocabulary`.

    Raises:
        ValueError: if ``threshold < 1``.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be >= 1; got {threshold}")
    counts = Counter(w for text in captions for w in tokenize(text))
    kept = sorted((w for w, c in counts.items() if c >= threshold and w not in SPECIAL_TOKENS), key=lambda w: (-counts[w], w))
    return Vocabulary([*SPECIAL_TOKENS, *kept])

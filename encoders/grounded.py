"""Zero-shot label-grounded visual encoder: regions embedded as the text of their detector labels.

A **baseline beside TERAN, not TERAN**: nothing is trained. Each region's embedding is a MiniLM
embedding of its class label (``"cat"``), or of ``"<attribute> <label>"`` when the detector gives
attributes (bottom-up: 400 Visual Genome attributes), so regions live in the same space as the
query's word embeddings. Everything built for TERAN then works unchanged on real photos: the region
index, MrSw alignment scoring, SCAN cross-attention re-ranking (parameter-free given embeddings),
per-word explanations and heatmaps.

Two embeddings (``contextual``):

* **contextual** (default). The image's labels are written as one English sentence, the label bag
  ``"a photo of two people, a dog and a potted plant"`` (:func:`encoders.labelbag.natural_bag_text`),
  and run through MiniLM once; a region's vector is the mean of the last hidden states of its label's
  word-pieces in that sentence (L2-normalised), so it carries the count ("two people") and the other
  objects of the scene, and every region of one label shares it. The whole-image ``scene`` box (class
  id 0 of the SSD backend, ``scene_class_ids``) gets the sentence vector of the bag (the mean of all its
  token states, sentence-transformers' pooling), which is also the image's global vector. A query's word
  vectors are the contextual token states of the query sentence, mean-pooled per word (punctuation
  dropped), TERAN's text side with MiniLM in place of the trained BERT; the global vector is the query's
  sentence embedding (same forward pass). English stop words are dropped from the query's word set
  (``exclude_stopwords``, TERAN's ``exclude-stopwords`` option; the vectors of the kept words are still
  computed in the context of the whole query).
* **static** (``contextual=False``). Every word and every label is embedded on its own (``[CLS] word
  [SEP]``), so a caption's "cat" and a region labelled "cat" have cosine exactly 1; query synonyms and
  plurals are mapped onto the label vocabulary (``normalize_queries``), stop words are dropped and
  consecutive words that form a multi-word label ("traffic light") are merged; the global vector is the
  sentence embedding of :func:`encoders.labelbag.label_bag_text`.

Measured on the 239 real COCO photos of ``shared/data/coco-mini`` (1,195 captions,
``ssd-mobilenet-coco`` regions with score >= 0.3 plus the scene box), text->image R@1/5/10 of MrSw
(``bench/real.py``): static 0.236/0.621/0.730; contextual 0.375/0.713/0.796 (0.383/0.706/0.804 after
SCAN re-ranking); the label-bag baseline (sentence of "a photo of 2 person, 1 dog" vs the caption's)
0.340/0.689/0.758. Where the contextual gain comes from (ablations of the same regions and captions,
scratch scripts, not in the repository): contextual query words against static label vectors 0.249;
labels in the "2 person, 1 dog" bag 0.350; in the English sentence 0.375 (0.352 without the scene
region); query synonym normalisation costs 2-3 points in contextual mode (MiniLM already places "man"
near "people"). Keeping stop words (``bench/real.py --keep-stopwords``) gives MrSw 0.385 but SCAN
re-ranking then loses (0.381 after re-ranking, val 0.403); dropping them gives MrSw 0.375 and 0.383
after SCAN re-ranking (val 0.430), the better search, so they are dropped.

With contextual vectors a word's best region is no longer an exact label match: the explanation of
"cat" points at the cat region with cosine ~0.93 (demo photo chelsea.jpg), not 1.

The label map is a parameter (``label_names``): ``encoders`` never imports ``extractors``; the flows
layer passes e.g. ``extractors.labels.coco_label_names()`` for ``ssd-mobilenet-coco`` shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from regionrank.encoders.fingerprint import update_with_weights
from regionrank.encoders.protocol import EncodedCaption, EncodedImage
from regionrank.encoders.teran import alignment_scores
from regionrank.encoders.text import STOP_WORDS, embed_words, load_text_model, split_words, tokenize
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding, RegionRecord

__all__ = ["GroundedEncoder"]

_MAX_PHRASE_WORDS = 3
_MAX_LENGTH = 128  # word-pieces per bag sentence or query, special tokens included
_BAG_CACHE_SIZE = 4096  # bag sentences whose vectors are kept (images often share a bag: "a photo of a cat")


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


class GroundedEncoder:
    """Label-grounded zero-shot encoder (see the module docstring).

    Args:
        label_names: detector class id -> label text (e.g. ``{17: "cat", 18: "dog"}``).
        text_model_path: a local BERT-family folder; ``None`` uses the installed all-MiniLM-L6-v2.
        device: where the text model runs.
        attr_names: attribute id -> text, for detectors with attributes (id 0 / missing = none).
        stop_words: words dropped from queries.
        min_attr_score: attributes scored below this are ignored.
        text_model: an already loaded ``(tokenizer, model)`` pair (tests), instead of a folder.
        normalize_queries: map query synonyms and plurals onto the label vocabulary (static mode only;
            measured on coco-mini: text->image R@1 0.234 -> 0.241 with static MrSw).
        contextual: contextual label-in-sentence and query-token vectors (default) or static per-word
            vectors (see the module docstring).
        exclude_stopwords: drop ``stop_words`` from queries (a query made only of stop words keeps them).
        scene_class_ids: class ids of whole-image boxes; in contextual mode they get the bag's sentence
            vector and are left out of the bag sentence.

    Raises:
        ValueError: an empty label map.
        FileNotFoundError: ``text_model_path`` is not a model folder.
    """

    name = "grounded-minilm"

    def __init__(
        self,
        label_names: Mapping[int, str],
        text_model_path: str | os.PathLike[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        attr_names: Mapping[int, str] | None = None,
        stop_words: Collection[str] = STOP_WORDS,
        min_attr_score: float = 0.0,
        text_model: tuple[Any, torch.nn.Module] | None = None,
        normalize_queries: bool = True,
        contextual: bool = True,
        exclude_stopwords: bool = True,
        scene_class_ids: Collection[int] = (0,),
    ) -> None:
        if not label_names:
            raise ValueError("label_names is empty: pass the detector's class id -> label map")
        self.label_names = {int(k): str(v).strip().lower() for k, v in label_names.items()}
        self.attr_names = {int(k): str(v).strip().lower() for k, v in (attr_names or {}).items()}
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.min_attr_score = float(min_attr_score)
        self.normalize_queries = bool(normalize_queries)
        self.contextual = bool(contextual)
        self.exclude_stopwords = bool(exclude_stopwords)
        self.scene_class_ids = frozenset(int(c) for c in scene_class_ids)
        self.device = torch.device(device)
        if text_model is None:
            tokenizer, model = load_text_model(text_model_path, device=self.device)
        else:
            tokenizer, model = text_model[0], text_model[1].to(self.device)
        self.tokenizer, self.text_model = tokenizer, model.eval()
        self.embed_dim = int(model.config.hidden_size)
        self._phrases = {tuple(v.split()) for v in self.label_names.values() if len(v.split()) > 1}
        self._cache: dict[str, np.ndarray] = {}
        self._bag_cache: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        h = hashlib.sha256(b"grounded-v1")
        options: list[Any] = [sorted(self.label_names.items()), sorted(self.attr_names.items()),
                              sorted(self.stop_words), self.min_attr_score]
        if self.contextual:  # static stores keep their v1 hash (no re-embedding of existing workspaces)
            options += ["contextual-v2", sorted(self.scene_class_ids)]
        h.update(json.dumps(options).encode())
        update_with_weights(h, self.text_model)
        self.encoder_hash = h.hexdigest()

    # ------------------------------------------------------------------ words and labels

    def embed_phrases(self, phrases: Sequence[str]) -> np.ndarray:
        """``float32[n, H]`` unit vectors, one per word/phrase embedded on its own (cached)."""
        todo = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if todo:
            for p, v in zip(todo, embed_words(self.tokenizer, self.text_model, todo, device=self.device)):
                self._cache[p] = v
        if not phrases:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self._cache[p] for p in phrases]).astype(np.float32, copy=False)

    def region_labels(self, record: RegionRecord) -> list[str]:
        """The text each region is embedded as: its label, prefixed by its attribute when present.

        Raises:
            ValueError: the record has no class ids, or an id is missing from ``label_names``.
        """
        if record.class_ids is None:
            raise ValueError(
                f"image_id={record.image_id!r} (detector {record.detector!r}) has no class_ids; the grounded encoder "
                f"needs a detector that labels regions (e.g. ssd-mobilenet-coco)"
            )
        unknown = sorted({int(c) for c in record.class_ids} - set(self.label_names))
        if unknown:
            raise ValueError(
                f"class ids {unknown[:5]} of image_id={record.image_id!r} are not in label_names "
                f"({len(self.label_names)} labels); pass the label map of detector {record.detector!r}"
            )
        labels = [self.label_names[int(c)] for c in record.class_ids]
        if record.attr_ids is not None and self.attr_names:
            scores = record.attr_scores if record.attr_scores is not None else np.ones(len(labels), dtype=np.float32)
            for i, (a, s) in enumerate(zip(record.attr_ids, scores)):
                attr = self.attr_names.get(int(a))
                if attr and float(s) >= self.min_attr_score:
                    labels[i] = f"{attr} {labels[i]}"
        return labels

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``float32[n, H]`` sentence vectors: mean of all token states (attention-masked), L2-normalised."""
        from regionrank.encoders.labelbag import sentence_embeddings

        return sentence_embeddings(self.tokenizer, self.text_model, texts, batch_size=batch_size, device=self.device)

    @staticmethod
    def label_bag_text(labels: Sequence[str]) -> str:
        """``"a photo of 2 person, 1 dog"``: label counts, most frequent first, then alphabetical."""
        from regionrank.encoders.labelbag import label_bag_text

        return label_bag_text(labels)

    @torch.no_grad()
    def _token_states(self, text: str) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
        """Last hidden states ``float32[T, H]`` of ``[CLS] text [SEP]``, each token's ``[start, end)``
        character offsets in ``text`` (``(0, 0)`` for the special tokens) and its word index (``None``
        for the special tokens)."""
        enc = self.tokenizer(text, truncation=True, max_length=_MAX_LENGTH, return_offsets_mapping=True,
                             return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].numpy()
        word_ids = enc.word_ids(0)
        states = self.text_model(input_ids=enc["input_ids"].to(self.device),
                                 attention_mask=enc["attention_mask"].to(self.device)).last_hidden_state[0]
        return states.float().cpu().numpy(), offsets, word_ids

    def bag_vectors(self, labels: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Contextual label vectors of one image's label bag (cached per bag sentence).

        Args:
            labels: the object labels of the image (scene boxes excluded), one per region.

        Returns:
            ``({label: float32[H] unit vector}, sentence)``: each distinct label's mean word-piece state
            within :func:`encoders.labelbag.natural_bag_text`'s sentence, and the sentence's own unit vector
            (mean of all its token states, ``[CLS]``/``[SEP]`` included, as sentence-transformers pools).
        """
        from regionrank.encoders.labelbag import natural_bag_text

        text, spans = natural_bag_text(labels)
        if text not in self._bag_cache:
            states, offsets, _ = self._token_states(text)
            vecs = {}
            for label, (start, end) in spans.items():
                inside = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
                if not inside.any():  # truncated away (an image with very many distinct labels)
                    inside = np.zeros(len(states), dtype=bool)
                    inside[1:-1] = True
                vecs[label] = _unit(states[inside].mean(axis=0))
            if len(self._bag_cache) >= _BAG_CACHE_SIZE:  # bounded: a large store has many distinct bags
                self._bag_cache.pop(next(iter(self._bag_cache)))
            self._bag_cache[text] = vecs, _unit(states.mean(axis=0))
        return self._bag_cache[text]

    def encode_record(self, record: RegionRecord) -> ImageEmbeddingRecord:
        """The image-embedding record of one image: one vector per region, ``labels`` filled.

        Contextual mode: label-in-sentence vectors, the scene box gets the bag sentence vector, which is
        also the global vector. Static mode: each label's own vector; the global vector is the sentence
        embedding of :meth:`label_bag_text`.
        """
        labels = self.region_labels(record)
        if self.contextual:
            scene = np.isin(np.asarray(record.class_ids, dtype=np.int64), list(self.scene_class_ids))
            by_label, sentence = self.bag_vectors([lab for lab, sc in zip(labels, scene, strict=True) if not sc])
            vecs = np.stack([sentence if sc else by_label[lab] for lab, sc in zip(labels, scene, strict=True)]
                            ) if labels else np.zeros((0, self.embed_dim), np.float32)  # fmt: skip
            global_vec = sentence
        else:
            vecs = self.embed_phrases(labels)
            global_vec = self.sentence_embeddings([self.label_bag_text(labels)])[0]
        return ImageEmbeddingRecord(
            image_id=record.image_id,
            uri=record.uri,
            boxes=record.boxes,
            region_embeddings=vecs.astype(np.float32, copy=False),
            global_embedding=global_vec.astype(np.float32, copy=False),
            width=record.width,
            height=record.height,
            labels=labels,
        )

    # ------------------------------------------------------------------ queries

    def query_words(self, text: str) -> list[str]:
        """Words of a query as matched against the regions.

        Contextual mode: the query's words as MiniLM's tokenizer splits them (lower-cased, punctuation
        dropped), stop words removed (``exclude_stopwords``). Static mode: synonyms and plurals
        mapped onto the label vocabulary (``"men"`` -> ``"person"``, ``"dogs"`` -> ``"dog"``; see
        ``encoders.labelbag.normalize_query_text``), multi-word labels merged, stop words dropped. A query
        made only of stop words keeps all its words.
        """
        if self.contextual:
            return [w for w, _ in self._contextual_words(text)[0]]
        if self.normalize_queries:
            from regionrank.encoders.labelbag import normalize_query_text

            text = normalize_query_text(text, self.label_names.values())
        words = split_words(text)
        merged: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(_MAX_PHRASE_WORDS, len(words) - i), 1, -1):
                if tuple(words[i : i + n]) in self._phrases:
                    merged.append(" ".join(words[i : i + n]))
                    i += n
                    break
            else:
                merged.append(words[i])
                i += 1
        return self._drop_stop_words(merged)

    def _drop_stop_words(self, words: list[str]) -> list[str]:
        if not self.exclude_stopwords:
            return words
        return [w for w in words if w not in self.stop_words] or words

    def _contextual_words(self, text: str) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
        """``([(word, float32[H] unit vector)], sentence unit vector)`` of one query (one forward pass)."""
        states, offsets, word_ids = self._token_states(text)
        pieces: dict[int, list[int]] = {}
        for t, w in enumerate(word_ids):
            if w is not None:
                pieces.setdefault(w, []).append(t)
        words = []
        for tokens in pieces.values():
            start, end = int(offsets[tokens[0], 0]), int(offsets[tokens[-1], 1])
            word = text[start:end].lower()
            if any(ch.isalnum() for ch in word):
                words.append((word, _unit(states[tokens].mean(axis=0))))
        kept = set(self._drop_stop_words([w for w, _ in words]))
        return [(w, v) for w, v in words if w in kept], _unit(states.mean(axis=0))

    def encode_query(self, text: str) -> QueryEmbedding:
        """Encode a text query: one vector per word (see :meth:`query_words`), global = its sentence embedding.

        Raises:
            ValueError: the query has no word at all.
        """
        if self.contextual:
            words, sentence = self._contextual_words(text)
            if not words:
                raise ValueError(f"query {text!r} has no words to search for; type at least one word")
            return QueryEmbedding(text=text, tokens=[w for w, _ in words],
                                  word_embeddings=np.stack([v for _, v in words]).astype(np.float32),
                                  global_embedding=sentence.astype(np.float32))
        words = self.query_words(text)
        if not words:
            raise ValueError(f"query {text!r} has no words to search for; type at least one word")
        vecs = self.embed_phrases(words)
        return QueryEmbedding(text=text, tokens=words, word_embeddings=vecs,
                              global_embedding=self.sentence_embeddings([text])[0])

    # ------------------------------------------------------------------ RetrievalModel

    @property
    def encoder_name(self) -> str:
        return self.name

    def fingerprint(self) -> str:
        return self.encoder_hash

    def embed_image_records(
        self, records: Sequence[RegionRecord], *, device: torch.device | str | None = None
    ) -> list[EncodedImage]:
        """:meth:`encode_record` of each record (``device`` is unused: the encoder runs on its own)."""
        out = []
        for record in records:
            rec = self.encode_record(record)
            out.append(EncodedImage(rec.region_embeddings, rec.global_embedding, rec.labels))
        return out

    def embed_caption_texts(
        self, texts: Sequence[str], *, device: torch.device | str | None = None
    ) -> list[EncodedCaption]:
        """:meth:`encode_query` of each text (``device`` is unused: the encoder runs on its own)."""
        out = []
        for text in texts:
            q = self.encode_query(text)
            out.append(EncodedCaption(list(q.tokens), np.asarray(q.word_embeddings, np.float32), q.global_embedding))
        return out

    def score_encoded(
        self, regions: torch.Tensor, region_lens: torch.Tensor, words: torch.Tensor, word_lens: torch.Tensor
    ) -> torch.Tensor:
        """MrSw alignment (``encoders.teran.alignment_scores``) of padded encoded collections."""
        dev = regions.device
        return alignment_scores(regions, region_lens.to(dev), words, word_lens.to(dev), pooling="MrSw")

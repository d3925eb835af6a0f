"""Label-bag retrieval baseline: a sentence embedding of an image's detected labels vs the caption's.

An image is described by the text of its confident detections, counted per label
(``"a photo of 2 person, 1 dog"``), and both that text and each caption are embedded with the
MiniLM sentence encoder (all-MiniLM-L6-v2 as sentence-transformers runs it: mean of the last hidden
states over the attention mask, L2-normalised). The score of an (image, caption) pair is the cosine
of the two sentence vectors. Nothing is trained; there are no region vectors.

It is the reference baseline of the real-photo evaluation (``bench/real.py``). ENVIRONMENT.md §6.2
quotes text→image R@1 0.39 / R@5 0.70 / R@10 0.79 "on the 239 photos" with ``ssd-mobilenet-coco``
detections above score 0.4; this implementation gives 0.340 / 0.689 / 0.758 over all 239 images
(1,195 captions), and 0.404 / 0.736 / 0.801 when the gallery is only the 159 val2017 images (their 795
captions) -- the reference most likely ranked that 159-image gallery (the same 159 photos as its
detector check). Detecting with OpenCV's own ``blobFromImage`` resize instead of the backend's gives
0.332; score thresholds 0.3 / 0.5 give 0.341 / 0.325; the English sentence of
:func:`natural_bag_text` ("a photo of four people, two potted plants and a dining table",
``text_format="natural"``) gives 0.360 at 0.4 and 0.367 at 0.3. Detections are filtered by score
(``min_score``, default 0.4, the threshold that measurement used) and the whole-image ``"scene"`` box of
the SSD backend (class id 0, score 1.0) is left out by default (``exclude_class_ids``): it names no object.

The label map is a parameter: ``encoders`` never imports ``extractors``; callers pass e.g.
``extractors.labels.coco_label_names()``.

It also holds :func:`normalize_query_text`, the query-side mapping of caption words onto the label
vocabulary (synonyms such as "man" -> "person", plurals such as "dogs" -> "dog") that the real-photo
evaluation applies before :class:`encoders.grounded.GroundedEncoder` (proposed to move into its query
processing).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from regionrank.encoders.text import load_text_model, split_words, tokenize
from regionrank.storage.records import RegionRecord

__all__ = [
    "COCO_SYNONYMS",
    "LabelBagEncoder",
    "label_bag_text",
    "natural_bag_text",
    "normalize_query_text",
    "record_labels",
    "sentence_embeddings",
]

_EMPTY_BAG = "a photo"

#: COCO label -> caption words that name it (synonyms, hyponyms and irregular plurals). Written for
#: this project in the spirit of the object-synonym lists of Neural Baby Talk (Lu et al., 2018) and
#: CHAIR (Rohrbach et al., 2018); regular plurals are handled by rule in :func:`normalize_query_text`.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": tuple(
        """man men woman women people persons boy boys girl girls child children kid kids guy guys lady ladies
        player players skier skiers surfer surfers skateboarder skateboarders snowboarder snowboarders rider
        riders baby babies adult adults teenager teenagers toddler toddlers crowd pitcher batter catcher
        gentleman""".split()
    ),
    "bicycle": ("bike", "bikes", "cyclist"),
    "motorcycle": ("motorbike", "motorbikes", "scooter"),
    "airplane": ("plane", "planes", "jet", "jets", "aircraft", "airliner"),
    "car": ("taxi", "sedan"),
    "tv": ("television", "televisions", "tvs"),
    "couch": ("sofa", "sofas", "couches"),
    "cell phone": ("phone", "phones", "cellphone", "cellphones", "smartphone"),
    "dining table": ("table", "tables"),
    "potted plant": ("plant", "plants", "houseplant"),
    "donut": ("doughnut", "doughnuts"),
    "sports ball": ("ball", "balls", "soccer", "football"),
    "tennis racket": ("racket", "rackets", "racquet", "racquets"),
    "baseball bat": ("bat", "bats"),
    "baseball glove": ("glove", "gloves", "mitt"),
    "fire hydrant": ("hydrant", "hydrants"),
    "handbag": ("purse", "purses", "bag", "bags"),
    "teddy bear": ("teddy", "teddies"),
    "refrigerator": ("fridge", "fridges"),
    "dog": ("puppy", "puppies"),
    "cat": ("kitten", "kittens"),
    "cow": ("cattle", "calf", "bull"),
    "laptop": ("computer", "computers", "notebook"),
    "wine glass": ("glass", "glasses"),
    "cup": ("mug", "mugs"),
    "bus": ("buses", "busses"),
    "boat": ("ship", "ships"),
    "mouse": ("mice",),
    "knife": ("knives",),
    "skis": ("ski",),
    "sheep": ("lamb", "lambs"),
    "horse": ("pony",),
    "oven": ("stove",),
    "remote": ("controller",),
    "suitcase": ("luggage",),
}


def label_bag_text(labels: Sequence[str]) -> str:
    """The label-bag sentence of one image: ``"a photo of 2 person, 1 dog"``.

    Labels are counted; the most frequent come first, ties in alphabetical order, so the text does
    not depend on the detection order. No labels give ``"a photo"``.

    Args:
        labels: one label text per detection (``"person"``, ``"dining table"``).

    Returns:
        The sentence.
    """
    counts = Counter(str(label).strip().lower() for label in labels)
    counts.pop("", None)
    parts = [f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "a photo of " + ", ".join(parts) if parts else _EMPTY_BAG


_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
#: irregular plurals of COCO label words (the last word of a label is pluralised; others take "s"/"es").
_IRREGULAR_PLURALS = {
    "person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
    "scissors": "scissors", "glass": "glasses", "bus": "buses", "couch": "couches", "bench": "benches",
    "sandwich": "sandwiches", "toothbrush": "toothbrushes", "skateboard": "skateboards", "dress": "dresses",
}


def _plural(label: str) -> str:
    *head, last = label.split()
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


def natural_bag_text(labels: Sequence[str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The label bag as an English sentence, with where each label's noun phrase lies in it.

    ``["person", "person", "dog", "potted plant"]`` -> ``"a photo of two people, a dog and a potted plant"``:
    counts as number words ("a"/"an" for one, digits above ten), plurals ("people", "potted plants"),
    the most frequent label first, ties alphabetical (the order of :func:`label_bag_text`). The grounded
    encoder (:mod:`encoders.grounded`) embeds each label as the contextual token states of its noun phrase
    in this sentence; measured against :func:`label_bag_text`'s "2 person, 1 dog" the sentence also
    serves the label-bag baseline better (``bench/real.py``'s ``labelbag_natural`` diagnostic).

    Args:
        labels: one label text per detection.

    Returns:
        ``(text, spans)``: the sentence (``"a photo"`` for no labels) and, per distinct label, the
        ``[start, end)`` character span of its (possibly plural) noun phrase, count word excluded.
    """
    counts = Counter(str(label).strip().lower() for label in labels)
    counts.pop("", None)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return _EMPTY_BAG, {}
    text, spans = "a photo of ", {}
    for j, (label, n) in enumerate(items):
        if j:
            text += " and " if j == len(items) - 1 else ", "
        if n == 1:
            count, noun = ("an" if label[0] in "aeiou" else "a"), label
        else:
            count, noun = (_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)), _plural(label)
        text += count + " "
        spans[label] = (len(text), len(text) + len(noun))
        text += noun
    return text, spans


def record_labels(
    record: RegionRecord,
    label_names: Mapping[int, str],
    *,
    min_score: float = 0.4,
    exclude_class_ids: Collection[int] = (0,),
) -> list[str]:
    """Label texts of a record's detections scored strictly above ``min_score``, in detection order.

    Args:
        record: a region record with ``class_ids`` (and ``class_scores``; without scores every
            detection counts).
        label_names: class id -> label text.
        min_score: keep detections with ``score > min_score``.
        exclude_class_ids: class ids never counted (default: 0, the SSD backend's whole-image box).

    Returns:
        The kept labels.

    Raises:
        ValueError: the record has no class ids, or a kept id is not in ``label_names``.
    """
    if record.class_ids is None:
        raise ValueError(
            f"image_id={record.image_id!r} (detector {record.detector!r}) has no class_ids; the label-bag baseline "
            f"needs a detector that labels regions (e.g. ssd-mobilenet-coco)"
        )
    ids = np.asarray(record.class_ids, dtype=np.int64)
    scores = (np.ones(ids.shape, dtype=np.float32) if record.class_scores is None
              else np.asarray(record.class_scores, dtype=np.float32))  # fmt: skip
    excluded = {int(c) for c in exclude_class_ids}
    keep = [int(c) for c, s in zip(ids, scores, strict=True) if s > min_score and int(c) not in excluded]
    unknown = sorted(set(keep) - {int(k) for k in label_names})
    if unknown:
        raise ValueError(
            f"class ids {unknown[:5]} of image_id={record.image_id!r} are not in label_names "
            f"({len(label_names)} labels); pass the label map of detector {record.detector!r}"
        )
    return [str(label_names[c]) for c in keep]


def normalize_query_text(
    text: str,
    label_names: Collection[str],
    *,
    synonyms: Mapping[str, Sequence[str]] = COCO_SYNONYMS,
) -> str:
    """Rewrite a caption's words onto the label vocabulary: synonyms to their label, plurals to singular.

    Each lower-cased word (``encoders.text.split_words``) becomes, in this order: the label a synonym
    names (``"man"`` -> ``"person"``, ``"sofa"`` -> ``"couch"``; a synonym whose label is not in
    ``label_names`` is ignored); itself when it is a word of a label; the singular of a regular plural
    whose singular is a label word (``"dogs"`` -> ``"dog"``, ``"benches"`` -> ``"bench"``,
    ``"skies"`` stays unless ``"sky"`` is a label); otherwise itself. Multi-word labels stay
    multi-word (``"tables"`` -> ``"dining table"``), so the grounded encoder's phrase merging sees them.

    Args:
        text: the caption or query.
        label_names: the label texts (e.g. ``coco_label_names().values()``).
        synonyms: label -> words naming it.

    Returns:
        The normalised text: words joined by single spaces (punctuation dropped).
    """
    labels = {str(v).strip().lower() for v in label_names}
    label_words = {w for label in labels for w in label.split()}
    table = {w.lower(): label for label, words in synonyms.items() if label in labels for w in words}
    out = []
    for word in split_words(text):
        if word in table:
            out.append(table[word])
            continue
        if word not in label_words:
            for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
                if word.endswith(suffix) and len(word) > len(suffix) + 1 and word[: -len(suffix)] + repl in label_words:
                    word = word[: -len(suffix)] + repl
                    break
        out.append(word)
    return " ".join(out)


@torch.no_grad()
def sentence_embeddings(
    tokenizer: Any,
    model: nn.Module,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Sentence vectors as sentence-transformers computes them for all-MiniLM-L6-v2.

    ``mean over tokens t of h_t`` weighted by the attention mask (``[CLS]`` and ``[SEP]`` included,
    padding excluded), then L2-normalised. Texts longer than ``max_length`` word-pieces are truncated
    (the sentence-transformers model truncates at 256; COCO captions are far shorter than 128).

    Args:
        tokenizer: a Hugging Face tokenizer.
        model: a BERT-family ``nn.Module`` whose output has ``last_hidden_state`` ``[B, T, H]``.
        texts: the sentences.
        batch_size: sentences per forward pass.
        max_length: word-pieces kept per sentence, special tokens included.
        device: where the model runs (it must already be there).

    Returns:
        ``float32[len(texts), H]`` unit vectors (``(0, H)`` for no texts).

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    hidden = int(model.config.hidden_size)
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length=max_length).to(device)
        states = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state  # [B, T, H]
        mask = batch.attention_mask.unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # [B, H]
        out.append(nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, hidden), dtype=np.float32)
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)


class LabelBagEncoder:
    """The label-bag baseline (see the module docstring): image label text and caption, one space.

    Args:
        label_names: detector class id -> label text.
        text_model_path: a local BERT-family folder; ``None`` uses the installed all-MiniLM-L6-v2.
        device: where the text model runs.
        min_score: detections counted in the bag have ``score > min_score`` (default 0.4).
        exclude_class_ids: class ids never counted (default: the whole-image ``scene`` box, id 0).
        text_model: an already loaded ``(tokenizer, model)`` pair (tests), instead of a folder.
        text_format: ``"counts"`` (default, the baseline as specified: :func:`label_bag_text`, "a photo of
            2 person, 1 dog") or ``"natural"`` (:func:`natural_bag_text`, "a photo of two people and a dog").

    Raises:
        ValueError: an empty label map, or an unknown ``text_format``.
        FileNotFoundError: ``text_model_path`` is not a model folder.
    """

    name = "labelbag-minilm"

    def __init__(
        self,
        label_names: Mapping[int, str],
        text_model_path: str | os.PathLike[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        min_score: float = 0.4,
        exclude_class_ids: Collection[int] = (0,),
        text_model: tuple[Any, nn.Module] | None = None,
        text_format: str = "counts",
    ) -> None:
        if not label_names:
            raise ValueError("label_names is empty: pass the detector's class id -> label map")
        if text_format not in ("counts", "natural"):
            raise ValueError(f"text_format must be 'counts' or 'natural'; got {text_format!r}")
        self.text_format = text_format
        self.label_names = {int(k): str(v).strip().lower() for k, v in label_names.items()}
        self.min_score = float(min_score)
        self.exclude_class_ids = frozenset(int(c) for c in exclude_class_ids)
        self.device = torch.device(device)
        if text_model is None:
            tokenizer, model = load_text_model(text_model_path, device=self.device)
        else:
            tokenizer, model = text_model[0], text_model[1].to(self.device)
        self.tokenizer, self.text_model = tokenizer, model.eval()
        self.embed_dim = int(model.config.hidden_size)

    def image_texts(self, records: Sequence[RegionRecord]) -> list[str]:
        """The label-bag sentence of each record (:func:`label_bag_text`, or :func:`natural_bag_text`'s text,
        of :func:`record_labels`)."""
        bags = [record_labels(r, self.label_names, min_score=self.min_score, exclude_class_ids=self.exclude_class_ids)
                for r in records]  # fmt: skip
        if self.text_format == "natural":
            return [natural_bag_text(b)[0] for b in bags]
        return [label_bag_text(b) for b in bags]

    def embed_label_bags(self, records: Sequence[RegionRecord], *, batch_size: int = 64) -> np.ndarray:
        """``float32[len(records), H]`` unit sentence vectors of the images' label bags."""
        return self.encode_texts(self.image_texts(records), batch_size=batch_size)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``float32[len(texts), H]`` unit sentence vectors (captions or queries)."""
        return sentence_embeddings(self.tokenizer, self.text_model, texts, batch_size=batch_size, device=self.device)

    def scores(self, records: Sequence[RegionRecord], captions: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``float32[n_image, n_caption]`` cosine similarity of each image's label bag with each caption."""
        return self.embed_label_bags(records, batch_size=batch_size) @ self.encode_texts(captions, batch_size=batch_size).T

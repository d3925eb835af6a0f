"""Import a kuanghuei/SCAN training checkpoint and its vocabulary as a regionrank :class:`ScanModel`.

SCAN saves ``{"epoch", "model": [img_enc.state_dict(), txt_enc.state_dict()], "best_rsum", "opt", "Eiters"}``
(``opt`` an ``argparse.Namespace`` of its ``train.py`` options) in PyTorch's legacy format; its vocabulary is
a JSON file (``serialize_vocab``: ``word2idx``, ``idx2word``, ``idx``) or, as VSE++ and many users keep it, a
pickled ``Vocabulary`` object. Sizes (image feature width, embedding size, word dim, vocabulary size, GRU
layers and direction) are read from the weights; the scorer (direction, aggregation, lambdas, raw feature
norm, image/text norms, weight-norm encoder) from the options, defaulting to the reference's own defaults.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from regionrank.encoders.reference_checkpoint import (
    WeightImportReport,
    checkpoint_options,
    load_mapped_state,
    read_reference_checkpoint,
)
from regionrank.encoders.scan_model import ScanModel
from regionrank.encoders.vocab import SPECIAL_TOKENS, Vocabulary
from regionrank.storage.plain_pickle import PlainObject, load_plain_pickle

__all__ = ["import_scan_checkpoint", "read_scan_vocabulary", "scan_model_kwargs"]

# the reference train.py defaults of the options that pick the scorer
_SCAN_DEFAULTS: dict[str, Any] = {
    "cross_attn": "t2i", "raw_feature_norm": "clipped_l2norm", "agg_func": "LogSumExp", "lambda_softmax": 9.0,
    "lambda_lse": 6.0, "no_imgnorm": False, "no_txtnorm": False, "precomp_enc_type": "basic",
}
_GRU_LAYER = re.compile(r"^rnn\.weight_ih_l(\d+)$")


def read_scan_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """SCAN's vocabulary from its JSON (``serialize_vocab``), a VSE++-style ``Vocabulary`` pickle, or regionrank's JSON.

    The pickle is read with :func:`regionrank.storage.plain_pickle.load_plain_pickle`: nothing in it is executed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ids are not ``0..n-1``, the four special tokens are not ids 0-3, or the file is neither format.
        regionrank.storage.plain_pickle.UnsafePickleError: the pickle refers to anything but plain data.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"vocabulary file {str(p)!r} does not exist")
    raw = p.read_bytes()
    if raw.lstrip()[:1] == b"{":  # JSON; anything else is read as a pickle
        data: Any = json.loads(raw.decode("utf-8"))
        if isinstance(data, dict) and "words" in data and "format" in data:
            return Vocabulary.load(p)
    else:
        data = load_plain_pickle(raw, allowed_objects={"Vocabulary"})
        if isinstance(data, PlainObject):
            data = data.state
    if not isinstance(data, Mapping) or not isinstance(data.get("word2idx"), Mapping):
        raise ValueError(f"{str(p)!r} is not a SCAN vocabulary: expected word2idx/idx2word (JSON or a Vocabulary pickle)")
    by_id = sorted((int(i), str(w)) for w, i in data["word2idx"].items())
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise ValueError(f"{str(p)!r}: word ids are not 0..{len(by_id) - 1}; the vocabulary is damaged")
    words = [w for _, w in by_id]
    if tuple(words[:4]) != SPECIAL_TOKENS:
        raise ValueError(f"{str(p)!r}: ids 0-3 are {words[:4]}, expected {list(SPECIAL_TOKENS)} (SCAN's build_vocab order)")
    return Vocabulary(words)


def _weights(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = ckpt["model"]
    if not isinstance(model, (list, tuple)) or len(model) != 2 or not all(isinstance(m, Mapping) for m in model):
        raise ValueError(
            f"{source}: 'model' must be SCAN's [img_enc.state_dict(), txt_enc.state_dict()] list; got {type(model).__name__}"
        )
    return dict(model[0]), dict(model[1])


def scan_model_kwargs(ckpt: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """``ScanModel`` keyword arguments of a SCAN checkpoint: sizes from the weights, scorer from the options.

    Raises:
        ValueError: weights missing or inconsistent with each other or with the options' sizes.
    """
    img, txt = _weights(ckpt, source)
    opt = {**_SCAN_DEFAULTS, **checkpoint_options(ckpt.get("opt"))}
    weight_norm = "fc.weight_v" in img
    fc = img.get("fc.weight_v", img.get("fc.weight"))
    if fc is None or "embed.weight" not in txt or "rnn.weight_hh_l0" not in txt:
        raise ValueError(f"{source}: expected fc.weight (image) and embed.weight, rnn.* (text) in the SCAN state dicts")
    embed_size, img_dim = (int(s) for s in fc.shape)
    vocab_size, word_dim = (int(s) for s in txt["embed.weight"].shape)
    layers = sorted(int(m.group(1)) for k in txt if (m := _GRU_LAYER.match(k)))
    hidden = int(txt["rnn.weight_hh_l0"].shape[1])
    sizes = {"img_dim": img_dim, "embed_size": embed_size, "word_dim": word_dim, "num_layers": len(layers),
             "bi_gru": "rnn.weight_ih_l0_reverse" in txt, "vocab_size": vocab_size}
    if hidden != embed_size:
        raise ValueError(f"{source}: GRU hidden size {hidden} differs from the image embedding size {embed_size}")
    for key, value in sizes.items():
        if key in opt and opt[key] is not None and type(value)(opt[key]) != value:
            raise ValueError(f"{source}: option {key}={opt[key]!r} disagrees with the weights ({value})")
    if (opt["precomp_enc_type"] == "weight_norm") != weight_norm:
        raise ValueError(f"{source}: precomp_enc_type={opt['precomp_enc_type']!r} disagrees with the image encoder's keys")
    return {**sizes, "direction": str(opt["cross_attn"]), "raw_feature_norm": str(opt["raw_feature_norm"]),
            "agg_func": str(opt["agg_func"]), "lambda_softmax": float(opt["lambda_softmax"]),
            "lambda_lse": float(opt["lambda_lse"]), "no_imgnorm": bool(opt["no_imgnorm"]),
            "no_txtnorm": bool(opt["no_txtnorm"]), "weight_norm": weight_norm}


def import_scan_checkpoint(
    checkpoint: str | os.PathLike[str], vocab: str | os.PathLike[str]
) -> tuple[ScanModel, WeightImportReport]:
    """Build a regionrank :class:`ScanModel` holding a SCAN checkpoint's weights and vocabulary.

    Args:
        checkpoint: SCAN's ``model_best.pth.tar`` / ``checkpoint_N.pth.tar``.
        vocab: its vocabulary (``*_vocab.json`` or a ``Vocabulary`` pickle).

    Returns:
        ``(model in eval mode with model.vocab set, WeightImportReport)``.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an unreadable or refused file, sizes that disagree, a vocabulary of the wrong size,
            missing weights or a shape mismatch (naming the first offending key).
    """
    source = str(checkpoint)
    ckpt = read_reference_checkpoint(checkpoint)
    kwargs = scan_model_kwargs(ckpt, source=source)
    vocabulary = read_scan_vocabulary(vocab)
    if len(vocabulary) != kwargs["vocab_size"]:
        raise ValueError(
            f"{str(vocab)!r} holds {len(vocabulary)} words but {source} embeds {kwargs['vocab_size']}: "
            f"pass the vocabulary the model was trained with"
        )
    model = ScanModel(**kwargs)
    img, txt = _weights(ckpt, source)
    renames = {"fc.weight_g": "fc.parametrizations.weight.original0", "fc.weight_v": "fc.parametrizations.weight.original1"}
    mapped: dict[str, torch.Tensor] = {}
    own = model.state_dict()
    for key, tensor in img.items():
        name = f"image_encoder.{renames.get(key, key)}"
        if key == "fc.weight_g" and name in own:  # legacy weight_norm(dim=None) stores g as a 0-d tensor
            tensor = tensor.reshape(own[name].shape) if tensor.numel() == 1 else tensor
        mapped[name] = tensor
    for key, tensor in txt.items():
        mapped[f"text_encoder.{key}"] = tensor
    report = load_mapped_state(model, mapped, source=source)
    model.vocab = vocabulary
    return model.eval(), report

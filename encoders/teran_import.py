"""Import a mesnico/TERAN training checkpoint as a regionrank :class:`TeranModel`.

TERAN saves ``{"epoch", "model": TERAN.state_dict(), "optimizer", "scheduler", "opt", "config", "Eiters"}``
(``config`` its YAML config as a dict, ``opt`` an ``argparse.Namespace``). Every size comes from the
weights (feature width, embedding size, layer counts, feed-forward widths, BERT shape); the config picks
the pooling, spatial fusion, stop-word option and training defaults. The BERT config is the
``--bert-config`` JSON when given, else read from the weight shapes with bert-base's conventions (64-d
attention heads, GELU, layer-norm eps 1e-12). The tokenizer is the installed MiniLM package's word-piece
tokenizer: the released models used bert-base-uncased's, which has the same vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from regionrank.encoders.reference_checkpoint import WeightImportReport, load_mapped_state, read_reference_checkpoint
from regionrank.encoders.teran import TeranCfg, TeranModel
from regionrank.encoders.text import build_random_text_model

__all__ = ["bert_config_from_weights", "import_teran_checkpoint", "teran_cfg_from_checkpoint"]

_PREFIX = "img_txt_enc."
_BERT = "txt_enc.bert_model."
# reference key prefix -> regionrank prefix (after the "img_txt_enc." prefix is removed)
_RENAMES: tuple[tuple[str, str], ...] = (
    ("img_enc.pos_encoding_image.map.", "visual.spatial_map."),
    ("img_enc.transformer_encoder.", "visual.transformer."),
    ("img_proj.", "visual.proj."),
    (_BERT, "text_backbone."),
    ("txt_enc.transformer_encoder.", "text_extra."),
    ("cap_proj.", "text_proj."),
    ("transformer_encoder_1.", "text_top."),
    ("transformer_encoder_2.", "image_top."),
)
# reference weights that the alignment path never uses
_UNUSED: tuple[tuple[str, str], ...] = (
    ("img_enc.fc.", "the image encoder's pooled output (unused by the alignment)"),
    ("txt_enc.map.", "the text encoder's pooled output (unused by the alignment)"),
    ("text_aggregation.", "global-vector aggregator (unused by the alignment)"),
    ("image_aggregation.", "global-vector aggregator (unused by the alignment)"),
    (_BERT + "pooler.", "BERT pooler (TERAN takes the last hidden layer)"),
    (_BERT + "embeddings.position_ids", "a constant buffer of older transformers versions"),
    ("txt_enc.word_embeddings.", "an alias of the BERT input embeddings (the same tensor, saved twice)"),
)


def _count(weights: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in weights if (m := pat.match(k))})


def bert_config_from_weights(weights: Mapping[str, torch.Tensor], prefix: str = _PREFIX + _BERT) -> dict[str, Any]:
    """``BertConfig`` keyword arguments read from a BERT's weight shapes (bert-base conventions for the rest).

    Raises:
        ValueError: the BERT weights are missing, or the hidden size is not a multiple of 64 (pass the
            config explicitly then: the head count is not in the weights).
    """
    emb = weights.get(prefix + "embeddings.word_embeddings.weight")
    if emb is None:
        raise ValueError(f"no BERT weights under {prefix!r}; is this a TERAN checkpoint with a BERT text model?")
    vocab, hidden = (int(s) for s in emb.shape)
    if hidden % 64:
        raise ValueError(
            f"BERT hidden size {hidden} is not a multiple of 64, so its attention head count cannot be read from the "
            f"weights; pass the BERT config JSON (--bert-config)"
        )
    return {
        "vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": hidden // 64,
        "num_hidden_layers": _count(weights, prefix + "encoder.layer."),
        "intermediate_size": int(weights[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(weights[prefix + "embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(weights[prefix + "embeddings.token_type_embeddings.weight"].shape[0]),
        "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    }


def teran_cfg_from_checkpoint(
    ckpt: Mapping[str, Any], bert_config: Mapping[str, Any], *, source: str = "checkpoint"
) -> TeranCfg:
    """The :class:`TeranCfg` of a TERAN checkpoint: sizes from its weights, options from its ``config``.

    Raises:
        ValueError: weights missing, or a text model other than BERT.
    """
    weights = {k[len(_PREFIX):]: v for k, v in ckpt["model"].items() if k.startswith(_PREFIX)}
    cfg = ckpt.get("config") or {}
    model_cfg, train_cfg = cfg.get("model", {}), cfg.get("training", {})
    if cfg.get("text-model", {}).get("name", "bert") != "bert":
        raise ValueError(f"{source}: only TERAN's BERT text model is supported; got {cfg['text-model']['name']!r}")
    try:
        embed_dim, feature_dim = (int(s) for s in weights["img_proj.weight"].shape)
        text_dim = int(weights["cap_proj.weight"].shape[1])
        visual_ff = int(weights["img_enc.transformer_encoder.layers.0.linear1.weight"].shape[0])
        top_ff = int(weights["transformer_encoder_1.layers.0.linear1.weight"].shape[0])
    except KeyError as exc:
        raise ValueError(f"{source}: TERAN weight {exc.args[0]!r} is missing (keys under 'img_txt_enc.')") from exc
    if "img_enc.pos_encoding_image.map.0.weight" in weights:
        fusion = "concat-and-process"
    elif "img_enc.pos_encoding_image.map.weight" in weights:
        fusion = "project-and-sum"
    else:
        raise ValueError(f"{source}: a TERAN without box positional encoding (pos-encoding: null) is not supported")
    deviations = ["attention heads: 4 in every transformer, as hard-coded in the reference (not stored in weights)"]
    if model_cfg.get("exclude-stopwords", False):
        deviations.append("exclude-stopwords: the reference drops NLTK's English stop-word word-pieces after "
                          "tokenisation; regionrank drops encoders.text.STOP_WORDS before it")
    loss_type = str(train_cfg.get("loss-type", "alignment"))
    dataset = str(cfg.get("dataset", {}).get("name", "imported"))
    return TeranCfg(
        name=f"teran-{dataset}-imported", embed_dim=embed_dim, feature_dim=feature_dim, spatial_fusion=fusion,
        visual_layers=_count(weights, "img_enc.transformer_encoder.layers."), visual_heads=4, visual_ff=visual_ff,
        top_layers=_count(weights, "transformer_encoder_1.layers."), top_heads=4, top_ff=top_ff,
        shared_top="transformer_encoder_2.layers.0.linear1.weight" not in weights,
        dropout=float(model_cfg.get("dropout", 0.1)), text_model="random", text_dim=text_dim,
        text_bert_config=dict(bert_config), text_layers=_count(weights, "txt_enc.transformer_encoder.layers."),
        exclude_stopwords=bool(model_cfg.get("exclude-stopwords", False)),
        pooling=str(train_cfg.get("alignment-mode", "MrSw")), reference_trim=True,
        margin=float(train_cfg.get("margin", 0.2)), max_violation=bool(train_cfg.get("max-violation", True)),
        matching_weight=1.0 if "matching" in loss_type else 0.0, lr=float(train_cfg.get("lr", 1e-5)),
        lr_step_epochs=int(train_cfg.get("step-size", 20)), lr_gamma=float(train_cfg.get("gamma", 0.1)),
        batch_size=int(train_cfg.get("bs", 40)),
        description=f"imported from the mesnico/TERAN checkpoint {Path(source).name}",
        deviations=tuple(deviations),
    )


def import_teran_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    bert_config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    tokenizer_path: str | os.PathLike[str] | None = None,
) -> tuple[TeranModel, WeightImportReport]:
    """Build a regionrank :class:`TeranModel` holding a TERAN checkpoint's weights.

    Args:
        checkpoint: TERAN's ``model_best_rsum.pth.tar`` (or any ``checkpoint.pth.tar``).
        bert_config: a BERT ``config.json`` (path or mapping); None reads the shape from the weights.
        tokenizer_path: a local BERT folder with the word-piece tokenizer; None uses the MiniLM package's.

    Returns:
        ``(model in eval mode, WeightImportReport)``.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an unreadable or refused file, a tokenizer whose vocabulary size differs from the
            BERT's, missing weights or a shape mismatch (naming the first offending key).
    """
    source = str(checkpoint)
    ckpt = read_reference_checkpoint(checkpoint)
    weights = dict(ckpt["model"])
    if isinstance(bert_config, (str, os.PathLike)):
        bert = json.loads(Path(bert_config).read_text())
    elif bert_config is not None:
        bert = dict(bert_config)
    else:
        bert = bert_config_from_weights(weights)
    bert = {k: v for k, v in bert.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    cfg = teran_cfg_from_checkpoint(ckpt, bert, source=source)
    tokenizer, text_model = build_random_text_model(bert, tokenizer_path=tokenizer_path)
    if int(text_model.config.vocab_size) != int(bert.get("vocab_size", text_model.config.vocab_size)):
        raise ValueError(
            f"{source}: the BERT embeds {bert['vocab_size']} word-pieces but the tokenizer has "
            f"{text_model.config.vocab_size}; pass the tokenizer folder the model was trained with"
        )
    model = TeranModel(cfg, text_model, tokenizer)
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    ignored: list[tuple[str, str]] = []
    for key, tensor in weights.items():
        short = key[len(_PREFIX):] if key.startswith(_PREFIX) else None
        reason = next((why for pre, why in _UNUSED if short is not None and short.startswith(pre)), None)
        target = next((new + short[len(old):] for old, new in _RENAMES if short is not None and short.startswith(old)), None)
        if reason is not None:
            ignored.append((key, reason))
        elif target is None:
            unexpected.append(key)
        else:
            mapped[target] = tensor
    report = load_mapped_state(model, mapped, source=source, unexpected=unexpected, ignored=ignored)
    return model.eval(), report

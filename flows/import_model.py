"""The ``import-model`` command: turn a SCAN or TERAN reference checkpoint into a regionrank checkpoint folder.

One file in, one folder out: a plain library call, not a Prefect flow (there is nothing to map, retry or
watch). The folder is what ``regionrank evaluate``, ``index --checkpoint`` and the search re-ranker load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FORMATS", "import_model"]

MODEL_FORMATS = ("scan", "teran")


def import_model(
    fmt: str,
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    vocab: str | os.PathLike[str] | None = None,
    bert_config: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Convert a reference checkpoint and write it with ``regionrank.encoders.save_checkpoint``.

    Args:
        fmt: ``"scan"`` (kuanghuei/SCAN) or ``"teran"`` (mesnico/TERAN).
        checkpoint: the reference's ``*.pth.tar``.
        out: the regionrank checkpoint folder to write (replaced if it exists).
        vocab: SCAN only, required: its vocabulary (``*_vocab.json`` or a ``Vocabulary`` pickle).
        bert_config: TERAN only, optional: the BERT ``config.json`` (default: read from the weights).

    Returns:
        ``{"checkpoint", "kind", "config", "loaded", "ignored", "unexpected"}`` (counts and key lists).

    Raises:
        ValueError: an unknown format, a missing ``--vocab`` for SCAN, or an unreadable / refused /
            mismatching checkpoint (see ``encoders.scan_import`` and ``encoders.teran_import``).
        FileNotFoundError: a missing input file.
    """
    from regionrank.encoders import save_checkpoint

    if fmt == "scan":
        if vocab is None:
            raise ValueError("a SCAN checkpoint needs its vocabulary: pass --vocab VOCAB (*_vocab.json or vocab.pkl)")
        from regionrank.encoders.scan_import import import_scan_checkpoint

        model, report = import_scan_checkpoint(checkpoint, vocab)
    elif fmt == "teran":
        from regionrank.encoders.teran_import import import_teran_checkpoint

        model, report = import_teran_checkpoint(checkpoint, bert_config=bert_config)
    else:
        raise ValueError(f"unknown model format {fmt!r}; expected one of {list(MODEL_FORMATS)}")
    folder = save_checkpoint(Path(out), model)
    return {
        "checkpoint": str(folder), "kind": fmt, "config": model.cfg.to_dict(),
        "loaded": len(report.loaded), "ignored": [k for k, _ in report.ignored], "unexpected": list(report.unexpected),
        "summary": report.summary(),
    }

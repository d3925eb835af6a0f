"""Reading the reference implementations' training checkpoints (SCAN, TERAN ``*.pth.tar``) safely.

The references save ``torch.save({"model": ..., "opt": argparse.Namespace, ...})`` in PyTorch's legacy
(non-zip) format. :func:`read_reference_checkpoint` loads them with ``torch.load(weights_only=True)``: tensors,
containers and plain values only, with ``argparse.Namespace`` rebuilt as a plain attribute holder (its
code never runs); anything else in the file is refused. :func:`load_mapped_state` copies renamed weights
into a regionrank model and reports missing, unexpected and ignored keys, naming the first key whose
shape does not fit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ReferenceOptions",
    "WeightImportReport",
    "checkpoint_options",
    "load_mapped_state",
    "read_reference_checkpoint",
]

logger = logging.getLogger(__name__)


class ReferenceOptions:
    """Stand-in for ``argparse.Namespace`` inside reference checkpoints: a plain attribute holder."""

    def __repr__(self) -> str:
        return f"ReferenceOptions({vars(self)!r})"


def checkpoint_options(opt: Any) -> dict[str, Any]:
    """A checkpoint's options (``ReferenceOptions``, a mapping or None) as a plain dict."""
    if opt is None:
        return {}
    if isinstance(opt, Mapping):
        return dict(opt)
    return dict(vars(opt))


def read_reference_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a reference ``*.pth.tar`` (legacy or zip torch format) as plain data, never running pickled code.

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint's top-level dict; ``opt`` (an ``argparse.Namespace`` in the file) becomes a
        :class:`ReferenceOptions`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a torch checkpoint, or it holds objects other than tensors, plain
            data and ``argparse.Namespace`` (the message names the refused global; nothing was executed).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    try:
        with torch.serialization.safe_globals([(ReferenceOptions, "argparse.Namespace")]):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others depending on the format
        raise ValueError(
            f"{str(p)!r} could not be read as plain checkpoint data (tensors, containers, argparse.Namespace); "
            f"nothing in it was executed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{str(p)!r} is not a SCAN/TERAN training checkpoint: expected a dict with 'model'; got {keys}")
    return ckpt


@dataclass(frozen=True)
class WeightImportReport:
    """What happened to each weight of an imported checkpoint.

    Attributes:
        loaded: regionrank parameter names filled from the file.
        unexpected: file keys that map to nothing in the model (kept out; listed for the user).
        ignored: file keys known to be unused by the reference's evaluation path, with the reason.
    """

    loaded: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        """One line: counts and the first few unexpected keys."""
        line = f"{len(self.loaded)} tensors loaded, {len(self.ignored)} ignored, {len(self.unexpected)} unexpected"
        if self.unexpected:
            line += f" (e.g. {', '.join(self.unexpected[:5])})"
        return line


def load_mapped_state(
    model: nn.Module,
    mapped: Mapping[str, torch.Tensor],
    *,
    source: str,
    unexpected: Iterable[str] = (),
    ignored: Iterable[tuple[str, str]] = (),
) -> WeightImportReport:
    """Copy renamed reference weights into ``model``, checking names and shapes first.

    Args:
        model: the regionrank model, built with the sizes read from the file.
        mapped: regionrank parameter name -> tensor, in the file's key order.
        source: the file, for messages.
        unexpected: file keys that had no regionrank name.
        ignored: ``(file key, reason)`` pairs deliberately left out.

    Returns:
        The :class:`WeightImportReport`.

    Raises:
        ValueError: a shape mismatch (the message names the first offending key and both shapes), or
            model weights the file does not provide (all listed, with the unexpected file keys).
    """
    own = model.state_dict()
    extra = [k for k in mapped if k not in own]
    for name, tensor in mapped.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source}: shape mismatch at {name!r}: the file holds {tuple(tensor.shape)}, the model built from "
                f"the file's options expects {tuple(own[name].shape)}; the checkpoint's options and weights disagree"
            )
    missing = [k for k in own if k not in mapped]
    unexpected_all = tuple(list(unexpected) + extra)
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} model weights are missing from the file: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}; unexpected file keys: {list(unexpected_all)[:10]}"
        )
    model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=True)
    loaded = tuple(k for k in mapped if k in own)
    report = WeightImportReport(loaded=loaded, unexpected=unexpected_all, ignored=tuple(ignored))
    if report.unexpected:
        logger.warning("%s: unexpected keys not loaded: %s", source, list(report.unexpected))
    return report

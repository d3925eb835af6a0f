"""Fingerprints of encoders: sha256 of a config and of every weight tensor (the stores' ``encoder_hash``).

Imports nothing of ``encoders``, so every model module (and ``checkpoint``) can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["config_and_weights_hash", "update_with_weights"]


def update_with_weights(hasher: Any, module: nn.Module) -> None:
    """Feed every ``state_dict`` tensor of ``module`` (name, dtype, shape, bytes; sorted by name) to ``hasher``."""
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        hasher.update(name.encode())
        hasher.update(str(t.dtype).encode())
        hasher.update(str(tuple(t.shape)).encode())
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too


def config_and_weights_hash(config: Mapping[str, Any], module: nn.Module) -> str:
    """sha256 hex of a JSON config (keys sorted) and every tensor of ``module``'s ``state_dict``.

    Two models hash equal exactly when they have the same config and bit-identical weights.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    update_with_weights(h, module)
    return h.hexdigest()

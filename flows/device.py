"""Device resolution: the ONLY place "auto" is turned into a concrete device, and "auto" / -1 into a
number of faiss GPUs."""

from __future__ import annotations

import re

__all__ = ["resolve_device", "resolve_faiss_gpus"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto" | "cpu" | "cuda[:N]" | "mps"`` into a concrete torch device string.

    Raises:
        ValueError: an unknown device string, or CUDA asked for on a machine without it.
    """
    if not _DEVICE_RE.match(device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use --device cpu (or auto)")
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_faiss_gpus(ngpu: int | str = "auto") -> int:
    """Number of GPUs faiss should use: "auto"/-1 = all that faiss sees, 0 = CPU, n = n GPUs.

    The only place "auto"/-1 is resolved; ``index`` functions take the resolved count.

    Raises:
        ValueError: not "auto", -1 or a count >= 0, or more GPUs than faiss sees.
    """
    from regionrank.index import available_gpus

    if ngpu in ("auto", -1):
        return available_gpus()
    try:
        n = int(ngpu)
    except ValueError:
        n = -2
    if n < 0:
        raise ValueError(f"ngpu must be 'auto', -1 (all GPUs), 0 (CPU) or a GPU count; got {ngpu!r}")
    have = available_gpus() if n else 0
    if n > have:
        raise ValueError(f"ngpu={n} but faiss sees {have} GPU(s); install faiss-gpu on a GPU machine or use 0")
    return n

"""A counting file opener for tests: how many times each watched file is opened for reading.

It wraps ``builtins.open`` and ``io.open`` (``Path.read_bytes`` and Pillow go through one of
them), in every thread of this process; DataLoader worker processes are not watched, so
runs under it use ``num_workers=0``.
"""

from __future__ import annotations

import builtins
import io
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pytest


def count_reads(monkeypatch: pytest.MonkeyPatch, watched: Iterable[str | os.PathLike[str]]) -> Counter[str]:
    """Start counting opens for reading of the ``watched`` paths (compared as given, as absolute strings)."""
    names = {str(Path(p).absolute()) for p in watched}
    opens: Counter[str] = Counter()
    real_open = builtins.open

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and "r" in mode and str(Path(file).absolute()) in names:
            opens[str(Path(file).absolute())] += 1
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return opens

"""Lazy package exports: a package's public names load their module on first access.

A package root that imports every module makes importing any one of them load all the others (and faiss,
pyarrow, torch with them). ``regionrank.storage``, ``regionrank.index``, ``regionrank.index.search`` and
``regionrank.encoders`` declare ``name -> (module, attribute)`` instead and take their module-level
``__getattr__`` and ``__dir__`` from :func:`lazy_exports`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, tuple[str, str]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names[name] = (module, attribute)`` is imported on first
    access and then cached in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = names[name]
        value = getattr(importlib.import_module(module), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__

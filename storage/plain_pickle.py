"""A restricted unpickler for pickles users hold (vocabularies, option namespaces): plain data or refusal.

Research code ships pickles: SCAN/VSE++ ``Vocabulary`` objects, ``argparse.Namespace`` options. A
pickle can name any importable callable and call it while loading (``os.system`` through
``__reduce__``), so :func:`load_plain_pickle` never imports anything the pickle names. It builds only
containers, strings, numbers and, for the class names the caller allows, a :class:`PlainObject`
stand-in that records the object's attribute dict. Any other global is refused with
:class:`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PlainObject", "UnsafePickleError", "load_plain_pickle", "plain_bytes_to_str"]

# globals that only build plain data (the pickle may call them; none has side effects)
_PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "object"): object,
    ("collections", "OrderedDict"): dict,
}


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # names Python 2 (and protocols < 3) write


class UnsafePickleError(ValueError):
    """A pickle names a global outside the plain-data allow-list; nothing it names was imported or called."""


class PlainObject:
    """Stand-in for an allowed pickled object: its module and class name and its attribute dict.

    Attributes:
        module: the module the pickle names (e.g. ``"vocab"``, ``"__main__"``).
        name: the class name the pickle names (e.g. ``"Vocabulary"``).
        state: the attributes the pickle restores (``{}`` when it restores none).
    """

    module = ""
    name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = dict(kwargs)
        if args:
            self.state["_args"] = list(args)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.module}.{self.name} restores a {type(state).__name__} state; expected a dict")
        self.state = dict(getattr(self, "state", {}), **{_key(k): v for k, v in state.items()})

    def __repr__(self) -> str:
        return f"PlainObject({self.module}.{self.name}, keys={sorted(self.state)})"


def _key(k: Any) -> Any:
    return k.decode("utf-8") if isinstance(k, bytes) else k


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Safe stand-in for ``copyreg._reconstructor`` (protocol 0/1 objects): only builds a PlainObject."""
    if not (isinstance(cls, type) and issubclass(cls, PlainObject)):
        raise UnsafePickleError(f"copyreg._reconstructor asked to build {cls!r}; only allowed classes are built")
    return cls.__new__(cls)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, allowed: frozenset[str], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._allowed = allowed
        self._source = source
        self._stand_ins: dict[tuple[str, str], type[PlainObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[(module, name)]
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if name in self._allowed:
            key = (module, name)
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (PlainObject,), {"module": module, "name": name})
            return self._stand_ins[key]
        raise UnsafePickleError(
            f"{self._source} refers to {module}.{name}, which is not plain data: refused, nothing was executed "
            f"(allowed objects: {sorted(self._allowed) or 'none'}). Convert the file with the code that wrote it "
            f"into JSON, or pass a file holding only plain data"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source} holds a persistent reference ({pid!r}); expected a plain pickle")


def plain_bytes_to_str(obj: Any) -> Any:
    """``obj`` with every ``bytes`` (Python 2 ``str``) decoded as UTF-8, recursively through containers."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8")
    if isinstance(obj, dict):
        return {plain_bytes_to_str(k): plain_bytes_to_str(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(plain_bytes_to_str(v) for v in obj)
    if isinstance(obj, PlainObject):
        obj.state = plain_bytes_to_str(obj.state)
    return obj


def load_plain_pickle(source: str | os.PathLike[str] | bytes, *, allowed_objects: Iterable[str] = ()) -> Any:
    """Unpickle plain data: containers, strings, numbers, and stand-ins for the allowed class names.

    Python 2 pickles load too: their byte strings are decoded as UTF-8.

    Args:
        source: a file path, or the pickle's bytes.
        allowed_objects: class names (any module) to rebuild as :class:`PlainObject` stand-ins, e.g.
            ``{"Vocabulary"}``; their constructors and methods are never run.

    Returns:
        The unpickled plain value.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsafePickleError: the pickle names any other global (e.g. ``os.system`` through ``__reduce__``).
        ValueError: the bytes are not a pickle.
    """
    if isinstance(source, bytes):
        data, where = source, "the pickle"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"pickle file {str(path)!r} does not exist")
        data, where = path.read_bytes(), repr(str(path))
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), frozenset(allowed_objects), where).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ValueError(f"{where} is not a readable pickle: {exc}") from exc
    return plain_bytes_to_str(obj)

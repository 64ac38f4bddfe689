"""Names a package hands on, loaded on first use, so that importing the package (or one of its
modules) loads only what that needs: ``maxsim --help`` starts without torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: dict, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """A package's ``__getattr__`` and ``__dir__`` for ``exports`` (name -> the module that defines
    it); ``package`` is the package's ``globals()``, where each name is kept once loaded.

    >>> space = {"__name__": "demo"}
    >>> getattr_, _ = lazy_exports(space, {"sqrt": "math"})
    >>> getattr_("sqrt")(9.0), "sqrt" in space
    (3.0, True)
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        package[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(package) | set(exports))

    return __getattr__, __dir__

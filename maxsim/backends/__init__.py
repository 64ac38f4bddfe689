"""Search engines behind :class:`maxsim.retriever.Retriever`, each implementing
:class:`~maxsim.backends.base.Backend` in a module of its own.

- ``maxsim``: :mod:`~maxsim.backends.local`, maxsim's own segmented index on disk;
- ``qdrant``: :mod:`~maxsim.backends.qdrant`, a Qdrant collection.

A further backend is one new module with a class that implements the protocol, and one line in
:data:`BACKENDS`.
"""

from __future__ import annotations

import importlib

from maxsim.backends.base import Backend, Chunking, EncodedDocuments, Passage
from maxsim.errors import SettingsError

#: each backend's name -> "module:class" (imported when first used)
BACKENDS = {
    "maxsim": "maxsim.backends.local:LocalIndex",
    "qdrant": "maxsim.backends.qdrant:QdrantBackend",
}


def backend_class(kind: str) -> type:
    """The class of the backend called ``kind``.

    >>> backend_class("maxsim").__name__
    'LocalIndex'
    """
    if kind not in BACKENDS:
        raise SettingsError(f"no backend called {kind!r}: maxsim has {', '.join(sorted(BACKENDS))}")
    module, name = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["BACKENDS", "Backend", "Chunking", "EncodedDocuments", "Passage", "backend_class"]

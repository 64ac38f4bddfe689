"""Text identity: the normal form texts are compared in, and stable ids made from it."""

from __future__ import annotations

import hashlib
import unicodedata


def normalise(text: str) -> str:
    """The form texts are compared and hashed in: Unicode NFKC, whitespace runs as one space.

    >>> normalise("  Café   au lait！ ")
    'Café au lait!'
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())  # (str.split's whitespace is re's \s)


def stable_id(text: str, prefix: str) -> str:
    """An id from the normalised text: the same text gives the same id on every run and machine.

    >>> stable_id("what do cats eat", "q") == stable_id(" what  do cats  eat ", "q")
    True
    >>> len(stable_id("what do cats eat", "q"))
    17
    """
    return id_of_normal(normalise(text), prefix)


def id_of_normal(normal: str, prefix: str) -> str:
    """:func:`stable_id` of a text already in :func:`normalise`'s form."""
    return prefix + hashlib.sha256(normal.encode("utf-8")).hexdigest()[:16]

"""Text identity: the normal form texts are compared in, and stable ids made from it."""

from __future__ import annotations

import hashlib
import re
import unicodedata


def normalise(text: str) -> str:
    """The form texts are compared and hashed in: Unicode NFKC, whitespace runs as one space.

    >>> normalise("  Café   au lait！ ")
    'Café au lait!'
    """
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def stable_id(text: str, prefix: str) -> str:
    """An id from the normalised text: the same text gives the same id on every run and machine.

    >>> stable_id("what do cats eat", "q") == stable_id(" what  do cats  eat ", "q")
    True
    >>> len(stable_id("what do cats eat", "q"))
    17
    """
    return prefix + hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]

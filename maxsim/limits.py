"""Bounds on what callers hand the library: text that is text, metadata that stays small and flat.

Checked at every door (``Retriever.index``, ``add``, ``search``; the server's requests; the
command line), before any work, so that one caller's input can never break what others get:
a lone surrogate (``"\\ud800"``, not a character) makes the tokenizer fail for a whole batch,
and metadata nested hundreds of levels deep overflows the stack of every search that returns it.
"""

from __future__ import annotations

import json
from typing import Any

from maxsim.errors import SettingsError

#: the deepest a document's metadata may nest (a dict or list inside another is one level)
MAX_METADATA_DEPTH = 32
#: the most bytes a document's metadata may take as JSON
MAX_METADATA_BYTES = 64 * 1024


def check_text(value: Any, what: str) -> str:
    """``value`` if it is a string that can be written as UTF-8, else a SettingsError saying why.

    >>> check_text("caf\\u00e9", "query")
    'café'
    >>> check_text("a\\ud800b", "query")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: the query holds a lone surrogate (U+D800 at character 2), ...
    """
    if not isinstance(value, str):
        raise SettingsError(f"the {what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SettingsError(f"the {what} holds a lone surrogate (U+{ord(value[err.start]):04X} at character "
                            f"{err.start + 1}), which is not a character: send the text as UTF-8 (in JSON, a "
                            "\\ud83d\\ude00 pair, never half of one)") from None
    return value


def metadata_depth(value: Any) -> int:
    """How deep dicts and lists nest in ``value`` (0 for a plain value), counted without recursion.

    >>> metadata_depth({"a": [1, {"b": 2}]}), metadata_depth(3)
    (3, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_metadata(value: Any, what: str) -> dict | None:
    """``value`` if it is None or a JSON object within :data:`MAX_METADATA_DEPTH` levels and
    :data:`MAX_METADATA_BYTES` bytes whose strings are all text; else a SettingsError."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SettingsError(f"the metadata of {what} is a {type(value).__name__}: give a dict (or None)")
    depth = metadata_depth(value)
    if depth > MAX_METADATA_DEPTH:
        raise SettingsError(f"the metadata of {what} nests {depth} levels deep, over the {MAX_METADATA_DEPTH} "
                            "allowed: flatten it")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"the metadata of {what} cannot be saved as JSON ({err}): use strings, finite numbers, "
                            "booleans, lists and dicts") from None
    check_text(encoded, f"metadata of {what}")
    size = len(encoded.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise SettingsError(f"the metadata of {what} takes {size} bytes as JSON, over the {MAX_METADATA_BYTES} "
                            "allowed: keep large content in the document text or elsewhere")
    return value


def within_bounds(metadata: Any) -> bool:
    """Whether stored metadata (from an index written before these bounds) can be returned:
    not nested deeper than :data:`MAX_METADATA_DEPTH`."""
    return metadata is None or metadata_depth(metadata) <= MAX_METADATA_DEPTH

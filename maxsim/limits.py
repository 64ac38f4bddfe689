"""Bounds on what callers hand the library: text that is text, queries of a bounded length,
names that stay names, metadata that stays small and flat.

Checked at every door (``Retriever.index``, ``add``, ``search``; the server's requests; the
command line), before any work, so that one caller's input can never break what others get:
a lone surrogate (``"\\ud800"``, not a character) makes the tokenizer fail for a whole batch,
and metadata nested hundreds of levels deep overflows the stack of every search that returns it.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from maxsim.errors import SettingsError

#: the deepest a document's metadata may nest (a dict or list inside another is one level)
MAX_METADATA_DEPTH = 32
#: the most bytes a document's metadata may take as JSON
MAX_METADATA_BYTES = 64 * 1024
#: the most characters a query may have. A ColBERT query reads only its first ``query_maxlen``
#: tokens (32 by default: about 150 characters), and BM25's cost grows with the query's terms:
#: a longer query is refused before it is tokenised, so that it cannot hold up other clients
MAX_QUERY_CHARS = 10_000
#: the largest integer that metadata and filters may hold (2**53): every JSON reader, JavaScript
#: and Qdrant's ranges included, holds the integers up to it exactly, so a filter means the same
#: on every backend; a larger one (a 64-bit hash, say) belongs in metadata as text
MAX_SAFE_INTEGER = 2**53


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


def check_query(value: Any, what: str = "query") -> str:
    """``value`` if it is text (:func:`check_text`) of at most :data:`MAX_QUERY_CHARS` characters.

    >>> check_query("x" * 10_001)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: the query has 10001 characters, over the 10000 allowed: ...
    """
    check_text(value, what)
    if len(value) > MAX_QUERY_CHARS:
        raise SettingsError(f"the {what} has {len(value)} characters, over the {MAX_QUERY_CHARS} allowed: a ColBERT "
                            "query reads only its first tokens (query_maxlen); shorten it, or split it into several")
    return value


def check_name(value: Any, what: str, kept_under: str | Path) -> str:
    """``value`` if it is one plain folder name (kept under ``kept_under``), else a SettingsError:
    a name never leaves its folder, so no separator, no ``.`` or ``..``, nothing absolute.

    >>> check_name("scifact", "index name", ".maxsim/indexes")
    'scifact'
    >>> check_name("../..", "index name", ".maxsim/indexes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: index name '../..' must be one folder name ...
    """
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"the {what} must be a non-empty text, got {value!r}")
    if (value in (".", "..") or any(c in value for c in "/\\\0") or PurePosixPath(value).is_absolute()
            or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive or len(value.encode()) > 255):
        raise SettingsError(f"{what} {value!r} must be one folder name (no '/', '\\', '.' or '..', at most 255 "
                            f"bytes); it is kept under {kept_under}/. Give a plain name such as 'scifact'")
    check_text(value, what)
    return value


def check_integers(value: Any, what: str) -> None:
    """Refuse an integer (in ``value``, walked without recursion) beyond +-:data:`MAX_SAFE_INTEGER`.

    >>> check_integers({"n": [1, 2**60]}, "the metadata of d1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: the metadata of d1 holds the integer 1152921504606846976, beyond ...
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_SAFE_INTEGER:
            raise SettingsError(f"{what} holds the integer {item}, beyond the +-2**53 ({MAX_SAFE_INTEGER}) that "
                                "every backend compares exactly: store it as text")


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
    check_integers(value, f"the metadata of {what}")
    size = len(encoded.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise SettingsError(f"the metadata of {what} takes {size} bytes as JSON, over the {MAX_METADATA_BYTES} "
                            "allowed: keep large content in the document text or elsewhere")
    return value


def within_bounds(metadata: Any) -> bool:
    """Whether stored metadata (from an index written before these bounds) can be returned:
    not nested deeper than :data:`MAX_METADATA_DEPTH`."""
    return metadata is None or metadata_depth(metadata) <= MAX_METADATA_DEPTH

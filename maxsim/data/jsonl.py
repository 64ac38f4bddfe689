"""Reading JSON Lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from maxsim.data.errors import DataError, encoding_error


class DuplicateKey(ValueError):
    """A JSON object that names a key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads``'s object hook: a dict, refusing a key given twice (which plain ``json``
    resolves silently by keeping the last value)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def read_jsonl(path: str | Path, arrays: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line of a JSONL file (with
    ``arrays``, lines that are JSON arrays instead, as colbert-ai's triples).

    A UTF-8 byte-order mark at the start is skipped; bytes that are not UTF-8, and an object
    naming one key twice (at any depth), are a DataError naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "file not found", "check the folder holds this file")
    with path.open(encoding="utf-8-sig") as handle:
        lines = enumerate(handle, start=1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise encoding_error(path) from None
            if not line.strip():
                continue
            yield number, parse_line(path, number, line, arrays)


def parse_line(path: Path, number: int, line: str, arrays: bool = False) -> dict | list:
    """One line of a JSONL file as :func:`read_jsonl` reads it: an object (with ``arrays``, an
    array), or a DataError naming ``path`` and line ``number``."""
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(
            path, number, f"malformed JSON ({err.msg} at column {err.colno})",
            "write one JSON object per line",
        ) from None
    except DuplicateKey as err:
        raise DataError(path, number, f'the key "{err.key}" appears twice in one object (JSON would keep '
                        "only the last value)", "give each key once") from None
    if arrays and not isinstance(obj, list):
        raise DataError(path, number, "expected a JSON array", "write one [...] per line")
    if not arrays and not isinstance(obj, dict):
        raise DataError(path, number, "expected a JSON object", "write one {...} per line")
    return obj


def require_text(path: Path, number: int, obj: dict, field: str) -> str:
    """The non-empty string field ``field`` of ``obj``, or a DataError naming the line."""
    if field not in obj:
        raise DataError(path, number, f'missing field "{field}"', f'add "{field}" to this line')
    value = obj[field]
    if not isinstance(value, str):
        raise DataError(path, number, f'field "{field}" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise DataError(path, number, f'field "{field}" is empty', "remove the line or fill it in")
    return value


def require_id(path: Path, number: int, obj: dict, field: str) -> str:
    """An id field (string or integer), as a string."""
    if field not in obj:
        raise DataError(path, number, f'missing field "{field}"', f'add "{field}" to this line')
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataError(path, number, f'field "{field}" must be a non-empty string or integer id')
    return str(value)

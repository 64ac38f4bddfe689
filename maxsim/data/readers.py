"""Rows from the files users bring: JSONL, CSV, TSV and Parquet, each with its line number.

Every reader yields ``(line, row)`` where ``row`` maps column names to values and ``line`` is
what a person sees in an editor: the 1-based line of a JSONL file, the line of a CSV/TSV file
counting the header as line 1, and the 1-based row of a Parquet file.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

from maxsim.data.errors import DataError, encoding_error
from maxsim.data.jsonl import read_jsonl
from maxsim.files import sha256_of

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, None, f"unknown file type {path.suffix!r}", "use .jsonl, .csv, .tsv or .parquet")
    return fmt


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a JSONL, CSV (header row), TSV (header row) or Parquet file."""
    fmt = file_format(path)
    if not path.is_file():
        raise DataError(path, None, "file not found", "check the path")
    if fmt == "jsonl":
        yield from read_jsonl(path)
    elif fmt in ("csv", "tsv"):
        yield from _read_delimited(path, "," if fmt == "csv" else "\t")
    else:
        yield from _read_parquet(path)


def columns_of(path: Path) -> list[str]:
    """Column names of a file: the header of CSV/TSV, the schema of Parquet, the first JSONL object."""
    fmt = file_format(path)
    if fmt == "parquet":
        return list(_parquet(path, "read_schema").names)
    for _, row in read_rows(path):
        return list(row)
    raise DataError(path, None, "the file is empty", "add rows, with a header for CSV/TSV")


def _read_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    """Rows of a CSV/TSV file with a header row, each with the line it starts on; a UTF-8
    byte-order mark (Excel's "CSV UTF-8") is skipped, a field may be as long as the file and
    span lines inside quotes. Quoting is read strictly: a quote that is never closed is an
    error naming the line it opens on (not the end of the file, where the reader notices)."""
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the default 128 KB refuses long passages
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            start = 1  # the line the record being read starts on
            try:
                header = next(reader, None)
                if not header:
                    raise DataError(path, 1, "no header row", "start the file with the column names")
                header = [h.strip() for h in header]
                start = reader.line_num + 1
                for row in reader:
                    line, start = start, reader.line_num + 1
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) != len(header):
                        raise DataError(path, line, f"{len(row)} columns where the header has {len(header)}",
                                        "quote fields that contain the delimiter")
                    yield line, dict(zip(header, row))
            except UnicodeDecodeError:
                raise encoding_error(path) from None
            except csv.Error as err:
                opened = _unclosed_quote(path, start) if "end of data" in str(err) else None
                if opened is not None:
                    raise DataError(path, opened, "a quoted field opens on this line and is never closed",
                                    'close the quote, or write a quote inside a quoted field as ""') from None
                raise DataError(path, reader.line_num, f"unreadable {path.suffix[1:].upper()} ({err})",
                                "check the quoting of this line") from None
    finally:
        csv.field_size_limit(limit)


def _unclosed_quote(path: Path, start: int) -> int | None:
    """The line on which the quote left open at the end of ``path`` opens, reading from line
    ``start`` (where a record starts); None if no quote is left open."""
    opened, inside = None, False
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, text in enumerate(handle, start=1):
            if number < start:
                continue
            for char in text:
                if char == '"':
                    inside = not inside  # (a doubled quote "" closes and reopens)
                    if inside:
                        opened = number
    return opened if inside else None


def _parquet(path: Path, what: str = "read_table"):
    """``pyarrow.parquet.read_table`` (or ``read_schema``) with errors that name the file."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return getattr(pq, what)(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(path, None, f"not a readable Parquet file ({err})",
                        "check the file is Parquet, or give it the suffix of its real format") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    yield from enumerate(_parquet(path).to_pylist(), start=1)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of every file in a folder (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            sha256_of(handle, digest)
    return digest.hexdigest()

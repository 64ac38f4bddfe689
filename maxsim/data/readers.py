"""Rows from the files users bring: JSONL, CSV, TSV and Parquet, each with its line number.

Every reader yields ``(line, row)`` where ``row`` maps column names to values and ``line`` is
what a person sees in an editor: the 1-based line of a JSONL file, the line of a CSV/TSV file
counting the header as line 1, and the 1-based row of a Parquet file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

from maxsim.data.errors import DataError
from maxsim.data.jsonl import read_jsonl

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, None, f"unknown file type {path.suffix!r}",
                        "use .jsonl, .csv, .tsv or .parquet (or a BEIR folder)")
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
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    for _, row in read_rows(path):
        return list(row)
    raise DataError(path, None, "the file is empty", "add rows, with a header for CSV/TSV")


def _read_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(path, 1, "no header row", "start the file with the column names")
        header = [h.strip() for h in header]
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(path, line, f"{len(row)} columns where the header has {len(header)}",
                                "quote fields that contain the delimiter")
            yield line, dict(zip(header, row))


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield from enumerate(table.to_pylist(), start=1)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of every file in a folder (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

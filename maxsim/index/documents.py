"""The documents of one segment: id, text and metadata, fetched by position or by id.

A segment's documents live in ``documents.sqlite`` (SQLite, from Python's standard library),
one row per document::

    documents(position INTEGER PRIMARY KEY,  -- the document's position in its segment
              id TEXT NOT NULL UNIQUE,
              content BLOB NOT NULL,         -- the text, UTF-8, zlib-compressed
              metadata TEXT)                 -- JSON object, or NULL

Why SQLite rather than an offsets file into compressed blocks: a hit's text is one B-tree
lookup by position (no block of other documents to decompress), a document is found by id
without reading the others (adds refuse ids already present, deletes find what to remove), and
metadata stays queryable in place for filters. The file is written once, then only read
(opened ``immutable``: no locks, no journal); the manifest holds its size and sha256.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

DOCUMENTS_FILE = "documents.sqlite"
#: ids looked up per statement (SQLite's default bound on ``?`` parameters is 32,766)
LOOKUP_BATCH = 900


def write_documents(path: Path, records: Iterable[dict], owner: str | None = None) -> tuple[int, list[str]]:
    """Write ``records`` ({"id", "content", "metadata"}) to a new SQLite file at ``path``, in
    order (the first is position 0); returns how many, and the top-level metadata fields any of
    them has (sorted). ``owner``: the fingerprint of the index the segment is written for
    (:func:`maxsim.index.codec.centroids_fingerprint`), kept in a table ``info`` so that a
    segment copied into another index's manifest is refused. The caller renames the folder that
    holds it into place, so the file needs no journal."""
    fields: set[str] = set()

    def rows():
        for i, r in enumerate(records):
            metadata = r.get("metadata")
            if metadata:
                fields.update(metadata)
            yield (i, r["id"], zlib.compress(r["content"].encode("utf-8"), 6),
                   None if metadata is None else json.dumps(metadata, ensure_ascii=False))

    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("CREATE TABLE documents (position INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                           "content BLOB NOT NULL, metadata TEXT)")
        connection.executemany("INSERT INTO documents VALUES (?, ?, ?, ?)", rows())
        if owner is not None:
            connection.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT)")
            connection.execute("INSERT INTO info VALUES ('owner', ?)", (owner,))
        connection.commit()
        (count,) = connection.execute("SELECT count(*) FROM documents").fetchone()
    finally:
        connection.close()
    return int(count), sorted(fields)


def _record(row: tuple) -> dict:
    identifier, content, metadata = row
    return {"id": identifier, "content": zlib.decompress(content).decode("utf-8"),
            "metadata": None if metadata is None else json.loads(metadata)}


class SqliteDocuments:
    """The documents of a written segment, read in place (nothing is loaded up front)."""

    def __init__(self, path: Path, count: int) -> None:
        """``count``: how many documents the file holds (the manifest says; counting would read
        the whole table). Raises :class:`FileNotFoundError` if the file cannot be opened."""
        self.path, self.count = path, count
        try:
            self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                               check_same_thread=False)
            self._connection.execute("PRAGMA schema_version").fetchone()  # opens the file now
        except sqlite3.Error as err:
            raise FileNotFoundError(f"{path}: {err}") from None
        self._lock = threading.Lock()  # one statement at a time on the shared connection

    def _rows(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def __len__(self) -> int:
        return self.count

    def get(self, positions: Sequence[int]) -> list[dict]:
        """The records at ``positions`` (in that order; each must exist)."""
        wanted = sorted({int(p) for p in positions})
        found: dict[int, dict] = {}
        for start in range(0, len(wanted), LOOKUP_BATCH):
            part = wanted[start : start + LOOKUP_BATCH]
            marks = ",".join("?" * len(part))
            sql = f"SELECT position, id, content, metadata FROM documents WHERE position IN ({marks})"
            found.update((row[0], _record(row[1:])) for row in self._rows(sql, part))
        return [found[int(p)] for p in positions]

    def positions_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The position of each of ``ids`` this segment holds."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, int] = {}
        for start in range(0, len(ids), LOOKUP_BATCH):
            part = ids[start : start + LOOKUP_BATCH]
            sql = f"SELECT id, position FROM documents WHERE id IN ({','.join('?' * len(part))})"
            out.update((identifier, int(position)) for identifier, position in self._rows(sql, part))
        return out

    def __iter__(self) -> Iterator[dict]:
        """Every record, in position order (read in batches)."""
        last = -1
        while True:
            rows = self._rows("SELECT position, id, content, metadata FROM documents WHERE position > ? "
                              "ORDER BY position LIMIT 4096", (last,))
            if not rows:
                return
            for row in rows:
                yield _record(row[1:])
            last = rows[-1][0]

    def content_lengths(self) -> list[int]:
        """Characters of each document's text, in position order (for verification)."""
        return [len(record["content"]) for record in self]

    def positions_where(self, sql: str, parameters: Sequence) -> np.ndarray:
        """(n,) int64 positions, ascending, of the documents for which the SQL condition holds
        (:class:`maxsim.index.filters.Filter`)."""
        rows = self._rows(f"SELECT position FROM documents WHERE {sql} ORDER BY position", list(parameters))
        return np.array([row[0] for row in rows], dtype=np.int64)

    def owner(self) -> str | None:
        """The fingerprint of the index this segment was written for (None: written before
        segments kept one)."""
        try:
            row = self._rows("SELECT value FROM info WHERE key = 'owner'")
        except sqlite3.OperationalError:  # no such table
            return None
        return row[0][0] if row else None

    def any_where(self, sql: str, parameters: Sequence) -> bool:
        """Whether the SQL condition holds for some document (stops at the first)."""
        return bool(self._rows(f"SELECT 1 FROM documents WHERE {sql} LIMIT 1", list(parameters)))

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class ListDocuments:
    """Documents held in memory: a segment not yet written, or one read from an index of the
    previous format."""

    def __init__(self, records: Sequence[dict]) -> None:
        self.records = list(records)
        self._position: dict[str, int] | None = None
        self._sqlite: sqlite3.Connection | None = None

    def __len__(self) -> int:
        return len(self.records)

    def get(self, positions: Sequence[int]) -> list[dict]:
        return [self.records[int(p)] for p in positions]

    def positions_of(self, ids: Sequence[str]) -> dict[str, int]:
        if self._position is None:
            self._position = {r["id"]: i for i, r in enumerate(self.records)}
        return {i: self._position[i] for i in ids if i in self._position}

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def content_lengths(self) -> list[int]:
        return [len(r["content"]) for r in self.records]

    def positions_where(self, sql: str, parameters: Sequence) -> np.ndarray:
        """As :meth:`SqliteDocuments.positions_where`, through a copy in an in-memory database
        (made on first use), so that a filter means the same here."""
        rows = self._query(f"SELECT position FROM documents WHERE {sql} ORDER BY position", parameters)
        return np.array([row[0] for row in rows], dtype=np.int64)

    def any_where(self, sql: str, parameters: Sequence) -> bool:
        """As :meth:`SqliteDocuments.any_where`."""
        return bool(self._query(f"SELECT 1 FROM documents WHERE {sql} LIMIT 1", parameters))

    def _query(self, sql: str, parameters: Sequence) -> list[tuple]:
        if self._sqlite is None:
            connection = sqlite3.connect(":memory:", check_same_thread=False)
            connection.execute("CREATE TABLE documents (position INTEGER PRIMARY KEY, id TEXT, metadata TEXT)")
            connection.executemany("INSERT INTO documents VALUES (?, ?, ?)", (
                (i, r["id"], None if r.get("metadata") is None else json.dumps(r["metadata"], ensure_ascii=False))
                for i, r in enumerate(self.records)))
            self._sqlite, self._sqlite_lock = connection, threading.Lock()
        with self._sqlite_lock:
            return self._sqlite.execute(sql, list(parameters)).fetchall()

    def close(self) -> None:
        pass

"""A BEIR ``corpus.jsonl`` read lazily, for builds that must not hold every text in memory."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maxsim.data.errors import DataError, encoding_error
from maxsim.data.jsonl import parse_line
from maxsim.data.training_folder import corpus_line
from maxsim.errors import SettingsError
from maxsim.limits import check_metadata, check_text


class CorpusFile(Sequence):
    """The documents of a ``corpus.jsonl`` (``_id``, optional ``title``, ``text``, optional
    ``metadata``, a JSON object as BEIR's corpora carry it) as index records, ``{"id", "content",
    "metadata"}`` (an empty or absent ``metadata`` is None), in file order, without their texts in memory.

    Opening reads every line once and checks it as :func:`~maxsim.data.training_folder.read_corpus`
    does (valid JSON and UTF-8, an id and a text, ids unique), so that a bad line is an error
    naming it before any long work; it keeps each document's byte offset (8 bytes a document; the
    set of ids only while checking). An item or a slice reads its lines again. Lines end with
    ``\\n`` (or ``\\r\\n``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, None, "file not found", "check the folder holds this file")
        offsets: list[int] = []
        seen: set[str] = set()
        with self.path.open("rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
                doc_id = self._check(raw, number)
                if doc_id is None:
                    continue
                if doc_id in seen:
                    raise DataError(self.path, number, f'duplicate id "{doc_id}"', "give every line its own _id")
                seen.add(doc_id)
                offsets.append(start)
        self._offsets = np.array(offsets, dtype=np.int64)

    def _check(self, raw: bytes, number: int) -> str | None:
        """The id of one line once it is checked (None for a blank line)."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise encoding_error(self.path) from None
        if not line.strip():
            return None
        obj = parse_line(self.path, number, line)
        doc_id, text = corpus_line(self.path, number, obj)
        try:
            check_text(doc_id, "the _id")
            check_text(text, "the text")
            check_metadata(obj.get("metadata"), f"document {doc_id!r}")
        except SettingsError as err:
            raise DataError(self.path, number, str(err), "fix this line") from None
        return doc_id

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self):
        for start in range(0, len(self), 4096):  # (a block of lines per opening of the file)
            yield from self[start : start + 4096]

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self._read(range(len(self))[item])
        position = range(len(self))[item]  # (an IndexError past the end, as a list)
        return self._read([position])[0]

    def _read(self, positions: Sequence[int]) -> list[dict]:
        out = []
        with self.path.open("rb") as handle:
            for p in positions:
                handle.seek(int(self._offsets[p]))
                obj = parse_line(self.path, None, handle.readline().decode("utf-8"))
                doc_id, text = corpus_line(self.path, None, obj)
                out.append({"id": doc_id, "content": text, "metadata": obj.get("metadata") or None})
        return out

"""RAGatouille's side files in an index folder (``collection.json``, ``pid_docid_map.json``,
``docid_metadata_map.json``), written from the index as it is and kept in step with its changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from maxsim.files import atomic_write_text
from maxsim.index import IndexData, index_lock

logger = logging.getLogger(__name__)

#: RAGatouille's side files are one JSON each, rewritten whole: an add or a delete refreshes them
#: while the index holds at most this many passages (about a second of writing); past it, they
#: are removed with a warning (:func:`write_side_files` writes them again on demand), so that an
#: add costs what it adds, not what the index holds
SIDE_FILES_MAX_PASSAGES = 100_000

#: the side files, in the index folder
SIDE_FILES = ("collection.json", "pid_docid_map.json", "docid_metadata_map.json")


def refresh_side_files(path: Path) -> None:
    """After an add or a delete: the side files rewritten, or, past
    :data:`SIDE_FILES_MAX_PASSAGES` passages, removed (never left out of step with the index)."""
    with index_lock(path):
        data = IndexData.load(path)
        passages = data.n_chunks
        if passages <= SIDE_FILES_MAX_PASSAGES:
            _write_side_files(path, data)
            return
        removed = [name for name in SIDE_FILES if (Path(path) / name).exists()]
        for name in removed:
            (Path(path) / name).unlink()
    if removed:
        logger.warning("%s: removed RAGatouille's side files (%s) instead of rewriting them whole for %d passages "
                       "on every add or delete; write them when needed with "
                       "maxsim.ragatouille.write_side_files(%r)", path, ", ".join(removed), passages, str(path))


def write_side_files(path: str | Path) -> None:
    """RAGatouille's side files in the index folder, from the index as it is now (under its lock):
    ``collection.json`` (each passage's text, by passage id), ``pid_docid_map.json`` and, when a
    document has metadata, ``docid_metadata_map.json``. Costs time in proportion to the index."""
    path = Path(path)
    with index_lock(path):
        _write_side_files(path, IndexData.load(path))


def _write_side_files(path: Path, data: IndexData) -> None:
    """:func:`write_side_files`, the lock held and the index loaded."""
    records = dict(data.iter_documents())
    chunks = data.chunks_of(sorted(records))  # the passages of documents not deleted
    owners = data.chunk_documents(chunks).tolist()
    spans = data.chunk_spans(chunks).tolist()
    passages = [records[d]["content"][start:end] for d, (start, end) in zip(owners, spans)]
    atomic_write_text(path / "collection.json", json.dumps(passages, ensure_ascii=False))
    pid_docid = {str(p): records[d]["id"] for p, d in zip(chunks.tolist(), owners)}
    atomic_write_text(path / "pid_docid_map.json", json.dumps(pid_docid, ensure_ascii=False))
    metadata = {d["id"]: d["metadata"] for d in records.values() if d["metadata"] is not None}
    if metadata:
        atomic_write_text(path / "docid_metadata_map.json", json.dumps(metadata, ensure_ascii=False))
    elif (path / "docid_metadata_map.json").exists():
        (path / "docid_metadata_map.json").unlink()

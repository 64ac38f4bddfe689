"""Changing an index, as Lucene's ``IndexWriter``: new views with documents added (one new
segment) or deleted (tombstones), compaction, saving them, merging after a save, and the BM25 side.

One idea of change, copy on write: every function takes a view (:class:`IndexData`) and returns
a new one, leaving the one it was given as it was, so that searches on it go on undisturbed.
:func:`save` writes what a view holds that is not on disk yet and returns the view as saved.

A save makes new files only (a segment, a tombstone file), then replaces ``index.json`` by one
atomic rename (:func:`maxsim.index.manifest.write_manifest`): a crash at any moment leaves the
last complete manifest in force, and what it does not name is deleted by a later write
(:mod:`maxsim.index.cleanup`). The caller holds :func:`~maxsim.index.manifest.index_lock`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maxsim.files import atomic_directory, real_path
from maxsim.index.cleanup import collect_garbage
from maxsim.index.codec import Codec
from maxsim.index.manifest import (
    DEFAULT_BM25_LANGUAGE,
    IndexLoadError,
    current_version,
    index_lock,
    write_manifest,
)
from maxsim.index.merge_policy import plan_merge
from maxsim.index.postings import Postings
from maxsim.index.reader import IndexData
from maxsim.index.segment import Segment, merged, write_tombstones
from maxsim.index.segment_checks import verify

logger = logging.getLogger(__name__)


def with_documents(data: IndexData, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray,
                   records: list[dict], chunk_docs: np.ndarray, spans: Sequence[tuple[int, int]]) -> IndexData:
    """A new view with documents added as one new segment (existing centroids and codec).

    codes, residuals: the chunks' tokens back to back, from :meth:`IndexData.compress`; doclens:
    (n,) tokens per chunk; chunk_docs: (n,) position of each chunk's document among ``records``.
    """
    segment = Segment.from_arrays(codes, residuals, doclens, chunk_docs, spans, records, len(data.centroids),
                                  bm25_language=data.settings.bm25_language)
    return _with_segments(data, [*data.segments, segment])


def without_documents(data: IndexData, positions: set[int] | Sequence[int]) -> IndexData:
    """A new view with some documents (by number) deleted: tombstones, nothing rewritten."""
    segments = list(data.segments)
    for s, _, local in data.split(np.fromiter(positions, dtype=np.int64), data.doc_base):
        segments[s] = segments[s].with_deleted(local)
    return _with_segments(data, segments)


def compacted(data: IndexData) -> IndexData:
    """A new view of one segment holding every live document (deleted ones dropped), after
    checking every byte of the old ones."""
    problems = data.verify()
    if problems:
        raise IndexLoadError(f"{data.path} is damaged, so it was not compacted ({'; '.join(problems)}): restore "
                             "the folder from a copy, or rebuild the index")
    return _with_segments(data, [merged(data.segments, len(data.centroids))] if data.segments else [])


def _with_segments(data: IndexData, segments: list[Segment], **changes) -> IndexData:
    return dataclasses.replace(data, segments=segments, _filters={}, **changes)


def save(data: IndexData, path: str | Path) -> IndexData:
    """Write what ``data`` holds that is not on disk and swap in a new manifest; returns the
    view as saved (its segments read from disk, its new version), ``data`` left as it was.

    Where ``path`` holds the very version ``data`` came from, only the new segments and
    tombstones are written, then ``index.json`` is replaced, then the merge policy runs
    (:mod:`~maxsim.index.merge_policy`) and what no manifest names any longer is deleted.
    Anywhere else (a new folder, an index being replaced, an index of the previous format) every
    file is written into a new folder that is swapped in whole. The caller holds the writer lock
    and has checked that ``path`` may be replaced.
    """
    path = real_path(Path(path))
    in_place = (not data.legacy and data.path is not None and Path(data.path).resolve() == path.resolve()
                and data.version and current_version(path) == data.version)
    if in_place:
        return _save_in_place(data, path)
    with atomic_directory(path) as tmp:
        write_shared(tmp, data.centroids, data.codec)
        write_manifest(tmp, data.settings, [segment.write(tmp, data.fingerprint) for segment in data.segments],
                       len(data.centroids))
    return IndexData.load(path)


def _save_in_place(data: IndexData, path: Path) -> IndexData:
    # the shared files are never rewritten in place: their digests and arrays stay as they are
    data = _commit(data, path, data.segments)
    while (chosen := plan_merge(data.segments)) is not None:
        parts = [data.segments[i] for i in chosen]
        for segment in parts:
            verify_or_raise(path, _entry(data, segment), data)
        combined = merged(parts, len(data.centroids))
        rest = [s for i, s in enumerate(data.segments) if i not in chosen]
        at = chosen[0]  # where the first of them was (those before it all stay)
        data = _commit(data, path, [*rest[:at], *([combined] if combined.n_documents else []), *rest[at:]])
    collect_garbage(path, data.manifest_entries)
    return data


def _commit(data: IndexData, path: Path, segments: list[Segment]) -> IndexData:
    """Write ``segments``' pending parts and a manifest naming them; the view as then on disk:
    segments just written, or whose tombstones were rewritten, opened from disk (memory-mapped,
    the cheap checks); the others, unchanged, and the shared arrays kept as they are, so that the
    cost grows with the change and not with the index."""
    entries = []
    for segment in segments:
        if segment.name is None:
            entries.append(segment.write(path, data.fingerprint))
            continue
        entry = dict(_entry(data, segment))
        if segment.tombstones_pending:
            entry["deleted"] = write_tombstones(path / segment.name, segment.deleted)
        entries.append(entry)
    version, digests = write_manifest(path, data.settings, entries, len(data.centroids), data.shared_digests)
    opened = [segment if segment.name == entry["name"] and not segment.tombstones_pending
              else Segment.open(path, entry) for segment, entry in zip(segments, entries)]
    return _with_segments(data, opened, version=version, path=path, legacy=False, manifest_entries=entries,
                          shared_digests=digests)


def _entry(data: IndexData, segment: Segment) -> dict:
    return next(e for e in data.manifest_entries if e["name"] == segment.name)


def write_shared(folder: Path, centroids: np.ndarray, codec: Codec) -> None:
    """Write the centroids (float16) and the codec into ``folder``."""
    np.save(folder / "centroids.npy", centroids.astype(np.float16), allow_pickle=False)
    np.save(folder / "codec.npy", codec.to_array(), allow_pickle=False)


def verify_or_raise(path: Path, entry: dict, data: IndexData) -> None:
    """Check every byte of one segment (``entry``) before a merge reads it: damage never spreads."""
    problems = verify(path, entry, len(data.centroids), data.dim, data.settings.nbits)
    if problems:
        raise IndexLoadError(f"{path} is damaged, so it was not merged ({'; '.join(problems)}): restore the "
                             "folder from a copy, or rebuild the index")


def write_bm25(data: IndexData, path: Path, language: str) -> IndexData:
    """Write each segment's BM25 postings in ``language``'s analysis (those it lacks, or all for
    another language) into its folder, then a manifest naming them (an index of the previous
    format is converted whole); returns the view as saved. One pass over the texts, no
    re-encoding; the caller holds the writer lock."""
    settings = data.settings.model_copy(update={"bm25_language": language})
    if data.legacy:
        segments = [dataclasses.replace(segment, bm25=Postings.from_texts([r["content"] for r in segment.documents],
                                                                          language))
                    for segment in data.segments]
        return save(_with_segments(data, segments, settings=settings), path)
    entries = []
    for segment in data.segments:
        entry = dict(_entry(data, segment))
        if segment.bm25 is None or segment.bm25.language != language:
            postings = Postings.from_texts([r["content"] for r in segment.documents], language)
            entry["bm25"] = postings.write(path / segment.name)
        entries.append(entry)
    write_manifest(path, settings, entries, len(data.centroids))
    fresh = IndexData.load(path)
    collect_garbage(path, fresh.manifest_entries)
    return fresh


def add_bm25(path: str | Path, language: str = DEFAULT_BM25_LANGUAGE) -> IndexData:
    """Give the index at ``path`` its BM25 side in ``language``'s analysis, under its writer
    lock (:func:`write_bm25`); returns the index as it is then."""
    from maxsim.lexical import check_language

    check_language(language)
    with index_lock(path):
        data = IndexData.load(path)
        if data.has_bm25 and data.settings.bm25_language == language:
            logger.info("%s already keeps a BM25 side in %r: nothing to do", path, language)
            return data
        return write_bm25(data, Path(path), language)

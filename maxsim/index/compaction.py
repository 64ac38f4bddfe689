"""Work on a whole index under its writer lock: compaction (every segment merged into one, in
rounds of a bounded number of open segments) and verification of one version while writers go
on."""

from __future__ import annotations

import logging
from pathlib import Path

from maxsim.index.cleanup import collect_garbage
from maxsim.index.manifest import index_lock, read_manifest, write_manifest
from maxsim.index.reader import IndexData
from maxsim.index.segment import merged
from maxsim.index.writer import compacted, save, verify_or_raise

logger = logging.getLogger(__name__)

#: the most segments a compaction opens at once: more are merged this many at a time first, so
#: that compacting an index of any number of segments holds a bounded number of open files
COMPACT_AT_ONCE = 64


def compact_index(path: str | Path) -> tuple[dict, IndexData]:
    """Merge every segment of the index at ``path`` into one, without its deleted documents,
    under its writer lock, after checking every file; returns (the index's counts before:
    documents, segments, chunks; the index after). Past :data:`COMPACT_AT_ONCE` segments, they
    are first merged that many at a time (each round a new manifest), so that no step opens
    more."""
    path = Path(path)
    with index_lock(path):
        counts = _counts(path)
        while _segment_count(path) > COMPACT_AT_ONCE:
            _merge_first(path, COMPACT_AT_ONCE)
        after = save(compacted(IndexData.load(path)), path)
    return counts, after


def _segment_count(path: Path) -> int:
    return len(read_manifest(path).get("segments", [None]))


def _counts(path: Path) -> dict:
    meta = read_manifest(path)
    return {"documents": meta.get("n_documents"), "segments": len(meta.get("segments", [None])),
            "chunks": meta.get("n_chunks")}


def _merge_first(path: Path, n: int) -> None:
    """One round of a compaction: the first ``n`` segments merged into one (checked first), in
    a new manifest; the others untouched and unopened."""
    part = IndexData.open_first(path, n)
    entries = part.manifest_entries
    for entry in entries[:n]:
        verify_or_raise(path, entry, part)
    combined = merged(part.segments, len(part.centroids))
    written = [combined.write(path, part.fingerprint)] if combined.n_documents else []
    entries = [*written, *entries[n:]]
    write_manifest(path, part.settings, entries, len(part.centroids), part.shared_digests)
    for segment in part.segments:
        segment.documents.close()
    collect_garbage(path, entries)


#: verifications of one version that a writer's new version interrupts, before the next takes the lock
VERIFY_ATTEMPTS = 3


def verify_index(path: str | Path) -> list[str]:
    """Every check there is on the index at ``path`` (:meth:`IndexData.verify`), on one version:
    while writers go on, a version they replace (and whose old files they then delete) is not
    reported as damaged but verified again as it is now; after ``VERIFY_ATTEMPTS`` such tries,
    the last holds the writer lock, so writers wait for it. Returns the problems."""
    for _ in range(VERIFY_ATTEMPTS):
        data = IndexData.load(path)
        problems = data.verify()
        if not problems or IndexData.current_version(path) == data.version:
            return problems
        logger.info("%s changed while it was verified: verifying the new version", path)
    with index_lock(path):
        return IndexData.load(path).verify()

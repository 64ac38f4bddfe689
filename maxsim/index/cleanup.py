"""Deleting what no manifest names any more, as Lucene's ``IndexFileDeleter``: segment folders a
merge replaced, tombstone files newer ones replaced, BM25 folders of another language, and the
temporary files of writes that did not finish. Only names maxsim makes are touched."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from maxsim.index.manifest import is_postings_name
from maxsim.index.postings import POSTINGS_PREFIX
from maxsim.index.segment import is_segment_name


def collect_garbage(path: Path, entries: list[dict]) -> None:
    """Delete what the manifest ``entries`` of the index at ``path`` do not name. Readers that
    still have an old segment open keep reading it (an open or mapped file outlives its name on
    POSIX systems); where the system refuses to delete a file in use, it is left for the next
    write. The caller holds the writer lock."""
    named = {e["name"]: (e.get("deleted") or {}).get("file") for e in entries}
    bm25_named = {e["name"]: (e.get("bm25") or {}).get("folder") for e in entries}
    for child in path.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        if child.name.startswith(".tmp-") and is_segment_name(child.name.removeprefix(".tmp-")):
            shutil.rmtree(child, ignore_errors=True)
        elif is_segment_name(child.name) and child.name not in named:
            shutil.rmtree(child, ignore_errors=True)
        elif child.name in named:
            _clean_segment(child, named[child.name], bm25_named.get(child.name))


def _clean_segment(folder: Path, tombstones: str | None, postings: str | None) -> None:
    """In one live segment's folder: the BM25 folders and tombstone files its entry does not name."""
    for candidate in [*folder.glob(f"{POSTINGS_PREFIX}*"), *folder.glob(f".tmp-{POSTINGS_PREFIX}*")]:
        if candidate.name != postings and candidate.is_dir() and not candidate.is_symlink() \
                and is_postings_name(candidate.name.removeprefix(".tmp-")):
            shutil.rmtree(candidate, ignore_errors=True)
    for tomb in folder.glob("deleted-*.npy"):
        if tomb.name != tombstones:
            with contextlib.suppress(OSError):
                tomb.unlink()
    for tmp in folder.glob(".tmp-deleted-*.npy"):
        with contextlib.suppress(OSError):
            tmp.unlink()

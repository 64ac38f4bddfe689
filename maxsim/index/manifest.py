"""An index's manifest: ``index.json``, the one file that says which files make the index.

It holds the settings (:class:`IndexSettings`), the counts, the sha256 of the shared files
(``centroids.npy``, ``codec.npy``) and each segment's entry (its files' sizes, array headers and
sha256; its current tombstone file; its BM25 folder). Every change writes new files first, then
a new manifest by one atomic rename (:func:`write_manifest`): the version in force is always the
last complete one. Writers take turns under :func:`index_lock`, as Lucene's ``SegmentInfos``
commit point under its write lock.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from maxsim.errors import MaxsimError
from maxsim.files import (
    LockedError,
    atomic_write_text,
    exclusive_lock,
    file_digest,
    json_object,
    lock_path,
    recover_directory,
    remove_stale_temps_of,
)
from maxsim.index.documents import DOCUMENTS_FILE
from maxsim.index.legacy import LEGACY_FORMAT
from maxsim.index.postings import POSTINGS_PREFIX
from maxsim.index.segment import ROW_ARRAYS, SEGMENT_ARRAYS, is_segment_name
from maxsim.index_settings import DEFAULT_BM25_LANGUAGE, IndexSettings, default  # noqa: F401 - named here too

logger = logging.getLogger(__name__)

#: the format written; a segment written before cell order (maxsim-plaid-3) is read as it is
FORMAT = "maxsim-warp-4"
SEGMENT_FORMATS = (FORMAT, "maxsim-plaid-3")
#: what index.json holds besides the settings: written on save, not part of IndexSettings
RECORDED = ("format", "version", "n_documents", "n_chunks", "n_tokens", "n_centroids", "files", "segments")
#: index.json keys every index has
REQUIRED_KEYS = ("format", "files", "nbits", "dim", "split_documents", "max_document_tokens")
#: files shared by every segment, read whole and checked against their sha256 on open (small)
SHARED_ARRAYS = ("centroids", "codec")


class IndexLoadError(MaxsimError, ValueError):
    """An index that cannot be used: damaged, truncated, or made for another model."""


def is_index(path: str | Path) -> bool:
    """Whether ``path`` is a maxsim index folder (of any format version)."""
    meta = Path(path) / "index.json"
    try:
        return str(json.loads(meta.read_text()).get("format", "")).startswith(("maxsim-plaid", "maxsim-warp"))
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def index_lock(path: str | Path, timeout: float = 60.0) -> Iterator[None]:
    """The writer lock of an index: ``<path>.lock`` beside the folder, held while a process reads,
    changes and saves the index, so that two writers take turns and none loses the other's work.

    Whoever takes it puts back an index that a crash between a swap's two renames left as
    ``<path>.old``, and removes the temporary folders a writer killed mid-write left beside it (no
    writer can be at work while it is held).
    """
    with exclusive_lock(lock_path(path), f"the index {path}", timeout):
        recover_directory(path)
        for stale in remove_stale_temps_of(path):
            logger.info("removed %s, left by a write of %s that did not finish", stale, path)
        yield


def recover_if_idle(path: Path) -> None:
    """Put back ``<path>.old`` left by a crash between a swap's two renames, unless a writer is
    in the middle of its swap now (then the load waits for it)."""
    try:
        with index_lock(path, timeout=0):  # taking the lock recovers
            pass
    except LockedError:
        pass


def write_manifest(folder: Path, settings: IndexSettings, entries: list[dict], n_centroids: int,
                   shared_digests: dict | None = None) -> tuple[str, dict]:
    """Write ``folder/index.json`` (atomically) naming the segments of ``entries`` (as
    :meth:`Segment.write` returns them) with a new version; returns (that version, the shared
    files' sha256). ``shared_digests``: those sha256 where the caller knows them (an in-place
    save, which leaves the shared files as they were); otherwise they are computed."""
    version = uuid.uuid4().hex
    if not shared_digests:
        shared_digests = {f"{name}.npy": file_digest(folder / f"{name}.npy") for name in SHARED_ARRAYS}
    meta = settings.model_dump()
    live = sum(e["n_documents"] - (e["deleted"] or {}).get("count", 0) for e in entries)
    meta.update(format=FORMAT, version=version, n_documents=live, n_chunks=sum(e["n_chunks"] for e in entries),
                n_tokens=sum(e["n_tokens"] for e in entries), n_centroids=int(n_centroids),
                files=dict(shared_digests), segments=entries)
    atomic_write_text(folder / "index.json", json.dumps(meta, indent=1) + "\n")
    return version, dict(shared_digests)


def current_version(path: str | Path) -> str | None:
    """The version recorded in ``path/index.json`` now, or None if it cannot be read."""
    try:
        return json.loads((Path(path) / "index.json").read_bytes()).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def read_manifest(path: str | Path) -> dict:
    """``path/index.json``, checked for the format and the keys every index has (nothing else read)."""
    path = Path(path)
    return parse_manifest((path / "index.json").read_bytes(), path / "index.json", path)


def read_settings(path: str | Path) -> IndexSettings:
    """The settings of the index in ``path``, from its index.json alone (checked, arrays not read)."""
    path = Path(path)
    try:
        raw = (path / "index.json").read_bytes()
    except FileNotFoundError:
        raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
    return settings_of(parse_manifest(raw, path / "index.json", path), path)


def settings_of(meta: dict, path: Path) -> IndexSettings:
    """The settings part of index.json, typed; keys this maxsim does not know are logged."""
    unknown = sorted(set(meta) - set(RECORDED) - set(IndexSettings.model_fields))
    if unknown:
        logger.warning("%s/index.json has settings this maxsim does not know (%s): ignored", path, ", ".join(unknown))
    try:
        return IndexSettings.model_validate({k: v for k, v in meta.items() if k not in RECORDED})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise IndexLoadError(f"{path}/index.json is damaged ({problems}): rebuild the index") from None


def parse_manifest(raw: bytes, meta_path: Path, path: Path) -> dict:
    """index.json, checked for the format and the keys every index has."""
    try:
        meta = json_object(raw)
    except ValueError as err:
        raise IndexLoadError(f"{meta_path} is damaged ({err}): rebuild the index") from None
    if meta.get("format") not in (*SEGMENT_FORMATS, LEGACY_FORMAT):
        raise IndexLoadError(f"{path}: index format {meta.get('format')!r} is not one this maxsim reads "
                             f"({', '.join((*SEGMENT_FORMATS, LEGACY_FORMAT))}): rebuild the index with `maxsim "
                             "index`, or open it with the maxsim that wrote it")
    missing = [key for key in REQUIRED_KEYS + (("segments", "version") if meta["format"] in SEGMENT_FORMATS else ())
               if key not in meta]
    if missing:
        raise IndexLoadError(f"{meta_path} is damaged (no {', '.join(missing)}): rebuild the index")
    if meta["nbits"] not in (1, 2, 4):
        raise IndexLoadError(f"{meta_path} is damaged (nbits {meta['nbits']!r} is not 1, 2 or 4): rebuild the index")
    if meta["format"] in SEGMENT_FORMATS:
        _check_lists(meta, meta_path)
    return meta


def _check_lists(meta: dict, meta_path: Path) -> None:
    expected = {f"{name}.npy" for name in SHARED_ARRAYS}
    if not isinstance(meta["files"], dict) or set(meta["files"]) != expected:
        raise IndexLoadError(f"{meta_path} is damaged (its file list is not {sorted(expected)}): rebuild the index")
    if not isinstance(meta["segments"], list) or not all(entry_ok(e) for e in meta["segments"]):
        raise IndexLoadError(f"{meta_path} is damaged (its segment list is not one the index writes): rebuild "
                             "the index")
    names = [entry["name"] for entry in meta["segments"]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise IndexLoadError(f"{meta_path} lists the segment {', '.join(repeated)} more than once (its documents "
                             "would be found twice): remove the repeated entry from index.json, or rebuild the "
                             "index")


def entry_ok(entry) -> bool:
    """Whether a manifest's segment entry has the shape the index writes."""
    return (isinstance(entry, dict) and is_segment_name(str(entry.get("name", "")))
            and isinstance(entry.get("files"), dict)
            and set(entry["files"]) - {f"{n}.npy" for n in ROW_ARRAYS}  # (absent: written before cell order)
            == {f"{n}.npy" for n in SEGMENT_ARRAYS} | {DOCUMENTS_FILE}
            and all(isinstance(entry.get(k), int) for k in ("n_documents", "n_chunks", "n_tokens"))
            and (entry.get("deleted") is None or isinstance(entry["deleted"], dict))
            and (entry.get("bm25") is None or (isinstance(entry["bm25"], dict)
                                               and is_postings_name(str(entry["bm25"].get("folder", ""))))))


def is_postings_name(name: str) -> bool:
    """Whether ``name`` is a BM25 postings folder's name as the index makes them."""
    rest = name.removeprefix(POSTINGS_PREFIX)
    return name.startswith(POSTINGS_PREFIX) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


def check_shared(meta: dict, shared: dict[str, np.ndarray], path: Path) -> None:
    """The centroids and codec are what the settings say (read whole: they are small)."""
    centroids, codec, nbits = shared["centroids"], shared["codec"], meta["nbits"]
    problems = []
    if centroids.dtype.kind != "f" or centroids.ndim != 2 or centroids.shape[1] != meta["dim"]:
        problems.append(f"centroids.npy does not hold {meta['dim']}-dim centroids")
    elif not np.isfinite(centroids).all():
        problems.append("centroids.npy holds values that are not numbers (NaN or infinite)")
    if codec.dtype.kind != "f" or codec.ndim != 1 or len(codec) != 2 * 2**nbits - 1:
        problems.append(f"codec.npy does not hold {2 * 2**nbits - 1} values for nbits {nbits}")
    elif not np.isfinite(codec).all() or (np.diff(codec[: 2**nbits - 1]) < 0).any():
        problems.append("codec.npy holds values that are not numbers, or bucket cutoffs out of order")
    if meta.get("n_centroids") not in (None, len(centroids)):
        problems.append(f"index.json says {meta['n_centroids']} centroids, centroids.npy holds {len(centroids)}")
    if problems:
        raise IndexLoadError(f"{path} is damaged ({'; '.join(problems)}): rebuild the index")

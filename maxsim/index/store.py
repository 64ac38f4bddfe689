"""An index on disk and in memory: a manifest, shared centroids and codec, and segments.

Files (``index.json`` names every other file with its size and sha256)::

    index.json        the manifest: settings (:class:`IndexSettings`), counts, the shared files'
                      sha256, and each segment's entry (its files' sizes, array headers and sha256;
                      its current tombstone file)
    centroids.npy     (C, dim) float16
    codec.npy         (2 * 2**nbits - 1,) float32: bucket cutoffs then bucket values
    seg-<32 hex>/     one segment each (:mod:`maxsim.index.segment`), immutable once written

A write makes new files only (a segment, a tombstone file), then replaces ``index.json`` by one
atomic rename: a crash at any moment leaves the last complete manifest in force, and what it
does not name is deleted by a later write. Writers take turns under :func:`index_lock`.

What each check protects: opening an index reads the manifest, checks the shared files whole
(their sha256), and each segment's file sizes and array headers against the manifest (a
truncated, replaced or missing file is an error, never a wrong result), in time that does not
grow with the corpus. Every byte's sha256 and every value (codes, spans, the inverted file) is
checked when a file is written (it is hashed from disk), by ``maxsim index --verify`` and before
a merge or compaction reads a segment (damage never spreads into a new segment).

Indexes of the previous format (``maxsim-plaid-2``) are read whole (:mod:`maxsim.index.legacy`)
and converted to this one by their first write.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maxsim.errors import MaxsimError, SettingsError
from maxsim.files import (
    LockedError,
    atomic_directory,
    atomic_write_text,
    exclusive_lock,
    file_digest,
    lock_path,
    old_path,
    real_path,
    recover_directory,
    remove_stale_temps_of,
)
from maxsim.index.codec import Codec, centroids_fingerprint, nearest_centroids
from maxsim.index.filters import Filter, path_condition
from maxsim.index.legacy import LEGACY_FORMAT, Changed, read_legacy
from maxsim.index.merge_policy import plan_merge
from maxsim.index.postings import POSTINGS_PREFIX, Postings
from maxsim.index.segment import (
    Segment,
    SegmentError,
    is_segment_name,
    merged,
    verify,
    write_tombstones,
)

logger = logging.getLogger(__name__)

FORMAT = "maxsim-plaid-3"
#: what index.json holds besides the settings: written on save, not part of IndexSettings
RECORDED = ("format", "version", "n_documents", "n_chunks", "n_tokens", "n_centroids", "files", "segments")


class IndexLoadError(MaxsimError, ValueError):
    """An index that cannot be used: damaged, truncated, or made for another model."""


class IndexSettings(BaseModel):
    """How an index was built; saved in ``index.json`` (beside the counts and checksums)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    nbits: Literal[1, 2, 4] = 2
    dim: int
    #: the folder the model was loaded from (None: a model held only in memory)
    model_path: str | None = None
    #: :meth:`maxsim.model.ColBERT.digest` of the model that encoded the documents
    model_digest: str | None = None
    model_settings: dict | None = None
    split_documents: bool = True
    max_document_tokens: int
    seed: int = 0
    #: the precision documents were encoded in (``bfloat16``, ``float32``, ``bfloat16 autocast``)
    encoded_in: str | None = None
    #: token pooling (:mod:`maxsim.index.pooling`): each chunk's vectors pooled by this factor
    #: before they are stored (1: none); documents added later are pooled the same way
    pool_factor: int = Field(1, ge=1)
    #: the language of the BM25 side (:mod:`maxsim.index.postings`) kept for hybrid search; None:
    #: the index has none (built before maxsim kept one, or without it): ``maxsim index --add-bm25``
    bm25_language: str | None = None


def is_index(path: str | Path) -> bool:
    """Whether ``path`` is a maxsim index folder (of any format version)."""
    meta = Path(path) / "index.json"
    try:
        return str(json.loads(meta.read_text()).get("format", "")).startswith("maxsim-plaid")
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


#: index.json keys every index has
REQUIRED_KEYS = ("format", "files", "nbits", "dim", "split_documents", "max_document_tokens")
#: files shared by every segment, read whole and checked against their sha256 on open (small)
SHARED_ARRAYS = ("centroids", "codec")
LOAD_ATTEMPTS = 50  # a load that meets a write in progress starts again, up to this many times

#: filters whose results an index keeps (per loaded version)
FILTERS_KEPT = 16


@dataclass
class Allowed:
    """What a filter lets a search return: ``masks`` per segment, (N_s,) bool over its chunks
    (those of deleted documents False); how many ``documents`` and ``chunks`` pass."""

    masks: list[np.ndarray]
    documents: int
    chunks: int

    def chunk_numbers(self, chunk_base: np.ndarray) -> np.ndarray:
        """(chunks,) int64 the numbers of the chunks that pass, ascending."""
        return np.concatenate([np.zeros(0, dtype=np.int64),
                               *(np.flatnonzero(m) + chunk_base[s] for s, m in enumerate(self.masks))])


@dataclass
class IndexData:
    """An index: shared centroids and codec, and its segments in order.

    Documents and chunks are numbered across segments (segment after segment, deleted ones
    included): ``doc_base[s] + local`` and ``chunk_base[s] + local``. ``version`` changes with
    every save; a writer that finds another version on disk than the one it holds reloads
    before changing anything. Changes (:meth:`with_documents`, :meth:`without_documents`,
    :meth:`compacted`) return a new object (its new parts pending) and leave this one as it was;
    :meth:`save` writes what is pending.
    """

    settings: IndexSettings
    centroids: np.ndarray
    codec: Codec
    segments: list[Segment] = field(default_factory=list)
    version: str = ""
    #: the folder this version was read from or saved to (None: not on disk)
    path: Path | None = None
    #: read from an index of the previous format (written whole on its first save)
    legacy: bool = False
    #: the manifest's entry of each written segment (by name), as last read or written
    manifest_entries: list[dict] = field(default_factory=list, repr=False)
    _filters: dict = field(default_factory=dict, repr=False, compare=False)  # the last filters' Allowed
    #: the sha256 of the shared files (``centroids.npy``, ``codec.npy``) as the manifest records them
    shared_digests: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @cached_property
    def fingerprint(self) -> str:
        """:func:`~maxsim.index.codec.centroids_fingerprint` of this index's centroids, which its
        segments keep."""
        return centroids_fingerprint(self.centroids)

    @property
    def n_documents(self) -> int:
        """Documents in the index (deleted ones not counted)."""
        return sum(s.n_live for s in self.segments)

    @property
    def n_chunks(self) -> int:
        """Chunks stored (those of deleted documents included until a merge drops them)."""
        return sum(s.n_chunks for s in self.segments)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.segments)

    @property
    def has_bm25(self) -> bool:
        """Whether every segment keeps its BM25 postings (hybrid search can run)."""
        return self.settings.bm25_language is not None and all(s.bm25 is not None for s in self.segments)

    @cached_property
    def doc_base(self) -> np.ndarray:
        """(S + 1,) int64 number of each segment's first document."""
        return np.concatenate([[0], np.cumsum([s.n_documents for s in self.segments], dtype=np.int64)])

    @cached_property
    def chunk_base(self) -> np.ndarray:
        """(S + 1,) int64 number of each segment's first chunk."""
        return np.concatenate([[0], np.cumsum([s.n_chunks for s in self.segments], dtype=np.int64)])

    # ------------------------------------------------------------------ documents and chunks
    def split(self, numbers: np.ndarray, base: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """For each segment holding some of ``numbers`` (document or chunk numbers, by ``base``):
        (segment index, where those numbers are in ``numbers``, their local numbers)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        owner = np.searchsorted(base, numbers, side="right") - 1
        for s in np.unique(owner).tolist():
            where = np.flatnonzero(owner == s)
            yield s, where, numbers[where] - base[s]

    def documents_at(self, positions: Sequence[int]) -> list[dict]:
        """The records ({"id", "content", "metadata"}) of some documents, by number."""
        out: list[dict | None] = [None] * len(positions)
        for s, where, local in self.split(np.asarray(positions, dtype=np.int64), self.doc_base):
            for i, record in zip(where.tolist(), self.segments[s].documents.get(local.tolist())):
                out[i] = record
        return out

    def positions_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The number of each of ``ids`` the index holds (deleted documents are not held)."""
        found: dict[str, int] = {}
        for s, segment in enumerate(self.segments):
            for identifier, local in segment.documents.positions_of(ids).items():
                if not (len(segment.deleted) and _contains(segment.deleted, local)):
                    found[identifier] = int(self.doc_base[s] + local)
        return found

    def iter_documents(self) -> Iterator[tuple[int, dict]]:
        """(number, record) of every document, in order (reads them all: for exports)."""
        for s, segment in enumerate(self.segments):
            dead = set(segment.deleted.tolist())
            for local, record in enumerate(segment.documents):
                if local not in dead:
                    yield int(self.doc_base[s] + local), record

    @property
    def documents(self) -> list[dict]:
        """Every document's record, in order (reads them all: for small indexes and tests)."""
        return [record for _, record in self.iter_documents()]

    def chunk_documents(self, chunk_ids: np.ndarray) -> np.ndarray:
        """(n,) int64 number of the document of each chunk."""
        out = np.zeros(len(chunk_ids), dtype=np.int64)
        for s, where, local in self.split(chunk_ids, self.chunk_base):
            out[where] = self.segments[s].chunk_docs[local].astype(np.int64) + self.doc_base[s]
        return out

    def chunk_spans(self, chunk_ids: np.ndarray) -> np.ndarray:
        """(n, 2) int64 character span (start, end) of each chunk in its document."""
        out = np.zeros((len(chunk_ids), 2), dtype=np.int64)
        for s, where, local in self.split(chunk_ids, self.chunk_base):
            out[where] = self.segments[s].spans[local]
        return out

    def chunks_of(self, positions: Sequence[int]) -> np.ndarray:
        """(n,) int64 numbers of every chunk of some documents, ascending."""
        parts = [np.zeros(0, dtype=np.int64)]
        for s, _, local in self.split(np.asarray(positions, dtype=np.int64), self.doc_base):
            segment = self.segments[s]
            parts.append(np.flatnonzero(np.isin(segment.chunk_docs, local)) + self.chunk_base[s])
        return np.sort(np.concatenate(parts))

    def allowed(self, spec: Mapping) -> Allowed:
        """What a search with the filter ``spec`` (:mod:`maxsim.index.filters`) may return: one
        SQLite query per segment, kept for the next searches with the same filter (up to
        ``FILTERS_KEPT`` filters per loaded version). A field no document has is an error, a
        nested one too."""
        condition = Filter(spec)
        key = condition.key()
        if key in self._filters:
            return self._filters[key]
        self.check_fields(condition)
        masks, documents = [], 0
        for segment in self.segments:
            mask, count = segment.allowed_chunks(condition.sql, condition.params)
            masks.append(mask)
            documents += count
        allowed = Allowed(masks, documents, int(sum(int(m.sum()) for m in masks)))
        while len(self._filters) >= FILTERS_KEPT:
            self._filters.pop(next(iter(self._filters)))
        self._filters[key] = allowed
        return allowed

    def check_fields(self, condition: Filter) -> None:
        """Refuse a filter naming a metadata field (top-level, or a nested path) that no document
        of this index has: it would pass nothing, silently."""
        known = set().union(*(segment.metadata_fields() for segment in self.segments))
        unknown = condition.fields - known
        if unknown:
            raise SettingsError(f"no document of this index has the metadata field {', '.join(sorted(unknown))}: "
                                f"its documents have {', '.join(sorted(known)) or 'no metadata'}")
        for nested in sorted(condition.nested):
            sql, parameters = path_condition(nested)
            if not any(segment.documents.any_where(sql, parameters) for segment in self.segments):
                raise SettingsError(f"no document of this index has the metadata field {nested!r} (its documents "
                                    f"have {nested.split('.')[0]!r}, but nothing at that path): check the path")

    # ------------------------------------------------------------------ changes
    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors ((T, dim) float32) as this index stores them, with its centroids and
        codec: (centroid ids (T,) int64, packed residuals (T, dim * nbits / 8) uint8)."""
        codes = nearest_centroids(vectors, self.centroids).astype(np.int64)
        return codes, self.codec.encode(vectors - self.centroids[codes])

    def with_documents(self, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray, records: list[dict],
                       chunk_docs: np.ndarray, spans: Sequence[tuple[int, int]]) -> IndexData:
        """A new index with documents added as one new segment (existing centroids and codec).

        codes, residuals: the chunks' tokens back to back, from :meth:`compress`; doclens: (n,)
        tokens per chunk; chunk_docs: (n,) position of each chunk's document among ``records``.
        """
        segment = Segment.from_arrays(codes, residuals, doclens, chunk_docs, spans, records, len(self.centroids),
                                      bm25_language=self.settings.bm25_language)
        return self._with_segments([*self.segments, segment])

    def without_documents(self, positions: set[int] | Sequence[int]) -> IndexData:
        """A new index with some documents (by number) deleted: tombstones, nothing rewritten."""
        segments = list(self.segments)
        for s, _, local in self.split(np.fromiter(positions, dtype=np.int64), self.doc_base):
            segments[s] = segments[s].with_deleted(local)
        return self._with_segments(segments)

    def compacted(self) -> IndexData:
        """A new index of one segment holding every live document (deleted ones dropped)."""
        problems = self.verify()
        if problems:
            raise IndexLoadError(f"{self.path} is damaged, so it was not compacted ({'; '.join(problems)}): restore "
                                 "the folder from a copy, or rebuild the index")
        return self._with_segments([merged(self.segments, len(self.centroids))] if self.segments else [])

    def _with_segments(self, segments: list[Segment]) -> IndexData:
        return IndexData(self.settings, self.centroids, self.codec, segments, self.version, self.path, self.legacy,
                         self.manifest_entries, shared_digests=self.shared_digests)

    # ------------------------------------------------------------------ writing
    def save(self, path: str | Path) -> str:
        """Write what is pending and swap in a new manifest; returns the new version, which this
        object takes (its segments then read from disk).

        Where ``path`` holds the very version this object came from, only the new segments and
        tombstones are written, then ``index.json`` is replaced (one atomic rename: a crash at any
        moment leaves the last complete manifest), then the merge policy runs (:mod:`~maxsim.index.merge_policy`)
        and what no manifest names any longer is deleted. Anywhere else (a new folder, an index
        being replaced, an index of the previous format) every file is written into a new folder
        that is swapped in whole. The caller holds :func:`index_lock` and has checked that ``path``
        may be replaced.
        """
        path = real_path(Path(path))
        in_place = (not self.legacy and self.path is not None and Path(self.path).resolve() == path.resolve()
                    and self.version and IndexData.current_version(path) == self.version)
        if in_place:
            self._save_in_place(path)
        else:
            with atomic_directory(path) as tmp:
                self.write_shared(tmp)
                self.write_manifest(tmp, [segment.write(tmp, self.fingerprint) for segment in self.segments])
            self._reopen(path)
        return self.version

    def _save_in_place(self, path: Path) -> None:
        # the shared files are never rewritten in place: their digests and arrays stay as they are
        self.write_manifest(path, self._write_pending(path), self.shared_digests)
        self._reopen_written(path)
        while (chosen := plan_merge(self.segments)) is not None:
            parts = [self.segments[i] for i in chosen]
            for segment in parts:
                verify_or_raise(path, self._entry(segment), self)
            combined = merged(parts, len(self.centroids))
            rest = [s for i, s in enumerate(self.segments) if i not in chosen]
            at = chosen[0]  # where the first of them was (those before it all stay)
            self.segments = [*rest[:at], *([combined] if combined.n_documents else []), *rest[at:]]
            self.write_manifest(path, self._write_pending(path), self.shared_digests)
            self._reopen_written(path)
        collect_garbage(path, self.manifest_entries)

    def _write_pending(self, path: Path) -> list[dict]:
        entries = []
        for segment in self.segments:
            if segment.name is None:
                entries.append(segment.write(path, self.fingerprint))
                continue
            entry = dict(self._entry(segment))
            if segment.tombstones_pending:
                entry["deleted"] = write_tombstones(path / segment.name, segment.deleted)
            entries.append(entry)
        return entries

    def write_bm25(self, path: Path, language: str) -> None:
        """Write each segment's BM25 postings in ``language``'s analysis (those it lacks, or all
        for another language) into its folder, then a manifest naming them (an index of the
        previous format is converted whole). One pass over the texts, no re-encoding; the
        caller holds :func:`index_lock`."""
        settings = self.settings.model_copy(update={"bm25_language": language})
        if self.legacy:
            for segment in self.segments:
                segment.bm25 = Postings.from_texts([r["content"] for r in segment.documents], language)
            self.settings = settings
            self.save(path)
            return
        entries = []
        for segment in self.segments:
            entry = dict(self._entry(segment))
            if segment.bm25 is None or segment.bm25.language != language:
                postings = Postings.from_texts([r["content"] for r in segment.documents], language)
                entry["bm25"] = postings.write(path / segment.name)
            entries.append(entry)
        self.settings = settings
        self.write_manifest(path, entries)
        self._reopen(path)
        collect_garbage(path, self.manifest_entries)

    def _entry(self, segment: Segment) -> dict:
        return next(e for e in self.manifest_entries if e["name"] == segment.name)

    def write_shared(self, folder: Path) -> None:
        """Write the centroids (float16) and the codec into ``folder``."""
        np.save(folder / "centroids.npy", self.centroids.astype(np.float16), allow_pickle=False)
        np.save(folder / "codec.npy", self.codec.to_array(), allow_pickle=False)

    def write_manifest(self, folder: Path, entries: list[dict], shared_digests: dict | None = None) -> None:
        """Write ``folder/index.json`` (atomically) naming the segments of ``entries`` (as
        :meth:`Segment.write` returns them), with a new version, which this object takes.
        ``shared_digests``: the sha256 of ``folder``'s shared files where the caller knows them
        (an in-place save, which leaves them as they were); otherwise they are computed."""
        version = uuid.uuid4().hex
        if not shared_digests:
            shared_digests = {f"{name}.npy": file_digest(folder / f"{name}.npy") for name in SHARED_ARRAYS}
        meta = self.settings.model_dump()
        live = sum(e["n_documents"] - (e["deleted"] or {}).get("count", 0) for e in entries)
        meta.update(format=FORMAT, version=version, n_documents=live, n_chunks=sum(e["n_chunks"] for e in entries),
                    n_tokens=sum(e["n_tokens"] for e in entries), n_centroids=int(len(self.centroids)),
                    files=dict(shared_digests), segments=entries)
        atomic_write_text(folder / "index.json", json.dumps(meta, indent=1) + "\n")
        self.version, self.manifest_entries, self.shared_digests = version, entries, dict(shared_digests)

    def _reopen(self, path: Path) -> None:
        """Take the segments as written (memory-mapped) in place of those in memory."""
        fresh = IndexData.load(path)
        self.segments, self.version, self.path, self.legacy = fresh.segments, fresh.version, path, False
        self.manifest_entries, self.shared_digests = fresh.manifest_entries, fresh.shared_digests
        self._forget_derived()

    def _reopen_written(self, path: Path) -> None:
        """After an in-place save by this object (under the lock): the segments it has just written,
        and those whose tombstones it rewrote, are opened (memory-mapped, the cheap checks); the
        others, unchanged on disk, and the shared arrays are kept as they are, so that the cost
        grows with the change and not with the index."""
        self.segments = [segment if segment.name == entry["name"] and not segment.tombstones_pending
                         else Segment.open(path, entry) for segment, entry in zip(self.segments, self.manifest_entries)]
        self.path, self.legacy = path, False
        self._forget_derived()

    def _forget_derived(self) -> None:
        """Drop what was computed from the segments (their numbering, the filters kept)."""
        self.__dict__.pop("doc_base", None)
        self.__dict__.pop("chunk_base", None)
        self._filters.clear()

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path) -> IndexData:
        """Open an index: the manifest, the shared files (checked whole), and each segment
        memory-mapped with the cheap checks (sizes, array headers, counts); nothing is read in
        proportion to the corpus. :meth:`verify` checks every byte.

        A load that meets a writer's swap reads again, so what comes back is always one version;
        an index left without its folder by a crash between the swap's two renames is put back
        from ``<path>.old`` first.
        """
        path = Path(path)
        for attempt in range(LOAD_ATTEMPTS):
            if not (path / "index.json").is_file() and old_path(path).is_dir():
                _recover_if_idle(path)
            try:
                return cls._load_once(path)
            except Changed:
                time.sleep(min(0.01 * (attempt + 1), 0.2))
        raise IndexLoadError(f"{path} kept changing while it was read ({LOAD_ATTEMPTS} tries): "
                             "another process is writing it without pause; try again")

    @classmethod
    def open_first(cls, path: str | Path, n: int) -> IndexData:
        """The index at ``path`` with only its first ``n`` segments opened (its manifest entries
        all named): for a compaction in rounds, under the writer lock."""
        return cls._load_once(Path(path), first=n)

    @staticmethod
    def current_version(path: str | Path) -> str | None:
        """The version recorded in ``path/index.json`` now, or None if it cannot be read."""
        try:
            return json.loads((Path(path) / "index.json").read_bytes()).get("version")
        except (OSError, ValueError, AttributeError):
            return None

    @classmethod
    def _load_once(cls, path: Path, first: int | None = None) -> IndexData:
        """One read of the index (``first``: open only its first segments, for a compaction in
        rounds; ``manifest_entries`` still names them all)."""
        meta_path = path / "index.json"
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            if old_path(path).is_dir():
                raise Changed from None  # a writer is between its two renames
            raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
        meta = _parse_meta(raw, meta_path, path)

        def unchanged() -> bool:
            try:
                return meta_path.read_bytes() == raw
            except FileNotFoundError:
                return False

        settings = _settings(meta, path)
        if meta["format"] == LEGACY_FORMAT:
            return cls._from_legacy(path, meta, settings, unchanged)
        try:
            shared = {}
            for name in SHARED_ARRAYS:
                data = (path / f"{name}.npy").read_bytes()
                if hashlib.sha256(data).hexdigest() != meta["files"][f"{name}.npy"]:
                    raise SegmentError(f"{path / name}.npy is truncated or damaged (checksum mismatch)")
                shared[name] = np.load(io.BytesIO(data), allow_pickle=False)
            segments = [Segment.open(path, entry) for entry in meta["segments"][:first]]
        except FileNotFoundError as err:
            if not unchanged():
                raise Changed from None
            raise IndexLoadError(f"{err.filename or err}: a file of the index is missing: restore the folder from "
                                 "a copy, or rebuild the index") from None
        except (SegmentError, KeyError, TypeError) as err:
            if not unchanged():
                raise Changed from None
            raise IndexLoadError(f"{path} is damaged ({err}): restore the folder from a copy, or rebuild the "
                                 "index") from None
        _check_shared(meta, shared, path)
        width = meta["dim"] * meta["nbits"] // 8
        fingerprint = centroids_fingerprint(shared["centroids"])
        for segment, entry in zip(segments, meta["segments"]):
            if segment.residuals.shape[1] != width:
                raise IndexLoadError(f"{path / entry['name']} is damaged (residuals.npy rows are not {width} bytes): "
                                     "rebuild the index")
            if segment.documents.owner() not in (None, fingerprint):
                raise IndexLoadError(f"{path / 'index.json'} lists the segment {entry['name']}, which was written for "
                                     "another index (its centroids are not this index's, so its vectors would be "
                                     "read wrong): remove that entry from index.json, or rebuild the index")
        data = cls(settings, shared["centroids"].astype(np.float32),
                   Codec.from_array(shared["codec"], settings.nbits), segments, meta["version"], path)
        data.manifest_entries, data.shared_digests = meta["segments"], dict(meta["files"])
        return data

    @classmethod
    def _from_legacy(cls, path: Path, meta: dict, settings: IndexSettings, unchanged) -> IndexData:
        arrays, documents = read_legacy(path, meta, unchanged, IndexLoadError)
        settings = settings.model_copy(update={"bm25_language": None})  # (that format kept no BM25 side)
        n_centroids = len(arrays["centroids"])
        segment = Segment.from_arrays(arrays["codes"], arrays["residuals"], arrays["doclens"], arrays["chunk_docs"],
                                      arrays["spans"], documents, n_centroids)
        return cls(settings, arrays["centroids"].astype(np.float32), Codec.from_array(arrays["codec"], settings.nbits),
                   [segment], meta.get("version", ""), path, legacy=True)

    def verify(self) -> list[str]:
        """Every check there is, on every file of the index on disk: the sha256 of each file and
        the values of each array (:func:`maxsim.index.segment.verify`). Returns the problems."""
        if self.path is None or self.legacy:
            return []
        return [problem for entry in self.manifest_entries
                for problem in verify(self.path, entry, len(self.centroids), self.dim, self.settings.nbits)]

    # ------------------------------------------------------------------ vectors
    @cached_property
    def centroid_vectors(self) -> torch.Tensor:
        """The centroids as a (C, dim) float32 tensor (made once per loaded version)."""
        return torch.from_numpy(np.ascontiguousarray(self.centroids, dtype=np.float32))

    @cached_property
    def residual_table(self) -> torch.Tensor:
        """The codec's byte -> residual values table, as a tensor."""
        return torch.from_numpy(self.codec.table)

    def vectors_of(self, segment: Segment, index: np.ndarray) -> torch.Tensor:
        """(T, dim) float32 stored vectors (centroid + decoded residual, not renormalised) of
        the tokens at ``index`` in ``segment``."""
        vectors = self.centroid_vectors.index_select(0, segment.codes_at(index))
        vectors += segment.residuals_at(index, self.residual_table, self.dim)
        return vectors

    def decompress(self, chunk_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors of some chunks (by number) back to back, as stored: ((T, dim) float32,
        (n,) int64 tokens per chunk)."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        vectors, lengths = [None] * len(chunk_ids), [None] * len(chunk_ids)
        for s, where, local in self.split(chunk_ids, self.chunk_base):
            segment = self.segments[s]
            tokens = self.vectors_of(segment, segment.token_positions(local))
            for i, part in zip(where.tolist(), torch.split(tokens, segment.doclens[local].tolist())):
                vectors[i], lengths[i] = part, len(part)
        if not vectors:
            return torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.int64)
        return torch.cat(vectors), torch.tensor(lengths, dtype=torch.int64)


def _contains(sorted_values: np.ndarray, value: int) -> bool:
    i = int(np.searchsorted(sorted_values, value))
    return i < len(sorted_values) and int(sorted_values[i]) == value


def verify_or_raise(path: Path, entry: dict, data: IndexData) -> None:
    """Check every byte of one segment (``entry``) before a merge reads it: damage never spreads."""
    problems = verify(path, entry, len(data.centroids), data.dim, data.settings.nbits)
    if problems:
        raise IndexLoadError(f"{path} is damaged, so it was not merged ({'; '.join(problems)}): restore the "
                             "folder from a copy, or rebuild the index")


def collect_garbage(path: Path, entries: list[dict]) -> None:
    """Delete what no manifest names any more: segment folders replaced by a merge, tombstone
    files replaced by newer ones, and temporary folders of writes that did not finish. Only
    names maxsim makes are touched. Readers that still have an old segment open keep reading it
    (an open or mapped file outlives its name on POSIX systems); where the system refuses to
    delete a file in use, it is left for the next write."""
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
            for folder in [*child.glob(f"{POSTINGS_PREFIX}*"), *child.glob(f".tmp-{POSTINGS_PREFIX}*")]:
                if folder.name != bm25_named.get(child.name) and folder.is_dir() and not folder.is_symlink() \
                        and _is_postings_name(folder.name.removeprefix(".tmp-")):
                    shutil.rmtree(folder, ignore_errors=True)
            for tomb in child.glob("deleted-*.npy"):
                if tomb.name != named[child.name]:
                    with contextlib.suppress(OSError):
                        tomb.unlink()
            for tmp in child.glob(".tmp-deleted-*.npy"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _is_postings_name(name: str) -> bool:
    rest = name.removeprefix(POSTINGS_PREFIX)
    return name.startswith(POSTINGS_PREFIX) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


def add_bm25(path: str | Path, language: str = "en") -> IndexData:
    """Give the index at ``path`` its BM25 side in ``language``'s analysis, under its writer
    lock (:meth:`IndexData.write_bm25`); returns the index as it is then."""
    from maxsim.lexical import check_language

    check_language(language)
    with index_lock(path):
        data = IndexData.load(path)
        if data.has_bm25 and data.settings.bm25_language == language:
            logger.info("%s already keeps a BM25 side in %r: nothing to do", path, language)
            return data
        data.write_bm25(Path(path), language)
    return data


def _check_shared(meta: dict, shared: dict[str, np.ndarray], path: Path) -> None:
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


def _parse_meta(raw: bytes, meta_path: Path, path: Path) -> dict:
    """index.json, checked for the format and the keys every index has."""
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise IndexLoadError(f"{meta_path} is damaged ({err}): rebuild the index") from None
    if not isinstance(meta, dict):
        raise IndexLoadError(f"{meta_path} is damaged (not a JSON object): rebuild the index")
    if meta.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise IndexLoadError(f"{path}: index format {meta.get('format')!r} is not {FORMAT!r}, the one this "
                             "maxsim reads: rebuild the index with `maxsim index`")
    missing = [key for key in REQUIRED_KEYS + (("segments", "version") if meta["format"] == FORMAT else ())
               if key not in meta]
    if missing:
        raise IndexLoadError(f"{meta_path} is damaged (no {', '.join(missing)}): rebuild the index")
    if meta["nbits"] not in (1, 2, 4):
        raise IndexLoadError(f"{meta_path} is damaged (nbits {meta['nbits']!r} is not 1, 2 or 4): rebuild the index")
    if meta["format"] == FORMAT:
        expected = {f"{name}.npy" for name in SHARED_ARRAYS}
        if not isinstance(meta["files"], dict) or set(meta["files"]) != expected:
            raise IndexLoadError(f"{meta_path} is damaged (its file list is not {sorted(expected)}): rebuild the index")
        if not isinstance(meta["segments"], list) or not all(_entry_ok(e) for e in meta["segments"]):
            raise IndexLoadError(f"{meta_path} is damaged (its segment list is not one the index writes): rebuild "
                                 "the index")
        names = [entry["name"] for entry in meta["segments"]]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise IndexLoadError(f"{meta_path} lists the segment {', '.join(repeated)} more than once (its documents "
                                 "would be found twice): remove the repeated entry from index.json, or rebuild the "
                                 "index")
    return meta


def _entry_ok(entry) -> bool:
    from maxsim.index.documents import DOCUMENTS_FILE
    from maxsim.index.segment import SEGMENT_ARRAYS

    return (isinstance(entry, dict) and is_segment_name(str(entry.get("name", "")))
            and isinstance(entry.get("files"), dict)
            and set(entry["files"]) == {f"{n}.npy" for n in SEGMENT_ARRAYS} | {DOCUMENTS_FILE}
            and all(isinstance(entry.get(k), int) for k in ("n_documents", "n_chunks", "n_tokens"))
            and (entry.get("deleted") is None or isinstance(entry["deleted"], dict))
            and (entry.get("bm25") is None or (isinstance(entry["bm25"], dict)
                                               and _is_postings_name(str(entry["bm25"].get("folder", ""))))))


def _recover_if_idle(path: Path) -> None:
    """Put back ``<path>.old`` left by a crash between a swap's two renames, unless a writer is
    in the middle of its swap now (then the load waits for it)."""
    try:
        with index_lock(path, timeout=0):  # taking the lock recovers
            pass
    except LockedError:
        pass


def read_manifest(path: str | Path) -> dict:
    """``path/index.json``, checked for the format and the keys every index has (nothing else read)."""
    path = Path(path)
    return _parse_meta((path / "index.json").read_bytes(), path / "index.json", path)


def read_settings(path: str | Path) -> IndexSettings:
    """The settings of the index in ``path``, from its index.json alone (checked, arrays not read)."""
    path = Path(path)
    try:
        raw = (path / "index.json").read_bytes()
    except FileNotFoundError:
        raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
    return _settings(_parse_meta(raw, path / "index.json", path), path)


def _settings(meta: dict, path: Path) -> IndexSettings:
    """The settings part of index.json, typed; keys this maxsim does not know are logged."""
    unknown = sorted(set(meta) - set(RECORDED) - set(IndexSettings.model_fields))
    if unknown:
        logger.warning("%s/index.json has settings this maxsim does not know (%s): ignored", path, ", ".join(unknown))
    try:
        return IndexSettings.model_validate({k: v for k, v in meta.items() if k not in RECORDED})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise IndexLoadError(f"{path}/index.json is damaged ({problems}): rebuild the index") from None

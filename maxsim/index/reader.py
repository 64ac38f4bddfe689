"""An index as one version reads it: the shared centroids and codec, and its segments in order.

Files (``index.json``, :mod:`~maxsim.index.manifest`, names every other file with its size and sha256)::

    index.json        the manifest: settings, counts, the shared files' sha256, each segment's entry
    centroids.npy     (C, dim) float16
    codec.npy         (2 * 2**nbits - 1,) float32: bucket cutoffs then bucket values
    seg-<32 hex>/     one segment each (:mod:`maxsim.index.segment`), immutable once written

:class:`IndexData` is a point-in-time view, as Lucene's ``DirectoryReader``: it numbers documents
and chunks across segments, fetches documents, says what a filter allows and decompresses
vectors. Changes are made by :mod:`maxsim.index.writer`, which returns a new view and never
alters one in use.

What each check protects: opening an index reads the manifest, checks the shared files whole
(their sha256), and each segment's file sizes and array headers against the manifest (a
truncated, replaced or missing file is an error, never a wrong result), in time that does not
grow with the corpus. Every byte's sha256 and every value (codes, spans, the inverted file) is
checked when a file is written (it is hashed from disk), by ``maxsim index verify`` and before
a merge or compaction reads a segment (damage never spreads into a new segment).

Indexes of the previous format (``maxsim-plaid-2``) are read whole (:mod:`maxsim.index.legacy`)
and converted to this one by their first write.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from maxsim.files import old_path
from maxsim.index.allowed import Allowed, allowed_by, check_fields
from maxsim.index.centroid_selection import GROUPED_FROM, CentroidSelector, selection_precision
from maxsim.index.codec import Codec, centroids_fingerprint, nearest_centroids
from maxsim.index.filters import Filter
from maxsim.index.legacy import LEGACY_FORMAT, Changed, read_legacy
from maxsim.index.manifest import (
    SHARED_ARRAYS,
    IndexLoadError,
    IndexSettings,
    check_shared,
    current_version,
    parse_manifest,
    recover_if_idle,
    settings_of,
)
from maxsim.index.segment import Segment, SegmentError
from maxsim.index.segment_checks import verify
from maxsim.index.warp_kernels import decode_unit

logger = logging.getLogger(__name__)

LOAD_ATTEMPTS = 50  # a load that meets a write in progress starts again, up to this many times
#: filters whose results an index keeps (per loaded version)
FILTERS_KEPT = 16


@dataclass
class IndexData:
    """An index: shared centroids and codec, and its segments in order.

    Documents and chunks are numbered across segments (segment after segment, deleted ones
    included): ``doc_base[s] + local`` and ``chunk_base[s] + local``. ``version`` changes with
    every save; a writer that finds another version on disk than the one it holds reloads
    before changing anything. The writer (:mod:`maxsim.index.writer`) makes new views (their new
    segments pending until :func:`~maxsim.index.writer.save`) and leaves this one as it was.
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

    def chunk_places(self, chunk_ids: np.ndarray) -> np.ndarray:
        """(n,) int64 each chunk's place among its document's chunks (0: the first)."""
        out = np.zeros(len(chunk_ids), dtype=np.int64)
        for s, where, local in self.split(chunk_ids, self.chunk_base):
            segment = self.segments[s]
            out[where] = local - segment.first_chunks[np.asarray(segment.chunk_docs[local], dtype=np.int64)]
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
        if key not in self._filters:
            self.check_fields(condition)
            while len(self._filters) >= FILTERS_KEPT:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = allowed_by(self.segments, condition)
        return self._filters[key]

    def check_fields(self, condition: Filter) -> None:
        """Refuse a filter naming a metadata field that no document of this index has."""
        check_fields(self.segments, condition)

    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors ((T, dim) float32) as this index stores them, with its centroids and
        codec: (centroid ids (T,) int64, packed residuals (T, dim * nbits / 8) uint8). The vectors
        are first rounded to float16, as a build spills them, so that a document added later is
        stored token for token as the same document built into the index."""
        vectors = np.asarray(vectors, dtype=np.float16).astype(np.float32)
        codes = nearest_centroids(vectors, self.centroids).astype(np.int64)
        return codes, self.codec.encode(vectors - self.centroids[codes])


    def verify(self) -> list[str]:
        """Every check there is, on every file of the index on disk: the sha256 of each file and
        the values of each array (:func:`maxsim.index.segment_checks.verify`). Returns the problems."""
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
    def selector(self) -> CentroidSelector:
        """How a search chooses the centroids each query token probes: every centroid scored in
        the precision this CPU is fastest at (:func:`~maxsim.index.centroid_selection.selection_precision`),
        or, from ``GROUPED_FROM`` centroids, those of each token's best groups (made once per
        loaded version)."""
        return CentroidSelector(self.centroid_vectors, selection_precision(),
                                grouped=len(self.centroids) >= GROUPED_FROM)

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

    def unit_vectors_of(self, segment: Segment, index: np.ndarray) -> torch.Tensor:
        """(T, dim) float32 stored vectors of the tokens at ``index`` in ``segment``, renormalised
        to unit length as they were encoded (decoded one row at a time, compiled)."""
        return torch.from_numpy(decode_unit(self.centroid_vectors.numpy(), segment.codes, segment.residuals,
                                            self.codec.table, np.asarray(index, dtype=np.int64)))

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


    # ------------------------------------------------------------------ opening
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
                recover_if_idle(path)
            try:
                return _open_version(path)
            except Changed:
                time.sleep(min(0.01 * (attempt + 1), 0.2))
        raise IndexLoadError(f"{path} kept changing while it was read ({LOAD_ATTEMPTS} tries): "
                             "another process is writing it without pause; try again")

    @classmethod
    def open_first(cls, path: str | Path, n: int) -> IndexData:
        """The index at ``path`` with only its first ``n`` segments opened (its manifest entries
        all named): for a compaction in rounds, under the writer lock."""
        return _open_version(Path(path), first=n)

    @staticmethod
    def current_version(path: str | Path) -> str | None:
        """The version recorded in ``path/index.json`` now, or None if it cannot be read."""
        return current_version(path)

def _contains(sorted_values: np.ndarray, value: int) -> bool:
    i = int(np.searchsorted(sorted_values, value))
    return i < len(sorted_values) and int(sorted_values[i]) == value


def _open_version(path: Path, first: int | None = None) -> IndexData:
    """One read of the index (``first``: open only its first segments, for a compaction in
    rounds; ``manifest_entries`` still names them all). Raises Changed when a writer's swap
    came between two of its reads."""
    meta_path = path / "index.json"
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        if old_path(path).is_dir():
            raise Changed from None  # a writer is between its two renames
        raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
    meta = parse_manifest(raw, meta_path, path)

    def unchanged() -> bool:
        try:
            return meta_path.read_bytes() == raw
        except FileNotFoundError:
            return False

    settings = settings_of(meta, path)
    if meta["format"] == LEGACY_FORMAT:
        return _from_legacy(path, meta, settings, unchanged)
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
    check_shared(meta, shared, path)
    _check_segments(path, meta, segments, centroids_fingerprint(shared["centroids"]))
    return IndexData(settings, shared["centroids"].astype(np.float32),
                     Codec.from_array(shared["codec"], settings.nbits), segments, meta["version"], path,
                     manifest_entries=meta["segments"], shared_digests=dict(meta["files"]))


def _check_segments(path: Path, meta: dict, segments: list[Segment], fingerprint: str) -> None:
    """Each segment's residual rows are as wide as the settings say, and it was written for
    this index's centroids."""
    width = meta["dim"] * meta["nbits"] // 8
    for segment, entry in zip(segments, meta["segments"]):
        if segment.residuals.shape[1] != width:
            raise IndexLoadError(f"{path / entry['name']} is damaged (residuals.npy rows are not {width} bytes): "
                                 "rebuild the index")
        if segment.documents.owner() not in (None, fingerprint):
            raise IndexLoadError(f"{path / 'index.json'} lists the segment {entry['name']}, which was written for "
                                 "another index (its centroids are not this index's, so its vectors would be "
                                 "read wrong): remove that entry from index.json, or rebuild the index")


def _from_legacy(path: Path, meta: dict, settings: IndexSettings, unchanged) -> IndexData:
    arrays, documents = read_legacy(path, meta, unchanged, IndexLoadError)
    settings = settings.model_copy(update={"bm25_language": None})  # (that format kept no BM25 side)
    n_centroids = len(arrays["centroids"])
    segment = Segment.from_arrays(arrays["codes"], arrays["residuals"], arrays["doclens"], arrays["chunk_docs"],
                                  arrays["spans"], documents, n_centroids)
    return IndexData(settings, arrays["centroids"].astype(np.float32),
                     Codec.from_array(arrays["codec"], settings.nbits), [segment], meta.get("version", ""), path,
                     legacy=True)

"""One segment of an index: an immutable set of documents, their compressed tokens and their
inverted file, written once into a folder of its own and then only read (memory-mapped).

Files of a segment folder ``seg-<32 hex>/`` (their sizes, array headers and sha256 are in the
index's manifest)::

    codes.npy        (T,) uint16 (int32 past 65,536 centroids) centroid id of each token, in
                     cell order: ascending, so that each centroid's tokens are one run of rows
    residuals.npy    (T, dim * nbits / 8) uint8, packed residual bucket ids, in the same order
    token_rows.npy   (T,) the row (in codes and residuals) of each token, chunk after chunk
    row_chunks.npy   (T,) the chunk of each row
    doclens.npy      (N,) uint16 (int32 past 65,535) tokens per chunk
    chunk_docs.npy   (N,) uint16 (int32 past 65,535) position of each chunk's document here
    spans.npy        (N, 2) uint16 (int32 past 65,535) character span (start, end) of each
                     chunk in its document
    ivf_cells.npy    (K,) int32 the centroids this segment's tokens use, ascending; empty once
                     they are more than half of all (then K is every centroid, densely)
    ivf_offsets.npy  (K + 1,) int32 (int64 past 2**31) where each one's chunks start in ivf_chunks
    ivf_chunks.npy   (E,) uint16 (int32 past 65,536 chunks) chunks holding a token there
    documents.sqlite id, text and metadata of each document (:mod:`maxsim.index.documents`)
    bm25-<32 hex>/   its BM25 side, where the index has one (:mod:`maxsim.index.postings`)
    deleted-<version>.npy  (D,) int32 positions of its deleted documents, ascending (tombstones:
                     a delete writes a new file and the manifest names the current one)

Chunk and document numbers here are local to the segment; the index adds each segment's base.
Rows in cell order let a search score a centroid's tokens as one contiguous run
(:mod:`maxsim.index.warp`); ``token_rows`` gives each chunk's tokens back in their order.
Segments written before cell order hold codes and residuals chunk after chunk and neither
``token_rows`` nor ``row_chunks``; a search orders their rows in memory on first use.
Segments written before 2026-12-04 hold int32 doclens, chunk_docs and spans, int64
ivf_offsets and sparse cells however many there are; they are read as they are (any integer
type, either form of cells).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from maxsim.files import file_record, open_array, save_array
from maxsim.index.documents import DOCUMENTS_FILE, ListDocuments, SqliteDocuments, write_documents
from maxsim.index.ivf import ranges, sparse_ivf
from maxsim.index.postings import Postings, PostingsError
from maxsim.index.rows import cell_order
from maxsim.index.segment_files import (
    ROW_ARRAYS,
    SEGMENT_ARRAYS,
    SEGMENT_KINDS,
    SegmentError,
    check_counts,
    read_tombstones,
    write_tombstones,
)

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "seg-"


def narrowest(values: np.ndarray, unsigned: bool = True) -> np.ndarray:
    """Non-negative integers in the narrowest type that holds them all: uint8 or uint16 (when
    ``unsigned``), else int32, else int64. Every reader accepts any integer type, so each
    segment stores its own (chunk lengths of passages under 256 tokens take 1 byte; document
    positions and character spans of passage-sized documents 2: 0.2 bytes a token less than
    int32 at a million passages of 64 tokens).

    >>> [narrowest(np.array(top)).dtype.name for top in ([3, 255], [65535], [70000])]
    ['uint8', 'uint16', 'int32']
    """
    values = np.asarray(values)
    top = int(values.max()) if values.size else 0
    if unsigned and top < 1 << 16:
        return values.astype(np.uint8 if top < 1 << 8 else np.uint16)
    return values.astype(np.int32 if top < 1 << 31 else np.int64)





def new_segment_name() -> str:
    return SEGMENT_PREFIX + uuid.uuid4().hex


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is a segment folder name that maxsim makes (only those are ever deleted)."""
    rest = name.removeprefix(SEGMENT_PREFIX)
    return name.startswith(SEGMENT_PREFIX) and len(rest) == 32 and all(c in "0123456789abcdef" for c in rest)


@dataclass(eq=False)
class Segment:
    """One segment's arrays (memory-mapped once written; see the module docstring for shapes),
    its documents, and the positions of its deleted documents.

    ``name`` is None until the segment is written; ``deleted_file`` is None when nothing is
    deleted or when the tombstones changed since the last write (``tombstones_pending``).
    """

    codes: np.ndarray
    residuals: np.ndarray
    doclens: np.ndarray
    chunk_docs: np.ndarray
    spans: np.ndarray
    ivf_cells: np.ndarray
    ivf_offsets: np.ndarray
    ivf_chunks: np.ndarray
    documents: SqliteDocuments | ListDocuments
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    name: str | None = None
    deleted_file: str | None = None
    tombstones_pending: bool = False
    #: the top-level metadata fields its documents have (None: not known)
    fields: list[str] | None = None
    #: its documents' BM25 postings (None: the index has no BM25 side)
    bm25: Postings | None = None
    #: (T,) the row of each token, chunk after chunk (None: rows are chunk after chunk, the
    #: layout of segments written before cell order)
    token_rows: np.ndarray | None = None
    #: (T,) the chunk of each row (None: as ``token_rows``)
    row_chunks: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray, chunk_docs: np.ndarray,
                    spans: np.ndarray, documents: SqliteDocuments | ListDocuments | Sequence[dict],
                    n_centroids: int, bm25_language: str | None = None, bm25: Postings | None = None) -> Segment:
        """A segment in memory (not yet written) from its tokens' codes and residuals (chunk
        after chunk), its chunks' lengths, documents and spans; its rows are put in cell order
        and its inverted file is made here, and its BM25 postings in ``bm25_language``'s
        analysis unless ``bm25`` gives them (neither: no BM25 side)."""
        code_type = np.uint16 if n_centroids <= 1 << 16 else np.int32
        codes = np.asarray(codes).astype(code_type, copy=False)
        doclens = np.asarray(doclens, dtype=np.int32)
        cells, offsets, chunks = sparse_ivf(codes, doclens, n_centroids)
        order, token_rows, row_chunks = cell_order(codes, doclens)
        chunk_type = np.uint16 if len(doclens) <= 1 << 16 else np.int32
        if not isinstance(documents, (SqliteDocuments, ListDocuments)):
            documents = ListDocuments(documents)
        if bm25 is None and bm25_language is not None:
            bm25 = Postings.from_texts([record["content"] for record in documents], bm25_language)
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        return cls(codes[order], np.asarray(residuals, dtype=np.uint8)[order], narrowest(doclens),
                   narrowest(chunk_docs), narrowest(spans), cells, narrowest(offsets, unsigned=False),
                   chunks.astype(chunk_type), documents, bm25=bm25, token_rows=narrowest(token_rows),
                   row_chunks=narrowest(row_chunks))

    # ------------------------------------------------------------------ sizes
    @property
    def n_chunks(self) -> int:
        return len(self.doclens)

    @property
    def n_tokens(self) -> int:
        return len(self.codes)

    @property
    def n_documents(self) -> int:
        """Documents stored, deleted ones included."""
        return len(self.documents)

    @property
    def n_live(self) -> int:
        return self.n_documents - len(self.deleted)

    @cached_property
    def offsets(self) -> np.ndarray:
        """(N + 1,) int64 start of each chunk's tokens (made on first use)."""
        return np.concatenate([[0], np.cumsum(self.doclens, dtype=np.int64)])

    @cached_property
    def dead_chunks(self) -> np.ndarray | None:
        """(N,) bool, True for the chunks of deleted documents; None when none is deleted."""
        if not len(self.deleted):
            return None
        return np.isin(self.chunk_docs, self.deleted)

    @cached_property
    def first_chunks(self) -> np.ndarray:
        """(documents,) int64 the first chunk of each document (made on first use)."""
        chunk_docs = np.asarray(self.chunk_docs, dtype=np.int64)
        first = np.zeros(self.n_documents, dtype=np.int64)
        first[chunk_docs[::-1]] = np.arange(len(chunk_docs))[::-1]
        return first

    def live_documents(self) -> np.ndarray:
        """Positions of the documents not deleted, ascending."""
        return np.setdiff1d(np.arange(self.n_documents), self.deleted)

    # ------------------------------------------------------------------ reading
    def token_positions(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Rows (in codes/residuals) of every token of some chunks, chunk after chunk."""
        tokens = ranges(self.offsets[chunk_ids], self.doclens[chunk_ids])
        return tokens if self.token_rows is None else np.asarray(self.token_rows[tokens], dtype=np.int64)

    @property
    def cell_ordered(self) -> bool:
        """Whether rows are in cell order (written so); else chunk after chunk."""
        return self.row_chunks is not None

    @cached_property
    def cell_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes (T,), residuals (T, W), the chunk of each row (T,)) in cell order: as stored, or,
        for a segment written before cell order, ordered in memory on first use (logged: a
        compaction or rebuild writes it in cell order)."""
        if self.cell_ordered:
            return self.codes, self.residuals, self.row_chunks
        started = time.perf_counter()
        order, _, row_chunks = cell_order(self.codes, self.doclens)
        rows = (np.asarray(self.codes)[order], np.asarray(self.residuals)[order], narrowest(row_chunks))
        logger.warning("segment %s was written before rows in cell order: ordered in memory for search (%d tokens, "
                       "%.1f s); `maxsim index compact` rewrites it in cell order", self.name or "(unsaved)",
                       self.n_tokens, time.perf_counter() - started)
        return rows

    @cached_property
    def cell_starts(self) -> np.ndarray:
        """(K + 1,) int64 where each centroid's run of :attr:`cell_rows` starts (the last entry:
        the rows), K the highest centroid used + 1; made on first use, about 5 ms for 4 million
        rows (a binary search per centroid, so a probe finds its run without one)."""
        codes = self.cell_rows[0]
        if not len(codes):
            return np.zeros(1, dtype=np.int64)
        cells = np.arange(int(codes[-1]) + 1, dtype=codes.dtype)  # (codes' type: numpy would convert every code)
        return np.append(np.searchsorted(codes, cells, side="left"), len(codes)).astype(np.int64)

    def codes_in_chunk_order(self) -> np.ndarray:
        """(T,) the centroid of each token, chunk after chunk (reads every code: for checks)."""
        return np.asarray(self.codes if self.token_rows is None else self.codes[np.asarray(self.token_rows)])

    def codes_at(self, index: np.ndarray) -> torch.Tensor:
        """(T,) int64 centroid ids of the tokens at ``index``."""
        return torch.from_numpy(self.codes[index].astype(np.int64))

    def residuals_at(self, index: np.ndarray, table: torch.Tensor, dim: int) -> torch.Tensor:
        """(T, dim) float32 decoded residuals of the tokens at ``index`` (``table``: the
        codec's byte -> values table)."""
        packed = torch.from_numpy(self.residuals[index].astype(np.int64))
        return torch.nn.functional.embedding(packed, table).reshape(len(index), -1)[:, :dim]

    def with_deleted(self, positions: np.ndarray) -> Segment:
        """This segment with more of its documents deleted (a new object; tombstones pending)."""
        deleted = np.union1d(self.deleted, np.asarray(positions, dtype=np.int32)).astype(np.int32)
        return Segment(self.codes, self.residuals, self.doclens, self.chunk_docs, self.spans, self.ivf_cells,
                       self.ivf_offsets, self.ivf_chunks, self.documents, deleted, self.name, None, True, self.fields,
                       self.bm25, self.token_rows, self.row_chunks)

    def metadata_fields(self) -> set[str]:
        """The top-level metadata fields of this segment's documents."""
        if self.fields is None:
            self.fields = sorted({key for record in self.documents for key in (record.get("metadata") or {})})
        return set(self.fields)

    def allowed_chunks(self, sql: str, parameters: Sequence) -> tuple[np.ndarray, int]:
        """(N,) bool, the chunks of live documents that satisfy a filter's SQL condition, and
        how many such documents there are."""
        positions = self.documents.positions_where(sql, parameters)
        if len(self.deleted):
            positions = np.setdiff1d(positions, self.deleted)
        return np.isin(self.chunk_docs, positions), len(positions)

    # ------------------------------------------------------------------ writing
    def write(self, root: Path, owner: str | None = None) -> dict:
        """Write this segment as a new folder under ``root`` (all of it, then one rename) and
        return its manifest entry; its tombstones too, if it has any. ``owner``: the fingerprint
        of the index's centroids (:func:`maxsim.index.codec.centroids_fingerprint`)."""
        name = new_segment_name()
        tmp = root / f".tmp-{name}"
        tmp.mkdir()
        try:
            files = {f"{array_name}.npy": save_array(tmp / f"{array_name}.npy", getattr(self, array_name))
                     for array_name in SEGMENT_ARRAYS + ROW_ARRAYS if getattr(self, array_name) is not None}
            count, fields = write_documents(tmp / DOCUMENTS_FILE, self.documents, owner)
            files[DOCUMENTS_FILE] = {"documents": count, **file_record(tmp / DOCUMENTS_FILE)}
            bm25 = self.bm25.write(tmp) if self.bm25 is not None else None
            os.replace(tmp, root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = {"name": name, "n_documents": count, "n_chunks": self.n_chunks, "n_tokens": self.n_tokens,
                 "fields": fields, "files": files, "deleted": None, "bm25": bm25}
        if len(self.deleted):
            entry["deleted"] = write_tombstones(root / name, self.deleted)
        return entry

    @classmethod
    def open(cls, root: Path, entry: dict) -> Segment:
        """A written segment, its arrays memory-mapped: the cheap checks only (each file's size,
        each array's dtype and shape as the manifest records them, and their counts agreeing);
        :func:`verify` reads everything. Raises :class:`FileNotFoundError` for a missing file
        (a writer may have just replaced the segment) and :class:`SegmentError` otherwise."""
        folder = root / entry["name"]
        arrays = {}
        for array_name in SEGMENT_ARRAYS + ROW_ARRAYS:
            if array_name in ROW_ARRAYS and f"{array_name}.npy" not in entry["files"]:
                continue  # written before cell order
            try:
                array = open_array(folder / f"{array_name}.npy", entry["files"][f"{array_name}.npy"])
            except ValueError as err:
                raise SegmentError(str(err)) from None
            kinds, ndim = SEGMENT_KINDS[array_name]
            if array.dtype.kind not in kinds or array.ndim != ndim:
                raise SegmentError(f"{array_name}.npy holds {array.ndim}-d {array.dtype} values, not {ndim}-d "
                                   f"{'unsigned ' if kinds == 'u' else ''}integers")
            arrays[array_name] = array
        check_counts(arrays, entry, folder)
        documents_path = folder / DOCUMENTS_FILE
        if documents_path.stat().st_size != entry["files"][DOCUMENTS_FILE]["bytes"]:
            raise SegmentError(f"{documents_path} is not the size the manifest records: truncated or replaced")
        deleted, deleted_file = np.zeros(0, dtype=np.int32), None
        if entry.get("deleted"):
            deleted_file = entry["deleted"]["file"]
            deleted = read_tombstones(folder, entry["deleted"])
        bm25 = None
        if entry.get("bm25"):
            try:
                bm25 = Postings.open(folder, entry["bm25"], entry["n_documents"])
            except PostingsError as err:
                raise SegmentError(str(err)) from None
        documents = SqliteDocuments(documents_path, entry["n_documents"])
        return cls(**arrays, documents=documents, deleted=deleted, name=entry["name"],
                   deleted_file=deleted_file, fields=entry.get("fields"), bm25=bm25)


class MergedDocuments:
    """The live documents of several segments, in order, as :func:`write_documents` takes them."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)

    def __len__(self) -> int:
        return sum(s.n_live for s in self.segments)

    def __iter__(self) -> Iterator[dict]:
        for segment in self.segments:
            dead = set(segment.deleted.tolist())
            for position, record in enumerate(segment.documents):
                if position not in dead:
                    yield record


def merged(segments: Sequence[Segment], n_centroids: int) -> Segment:
    """One segment (in memory, unwritten) holding the live documents of ``segments``, in order,
    with their chunks and tokens; deleted documents are dropped. Token data is copied as stored:
    no vector is decompressed or compressed again."""
    codes, residuals, doclens, chunk_docs, spans = [], [], [], [], []
    base = 0
    for segment in segments:
        live = segment.live_documents()
        renumber = np.full(segment.n_documents, -1, dtype=np.int64)
        renumber[live] = np.arange(len(live))
        keep = np.flatnonzero(renumber[segment.chunk_docs] >= 0) if segment.n_chunks else np.zeros(0, np.int64)
        tokens = segment.token_positions(keep)
        codes.append(np.asarray(segment.codes[tokens]))
        residuals.append(np.asarray(segment.residuals[tokens]))
        doclens.append(np.asarray(segment.doclens[keep]))
        chunk_docs.append(renumber[segment.chunk_docs[keep]] + base)
        spans.append(np.asarray(segment.spans[keep]))
        base += len(live)
    width = segments[0].residuals.shape[1]
    bm25 = None
    if all(segment.bm25 is not None for segment in segments):
        bm25 = Postings.merged([(segment.bm25, segment.live_documents()) for segment in segments])
    return Segment.from_arrays(np.concatenate(codes), np.concatenate(residuals).reshape(-1, width),
                               np.concatenate(doclens), np.concatenate(chunk_docs), np.concatenate(spans),
                               MergedDocuments(segments), n_centroids, bm25=bm25)

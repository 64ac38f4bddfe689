"""Every check of a segment that opening it leaves out: each file's sha256 and every value
(``maxsim index verify``, and before a merge or compaction reads a segment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maxsim.files import checksum_problems, file_digest
from maxsim.index.ivf import dense_offsets, sparse_ivf
from maxsim.index.postings import verify_postings
from maxsim.index.segment import Segment


def verify(root: Path, entry: dict, n_centroids: int, dim: int, nbits: int) -> list[str]:
    """Everything :meth:`Segment.open` does not check: each file's sha256, and the values (codes
    name centroids that exist, chunks name documents that exist, spans fall inside their
    document's text, the inverted file lists every token). Returns the problems found."""
    folder = root / entry["name"]
    problems = checksum_problems(folder, entry["files"])
    if entry.get("deleted"):
        path = folder / entry["deleted"]["file"]
        if not path.is_file() or file_digest(path) != entry["deleted"]["sha256"]:
            problems.append(f"{path} is missing or damaged (checksum mismatch)")
    if entry.get("bm25") and not problems:
        problems += verify_postings(folder, entry["bm25"], entry["n_documents"])
    if problems:
        return problems
    segment = Segment.open(root, entry)
    try:
        problems += _value_problems(segment, n_centroids, dim, nbits, folder)
    finally:
        segment.documents.close()
    return problems


def _value_problems(segment: Segment, n_centroids: int, dim: int, nbits: int, folder: Path) -> list[str]:
    problems = []
    n_docs = segment.n_documents
    if segment.residuals.shape[1] != dim * nbits // 8:
        problems.append(f"{folder}/residuals.npy rows are not {dim * nbits // 8} bytes")
    if segment.n_tokens and int(segment.codes.max()) >= n_centroids:
        problems.append(f"{folder}/codes.npy names a centroid outside 0..{n_centroids - 1}")
    if segment.n_chunks and (segment.doclens.min() < 0 or int(segment.doclens.sum(dtype=np.int64)) != segment.n_tokens):
        problems.append(f"{folder}/doclens.npy does not add up to the segment's tokens")
    if segment.n_chunks and (segment.chunk_docs.min() < 0 or segment.chunk_docs.max() >= n_docs):
        problems.append(f"{folder}/chunk_docs.npy names a document that is not stored")
    elif segment.n_chunks:
        lengths = np.array(segment.documents.content_lengths(), dtype=np.int64)[segment.chunk_docs]
        spans = segment.spans
        if (spans[:, 0] < 0).any() or (spans[:, 1] < spans[:, 0]).any() or (spans[:, 1] > lengths).any():
            problems.append(f"{folder}/spans.npy holds a span outside its document's text")
    if len(segment.deleted) and (segment.deleted.min() < 0 or segment.deleted.max() >= n_docs):
        problems.append(f"{folder}: a tombstone names a document that is not stored")
    if not problems and segment.cell_ordered:
        problems += _row_problems(segment, folder)
    if not problems and segment.n_chunks:
        cells, offsets, chunks = sparse_ivf(segment.codes_in_chunk_order(), segment.doclens, n_centroids)
        stored = dense_offsets(segment.ivf_cells, segment.ivf_offsets, n_centroids)
        if not (np.array_equal(dense_offsets(cells, offsets, n_centroids), stored)
                and np.array_equal(chunks, segment.ivf_chunks)):
            problems.append(f"{folder}: the inverted file does not match the tokens' codes")
    return problems


def _row_problems(segment: Segment, folder: Path) -> list[str]:
    """Rows in cell order: codes ascending, ``token_rows`` a permutation of the rows, and
    ``row_chunks`` the chunk of each token as the chunk lengths place it."""
    codes, rows = np.asarray(segment.codes), np.asarray(segment.token_rows, dtype=np.int64)
    if len(codes) > 1 and (np.diff(codes.astype(np.int64)) < 0).any():
        return [f"{folder}/codes.npy is not in cell order (ascending)"]
    if len(rows) and (rows.min() < 0 or rows.max() >= len(rows) or len(np.unique(rows)) != len(rows)):
        return [f"{folder}/token_rows.npy is not an order of the segment's rows"]
    expected = np.repeat(np.arange(segment.n_chunks, dtype=np.int64), np.asarray(segment.doclens, dtype=np.int64))
    if not np.array_equal(np.asarray(segment.row_chunks, dtype=np.int64)[rows], expected):
        return [f"{folder}/row_chunks.npy does not name each row's chunk"]
    return []

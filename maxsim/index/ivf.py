"""The inverted file: for each centroid, the chunks that have a token there.

Each segment stores its own (:mod:`maxsim.index.segment`), for the centroids its tokens use
only (a segment of a few documents names a few hundred of the 65,536 centroids), or densely
once it uses most of them, so that opening an index reads nothing in proportion to the corpus.
"""

from __future__ import annotations

import numpy as np


def build_ivf(codes: np.ndarray, doclens: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted file: for each centroid, the sorted unique chunks that have a token there.

    codes: (T,) centroid id of each token; doclens: (N,) tokens per chunk. Returns (chunk ids
    (E,) int32, centroid after centroid; offsets (n_centroids + 1,) int64 into them).

    >>> chunks, offsets = build_ivf(np.array([1, 0, 1, 1]), np.array([2, 2]), 3)
    >>> chunks.tolist(), offsets.tolist()
    ([0, 0, 1], [0, 1, 3, 3])
    """
    chunk_of_token = np.repeat(np.arange(len(doclens), dtype=np.int32), doclens)
    # sorted distinct (centroid, chunk) pairs; a sort, which frees the GIL, rather than
    # np.unique, which holds it (a 100 ms stall for searches on other threads, 300k tokens)
    pairs = np.sort(codes.astype(np.int64) * max(1, len(doclens)) + chunk_of_token)
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs
    centroid = (pairs // max(1, len(doclens))).astype(np.int64)
    chunks = (pairs % max(1, len(doclens))).astype(np.int32)
    offsets = np.zeros(n_centroids + 1, dtype=np.int64)
    np.add.at(offsets, centroid + 1, 1)
    return chunks, np.cumsum(offsets)


def sparse_ivf(codes: np.ndarray, doclens: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`build_ivf` as a segment stores it: (cells (K,) int32 ascending, offsets (K + 1,)
    int64 into chunks, chunks (E,) int32), cell ``cells[i]``'s chunks being
    ``chunks[offsets[i]:offsets[i + 1]]``. Cells list the centroids that hold a token only,
    while they are at most half of ``n_centroids``; past that, cells is empty and offsets is
    dense, (n_centroids + 1,) (4 bytes a centroid rather than 8: a segment of 4 million tokens
    uses nearly all of 65,536 centroids).

    >>> cells, offsets, chunks = sparse_ivf(np.array([1, 0, 1, 1]), np.array([2, 2]), 5)
    >>> cells.tolist(), offsets.tolist(), chunks.tolist()
    ([0, 1], [0, 1, 3], [0, 0, 1])
    >>> cells, offsets, chunks = sparse_ivf(np.array([1, 0, 1, 1]), np.array([2, 2]), 3)
    >>> cells.tolist(), offsets.tolist()
    ([], [0, 1, 3, 3])
    """
    chunks, dense = build_ivf(codes, doclens, n_centroids)
    cells = np.flatnonzero(np.diff(dense)).astype(np.int32)
    if 2 * len(cells) > n_centroids:
        return np.zeros(0, dtype=np.int32), dense, chunks
    return cells, np.concatenate([dense[cells], dense[-1:]]).astype(np.int64), chunks


def dense_offsets(cells: np.ndarray, offsets: np.ndarray, n_centroids: int) -> np.ndarray:
    """The (n_centroids + 1,) int64 offsets of an inverted file stored by :func:`sparse_ivf`
    in either form (to compare two of them).

    >>> dense_offsets(np.array([0, 1]), np.array([0, 1, 3]), 3).tolist()
    [0, 1, 3, 3]
    """
    if not len(cells) and len(offsets) > 1:
        return np.asarray(offsets, dtype=np.int64)
    counts = np.zeros(n_centroids, dtype=np.int64)
    counts[np.asarray(cells, dtype=np.int64)] = np.diff(np.asarray(offsets, dtype=np.int64))
    return np.concatenate([[0], np.cumsum(counts)])


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start, start + length)`` for each pair: (sum(lengths),) int64.

    >>> ranges(np.array([10, 3]), np.array([2, 3])).tolist()
    [10, 11, 3, 4, 5]
    """
    lengths = lengths.astype(np.int64)
    shift = starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))

"""The inverted file: for each centroid, the chunks that have a token there.

It is rebuilt from ``codes`` and ``doclens`` on load rather than stored (a few hundred ms for a
million tokens), which saves about 4 bytes a token.
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


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start, start + length)`` for each pair: (sum(lengths),) int64.

    >>> ranges(np.array([10, 3]), np.array([2, 3])).tolist()
    [10, 11, 3, 4, 5]
    """
    lengths = lengths.astype(np.int64)
    shift = starts - np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))

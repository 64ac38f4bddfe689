"""The order of a segment's rows: its tokens sorted by centroid (cell order), so that a search
reads each probed centroid's tokens as one contiguous run (:mod:`maxsim.index.warp`).

A segment's tokens arrive chunk after chunk; :func:`cell_order` gives the permutation that
sorts them by centroid (stable: within a centroid, chunks ascending) and the two maps a segment
keeps beside it: ``token_rows`` (T,), the row of each token in chunk order, and ``row_chunks``
(T,), the chunk of each row.
"""

from __future__ import annotations

import numpy as np


def cell_order(codes: np.ndarray, doclens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order (T,) int64: the token at each row; token_rows (T,) int64; row_chunks (T,) int64)
    for tokens with centroids ``codes`` (T,) in chunks of ``doclens`` (N,) tokens.

    >>> order, token_rows, row_chunks = cell_order(np.array([2, 0, 2, 1]), np.array([2, 2]))
    >>> order.tolist(), token_rows.tolist(), row_chunks.tolist()
    ([1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 0, 1])
    """
    order = np.argsort(np.asarray(codes), kind="stable")
    token_rows = np.empty(len(order), dtype=np.int64)
    token_rows[order] = np.arange(len(order))
    row_chunks = np.repeat(np.arange(len(doclens), dtype=np.int64), np.asarray(doclens, dtype=np.int64))[order]
    return order, token_rows, row_chunks

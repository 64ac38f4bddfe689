"""Scoring candidates the WARP way: from centroid scores and residual lookups, never decompressing.

WARP (Scheerer et al., SIGIR 2025) scores a query against a compressed multi-vector index in
three steps, which this module follows:

1. **Selection** (:mod:`maxsim.index.centroid_selection`, :func:`probes`). Each query token
   probes its ``ncells`` best centroids (those scoring under ``threshold`` for it are skipped).
   The best centroid it did not probe gives its *missing similarity*: the score imputed to a
   chunk none of whose tokens lies in a probed centroid, an upper estimate of what that chunk's
   best token would have scored.
2. **Implicit decompression** (:func:`lookup_tables`, :func:`maxsim.index.warp_kernels.score_rows`).
   A stored token is its centroid plus a residual of ``nbits`` per dimension, packed into
   bytes. Its inner product with a query token is the centroid's score (computed once per
   centroid) plus, for each residual byte, a value read from a table of 256 entries made once
   per query token: no vector is rebuilt.
3. **Reduction.** Per query token, a chunk keeps its best token's score; a chunk's score is the
   sum over query tokens of that score, or of the missing similarity where the token did not
   reach it.

Each segment stores its rows in cell order (:mod:`maxsim.index.segment`), so a probed centroid's
tokens are one contiguous run. Filters and deleted documents are applied per row, before the
row is scored. With every centroid probed, a chunk's score is exact MaxSim over its stored
vectors (centroid + residual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maxsim.index.reader import IndexData
from maxsim.index.segment import Segment
from maxsim.index.warp_kernels import score_rows

#: the share of the best unprobed centroid's score imputed to a chunk that misses a query token
MISSING_SCALE = 1.0


@dataclass
class Probes:
    """The (query token, centroid) pairs a query scores, grouped by query token ascending.

    token, cell: (P,) int64; score: (P,) float32 the centroid's score for the token;
    missing: (Lq,) float32 each query token's missing similarity.
    """

    token: np.ndarray
    cell: np.ndarray
    score: np.ndarray
    missing: np.ndarray


def probes(values: np.ndarray, cells: np.ndarray, ncells: int, threshold: float) -> Probes:
    """Each query token's ``ncells`` best centroids that score at least ``threshold`` for it,
    and its missing similarity: the score of its best centroid not probed (0 when every
    centroid is probed; then no chunk misses the token).

    values, cells: (Lq, depth) each query token's best centroids and their scores, best first
    (:meth:`~maxsim.index.centroid_selection.CentroidSelector.top`), with depth ``ncells + 1``
    or every centroid where there are fewer.

    >>> p = probes(np.array([[0.9, 0.5], [0.8, 0.3]]), np.array([[0, 1], [2, 1]]), 1, 0.25)
    >>> p.token.tolist(), p.cell.tolist(), p.missing.tolist()
    ([0, 1], [0, 2], [0.5, 0.30000001192092896])
    """
    n_tokens, depth = values.shape
    taken = np.zeros(values.shape, dtype=bool)
    taken[:, :ncells] = values[:, :ncells] >= threshold
    taken &= np.cumsum(~taken, axis=1) == 0  # a run from the best: a centroid after a skipped one is skipped
    first_left = taken.sum(axis=1)
    missing = np.where(first_left < depth, values[np.arange(n_tokens), np.minimum(first_left, depth - 1)], 0.0)
    missing = missing * MISSING_SCALE
    token = np.repeat(np.arange(n_tokens, dtype=np.int64), first_left)
    return Probes(token, cells[taken].astype(np.int64), values[taken].astype(np.float32), missing.astype(np.float32))


def exact_pair_scores(found: Probes, query: torch.Tensor, centroids: torch.Tensor) -> Probes:
    """``found`` with each pair's centroid score computed in float32 (query: (Lq, dim); centroids:
    (C, dim) float32)."""
    token, cell = torch.from_numpy(found.token), torch.from_numpy(found.cell)
    score = (query.index_select(0, token) * centroids.index_select(0, cell)).sum(dim=1)
    return Probes(found.token, found.cell, score.numpy().astype(np.float32), found.missing)


def lookup_tables(query: torch.Tensor, table: np.ndarray, width: int) -> np.ndarray:
    """(Lq, width, 256) float32: for each query token, residual byte position and byte value,
    the inner product of the token with the residual values that byte holds.

    query: (Lq, dim) float32; table: (256, 8 / nbits) the codec's byte -> residual values
    (:attr:`maxsim.index.codec.Codec.table`); width: residual bytes per token.
    """
    per_byte = table.shape[1]
    padded = torch.zeros(len(query), width * per_byte)
    padded[:, : query.shape[1]] = query
    return torch.matmul(padded.reshape(len(query), width, per_byte), torch.from_numpy(table).T).numpy()


def cell_runs(starts: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (start, end) rows (each (P,) int64) of each of ``cells`` in a segment's cell-ordered
    rows, from its :attr:`~maxsim.index.segment.Segment.cell_starts` (a centroid past its last
    one: an empty run).

    >>> cell_runs(np.array([0, 2, 2, 5]), np.array([0, 1, 2, 7]))
    (array([0, 2, 2, 5]), array([2, 2, 5, 5]))
    """
    last = len(starts) - 1
    return starts[np.minimum(cells, last)], starts[np.minimum(cells + 1, last)]


def segment_gains(segment: Segment, found: Probes, luts: np.ndarray,
                  allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~maxsim.index.warp_kernels.score_rows` over one segment: (local chunk numbers (M,)
    int64, gains (M,) float32). ``allowed``: (N,) bool over its chunks, or None for its live ones."""
    _, residuals, row_chunks = segment.cell_rows
    if allowed is None and segment.dead_chunks is not None:
        allowed = ~segment.dead_chunks
    start, end = cell_runs(segment.cell_starts, found.cell)
    mask = np.zeros(0, dtype=bool) if allowed is None else allowed
    return score_rows(found.token, start, end, found.score, luts, residuals, row_chunks, mask, segment.n_chunks,
                      found.missing)


def warp_scores(data: IndexData, query: torch.Tensor, ncells: int, threshold: float,
                masks: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk the query reaches in every segment, with its WARP score.

    query: (Lq, dim) float32, the query's tokens (padding left out); masks: per segment, (N_s,)
    bool the chunks a filter lets through (None: every live chunk). Returns (chunk numbers (M,)
    int64, scores (M,) float32), in no order.
    """
    found = probes(*data.selector.top(query, ncells + 1), ncells, threshold)
    if not data.selector.exact:
        found = exact_pair_scores(found, query, data.centroid_vectors)
    luts = lookup_tables(query, data.codec.table, data.dim * data.settings.nbits // 8)
    chunks, scores = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float32)]
    for s, segment in enumerate(data.segments):
        if not segment.n_chunks:
            continue
        local, gains = segment_gains(segment, found, luts, None if masks is None else masks[s])
        chunks.append(local + data.chunk_base[s])
        scores.append(gains)
    return np.concatenate(chunks), np.concatenate(scores) + np.float32(found.missing.sum())

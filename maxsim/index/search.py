"""Searching an index, every segment at once: probe centroids, score candidates from
centroids, then exactly.

Search finds each query token's ``ncells`` nearest centroids, takes the chunks holding them
(inverted file), scores those from centroid scores alone (centroids scoring under
``centroid_score_threshold`` for every query token are ignored), then decompresses the
``ndocs`` best and ranks them by exact MaxSim. A document's score is its best chunk's.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import torch

from maxsim.errors import SettingsError
from maxsim.index.allowed import Allowed
from maxsim.index.reader import IndexData
from maxsim.inputs import CENTROID_SCORE_THRESHOLD, DEFAULT_K
from maxsim.ranking import Ranking
from maxsim.scoring import scatter_max, segment_maxsim

#: the fewest queries for which :func:`search` makes a pool of its own
POOL_MIN_QUERIES = 8


def search_defaults(n_chunks: int, k: int) -> tuple[int, float, int]:
    """(ncells, centroid_score_threshold, ndocs) for an index of ``n_chunks`` and a given k.

    >>> search_defaults(5_000, 10)
    (2, 0.4, 80)
    """
    ncells = 2 if n_chunks < 100_000 else 4
    ndocs = max(8 * k, 64 if n_chunks < 100_000 else 256)
    return ncells, CENTROID_SCORE_THRESHOLD, ndocs


def search(data: IndexData, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = DEFAULT_K,
           ncells: int | None = None, centroid_score_threshold: float | None = None, ndocs: int | None = None,
           pool: Executor | None = None, filter: Mapping | None = None) -> Ranking:
    """The ``k`` best documents of each query, as the chunk id of each one's best chunk.

    q_vectors: (Q, Lq, dim) float32 CPU; q_mask: (Q, Lq) bool. ``ncells`` centroids are probed
    per query token; when their chunks hold fewer than ``k`` documents, more are probed
    (doubling) until they do or every centroid is. The ``ndocs`` best chunks by centroid
    scores, or as many as it takes to cover ``k`` documents, are decompressed and scored
    exactly. Defaults: :func:`search_defaults`.

    Several queries are searched at once, each on one thread of ``pool`` (:func:`search_pool`):
    a query's search is many small operations, which spread over cores better query by query
    than each one over all of them (16 queries about 20% faster on 2 cores). Without a pool, one
    is made for the call when there are at least ``POOL_MIN_QUERIES`` queries (making one costs
    about a millisecond) and torch has more than one intra-op thread.

    ``filter`` (:mod:`maxsim.index.filters`) limits the documents returned: only chunks of
    documents that pass are candidates, so no other is decompressed or scored; where they are
    no more than ``ndocs`` chunks, they are all scored exactly, without the inverted file.

    Returns a :class:`~maxsim.ranking.Ranking` of chunk ids (Q, k), exact MaxSim scores, best
    first; a row is short only when the index holds (or the filter passes) fewer than ``k``
    documents.
    """
    k = checked_search_settings(data, k, ncells, centroid_score_threshold, ndocs)
    if k == 0:  # an index without documents
        return Ranking.from_rows([([], [])] * len(q_vectors), 0)
    d_ncells, d_threshold, d_ndocs = search_defaults(data.n_chunks, k)
    settings = (k, ncells or d_ncells, d_threshold if centroid_score_threshold is None else centroid_score_threshold,
                ndocs or d_ndocs)
    allowed = data.allowed(filter) if filter is not None else None

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        return search_one(data, q_vectors[i : i + 1], q_mask[i : i + 1], *settings, allowed)

    if pool is None and len(q_vectors) >= POOL_MIN_QUERIES and torch.get_num_threads() > 1:
        with search_pool() as own:
            return search(data, q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, own, filter)
    runner = pool.map if pool is not None and len(q_vectors) > 1 else map
    return Ranking.from_rows(list(runner(one, range(len(q_vectors)))), k)


def checked_search_settings(data: IndexData, k: int, ncells: int | None, threshold: float | None,
                            ndocs: int | None) -> int:
    """``k`` clamped to the documents the index holds (before anything is sized by it: a k of
    a billion would allocate for a billion), after refusing settings that mean nothing: a k,
    ncells or ndocs under 1, a threshold that is not a number."""
    for name, value, default in (("k", k, False), ("ncells", ncells, True), ("ndocs", ndocs, True)):
        if value is None and default:
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"{name} must be a whole number of 1 or more"
                                f"{' (or left out for the size-aware default)' if default else ''}, got {value!r}")
    if threshold is not None and not np.isfinite(threshold):
        raise SettingsError(f"centroid_score_threshold must be a finite number, got {threshold!r}")
    return min(int(k), data.n_documents)


def search_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """Threads for :func:`search` to search queries on, one at a time each: ``threads`` of them
    (default: torch's intra-op threads), each running torch with one intra-op thread. The caller
    shuts it down (``with search_pool() as pool: ...``)."""
    return ThreadPoolExecutor(threads or torch.get_num_threads(), thread_name_prefix="maxsim-search",
                              initializer=torch.set_num_threads, initargs=(1,))


def search_one(data: IndexData, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int, ncells: int,
               threshold: float, ndocs: int, allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` for one query ((1, Lq, dim), (1, Lq)), every setting given: its best chunk
    numbers (k',) int64 and their exact scores (k',) float32, best first. The centroid scores
    are computed once, and every segment's candidates ranked together; with ``allowed`` (a
    filter's), only the chunks it lets through."""
    want = min(k, data.n_documents if allowed is None else allowed.documents)
    if want == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        # (C, Lq): centroids on the left is about 3x faster here than (Lq, C) = q @ centroids.T
        cs = data.centroid_vectors @ q_vectors[0][q_mask[0]].T
        if allowed is not None and allowed.chunks <= ndocs:  # few enough to score them all
            return best_chunks(data, q_vectors, q_mask, allowed.chunk_numbers(data.chunk_base), k, cs)
        masks = None if allowed is None else allowed.masks
        cells = ncells
        found = candidates(data, cs, cells, masks)
        while cells < len(data.centroids) and n_documents(data, found) < want:
            cells *= 2
            found = candidates(data, cs, cells, masks)
        if len(found) > ndocs:
            approx = approximate_scores(data, cs, found, threshold)
            best = approx.topk(ndocs).indices.numpy()
            if n_documents(data, found[best]) < want:
                best = covering(data, found, approx.argsort(descending=True).numpy(), ndocs, want)
            found = found[best]
        return best_chunks(data, q_vectors, q_mask, found, k, cs)


def best_chunks(data: IndexData, q_vectors: torch.Tensor, q_mask: torch.Tensor, chunk_ids: np.ndarray,
                k: int, centroid_scores: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim of one query ((1, Lq, dim), (1, Lq)) with some chunks (by number),
    decompressed: the best chunk of each of the ``k`` best documents, (chunk numbers (k',)
    int64, scores (k',) float32). ``centroid_scores`` is accepted for callers that have them."""
    if len(chunk_ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    scores = chunk_scores(data, q_vectors, q_mask, chunk_ids).numpy()
    order = np.argsort(-scores, kind="stable")
    docs = data.chunk_documents(chunk_ids[order])
    _, first = np.unique(docs, return_index=True)  # each document's best chunk
    best = order[np.sort(first)[:k]]
    return chunk_ids[best].astype(np.int64), scores[best]


def chunk_scores(data: IndexData, q_vectors: torch.Tensor, q_mask: torch.Tensor, chunk_ids: np.ndarray,
                 centroid_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Exact MaxSim of one encoded query ((1, Lq, dim), (1, Lq)) with some chunks (by number),
    from their decompressed vectors (centroid + residual) renormalised to unit length, as they
    were encoded: (n,) float32. ``centroid_scores`` is accepted and not needed."""
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    query = q_vectors[0][q_mask[0]]  # (Lq', dim)
    out = torch.zeros(len(chunk_ids), dtype=torch.float32)
    for s, where, local in data.split(chunk_ids, data.chunk_base):
        segment = data.segments[s]
        vectors = data.vectors_of(segment, segment.token_positions(local))  # (T, dim)
        sim = vectors @ query.T
        sim /= torch.linalg.vector_norm(vectors, dim=1).clamp_min_(1e-12)[:, None]
        lengths = torch.from_numpy(segment.doclens[local].astype(np.int64))
        out[torch.from_numpy(where)] = segment_maxsim(sim, lengths)
    return out


def n_documents(data: IndexData, chunk_ids: np.ndarray) -> int:
    """How many distinct documents some chunks belong to."""
    return len(np.unique(data.chunk_documents(chunk_ids)))


def distinct(values: np.ndarray, n: int) -> np.ndarray:
    """The sorted distinct values of some integers in [0, n), through a mark per value (several
    times faster than ``np.unique``'s sort for the thousands of ids a query gathers).

    >>> distinct(np.array([3, 1, 3, 0]), 5).tolist()
    [0, 1, 3]
    """
    seen = np.zeros(n, dtype=bool)
    seen[values] = True
    return np.flatnonzero(seen)


def covering(data: IndexData, chunk_ids: np.ndarray, order: np.ndarray, at_least: int, documents: int) -> np.ndarray:
    """The first entries of ``order`` (positions in ``chunk_ids``, best first): ``at_least`` of
    them, or as many as it takes for their chunks to cover ``documents`` distinct documents."""
    owners = data.chunk_documents(chunk_ids[order])
    _, first = np.unique(owners, return_index=True)
    first = np.sort(first)
    need = int(first[documents - 1]) + 1 if len(first) >= documents else len(order)
    return order[: max(at_least, need)]


def candidates(data: IndexData, centroid_scores: torch.Tensor, ncells: int,
               masks: list[np.ndarray] | None = None) -> np.ndarray:
    """Chunks (by number, ascending) that hold one of each query token's ``ncells`` nearest
    centroids, in every segment; chunks of deleted documents are left out, and with ``masks``
    (per segment, (N_s,) bool: a filter's) those it does not let through.

    centroid_scores: (C, Lq).
    """
    cells = np.unique(centroid_scores.topk(min(ncells, centroid_scores.shape[0]), dim=0).indices.numpy())
    parts = [np.zeros(0, dtype=np.int64)]
    for s, segment in enumerate(data.segments):
        local = distinct(segment.chunks_in(cells)[0], segment.n_chunks)
        if masks is not None:
            local = local[masks[s][local]]
        elif segment.dead_chunks is not None:
            local = local[~segment.dead_chunks[local]]
        parts.append(local + data.chunk_base[s])
    return np.concatenate(parts)


def approximate_scores(data: IndexData, centroid_scores: torch.Tensor, chunk_ids: np.ndarray,
                       threshold: float) -> torch.Tensor:
    """MaxSim from centroids only: (n,) float32 for the given chunks (by number).

    For each query token, a chunk's score is the best score of a centroid that one of its
    tokens belongs to; centroids whose best score over the query tokens is under
    ``threshold`` are left out (a query token with none left scores 0). Computed from each
    segment's inverted file, cell by cell, so the cost grows with the (chunk, centroid) pairs of
    the kept centroids rather than with every token of every candidate.

    centroid_scores: (C, Lq) float32; chunk_ids: (n,) distinct chunk numbers, in any order.
    """
    n = len(chunk_ids)
    kept = np.flatnonzero((centroid_scores.amax(dim=1) >= threshold).numpy())
    rows, cells = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for s, where, local in data.split(chunk_ids, data.chunk_base):
        segment = data.segments[s]
        chunks, cell_of = segment.chunks_in(kept)
        position = np.full(segment.n_chunks, -1, dtype=np.int64)  # of each chunk in chunk_ids
        position[local] = where
        row = position[chunks]
        hit = row >= 0
        rows.append(row[hit])
        cells.append(cell_of[hit])
    values = centroid_scores.index_select(0, torch.from_numpy(np.concatenate(cells)))  # (E, Lq)
    return scatter_max(values, torch.from_numpy(np.concatenate(rows)), n).sum(dim=1)

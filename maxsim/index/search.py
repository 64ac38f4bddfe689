"""Searching an index, every segment at once, the WARP way (:mod:`maxsim.index.warp`).

Each query token probes its ``ncells`` best centroids (skipping those scoring under
``centroid_score_threshold`` for it); every stored token of a probed centroid is scored from the
centroid's score and its residual bytes, without decompressing a vector; a chunk's score sums,
over query tokens, its best token's score, or the token's imputed *missing similarity* where the
chunk has no token in a probed centroid. With ``ndocs``, the ``ndocs`` best chunks are then
decompressed and scored exactly. A document's score is its best chunk's.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import torch

from maxsim.errors import SettingsError
from maxsim.index.allowed import Allowed
from maxsim.index.reader import IndexData
from maxsim.index.warp import warp_scores
from maxsim.index.warp_kernels import chunk_max_sum
from maxsim.inputs import CENTROID_SCORE_THRESHOLD, DEFAULT_K
from maxsim.ranking import Ranking

#: the fewest queries for which :func:`search` makes a pool of its own
POOL_MIN_QUERIES = 8
#: a filter that lets through no more chunks than this has them all scored exactly
EXACT_FILTER_CHUNKS = 256


def search_defaults(n_chunks: int, k: int) -> tuple[int, float, int]:
    """(ncells, centroid_score_threshold, ndocs) for an index of ``n_chunks`` and a given k.

    Chosen on SciFact's dev slice with a trained checkpoint (``bench/search_defaults.py``, nbits
    2): up to k 10, the fastest setting whose recall@10 against exact MaxSim is no lower than
    that of the search it replaced (0.852) with nDCG@10 within 0.005 of exact MaxSim's: 8
    centroids a query token and the 32 best chunks rescored exactly. A deeper k probes 64
    centroids and rescores none (recall@100 0.77, where rescoring a hundred chunks would
    double the time). At nbits 4 (a new index's default under 10,000 documents) the same
    settings reach recall@10 0.904 on that slice, and nDCG@10 within 0.002 of exact.

    >>> search_defaults(5_000, 10), search_defaults(5_000, 100)
    ((8, 0.4, 32), (64, 0.4, 0))
    """
    return (8, CENTROID_SCORE_THRESHOLD, 32) if k <= 10 else (64, CENTROID_SCORE_THRESHOLD, 0)


def search(data: IndexData, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = DEFAULT_K,
           ncells: int | None = None, centroid_score_threshold: float | None = None, ndocs: int | None = None,
           pool: Executor | None = None, filter: Mapping | None = None) -> Ranking:
    """The ``k`` best documents of each query, as the chunk id of each one's best chunk.

    q_vectors: (Q, Lq, dim) float32 CPU; q_mask: (Q, Lq) bool. ``ncells`` centroids are probed
    per query token (those under ``centroid_score_threshold`` for it skipped) and their tokens
    scored from lookup tables (:mod:`maxsim.index.warp`); when the chunks reached hold fewer
    than ``k`` documents, more are probed (doubling) until they do or every centroid is. With
    ``ndocs`` N > 0, the N best chunks and each of the k best documents' best chunk are then
    decompressed and scored exactly. Defaults: :func:`search_defaults`.

    Several queries are searched at once, each on one thread of ``pool`` (:func:`search_pool`):
    a query's search is many small operations, which spread over cores better query by query
    than each one over all of them (16 queries about 20% faster on 2 cores). Without a pool, one
    is made for the call when there are at least ``POOL_MIN_QUERIES`` queries (making one costs
    about a millisecond) and torch has more than one intra-op thread.

    ``filter`` (:mod:`maxsim.index.filters`) limits the documents returned: only chunks of
    documents that pass are candidates, so no other is decompressed or scored; where they are
    no more than ``EXACT_FILTER_CHUNKS`` chunks, they are all scored exactly, without probing.

    Returns a :class:`~maxsim.ranking.Ranking` of chunk ids (Q, k) and their scores (WARP's, or
    exact MaxSim's where rescored), best first; a row is short only when the index holds (or the
    filter passes) fewer than ``k`` documents.
    """
    k = checked_search_settings(data, k, ncells, centroid_score_threshold, ndocs)
    if k == 0:  # an index without documents
        return Ranking.from_rows([([], [])] * len(q_vectors), 0)
    d_ncells, d_threshold, d_ndocs = search_defaults(data.n_chunks, k)
    settings = (k, ncells or d_ncells, d_threshold if centroid_score_threshold is None else centroid_score_threshold,
                d_ndocs if ndocs is None else ndocs)
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
    ncells under 1, an ndocs under 0, a threshold that is not a number."""
    for name, value, default in (("k", k, False), ("ncells", ncells, True), ("ndocs", ndocs, True)):
        if value is None and default:
            continue
        least = 0 if name == "ndocs" else 1
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise SettingsError(f"{name} must be a whole number of {least} or more"
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
    numbers (k',) int64 and their scores (k',) float32, best first. The centroid scores are
    computed once, and every segment's chunks scored from them and their residuals
    (:mod:`maxsim.index.warp`); with ``allowed`` (a filter's), only the chunks it lets through."""
    want = min(k, data.n_documents if allowed is None else allowed.documents)
    if want == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        if allowed is not None and allowed.chunks <= EXACT_FILTER_CHUNKS:  # few: score them all exactly
            return best_chunks(data, q_vectors, q_mask, allowed.chunk_numbers(data.chunk_base), k)
        query = q_vectors[0][q_mask[0]]
        masks = None if allowed is None else allowed.masks
        cells = ncells
        while True:
            chunks, scores = warp_scores(data, query, cells, threshold, masks)
            found = best_documents(data, chunks, scores, want)
            if len(found[0]) >= want or cells >= len(data.centroids):
                break
            cells *= 2  # the probed centroids hold fewer than k documents: probe more
        if ndocs:  # the ndocs best chunks, and each of the k best documents' best, scored exactly
            top = np.argpartition(-scores, ndocs - 1)[:ndocs] if ndocs < len(scores) else np.arange(len(scores))
            return best_chunks(data, q_vectors, q_mask, np.union1d(chunks[top], found[0]), k)
        return found


def best_documents(data: IndexData, chunks: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best chunk of each of the ``k`` best documents among scored chunks: (chunk numbers
    (k',) int64, scores (k',) float32), best first (fewer where fewer documents were scored).

    chunks: (M,) int64 distinct chunk numbers; scores: (M,) float32 theirs."""
    take = min(len(chunks), 2 * k + 16)
    while True:
        top = np.argpartition(-scores, take - 1)[:take] if take < len(chunks) else np.arange(len(chunks))
        top = top[np.argsort(-scores[top], kind="stable")]
        _, first = np.unique(data.chunk_documents(chunks[top]), return_index=True)
        if len(first) >= k or take >= len(chunks):
            best = top[np.sort(first)[:k]]
            return chunks[best], scores[best]
        take = min(len(chunks), 4 * take)  # chunks of the same documents filled the first ones


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
    query = q_vectors[0][q_mask[0]].float()  # (Lq', dim)
    out = torch.zeros(len(chunk_ids), dtype=torch.float32)
    for s, where, local in data.split(chunk_ids, data.chunk_base):
        segment = data.segments[s]
        unit = data.unit_vectors_of(segment, segment.token_positions(local))  # (T, dim)
        out[torch.from_numpy(where)] = torch.from_numpy(chunk_max_sum((unit @ query.T).numpy(), segment.doclens[local]))
    return out

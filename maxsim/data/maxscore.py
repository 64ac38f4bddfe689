"""Exact top-k BM25 from posting lists with MaxScore, compiled with numba, many queries at once.

MaxScore (Turtle and Flood, 1995): a query's terms are ordered by the most each can add to a
score (its weight times its best impact). Once ``k`` documents are held and the ``k``-th score
is ``theta``, the terms whose bounds together stay below ``theta`` are *non-essential*: a
document found only in their lists cannot enter, so only the other (essential) lists are walked.

The corpus is taken in windows of :data:`WINDOW` consecutive positions (scored term at a time
within a window, document at a time across windows; measured against a document-at-a-time walk:
BENCHMARKS.md). In a window, the essential lists' impacts are added into a dense accumulator,
which finds the window's candidates; those that cannot reach ``theta`` even with every
non-essential term are dropped; then each non-essential list (largest bound first) adds its
impacts to the candidates left, scanning its part of the window (or searching it for each
candidate, when far fewer candidates than postings are left), and the candidates that can no
longer reach ``theta`` are dropped before the next list. What is left enters the top ``k``;
``theta`` and the essential terms are updated after each window. Everything is exact: the top
``k`` by (score descending, corpus position ascending), scores summed in float64.

All arrays follow :class:`maxsim.data.bm25.PostingLists`: ``indptr`` (V + 1,) int64, ``documents``
(E,) int32 or int64 corpus positions ascending within a term, ``impacts`` (E,) float32, ``best``
(V,) float64. A batch of queries is flat: ``query_indptr`` (Q + 1,) int64 into ``query_terms``
(T,) int64 (distinct term ids) and ``query_weights`` (T,) float64 (how often each occurs).
The kernels run on numba's threads, as many as ``numba.set_num_threads`` allows the caller.
"""

from __future__ import annotations

import numba
import numpy as np

#: a bound is compared with a score less this fraction of it (sums in another order round otherwise)
RELATIVE_MARGIN = 1e-9

#: corpus positions scored together: the accumulator (float64) and its marks (int32) stay in the
#: core's L2 cache
WINDOW = 16384

#: a non-essential list is scanned through a window unless it holds more than this many postings
#: there for each candidate left (then each candidate is searched for)
SCAN_PER_CANDIDATE = 256

#: queries given to one thread at a time (each thread allocates its window arrays once per block)
QUERY_BLOCK = 64


@numba.njit(cache=True, inline="always")
def _margin(value: float) -> float:
    return RELATIVE_MARGIN * max(1.0, abs(value))


@numba.njit(cache=True, inline="always")
def _worse(score_a: float, position_a: int, score_b: float, position_b: int) -> bool:
    """Whether document a ranks below document b (lower score; on a tie, the later position)."""
    return score_a < score_b or (score_a == score_b and position_a > position_b)


@numba.njit(cache=True)
def _sift_down(scores: np.ndarray, positions: np.ndarray, size: int, i: int) -> None:
    """Restore the heap below ``i``: the root is the worst document held."""
    while True:
        left, worst = 2 * i + 1, i
        if left < size and _worse(scores[left], positions[left], scores[worst], positions[worst]):
            worst = left
        if left + 1 < size and _worse(scores[left + 1], positions[left + 1], scores[worst], positions[worst]):
            worst = left + 1
        if worst == i:
            return
        scores[i], scores[worst] = scores[worst], scores[i]
        positions[i], positions[worst] = positions[worst], positions[i]
        i = worst


@numba.njit(cache=True)
def _sift_up(scores: np.ndarray, positions: np.ndarray, i: int) -> None:
    while i > 0:
        parent = (i - 1) // 2
        if not _worse(scores[i], positions[i], scores[parent], positions[parent]):
            return
        scores[i], scores[parent] = scores[parent], scores[i]
        positions[i], positions[parent] = positions[parent], positions[i]
        i = parent


@numba.njit(cache=True)
def _search(documents: np.ndarray, start: int, end: int, target: int) -> int:
    """The first index in ``documents[start:end]`` (ascending) holding ``target`` or more (or
    ``end``): a binary search."""
    while start < end:
        middle = (start + end) // 2
        if documents[middle] < target:
            start = middle + 1
        else:
            end = middle
    return start


@numba.njit(cache=True)
def _seek(documents: np.ndarray, start: int, end: int, target: int) -> int:
    """The first index in ``documents[start:end]`` (ascending) holding ``target`` or more (or
    ``end``): a galloping search forward from ``start``."""
    if start >= end or documents[start] >= target:
        return start
    step, low = 1, start
    while low + step < end and documents[low + step] < target:
        low += step
        step *= 2
    # documents[low] < target <= documents[min(low + step, end)] (or that is end)
    return _search(documents, low + 1, min(low + step, end), target)


@numba.njit(cache=True)
def _keep(accumulator: np.ndarray, candidates: np.ndarray, count: int, floor: float) -> int:
    """Move the candidates whose accumulated score is ``floor`` or more to the front; returns how many."""
    kept = 0
    for i in range(count):
        x = candidates[i]
        if accumulator[x] >= floor:
            candidates[kept] = x
            kept += 1
    return kept


@numba.njit(cache=True)
def _top_one(indptr, documents, impacts, best, terms, weights, k, out_positions, out_scores,
             accumulator, marks, touched, candidates, scan_per_candidate) -> int:
    """One query's top ``k`` into ``out_positions``/``out_scores`` (best first); returns how
    many documents matched at least one term (at most ``k``). ``accumulator`` (W,) float64,
    ``marks`` (W,) int32, ``touched`` and ``candidates`` (W,) int64 are work arrays of one thread."""
    width = len(accumulator)
    n = len(terms)
    bounds = np.empty(n)
    for i in range(n):
        bounds[i] = weights[i] * best[terms[i]]
    order = np.argsort(bounds, kind="mergesort")  # ascending bound: the non-essential terms first
    cursor = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    weight = np.empty(n)
    prefix = np.empty(n)  # prefix[j]: the most terms 0..j (in bound order) can add together
    total = 0.0
    for j in range(n):
        t = terms[order[j]]
        cursor[j], end[j], weight[j] = indptr[t], indptr[t + 1], weights[order[j]]
        total += bounds[order[j]]
        prefix[j] = total
    heap_scores = np.empty(k)
    heap_positions = np.empty(k, dtype=np.int64)
    size, theta, essential = 0, -np.inf, 0  # terms essential.. are walked
    marks[:] = 0
    mark = 0
    while True:
        base = -1  # the window starts at the next document of any essential list
        for j in range(essential, n):
            if cursor[j] < end[j] and (base < 0 or documents[cursor[j]] < base):
                base = documents[cursor[j]]
        if base < 0:
            break
        limit = base + width
        mark += 1
        found = 0
        for j in range(essential, n):  # the essential lists, into the accumulator
            c, e, w = cursor[j], end[j], weight[j]
            while c < e and documents[c] < limit:
                x = documents[c] - base
                if marks[x] != mark:
                    marks[x] = mark
                    accumulator[x] = w * impacts[c]
                    touched[found] = x
                    found += 1
                else:
                    accumulator[x] += w * impacts[c]
                c += 1
            cursor[j] = c
        left = found
        candidates[:found] = touched[:found]
        if size == k and essential > 0:
            left = _keep(accumulator, candidates, left, theta - _margin(theta) - prefix[essential - 1])
        for j in range(essential - 1, -1, -1):  # the non-essential lists, largest bound first
            if j < essential - 1:
                left = _keep(accumulator, candidates, left, theta - _margin(theta) - prefix[j])
            if left == 0:
                break
            start = _seek(documents, cursor[j], end[j], base)
            stop = _seek(documents, start, end[j], limit)
            w = weight[j]
            if stop - start <= scan_per_candidate * left:
                for c in range(start, stop):  # (documents no essential list holds are never read)
                    accumulator[documents[c] - base] += w * impacts[c]
            else:
                for i in range(left):
                    x = candidates[i]
                    c = _search(documents, start, stop, base + x)
                    if c < stop and documents[c] == base + x:
                        accumulator[x] += w * impacts[c]
            cursor[j] = stop
        for i in range(left):  # (in any order: the heap compares positions on a tie)
            x = candidates[i]
            score, document = accumulator[x], base + x
            if size < k:
                heap_scores[size], heap_positions[size] = score, document
                _sift_up(heap_scores, heap_positions, size)
                size += 1
                if size < k:
                    continue
            elif _worse(heap_scores[0], heap_positions[0], score, document):
                heap_scores[0], heap_positions[0] = score, document
                _sift_down(heap_scores, heap_positions, k, 0)
            else:
                continue
            theta = heap_scores[0]
        if size == k:
            while essential < n and prefix[essential] < theta - _margin(theta):
                essential += 1
    for i in range(size - 1, -1, -1):  # pop worst first, filling from the back
        out_scores[i], out_positions[i] = heap_scores[0], heap_positions[0]
        heap_scores[0], heap_positions[0] = heap_scores[i], heap_positions[i]
        _sift_down(heap_scores, heap_positions, i, 0)
    return size


@numba.njit(cache=True, parallel=True)
def top_k(indptr, documents, impacts, best, query_indptr, query_terms, query_weights, depths,
          window=WINDOW, scan_per_candidate=SCAN_PER_CANDIDATE):
    """Each query's top ``depths[q]`` documents: (positions (Q, K) int64, scores (Q, K) float64,
    matched (Q,) int64), K = max(depths); row q holds ``matched[q]`` documents, best first, the
    rest -1 and 0.0 (the caller fills a row short of its depth with documents matching nothing).
    ``window`` and ``scan_per_candidate`` default to :data:`WINDOW` and :data:`SCAN_PER_CANDIDATE`."""
    n_queries = len(query_indptr) - 1
    width = max(1, depths.max()) if n_queries else 1
    positions = np.full((n_queries, width), -1, dtype=np.int64)
    scores = np.zeros((n_queries, width))
    matched = np.zeros(n_queries, dtype=np.int64)
    for block in numba.prange((n_queries + QUERY_BLOCK - 1) // QUERY_BLOCK):
        accumulator = np.zeros(window)
        marks = np.zeros(window, dtype=np.int32)
        touched = np.empty(window, dtype=np.int64)
        candidates = np.empty(window, dtype=np.int64)
        for q in range(block * QUERY_BLOCK, min(n_queries, (block + 1) * QUERY_BLOCK)):
            a, b = query_indptr[q], query_indptr[q + 1]
            if depths[q] > 0 and b > a:
                matched[q] = _top_one(indptr, documents, impacts, best, query_terms[a:b], query_weights[a:b],
                                      depths[q], positions[q], scores[q], accumulator, marks, touched, candidates,
                                      scan_per_candidate)
    return positions, scores, matched


@numba.njit(cache=True, parallel=True)
def score_pairs(indptr, documents, impacts, query_indptr, query_terms, query_weights, pair_queries, pair_documents):
    """(P,) float64 BM25 score of each (query, document) pair: query ``pair_queries[p]`` of the
    batch, the document at corpus position ``pair_documents[p]``."""
    out = np.zeros(len(pair_queries))
    for p in numba.prange(len(pair_queries)):
        q, document = pair_queries[p], pair_documents[p]
        score = 0.0
        for i in range(query_indptr[q], query_indptr[q + 1]):
            t = query_terms[i]
            start = _search(documents, indptr[t], indptr[t + 1], document)
            if start < indptr[t + 1] and documents[start] == document:
                score += query_weights[i] * impacts[start]
        out[p] = score
    return out

"""The compiled loops of the index's search (numba, compiled on first use and cached on disk):
probe selection and scoring a segment's rows from lookup tables (:mod:`maxsim.index.warp`), and
decoding rows for exact rescoring (:func:`maxsim.index.search.chunk_scores`).

Shapes: a query's probed (query token, centroid) pairs come as flat arrays, grouped by query
token in ascending order: ``pair_token`` (P,) int64, ``pair_start``/``pair_end`` (P,) int64 the
run of rows of that centroid in the segment (rows are in cell order), ``pair_score`` (P,)
float32 the centroid's score for that token. ``luts`` (Lq, W, 256) float32: for query token
``t``, byte position ``b`` and byte value ``v``, the inner product of the token with the
residual dimensions that byte holds. ``residuals`` (T, W) uint8; ``row_chunks`` (T,) integers;
``allowed`` (N,) bool over the segment's chunks, or empty for all of them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def score_rows(pair_token, pair_start, pair_end, pair_score, luts, residuals, row_chunks, allowed, n_chunks,
               missing):
    """Each chunk reached by a probed pair, with its gain: the sum, over the query tokens that
    reached it, of (its best row's score for that token - ``missing[token]``). A row's score is
    its centroid's score plus its residual's, read byte by byte from the token's lookup table:
    the inner product with the stored vector, never decompressed. A probed run's chunk slots are
    read ahead of its rows, as independent loads the CPU overlaps (at a million chunks the slot
    table outgrows the caches, and reading each slot as its row came cost a third of the time).

    Returns (chunks (M,) int64 local numbers, in the order first reached; gains (M,) float32).
    """
    n_pairs = len(pair_token)
    n_rows = 0
    longest = 0
    for p in range(n_pairs):
        n_rows += pair_end[p] - pair_start[p]
        longest = max(longest, pair_end[p] - pair_start[p])
    capacity = min(n_rows, n_chunks)
    slot = np.full(n_chunks, -1, np.int32)
    chunks = np.empty(capacity, np.int64)
    gains = np.zeros(capacity, np.float32)
    best = np.empty(capacity, np.float32)
    last = np.empty(capacity, np.int32)  # the query token that last reached each candidate
    touched = np.empty(capacity, np.int32)
    found = np.empty(longest, np.int32)  # a run's slots, read ahead of its rows
    check = len(allowed) > 0
    width = residuals.shape[1]
    m = 0
    n_touched = 0
    token = -1
    for p in range(n_pairs):
        t = pair_token[p]
        if t != token:
            for u in range(n_touched):
                j = touched[u]
                gains[j] += best[j] - missing[token]
            n_touched = 0
            token = t
        lut = luts[t]
        base = pair_score[p]
        first = pair_start[p]
        for r in range(first, pair_end[p]):  # the run's slots first: independent loads that overlap
            found[r - first] = slot[row_chunks[r]]
        for r in range(first, pair_end[p]):
            c = row_chunks[r]
            if check and not allowed[c]:
                continue
            s = base
            row = residuals[r]
            for b in range(width):
                s += lut[b, row[b]]
            j = found[r - first]
            if j < 0:
                j = slot[c]  # (an earlier row of this run may have given it one)
                if j < 0:
                    j = m
                    slot[c] = m
                    chunks[m] = c
                    last[m] = -1
                    m += 1
            if last[j] != t:
                last[j] = t
                best[j] = s
                touched[n_touched] = j
                n_touched += 1
            elif s > best[j]:
                best[j] = s
    for u in range(n_touched):
        j = touched[u]
        gains[j] += best[j] - missing[token]
    return chunks[:m], gains[:m]


@numba.njit(nogil=True, cache=True, inline="always")
def _keep(values, index, t, x, c, depth):
    """Insert score ``x`` of centroid ``c`` into token ``t``'s best ``depth`` (sorted, best first)."""
    j = depth - 1
    while j > 0 and values[t, j - 1] < x:
        values[t, j] = values[t, j - 1]
        index[t, j] = index[t, j - 1]
        j -= 1
    values[t, j] = x
    index[t, j] = c


@numba.njit(nogil=True, cache=True)
def top_cells(scores, depth):
    """Each query token's ``depth`` best centroids: scores (C, Lq) float32 -> (values (Lq, depth)
    float32, centroids (Lq, depth) int64), best first (one pass over the scores, in their order)."""
    n_cells, n_tokens = scores.shape
    values = np.full((n_tokens, depth), -np.inf, np.float32)
    index = np.full((n_tokens, depth), -1, np.int64)
    low = np.full(n_tokens, -np.inf, np.float32)
    for c in range(n_cells):
        for t in range(n_tokens):
            x = scores[c, t]
            if x > low[t]:
                _keep(values, index, t, x, c, depth)
                low[t] = values[t, depth - 1]
    return values, index


@numba.njit(nogil=True, cache=True)
def top_cells_bf16(bits, table, depth):
    """:func:`top_cells` of bf16 scores given as their bits ((C, Lq) uint16), read through
    ``table`` ((65536,) float32, the value of each bit pattern)."""
    n_cells, n_tokens = bits.shape
    values = np.full((n_tokens, depth), -np.inf, np.float32)
    index = np.full((n_tokens, depth), -1, np.int64)
    low = np.full(n_tokens, -np.inf, np.float32)
    for c in range(n_cells):
        for t in range(n_tokens):
            x = table[bits[c, t]]
            if x > low[t]:
                _keep(values, index, t, x, c, depth)
                low[t] = values[t, depth - 1]
    return values, index



@numba.njit(nogil=True, cache=True, fastmath=True)
def decode_unit(centroids, codes, residuals, table, rows):
    """The stored vectors of some rows, decoded (centroid + residual) and renormalised to unit
    length, as they were encoded: (R, dim) float32.

    centroids (C, dim) float32; codes (T,) and residuals (T, W) a segment's stored arrays; table
    (256, 8 / nbits) float32 the codec's byte -> residual values; rows (R,) int64.
    """
    dim = centroids.shape[1]
    width, per_byte = residuals.shape[1], table.shape[1]
    flat = table.ravel()  # byte b's residual values at b * per_byte onwards
    out = np.empty((len(rows), dim), np.float32)
    for i in range(len(rows)):
        row = rows[i]
        centroid = centroids[codes[row]]
        vector = out[i]
        for b in range(width):  # residual and centroid added in one pass
            start, at = residuals[row, b] * per_byte, b * per_byte
            for j in range(per_byte):
                vector[at + j] = flat[start + j] + centroid[at + j]
        norm = np.float32(0.0)
        for d in range(dim):
            norm += vector[d] * vector[d]
        scale = np.float32(1.0) / max(np.sqrt(norm), np.float32(1e-12))
        for d in range(dim):
            vector[d] *= scale
    return out


@numba.njit(nogil=True, cache=True)
def chunk_max_sum(similarities, lengths):
    """MaxSim from token similarities of chunks stored back to back: similarities (R, Lq)
    float32, chunk after chunk; lengths (n,) rows per chunk, summing to R. Returns (n,) float32,
    each chunk's sum over query tokens of its best row's similarity (0 for a chunk of no rows)."""
    n_query = similarities.shape[1]
    out = np.zeros(len(lengths), np.float32)
    best = np.empty(n_query, np.float32)
    r = 0
    for c in range(len(lengths)):
        if lengths[c] == 0:
            continue
        best[:] = similarities[r]
        for i in range(r + 1, r + lengths[c]):
            for t in range(n_query):
                if similarities[i, t] > best[t]:
                    best[t] = similarities[i, t]
        r += lengths[c]
        out[c] = best.sum()
    return out


@numba.njit(nogil=True, cache=True)
def top_cells_rows(scores, offset, values, index):
    """Merge a block of centroid scores into each query token's best so far, in place: scores
    (Lq, B) float32 for centroids ``offset .. offset + B - 1``; values (Lq, depth) float32 and
    index (Lq, depth) int64, best first (-inf and -1 where nothing is kept yet)."""
    n_tokens, n_cells = scores.shape
    depth = values.shape[1]
    for t in range(n_tokens):
        low = values[t, depth - 1]
        for c in range(n_cells):
            x = scores[t, c]
            if x > low:
                _keep(values, index, t, x, offset + c, depth)
                low = values[t, depth - 1]


@numba.njit(nogil=True, cache=True, fastmath=True)
def top_cells_grouped(query, pair_token, pair_group, starts, members, scales, ids, depth):
    """Each query token's ``depth`` best centroids among those of the groups it probes:
    query (Lq, dim) float32; pair_token, pair_group (P,) int64 the (token, group) pairs, sorted
    by group; starts (G + 1,) int64 where each group's rows start in ``members`` (C, dim) int8,
    each row a centroid at a scale of its own (``scales`` (C,) float32), ``ids`` (C,) int64 its
    centroid id. A group's rows are read once for all the tokens that probe it. Returns (values
    (Lq, depth) float32, centroids (Lq, depth) int64), best first; -inf and -1 where a token's
    groups hold fewer than ``depth`` centroids."""
    n_tokens, dim = query.shape
    values = np.full((n_tokens, depth), -np.inf, np.float32)
    index = np.full((n_tokens, depth), -1, np.int64)
    n_pairs = len(pair_token)
    p = 0
    while p < n_pairs:
        group = pair_group[p]
        end = p
        while end < n_pairs and pair_group[end] == group:
            end += 1
        for r in range(starts[group], starts[group + 1]):
            for j in range(p, end):
                t = pair_token[j]
                acc = np.float32(0.0)
                for d in range(dim):
                    acc += query[t, d] * np.float32(members[r, d])
                x = acc * scales[r]
                if x > values[t, depth - 1]:
                    _keep(values, index, t, x, ids[r], depth)
        p = end
    return values, index

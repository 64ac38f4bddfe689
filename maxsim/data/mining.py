"""Hard-negative mining: rank the corpus for each query, then sample from a rank window.

A miner ranks every query's candidates (BM25, :mod:`maxsim.data.bm25`; exact MaxSim with a
ColBERT checkpoint; or MaxSim through a compressed index for large corpora), each query as deep
as its window needs. :func:`sample_negatives` then draws a query's negatives from ranks
``[min_rank, max_rank]`` (1-based) of the miner's ranking counted without the query's own
positives, so that a query with many positives keeps the same window as one with a single
positive; with a false-negative margin, never a candidate scoring above ``margin`` times the
query's lowest-scoring positive. Only a query whose corpus is too small for its window gets a
smaller one (:func:`query_window`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from maxsim import process_group
from maxsim.data.bm25 import BM25Miner
from maxsim.errors import SettingsError
from maxsim.lexical import BM25_LANGUAGES
from maxsim.ranking import Ranking

__all__ = ["BM25_LANGUAGES", "BM25Miner", "DenseMiner", "IndexMiner", "query_keys", "query_window",
           "random_negatives", "sample_negatives"]

logger = logging.getLogger(__name__)


def _floors(score_of, positives: Sequence[Sequence[int]] | None) -> np.ndarray | None:
    """(Q,) lowest score of each query's positives, from ``score_of(query_index, positions)``."""
    if positives is None:
        return None
    return np.array([float(np.min(score_of(i, sorted(p)))) if len(p) else np.nan for i, p in enumerate(positives)],
                    dtype=np.float32)


class DenseMiner:
    """Exact MaxSim with a ColBERT model over a corpus that fits in memory.

    Memory stays bounded whatever the number of queries: queries go ``query_block`` at a time,
    each block keeping a running top-k over document batches (never a queries x documents
    matrix). With one block the documents are encoded as they are scored, in float32; with
    several, they are encoded once and kept in float16 for the later blocks.
    """

    def __init__(self, model, documents: Sequence[str], batch_size: int = 64, query_block: int = 4096,
                 context: process_group.Context | None = None) -> None:
        """Under torchrun (``context`` of several ranks) each rank holds and scores its own
        contiguous share of the documents, and :meth:`rank` merges every rank's top k into the
        ranking of the whole corpus (every rank gets it)."""
        self.model = model
        self.batch_size = batch_size
        self.query_block = query_block
        self.context = context if context is not None else process_group.Context()
        self.n_documents = len(documents)
        share = -(-len(documents) // self.context.world_size)
        self.offset = min(self.context.rank * share, len(documents))
        self.document_tokens = model.tokenize_documents(list(documents[self.offset : self.offset + share]))
        self._cache: list | None = None
        self._queries: list[str] | None = None
        #: keep the encoded documents (float16) between :meth:`rank` calls, for a caller that
        #: ranks its queries block by block
        self.keep_documents = False

    def _document_batches(self, keep: bool):
        from maxsim.progress import progress

        if self._cache is not None:
            yield from self._cache
            return
        cache = [] if keep else None
        bar = progress(len(self.document_tokens), "dense mining", "doc", leave=False)
        for positions, vectors, mask in self.model.encode_batches(self.document_tokens, False, self.batch_size):
            if cache is not None:
                cache.append((positions, vectors.half(), mask))
            yield positions, vectors, mask
            bar.update(len(positions))
        bar.close()
        self._cache = cache

    def rank(self, queries: Sequence[str], k: int | Sequence[int],
             positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents (one ``k`` per query: each ranked as deep as the
        deepest); with ``positives`` (corpus positions per query), also the lowest score among them."""
        import torch

        from maxsim.exact_search import encode_all, top_k_maxsim

        queries = list(queries)
        self._queries = queries
        if self.context.distributed:
            return self._rank_shared(queries, k, positives)
        k = min(_deepest(k), len(self.document_tokens))
        positions = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        floor = np.full(len(queries), np.nan, dtype=np.float32) if positives is not None else None
        several = len(queries) > self.query_block or self.keep_documents
        for start in range(0, len(queries), self.query_block):
            block = range(start, min(start + self.query_block, len(queries)))
            q_vectors, q_mask = encode_all(self.model, self.model.tokenize_queries(queries[block.start:block.stop]),
                                           True, self.batch_size)
            pairs = None
            if positives is not None:
                rows = [i - start for i in block for _ in positives[i]]
                docs = [p for i in block for p in positives[i]]
                pairs = (torch.tensor(rows, dtype=torch.long), torch.tensor(docs, dtype=torch.long))
            top_s, top_p, pair_scores = top_k_maxsim(q_vectors, q_mask, self._document_batches(keep=several), k,
                                                     pairs)
            scores[block.start:block.stop], positions[block.start:block.stop] = top_s.numpy(), top_p.numpy()
            if positives is not None and len(pairs[0]):
                lowest = torch.full((len(block),), float("inf")).scatter_reduce(
                    0, pairs[0], pair_scores, "amin")
                floor[block.start:block.stop] = torch.where(lowest.isinf(), float("nan"), lowest).numpy()
        if not self.keep_documents:
            self._cache = None
        return Ranking(positions, scores, floor)

    def _rank_shared(self, queries: list[str], k, positives) -> Ranking:
        """:meth:`rank` under torchrun: this rank's share ranked, then every rank's top k merged
        (by score, then position) and each query's positive floor the lowest of every rank's."""
        import torch.distributed as dist

        depth = min(_deepest(k), self.n_documents)
        mine = positives
        if positives is not None:
            end = self.offset + len(self.document_tokens)
            mine = [[p - self.offset for p in row if self.offset <= p < end] for row in positives]
        local = Ranking(np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32),
                        np.full(len(queries), np.nan, np.float32) if positives is not None else None)
        if len(self.document_tokens):
            context, self.context = self.context, process_group.Context()  # (this rank's share alone)
            try:
                local = self.rank(queries, min(depth, len(self.document_tokens)), mine)
            finally:
                self.context = context
            local.positions = local.positions + self.offset
        parts: list = [None] * self.context.world_size
        dist.all_gather_object(parts, (local.positions, local.scores, local.positive_floor))
        positions = np.concatenate([p for p, _, _ in parts], axis=1)
        scores = np.concatenate([s for _, s, _ in parts], axis=1)
        order = np.lexsort((positions, -scores), axis=1)[:, :depth] if positions.size else \
            np.zeros((len(queries), 0), np.int64)
        floor = None
        if positives is not None:
            floor = np.fmin.reduce(np.stack([f for _, _, f in parts]), axis=0).astype(np.float32)
        return Ranking(np.take_along_axis(positions, order, 1), np.take_along_axis(scores, order, 1), floor)

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        """Exact MaxSim of one query of the last :meth:`rank` call with some documents (encodes
        them again: for a few checks; :meth:`rank` with ``positives`` does many at once)."""
        assert self._queries is not None, "call rank() first"
        from maxsim.exact_search import encode_all
        from maxsim.scoring import maxsim

        q_vectors, q_mask = encode_all(self.model, self.model.tokenize_queries([self._queries[query_index]]), True)
        d_vectors, d_mask = encode_all(self.model, [self.document_tokens[int(p)] for p in positions], False)
        return maxsim(q_vectors, q_mask, d_vectors, d_mask)[0].float().cpu().numpy()


# above this many documents, ``dense_search="auto"`` mines through a compressed index
EXACT_SEARCH_LIMIT = 50_000


class IndexMiner:
    """MaxSim through a temporary compressed index (:mod:`maxsim.index`), for corpora too large
    to score every document for every query. The index lives in a temporary folder for the
    miner's lifetime; documents are not split, so a chunk id is a corpus position."""

    def __init__(self, model, documents: Sequence[str], batch_size: int = 64, nbits: int | None = None) -> None:
        import tempfile
        from pathlib import Path

        from maxsim.retriever import Retriever

        self._folder = tempfile.TemporaryDirectory(prefix="maxsim-mining-")
        self.retriever = Retriever(model)
        self.retriever.index(list(documents), Path(self._folder.name) / "index",
                             document_ids=[str(i) for i in range(len(documents))], split_documents=False,
                             nbits=nbits, batch_size=batch_size)
        self.batch_size = batch_size
        self._queries = None

    def rank(self, queries: Sequence[str], k: int | Sequence[int],
             positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents (one ``k`` per query: each searched as deep as the
        deepest; a row with fewer hits is padded with position -1); with ``positives`` (corpus
        positions per query), also the lowest score among them."""
        self._queries = self.retriever.query_vectors(queries, batch_size=self.batch_size)
        ranking = self.retriever.backend.search(*self._queries, k=_deepest(k))  # chunk id = corpus position
        ranking.positive_floor = _floors(self.score_of, positives)
        return ranking

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        assert self._queries is not None, "call rank() first"
        vectors, mask = self._queries
        q = slice(query_index, query_index + 1)
        return self.retriever.backend.exact_scores(vectors[q], mask[q], positions).numpy()


def _deepest(k: int | Sequence[int]) -> int:
    return int(k) if isinstance(k, (int, np.integer)) else int(max(k, default=1))


def query_window(n_documents: int, n_positives: int, min_rank: int, max_rank: int,
                 negatives: int) -> tuple[int, int]:
    """The rank window one query samples its negatives from: ranks counted without its own
    positives, so ``[min_rank, max_rank]`` unless the corpus holds fewer than ``max_rank``
    documents that are not its positives; then the window ends at the last of them and starts
    early enough to hold ``negatives`` of them (never before rank 1).

    >>> query_window(5183, 3, 10, 100, 10)
    (10, 100)
    >>> query_window(5183, 1363, 10, 100, 10)  # many positives: the window is the same
    (10, 100)
    >>> query_window(30, 3, 10, 100, 10)
    (10, 27)
    >>> query_window(12, 1, 10, 100, 10)
    (2, 11)
    """
    if min_rank < 1 or max_rank < min_rank:
        raise SettingsError(f"rank window [{min_rank}, {max_rank}] is empty: need 1 <= min-rank <= max-rank")
    high = min(max_rank, max(1, n_documents - n_positives))
    low = min(min_rank, max(1, high - negatives + 1))
    return low, high


def query_keys(seed: int, query_ids: Sequence[str]) -> np.ndarray:
    """(Q,) uint64 one random key per query that depends only on the seed and the query's id
    (so that a query's negatives do not depend on the order or the blocks queries come in)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}\0{q}".encode()).digest()[:8], "little")
                     for q in query_ids], dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 in, uint64 out, every bit of the input spread over the output."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_negatives(ranking: Ranking, positives: Sequence[Sequence[int]], windows: np.ndarray, n: int,
                     keys: np.ndarray, margin: float | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw up to ``n`` negatives for each query of a block from its ranking, all at once.

    ranking: the block's rankings (positions (Q, K), -1 padding a short row; scores (Q, K); with
    ``margin``, ``positive_floor`` (Q,)). Ranks are counted without each query's known
    ``positives`` (corpus positions); its candidates are ranks ``windows[q, 0]..windows[q, 1]``
    (1-based) of what is left that, with ``margin``, score at most ``margin`` times its lowest
    positive's score (none, where that is NaN). Of more than ``n`` candidates, the ``n`` whose
    random numbers (from ``keys[q]``, :func:`query_keys`, and the candidate's corpus position)
    are lowest are drawn: a uniform draw without replacement.

    Returns (each query's chosen corpus positions in rank order (n',) int64, (Q,) int64 the
    candidates each lost to the margin).
    """
    positions = np.asarray(ranking.positions, dtype=np.int64)
    n_queries, width = positions.shape
    stride = np.int64(max(int(positions.max(initial=0)), max((max(p, default=0) for p in positives), default=0)) + 1)
    owner = np.repeat(np.arange(n_queries, dtype=np.int64), [len(p) for p in positives])
    known = owner * stride + np.fromiter((d for p in positives for d in p), dtype=np.int64, count=len(owner))
    codes = np.arange(n_queries, dtype=np.int64)[:, None] * stride + positions
    others = (positions >= 0) & ~np.isin(codes, known)
    rank = np.cumsum(others, axis=1)
    windows = np.asarray(windows, dtype=np.int64).reshape(n_queries, 2)
    window = others & (rank >= windows[:, :1]) & (rank <= windows[:, 1:])
    kept = window
    if margin is not None:
        with np.errstate(invalid="ignore"):
            kept = window & (np.asarray(ranking.scores) <= margin * np.asarray(ranking.positive_floor)[:, None])
    dropped = window.sum(axis=1) - kept.sum(axis=1)
    draws = _mix(np.asarray(keys, dtype=np.uint64)[:, None] ^ _mix(positions.astype(np.uint64)))
    draws[~kept] = np.iinfo(np.uint64).max
    chosen = np.zeros_like(kept)
    if n > 0 and width:
        lowest = np.argsort(draws, axis=1, kind="stable")[:, :n]
        np.put_along_axis(chosen, lowest, True, axis=1)
    chosen &= kept
    rows, columns = np.nonzero(chosen)  # (row by row, rank order within a row)
    per_query = np.split(positions[rows, columns], np.cumsum(chosen.sum(axis=1))[:-1])
    return per_query, dropped.astype(np.int64)


def random_negatives(n_documents: int, positives: set[int], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` documents drawn uniformly (without replacement), none of them a known positive."""
    pool = n_documents - len(positives)
    n = min(n, max(0, pool))
    chosen: list[int] = []
    seen = set(positives)
    while len(chosen) < n:
        for p in rng.choice(n_documents, size=min(n_documents, 2 * (n - len(chosen)) + 8), replace=False):
            p = int(p)
            if p not in seen:
                seen.add(p)
                chosen.append(p)
                if len(chosen) == n:
                    break
    return sorted(chosen)

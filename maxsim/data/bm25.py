"""BM25 over a list of texts: posting lists of precomputed scores, ranked exactly with per-query pruning.

Each (term, document) BM25 score is computed once, when the miner is made, into one posting list
per term (document positions ascending): the texts are analysed as bm25s tokenises them and
scored as its "lucene" variant scores (:mod:`maxsim.lexical`), the lists counted in one linear
pass. (bm25s's own index holds the same scores; its ``retrieve`` builds a dense array of every
document's score and selects the top k, which costs time in proportion to the corpus for every
query.)

:meth:`BM25Miner.rank` ranks from the posting lists with the MaxScore rule of dynamic
pruning (Turtle and Flood, 1995), compiled with numba in :mod:`maxsim.data.maxscore`: once k
documents are held, the terms that together could not lift a document above the k-th score are
no longer walked, only looked up for the documents the other terms find. The ranking is exact:
every document ordered by (score descending, corpus position ascending), those that match no
query term (score 0) filling the tail by position. Queries are independent and are ranked on
``workers`` threads, sharing the posting lists.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain

import numba
import numpy as np

from maxsim import lexical
from maxsim.data import maxscore
from maxsim.lexical import Analyzer, check_language
from maxsim.ranking import Ranking

logger = logging.getLogger(__name__)

#: numba's parallel kernels are entered by one Python thread at a time: its "workqueue" threading
#: layer (the one left where neither OpenMP nor TBB is installed) aborts the process otherwise
_KERNEL_LOCK = threading.Lock()


@contextmanager
def numba_threads(n: int) -> Iterator[int]:
    """Run numba's parallel kernels on up to ``n`` threads (no more than numba started with) in
    this block; yields the number used. (numba's setting is per calling thread; it is restored.)"""
    before = numba.get_num_threads()
    used = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(used)
    try:
        yield used
    finally:
        numba.set_num_threads(before)


class PostingLists:
    """Precomputed BM25 scores as one posting list per term.

    indptr: (V + 1,) int64, term ``t``'s entries are ``indptr[t]:indptr[t + 1]``; documents:
    (E,) corpus positions (kept as int32 below 2**31 documents), which must ascend within a term
    (:func:`maxsim.lexical.term_counts` makes them so; they are not re-sorted here); impacts: (E,) float32 BM25 score of
    that term in that document; best: (V,) float64 the highest impact of each term.
    """

    def __init__(self, indptr: np.ndarray, documents: np.ndarray, impacts: np.ndarray, n_documents: int) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        documents = np.asarray(documents, dtype=np.int32 if n_documents < 2**31 else np.int64)
        impacts = np.asarray(impacts, dtype=np.float32)
        self.documents, self.impacts, self.n_documents = documents, impacts, n_documents
        best = np.zeros(len(self.indptr) - 1, dtype=np.float64)
        nonempty = np.flatnonzero(np.diff(self.indptr))
        if len(nonempty):
            best[nonempty] = np.maximum.reduceat(impacts, self.indptr[nonempty]).astype(np.float64)
        self.best = best

    def term(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(documents, impacts) of one term."""
        start, end = self.indptr[t], self.indptr[t + 1]
        return self.documents[start:end], self.impacts[start:end]

    def scores(self, terms: np.ndarray, weights: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n,) float64 BM25 scores of the documents at ``positions`` (any order) for a query of
        ``terms`` (distinct term ids) counted ``weights`` times each."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros(len(positions), dtype=np.float64)
        for t, w in zip(terms.tolist(), weights.tolist()):
            docs, impacts = self.term(t)
            if not len(docs):
                continue
            where = np.minimum(np.searchsorted(docs, positions), len(docs) - 1)
            hit = docs[where] == positions
            out[hit] += w * impacts[where[hit]].astype(np.float64)
        return out

    def rank(self, queries: Sequence[tuple[np.ndarray, np.ndarray]], depths: Sequence[int],
             window: int = maxscore.WINDOW, scan_per_candidate: int = maxscore.SCAN_PER_CANDIDATE) -> Ranking:
        """Each query's (terms, weights) ``depths[q]`` best documents, exactly, on the threads
        :func:`numba_threads` allows: positions (Q, K) int64, K = min(max depth, corpus), and
        scores (Q, K) float32, padded with -1 and -inf past a query's depth. A query matching
        fewer documents than its depth gets the documents that match nothing (score 0) next, by
        position. (``window`` and ``scan_per_candidate``: :mod:`maxsim.data.maxscore`'s.)"""
        depths = np.minimum(np.asarray(depths, dtype=np.int64).reshape(-1), self.n_documents)
        query_indptr, terms, weights = flat_queries(queries)
        with _KERNEL_LOCK:
            found, values, matched = maxscore.top_k(self.indptr, self.documents, self.impacts, self.best,
                                                    query_indptr, terms, weights, depths, window,
                                                    scan_per_candidate)
        width = int(depths.max(initial=0))
        positions = np.full((len(depths), width), -1, dtype=np.int64)
        scores = np.full((len(depths), width), -np.inf, dtype=np.float32)
        positions[:], scores[:] = found[:, :width], values[:, :width]
        scores[positions < 0] = -np.inf
        for q in np.flatnonzero(matched < depths):  # the tail: documents matching no term, by position
            held, depth = positions[q, : matched[q]], int(depths[q])
            fill = np.setdiff1d(np.arange(min(self.n_documents, 2 * depth)), held)[: depth - len(held)]
            positions[q, len(held):depth], scores[q, len(held):depth] = fill, 0.0
        return Ranking(positions, scores)

    def top(self, terms: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of one query, exactly: (positions (k',) int64, scores (k',)
        float32), k' = min(k, corpus), ordered by score, then position."""
        return self.rank([(terms, weights)], [k]).row(0)

    def pair_scores(self, queries: Sequence[tuple[np.ndarray, np.ndarray]], pair_queries: np.ndarray,
                    pair_documents: np.ndarray) -> np.ndarray:
        """(P,) float64 BM25 score of each pair: query ``queries[pair_queries[p]]`` and the
        document at corpus position ``pair_documents[p]``."""
        query_indptr, terms, weights = flat_queries(queries)
        with _KERNEL_LOCK:
            return maxscore.score_pairs(self.indptr, self.documents, self.impacts, query_indptr, terms, weights,
                                        np.asarray(pair_queries, dtype=np.int64),
                                        np.asarray(pair_documents, dtype=np.int64))


def flat_queries(queries: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries of (terms (n,), weights (n,)) as one batch: (indptr (Q + 1,) int64, terms (T,)
    int64, weights (T,) float64)."""
    indptr = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum([len(terms) for terms, _ in queries], out=indptr[1:])
    terms = np.concatenate([t for t, _ in queries]).astype(np.int64) if queries else np.zeros(0, np.int64)
    weights = np.concatenate([w for _, w in queries]).astype(np.float64) if queries else np.zeros(0)
    return indptr, terms, weights


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class BM25Miner:
    """BM25 over a list of document texts, analysed with the stop words and Snowball stemmer of
    ``language`` (an ISO 639-1 code from :data:`BM25_LANGUAGES`; English by default) as bm25s
    tokenises (:class:`maxsim.lexical.Analyzer`), scored as bm25s's "lucene" variant scores
    (:mod:`maxsim.lexical`), ranking on up to ``workers`` threads (default 1)."""

    #: queries ranked at a time by a caller that streams (prepare's mining): bounds memory
    query_block = 8192

    def __init__(self, documents: Sequence[str], language: str = lexical.DEFAULT_LANGUAGE, workers: int = 1) -> None:
        check_language(language, "use one of them, or mine with a dense model")
        self.analyzer = Analyzer(language)
        flat, lengths, vocabulary = self.analyzer.documents(documents)
        indptr, positions, tfs = lexical.term_counts(flat, lengths, len(vocabulary))
        del flat
        self.postings = PostingLists(indptr, positions, lexical.impacts(indptr, positions, tfs, lengths),
                                     len(documents))
        #: the corpus's terms: term -> id (the row of :attr:`postings`)
        self.vocabulary = {term: i for i, term in enumerate(vocabulary)}
        self.n_documents = len(documents)
        if workers > numba.config.NUMBA_NUM_THREADS:
            logger.warning("BM25 ranks on %d threads, not %d: numba started with %d (NUMBA_NUM_THREADS)",
                           numba.config.NUMBA_NUM_THREADS, workers, numba.config.NUMBA_NUM_THREADS)
        self.workers = max(1, min(workers, numba.config.NUMBA_NUM_THREADS))
        self._queries: list[tuple[np.ndarray, np.ndarray]] = []
        self._term_of_word: dict[str, int] = {}

    def query_terms(self, queries: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query as (distinct term ids (n,) int64 ascending, how often each occurs (n,)
        float64), tokenised as bm25s tokenises (lower case, its token pattern, stop words, the
        stemmer); words the corpus lacks are left out, as bm25s leaves them out.

        Each distinct word is sent through bm25s's own tokeniser once, the first time a query
        holds it, and its term id (or -1: a stop word, or a stem the corpus lacks) is kept for
        the next queries: the cache grows with the queries' vocabulary, not with their number."""
        if not len(queries):
            return []
        cache = self._term_of_word
        words = [self.analyzer.words(query) for query in queries]
        new = list(dict.fromkeys(w for query in words for w in query if w not in cache))
        for word, term in zip(new, self.analyzer.terms_of_words(new)):
            cache[word] = self.vocabulary.get(term, -1) if term else -1
        sizes = [len(query) for query in words]
        ids = np.fromiter(chain.from_iterable(map(cache.__getitem__, query) for query in words), dtype=np.int64,
                          count=sum(sizes))
        owner = np.repeat(np.arange(len(words), dtype=np.int64), sizes)
        known = ids >= 0
        width = max(len(self.vocabulary), 1)
        keys, counts = np.unique(owner[known] * width + ids[known], return_counts=True)  # (by query, then term)
        bounds = np.searchsorted(keys // width, np.arange(1, len(words)))
        return list(zip(np.split(keys % width, bounds), np.split(counts.astype(np.float64), bounds)))

    def rank(self, queries: Sequence[str], k: int | Sequence[int],
             positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents (``k`` one number, or one per query: rows shorter
        than the longest are padded with -1); with ``positives`` (corpus positions per query),
        also the lowest score among them."""
        self._queries = self.query_terms(queries)
        depths = [k] * len(queries) if isinstance(k, (int, np.integer)) else list(k)
        with numba_threads(self.workers):
            ranking = self.postings.rank(self._queries, depths)
            if positives is not None:
                pair_queries = np.repeat(np.arange(len(positives)), [len(p) for p in positives])
                pair_documents = np.fromiter((d for p in positives for d in p), dtype=np.int64,
                                             count=len(pair_queries))
                scores = self.postings.pair_scores(self._queries, pair_queries, pair_documents).astype(np.float32)
                floor = np.full(len(positives), np.nan, dtype=np.float32)
                np.fmin.at(floor, pair_queries, scores)  # (fmin skips NaN: it stays for a query without positives)
                ranking.positive_floor = floor
        return ranking

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores (float32) of some documents for one query of the last :meth:`rank` call."""
        terms, weights = self._queries[query_index]
        return self.postings.scores(terms, weights, np.asarray(positions, dtype=np.int64)).astype(np.float32)

    def scores(self, query: str, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores (float32) of some documents (corpus positions) for any query."""
        terms, weights = self.query_terms([query])[0]
        return self.postings.scores(terms, weights, np.asarray(positions, dtype=np.int64)).astype(np.float32)

"""BM25 over a list of texts: bm25s's index, ranked exactly with per-query pruning.

bm25s computes each (term, document) BM25 score once, at indexing time, into a sparse matrix
(one posting list per term, document positions ascending). Ranking a query through bm25s's own
``retrieve`` builds a dense array of every document's score and selects its top k, which costs
time in proportion to the corpus for every query.

:meth:`BM25Miner.rank` ranks from the posting lists instead, with the MaxScore rule of dynamic
pruning (Turtle and Flood, 1995): a query's terms are taken in order of their best possible
contribution; the documents of the first few terms are scored exactly (every query term), and
once the k-th of those scores beats the most that the other terms together could give a
document, no other document can enter the top k, and the rest of the corpus is never touched.
The ranking is exact: every document ordered by (score descending, corpus position
ascending), those that match no query term (score 0) filling the tail by position.

Queries are independent, so :class:`BM25Miner` ranks them in ``workers`` processes forked from
this one (the posting lists shared, copy-on-write, never pickled), each a slice of the queries.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from maxsim.errors import SettingsError
from maxsim.ranking import Ranking

logger = logging.getLogger(__name__)

#: the fewest queries a worker process is given: below, forking costs more than it saves
QUERIES_PER_WORKER = 256

#: ISO 639-1 code -> (PyStemmer's stemmer, bm25s's stop-word list or None where it has none)
BM25_LANGUAGES = {
    "en": ("english", "en"), "fr": ("french", "fr"), "de": ("german", "de"), "es": ("spanish", "es"),
    "it": ("italian", "it"), "nl": ("dutch", "nl"), "pt": ("portuguese", "pt"), "ru": ("russian", "ru"),
    "sv": ("swedish", "sv"), "da": ("danish", "da"), "no": ("norwegian", "no"), "tr": ("turkish", "tr"),
    "fi": ("finnish", None), "hu": ("hungarian", None), "ro": ("romanian", None), "ar": ("arabic", None),
    "el": ("greek", None), "ca": ("catalan", None), "cs": ("czech", None), "pl": ("polish", None),
    "id": ("indonesian", None), "ga": ("irish", None), "lt": ("lithuanian", None), "et": ("estonian", None),
    "eu": ("basque", None), "hi": ("hindi", None), "ne": ("nepali", None), "fa": ("persian", None),
    "sr": ("serbian", None), "ta": ("tamil", None), "hy": ("armenian", None),
}


def _margin(value: float) -> float:
    """A bound is compared with a score less this, for the rounding of sums in another order."""
    return 1e-9 * max(1.0, abs(value))


class PostingLists:
    """bm25s's precomputed BM25 scores as one posting list per term.

    indptr: (V + 1,) int64, term ``t``'s entries are ``indptr[t]:indptr[t + 1]``; documents:
    (E,) int64 corpus positions, ascending within a term; impacts: (E,) float32 BM25 score of
    that term in that document; best: (V,) float64 the highest impact of each term.
    """

    def __init__(self, indptr: np.ndarray, documents: np.ndarray, impacts: np.ndarray, n_documents: int) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        documents = np.asarray(documents, dtype=np.int64)
        impacts = np.asarray(impacts, dtype=np.float32)
        terms = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        if len(documents) > 1 and not (np.diff(documents)[terms[1:] == terms[:-1]] > 0).all():
            order = np.lexsort((documents, terms))  # (bm25s writes them sorted; a later one might not)
            documents, impacts = documents[order], impacts[order]
        self.documents, self.impacts, self.n_documents = documents, impacts, n_documents
        best = np.zeros(len(self.indptr) - 1, dtype=np.float64)
        nonempty = np.flatnonzero(np.diff(self.indptr))
        if len(nonempty):
            best[nonempty] = np.maximum.reduceat(impacts, self.indptr[nonempty]).astype(np.float64)
        self.best = best
        self._local = threading.local()  # each thread's work arrays

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

    def _add(self, terms: np.ndarray, weights: np.ndarray, into: np.ndarray) -> np.ndarray:
        """Add the weighted impacts of ``terms`` into ``into`` ((N,) float64, zero where no term
        scored yet); returns the documents that were zero before, ascending per term."""
        fresh = []
        for t, w in zip(terms.tolist(), weights.tolist()):
            docs, impacts = self.term(t)
            fresh.append(docs[into[docs] == 0])  # (impacts are positive: a scored document is not 0)
            into[docs] += w * impacts
        return np.concatenate(fresh) if fresh else np.zeros(0, dtype=np.int64)

    def _add_to(self, terms: np.ndarray, weights: np.ndarray, scored: np.ndarray, into: np.ndarray) -> None:
        """Add the weighted impacts of ``terms`` into ``into``, for the documents where ``scored``
        is not zero only (each posting list scanned: searching the lists for the documents, and
        first dropping the documents that could not reach the top k, were both slower, measured on
        200,000 passages: BENCHMARKS.md)."""
        for t, w in zip(terms.tolist(), weights.tolist()):
            docs, impacts = self.term(t)
            hit = scored[docs] != 0
            into[docs[hit]] += w * impacts[hit]

    def top(self, terms: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of one query, exactly: (positions (k',) int64, scores (k',)
        float32), k' = min(k, corpus), ordered by score, then position.

        MaxScore (Turtle and Flood, 1995): the terms in order of their largest possible
        contribution; every document in the posting lists of the first ``m`` (the candidates)
        gets its whole score, the other terms' impacts added for those documents only; when the
        k-th candidate score is above what the other terms together could give a document
        (``rest``), no other document can enter (or tie into) the top k; else ``m`` grows. Two
        (N,) float64 work arrays are kept between calls (one pair per thread) and left zeroed.
        """
        k = min(k, self.n_documents)
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = (np.zeros(self.n_documents), np.zeros(self.n_documents))
        first, other = work
        bound = weights * self.best[terms]
        order = np.argsort(-bound, kind="stable")
        terms, weights, bound = terms[order], weights[order], bound[order]
        rest = np.concatenate([np.cumsum(bound[::-1])[::-1], [0.0]])  # rest[m]: the most terms m.. add
        lengths = self.indptr[terms + 1] - self.indptr[terms]
        m = min(len(terms), int(np.searchsorted(np.cumsum(lengths), k)) + 1)
        positions = self._add(terms[:m], weights[:m], first)
        kth = None
        while True:
            self._add_to(terms[m:], weights[m:], first, other)
            scores = first[positions] + other[positions]
            other[positions] = 0
            kth = -np.partition(-scores, k - 1)[k - 1] if len(positions) >= k else None
            if m >= len(terms) or (kth is not None and rest[m] < kth - _margin(kth)):
                break
            grow = m + 1 if kth is None else max(m + 1, int(np.argmax(rest < kth)))  # first m whose rest < kth
            positions = np.concatenate([positions, self._add(terms[m:grow], weights[m:grow], first)])
            m = grow
        first[positions] = 0
        if kth is not None and len(positions) > k:  # those at or above the k-th score, then in order
            keep = np.flatnonzero(scores >= kth)
            positions, scores = positions[keep], scores[keep]
        best = np.lexsort((positions, -scores))[:k]
        positions, values = positions[best], scores[best].astype(np.float32)
        if len(positions) < k:  # the tail: documents matching no term, by position
            unmatched = np.setdiff1d(np.arange(min(self.n_documents, 2 * k)), positions)
            fill = unmatched[: k - len(positions)]
            positions = np.concatenate([positions, fill])
            values = np.concatenate([values, np.zeros(len(fill), dtype=np.float32)])
        return positions, values


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def can_fork() -> bool:
    """Whether worker processes can be forked safely here (Linux; macOS's fork is unsafe with
    system frameworks loaded, Windows has none)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_forked_postings: PostingLists | None = None  # a worker process's posting lists, set once as it starts


def _start_worker(postings: PostingLists) -> None:
    global _forked_postings
    _forked_postings = postings


def _rank_in_worker(queries: list[tuple[np.ndarray, np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_forked_postings.top(terms, weights, depth) for terms, weights, depth in queries]


class BM25Miner:
    """BM25 (bm25s) over a list of document texts, with the stop words and Snowball stemmer of
    ``language`` (an ISO 639-1 code from :data:`BM25_LANGUAGES`; English by default), ranking in
    up to ``workers`` processes (default 1: in this one)."""

    #: queries ranked at a time by a caller that streams (prepare's mining): bounds memory
    query_block = 8192

    def __init__(self, documents: Sequence[str], language: str = "en", workers: int = 1) -> None:
        import bm25s
        import Stemmer

        if language not in BM25_LANGUAGES:
            raise SettingsError(f"BM25 has no stemmer for language {language!r}: use one of "
                                f"{', '.join(sorted(BM25_LANGUAGES))}, or mine with a dense model")
        stemmer, self._stopwords = BM25_LANGUAGES[language]
        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer(stemmer)
        tokens = bm25s.tokenize(list(documents), stopwords=self._stopwords, stemmer=self._stemmer,
                                show_progress=False)
        self.retriever = bm25s.BM25()  # method "lucene": a document matching no term scores 0
        self.retriever.index(tokens, show_progress=False)
        scores = self.retriever.scores
        self.postings = PostingLists(scores["indptr"], scores["indices"], scores["data"], len(documents))
        self.n_documents = len(documents)
        if workers > 1 and not can_fork():
            logger.warning("BM25 ranks in one process: worker processes are forked, which %s does not do safely",
                           sys.platform)
            workers = 1
        self.workers = max(1, workers)
        self._queries: list[tuple[np.ndarray, np.ndarray]] = []

    def query_terms(self, queries: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query as (distinct term ids (n,) int64, how often each occurs (n,) float64);
        words the corpus lacks are left out, as bm25s leaves them out."""
        words = self._bm25s.tokenize(list(queries), stopwords=self._stopwords, stemmer=self._stemmer,
                                     show_progress=False, return_ids=False)
        vocabulary = self.retriever.vocab_dict
        out = []
        for query in words:
            ids = np.array([vocabulary[w] for w in query if w and w in vocabulary], dtype=np.int64)
            terms, counts = np.unique(ids, return_counts=True)
            out.append((terms, counts.astype(np.float64)))
        return out

    def rank(self, queries: Sequence[str], k: int | Sequence[int],
             positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents (``k`` one number, or one per query: rows shorter
        than the longest are padded with -1); with ``positives`` (corpus positions per query),
        also the lowest score among them."""
        self._queries = self.query_terms(queries)
        depths = [k] * len(queries) if isinstance(k, (int, np.integer)) else list(k)
        rows = self._top_rows([(terms, weights, int(depth)) for (terms, weights), depth in zip(self._queries, depths)])
        ranking = Ranking.from_rows(rows, min(max(depths, default=0), self.n_documents))
        if positives is not None:
            ranking.positive_floor = np.array(
                [float(self.score_of(i, sorted(p)).min()) if len(p) else np.nan for i, p in enumerate(positives)],
                dtype=np.float32)
        return ranking

    def _top_rows(self, queries: list[tuple[np.ndarray, np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`PostingLists.top` of each (terms, weights, depth), here or in worker processes
        (each given one contiguous slice, so that the rows come back in order)."""
        workers = min(self.workers, len(queries) // QUERIES_PER_WORKER)
        if workers < 2:
            return [self.postings.top(*query) for query in queries]
        bounds = np.linspace(0, len(queries), workers + 1).astype(int)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker, initargs=(self.postings,)) as pool:
            parts = pool.map(_rank_in_worker, [queries[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
            return [row for part in parts for row in part]

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores (float32) of some documents for one query of the last :meth:`rank` call."""
        terms, weights = self._queries[query_index]
        return self.postings.scores(terms, weights, np.asarray(positions, dtype=np.int64)).astype(np.float32)

    def scores(self, query: str, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores (float32) of some documents (corpus positions) for any query."""
        terms, weights = self.query_terms([query])[0]
        return self.postings.scores(terms, weights, np.asarray(positions, dtype=np.int64)).astype(np.float32)

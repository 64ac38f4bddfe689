"""Hard-negative mining: rank the corpus for each query, then sample from a rank window.

A miner ranks every query's candidates (BM25 with ``bm25s``, exact MaxSim with a ColBERT
checkpoint, or MaxSim through a compressed index for large corpora). :func:`sample_negatives`
then draws a query's negatives from ranks ``[min_rank, max_rank]`` (1-based, in the miner's
ranking), never one of its known positives, and, with a false-negative margin, never a
candidate scoring above ``margin`` times the query's lowest-scoring positive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from maxsim.errors import SettingsError
from maxsim.ranking import Ranking

logger = logging.getLogger(__name__)


def _floors(score_of, positives: Sequence[Sequence[int]] | None) -> np.ndarray | None:
    """(Q,) lowest score of each query's positives, from ``score_of(query_index, positions)``."""
    if positives is None:
        return None
    return np.array([float(np.min(score_of(i, sorted(p)))) if len(p) else np.nan for i, p in enumerate(positives)],
                    dtype=np.float32)


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


class BM25Miner:
    """BM25 (bm25s) over a list of document texts, with the stop words and Snowball stemmer of
    ``language`` (an ISO 639-1 code from :data:`BM25_LANGUAGES`; English by default)."""

    def __init__(self, documents: Sequence[str], language: str = "en") -> None:
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
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)
        self.n_documents = len(documents)

    def rank(self, queries: Sequence[str], k: int, positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents; with ``positives`` (corpus positions per query), also
        the lowest score among them."""
        tokens = self._bm25s.tokenize(list(queries), stopwords=self._stopwords, stemmer=self._stemmer,
                                      show_progress=False)
        self._queries = list(queries)
        k = min(k, self.n_documents)
        positions, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return Ranking(np.asarray(positions, dtype=np.int64), np.asarray(scores, dtype=np.float32),
                       _floors(self.score_of, positives))

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores of some documents for one query of the last :meth:`rank` call."""
        return self.scores(self._queries[query_index], positions)

    def scores(self, query: str, positions: Sequence[int]) -> np.ndarray:
        """BM25 scores of some documents (corpus positions) for any query."""
        words = self._bm25s.tokenize([query], stopwords=self._stopwords, stemmer=self._stemmer,
                                     show_progress=False, return_ids=False)[0]
        return self.retriever.get_scores(words)[np.asarray(positions, dtype=np.int64)]


class DenseMiner:
    """Exact MaxSim with a ColBERT model over a corpus that fits in memory.

    Memory stays bounded whatever the number of queries: queries go ``query_block`` at a time,
    each block keeping a running top-k over document batches (never a queries x documents
    matrix). With one block the documents are encoded as they are scored, in float32; with
    several, they are encoded once and kept in float16 for the later blocks.
    """

    def __init__(self, model, documents: Sequence[str], batch_size: int = 64, query_block: int = 4096) -> None:
        self.model = model
        self.batch_size = batch_size
        self.query_block = query_block
        self.document_tokens = model.tokenize_documents(list(documents))
        self._cache: list | None = None
        self._queries: list[str] | None = None

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

    def rank(self, queries: Sequence[str], k: int, positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents; with ``positives`` (corpus positions per query), also
        the lowest score among them."""
        import torch

        from maxsim.exact_search import encode_all, top_k_maxsim

        queries = list(queries)
        self._queries = queries
        k = min(k, len(self.document_tokens))
        positions = np.zeros((len(queries), k), dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        floor = np.full(len(queries), np.nan, dtype=np.float32) if positives is not None else None
        several = len(queries) > self.query_block
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
        self._cache = None
        return Ranking(positions, scores, floor)

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

    def __init__(self, model, documents: Sequence[str], batch_size: int = 64, nbits: int = 2) -> None:
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

    def rank(self, queries: Sequence[str], k: int, positives: Sequence[Sequence[int]] | None = None) -> Ranking:
        """Each query's ``k`` best documents (a row with fewer hits is padded with position -1);
        with ``positives`` (corpus positions per query), also the lowest score among them."""
        from maxsim.index import search

        self._queries = self.retriever.query_vectors(queries, batch_size=self.batch_size)
        ranking = search(self.retriever.index_data, *self._queries, k=k)  # chunk id = corpus position
        ranking.positive_floor = _floors(self.score_of, positives)
        return ranking

    def score_of(self, query_index: int, positions: Sequence[int]) -> np.ndarray:
        assert self._queries is not None, "call rank() first"
        vectors, mask = self._queries
        q = slice(query_index, query_index + 1)
        return self.retriever.exact_scores_of(vectors[q], mask[q], positions).numpy()


def window_for(n_documents: int, min_rank: int, max_rank: int, negatives: int,
               max_positives: int) -> tuple[int, int, str | None]:
    """The rank window to use: the requested one, shrunk to fit a small corpus.

    Returns (min_rank, max_rank, a note saying what changed, or None).

    >>> window_for(5183, 10, 100, 10, 3)
    (10, 100, None)
    >>> window_for(30, 10, 100, 10, 3)[:2]
    (10, 30)
    >>> window_for(12, 10, 100, 10, 1)[:2]
    (2, 12)
    """
    if min_rank < 1 or max_rank < min_rank:
        raise SettingsError(f"rank window [{min_rank}, {max_rank}] is empty: need 1 <= min-rank <= max-rank")
    used_max = min(max_rank, n_documents)
    used_min = min(min_rank, max(1, used_max - negatives - max_positives + 1))
    if (used_min, used_max) == (min_rank, max_rank):
        return min_rank, max_rank, None
    note = (f"the corpus has {n_documents} documents, too few for ranks [{min_rank}, {max_rank}] "
            f"with {negatives} negatives: used [{used_min}, {used_max}]")
    return used_min, used_max, note


def sample_negatives(
    positions: np.ndarray,
    scores: np.ndarray,
    positives: set[int],
    n: int,
    min_rank: int,
    max_rank: int,
    rng: np.random.Generator,
    margin: float | None = None,
    positive_score: float | None = None,
) -> tuple[list[int], int]:
    """Draw up to ``n`` negatives for one query from its ranking.

    positions, scores: the query's ranking, best first (1-D). Candidates are the ranks
    ``min_rank..max_rank`` (1-based) that are not known positives and, with ``margin``, score
    at most ``margin * positive_score``. Returns (chosen corpus positions in rank order, the
    number of candidates dropped by the margin).
    """
    window = range(min_rank - 1, min(max_rank, len(positions)))
    candidates = []
    dropped = 0
    for r in window:
        p = int(positions[r])
        if p < 0 or p in positives:  # -1 pads a ranking shorter than the window
            continue
        if margin is not None and positive_score is not None and scores[r] > margin * positive_score:
            dropped += 1
            continue
        candidates.append(r)
    if len(candidates) > n:
        candidates = sorted(rng.choice(candidates, size=n, replace=False).tolist())
    return [int(positions[r]) for r in candidates], dropped


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

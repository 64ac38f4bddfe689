"""BM25 over every segment of an index at once, with the statistics of the whole index.

Each segment keeps term counts, not scores (:mod:`maxsim.index.postings`), so a query is scored
as one BM25 over the index's live documents would score it (:mod:`maxsim.lexical`'s formula):
``N`` is the documents not deleted, a term's ``df`` counts the live documents holding it in
every segment, and the mean length is over the live documents. Deleted documents are skipped,
and adds, deletes and merges change nothing but these sums. The cost of a query grows with the
postings of its terms, not with the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maxsim.errors import SettingsError
from maxsim.index.allowed import Allowed
from maxsim.index.reader import IndexData
from maxsim.lexical import idf, term_weight
from maxsim.ranking import Ranking


class NoBM25Error(SettingsError):
    """Hybrid or BM25 search on an index that keeps no BM25 side."""


def require_bm25(data: IndexData, where: object = None) -> None:
    """Refuse an index without a BM25 side, saying how to add one."""
    if not data.has_bm25:
        raise NoBM25Error(f"{where or data.path or 'this index'} keeps no BM25 side (it was built before maxsim kept "
                          "one, or without it), so it cannot search by BM25 or hybrid. Fix: `maxsim index add-bm25 "
                          f"{where or data.path or 'INDEX'}` (one pass over its texts, no re-encoding)")


def corpus_statistics(data: IndexData) -> tuple[int, float]:
    """(live documents, their mean length in terms)."""
    total = 0
    for segment, entry in zip(data.segments, _records(data)):
        length = entry if entry is not None else int(np.sum(segment.bm25.lengths, dtype=np.int64))
        if len(segment.deleted):
            length -= int(np.sum(np.asarray(segment.bm25.lengths)[segment.deleted], dtype=np.int64))
        total += length
    n = data.n_documents
    return n, (total / n if n else 0.0)


def _records(data: IndexData) -> list[int | None]:
    """Each segment's total length as its manifest records it (None: not written yet)."""
    totals = {e["name"]: (e.get("bm25") or {}).get("total_length") for e in data.manifest_entries}
    return [totals.get(segment.name) if segment.name else None for segment in data.segments]


def bm25_matches(data: IndexData, terms: Sequence[str], weights: np.ndarray,
                 allowed: Allowed | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every live document holding a query term (and passing ``allowed``, a filter's), with its
    BM25 score: (document numbers (M,) int64 ascending, scores (M,) float64 above 0). The query
    is its distinct ``terms`` and how often each occurs (``weights`` (n,))."""
    require_bm25(data)
    weights = np.asarray(weights, dtype=np.float64)
    found = []  # (query term, segment, local documents, tfs)
    df = np.zeros(len(terms), dtype=np.int64)
    for s, segment in enumerate(data.segments):
        ids = segment.bm25.term_ids(terms)
        for j in np.flatnonzero(ids >= 0).tolist():
            documents, tfs = segment.bm25.term(int(ids[j]))
            if len(segment.deleted):
                live = ~np.isin(documents, segment.deleted)
                documents, tfs = documents[live], tfs[live]
            df[j] += len(documents)
            found.append((j, s, documents, tfs))
    n, mean_length = corpus_statistics(data)
    if not found or not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    term_idf = idf(df, n)
    numbers, contributions = [], []
    for j, s, documents, tfs in found:
        segment = data.segments[s]
        if allowed is not None:
            keep = allowed.masks[s][segment.first_chunks[documents]]
            documents, tfs = documents[keep], tfs[keep]
        lengths = np.asarray(segment.bm25.lengths)[documents]
        numbers.append(documents + data.doc_base[s])
        contributions.append(weights[j] * term_idf[j] * term_weight(tfs, lengths, mean_length))
    numbers_all = np.concatenate(numbers)
    unique, inverse = np.unique(numbers_all, return_inverse=True)
    return unique, np.bincount(inverse, weights=np.concatenate(contributions), minlength=len(unique))


def bm25_top(numbers: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of :func:`bm25_matches`' documents, by score, then number."""
    order = np.lexsort((numbers, -scores))[:k]
    return numbers[order], scores[order]


def bm25_search(data: IndexData, queries: Sequence[tuple[Sequence[str], np.ndarray]], k: int,
                allowed: Allowed | None = None) -> Ranking:
    """Each query's ``k`` best documents by BM25: a Ranking of document numbers; a row is short
    when fewer documents hold a query term."""
    return Ranking.from_rows([bm25_top(*bm25_matches(data, terms, weights, allowed), k) for terms, weights in queries],
                             k)


def scores_of(numbers: np.ndarray, scores: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """(n,) float64 the BM25 score of each ``wanted`` document among :func:`bm25_matches`' (0
    for one holding no query term)."""
    wanted = np.asarray(wanted, dtype=np.int64)
    at = np.minimum(np.searchsorted(numbers, wanted), max(len(numbers) - 1, 0))
    hit = (numbers[at] == wanted) if len(numbers) else np.zeros(len(wanted), dtype=bool)
    return np.where(hit, scores[at] if len(numbers) else 0.0, 0.0)

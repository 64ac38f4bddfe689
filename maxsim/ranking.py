"""One ranking type for every way of searching (exact MaxSim, BM25, every backend), and the
hits a retriever makes of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Ranking:
    """Each query's best items, best first: corpus positions, or chunk ids for an index.

    positions: (Q, k) int64, -1 after the last item of a query that has fewer than k.
    scores: (Q, k) float32, the items' scores (-inf where ``positions`` is -1).
    positive_floor: (Q,) float32 or None: the lowest score among each query's known positives,
        when a miner was given them (for the false-negative margin; NaN for a query without any).
    items: see below.
    """

    positions: np.ndarray
    scores: np.ndarray
    positive_floor: np.ndarray | None = None
    #: where a searcher numbers no items of its own (a Qdrant collection): what each position
    #: stands for, by position (a row's positions then index this list)
    items: list | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Query ``i``'s (positions, scores), without the padding.

        >>> Ranking.from_rows([([4, 2], [0.9, 0.5]), ([7], [0.3])]).row(1)
        (array([7]), array([0.3], dtype=float32))
        """
        keep = self.positions[i] >= 0
        return self.positions[i][keep], self.scores[i][keep]

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Sequence[int], Sequence[float]]], k: int | None = None) -> Ranking:
        """A ranking from each query's (positions, scores), best first; rows shorter than ``k``
        (default: the longest row) are padded.

        >>> r = Ranking.from_rows([([4, 2], [0.9, 0.5]), ([7], [0.3])])
        >>> r.positions.tolist(), r.scores.tolist()
        ([[4, 2], [7, -1]], [[0.8999999761581421, 0.5], [0.30000001192092896, -inf]])
        """
        width = k if k is not None else max((len(p) for p, _ in rows), default=0)
        positions = np.full((len(rows), width), -1, dtype=np.int64)
        scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
        for i, (p, s) in enumerate(rows):
            positions[i, : len(p)], scores[i, : len(s)] = p, s
        return cls(positions, scores)


@dataclass
class Hit:
    """One search result. ``rank`` starts at 1; ``content`` is the matching chunk's text.

    A hybrid search's hit says both components: ``maxsim_score`` (its best chunk's MaxSim) and
    ``bm25_score`` (its text's BM25, 0 when it holds no query term), ``score`` being the fused one.
    """

    document_id: str
    score: float
    rank: int
    content: str
    metadata: dict | None
    maxsim_score: float | None = None
    bm25_score: float | None = None
    #: the chunk's place among its document's chunks (0: the first), and its characters
    #: ``[start, end)`` in the document's text (:meth:`maxsim.Retriever.document` gives the whole)
    chunk: int | None = None
    start: int | None = None
    end: int | None = None

    def to_dict(self) -> dict:
        """The hit as a dict (its metadata the same object, not a copy); the component scores
        and the chunk's place only where the search had them."""
        out = {"document_id": self.document_id, "score": self.score, "rank": self.rank, "content": self.content,
               "metadata": self.metadata}
        for name in ("maxsim_score", "bm25_score", "chunk", "start", "end"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def hits_of(ranking: Ranking, passages: list[list], components: list | None = None) -> list[list[Hit]]:
    """The hits of each query's row of ``ranking``: ``passages`` (one list a query, in the row's
    order: objects with ``document_id``, ``content``, ``metadata``, ``chunk``, ``start`` and
    ``end``) with the row's scores and ranks from 1; ``components``: a hybrid search's (MaxSim,
    BM25) scores of each item, per query."""
    results = [[Hit(p.document_id, score, rank, p.content, p.metadata, chunk=p.chunk, start=p.start, end=p.end)
                for rank, (p, score) in enumerate(zip(row, ranking.row(i)[1].tolist()), start=1)]
               for i, row in enumerate(passages)]
    for row, (maxsim_part, bm25_part) in zip(results, components or []):
        for hit, m, b in zip(row, maxsim_part, bm25_part):
            hit.maxsim_score, hit.bm25_score = float(m), float(b)
    return results

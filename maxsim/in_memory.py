"""Search without an index, for small sets held in memory: reranking a list of texts, and
documents encoded into memory then searched, both by exact MaxSim (:func:`maxsim.scoring.maxsim`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from maxsim.errors import SettingsError
from maxsim.inputs import check_k, checked_queries, checked_records, checked_texts
from maxsim.ranking import Hit
from maxsim.scoring import maxsim

#: texts -> ((N, L, dim) float32 vectors, (N, L) bool mask), padded to the longest
Encoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


def ranked(scores: torch.Tensor, k: int | None) -> list[tuple[int, int, float]]:
    """(rank from 1, position, score) of the ``k`` best of ``scores`` (N,) (None: all).

    >>> ranked(torch.tensor([0.2, 0.9, 0.5]), 2)
    [(1, 1, 0.8999999761581421), (2, 2, 0.5)]
    """
    order = scores.argsort(descending=True)[: len(scores) if k is None else k].tolist()
    return [(rank, i, float(scores[i])) for rank, i in enumerate(order, start=1)]


def pad_to(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """(N, L, dim) vectors or an (N, L) mask padded along L to ``length`` (zeros, False)."""
    if tensor.dim() == 3:
        return torch.nn.functional.pad(tensor, (0, 0, 0, length - tensor.shape[1]))
    return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=False)


def rerank(queries: Encoder, documents: Encoder, query: str, texts: Sequence[str], k: int | None = None) -> list[Hit]:
    """``texts`` ordered by exact MaxSim to ``query``; ``document_id`` is the position. No texts, no hits."""
    (query,) = checked_queries([query])
    if k is not None:
        check_k(k)
    texts = checked_texts(texts)
    if not texts:
        return []
    scores = maxsim(*queries([query]), *documents(texts))[0]
    return [Hit(str(i), score, rank, texts[i], None) for rank, i, score in ranked(scores, k)]


class EncodedSet:
    """Documents encoded into memory (each :meth:`add` after the ones before), searched by
    exact MaxSim: every document scored for every query, so for sets of thousands, not millions."""

    def __init__(self) -> None:
        self.vectors: torch.Tensor | None = None  # (N, L, dim) float32
        self.mask: torch.Tensor | None = None  # (N, L) bool
        self.records: list[dict] = []

    def add(self, documents: Encoder, texts, document_ids=None, metadata=None) -> None:
        records = checked_records(texts, document_ids, metadata)
        vectors, mask = documents([r["content"] for r in records])
        if self.vectors is not None:
            length = max(self.vectors.shape[1], vectors.shape[1])
            vectors = torch.cat([pad_to(self.vectors, length), pad_to(vectors, length)])
            mask = torch.cat([pad_to(self.mask, length), pad_to(mask, length)])
        self.vectors, self.mask, self.records = vectors, mask, self.records + records

    def search(self, queries: Encoder, query: str, k: int) -> list[Hit]:
        if self.vectors is None:
            raise SettingsError("nothing encoded: call encode(documents) first")
        scores = maxsim(*queries([query]), self.vectors, self.mask)[0]
        return [Hit(self.records[i]["id"], score, rank, self.records[i]["content"], self.records[i]["metadata"])
                for rank, i, score in ranked(scores, k)]

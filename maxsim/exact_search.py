"""Exact MaxSim search: every query against every document, with a running top-k.

Validation, ``maxsim eval`` and dense mining score every document exactly; this keeps (Q, k + b)
scores at a time instead of the whole (Q, D) matrix, so memory does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from maxsim.errors import SettingsError
from maxsim.model import ColBERT
from maxsim.model.inference import InferenceForward
from maxsim.progress import progress as progress_bar
from maxsim.ranking import Ranking
from maxsim.scoring import maxsim


def top_k_maxsim(
    q_vectors: torch.Tensor,
    q_mask: torch.Tensor,
    document_batches: Iterable[tuple[Sequence[int], torch.Tensor, torch.Tensor]],
    k: int,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The ``k`` best documents for each query by exact MaxSim, one document batch at a time.

    Memory holds (Q, k + b) scores, never the whole (Q, D) matrix, so the number of queries and
    documents is bounded only by time.

    q_vectors: (Q, Lq, dim) float32; q_mask: (Q, Lq) bool, on the device the batches come on.
    document_batches: (corpus positions (b,), vectors (b, Ld, dim), score mask (b, Ld)).
    pairs: optional (query rows (P,), corpus positions (P,)) long tensors whose scores are also
        wanted (a query's known positives, say).
    Returns (scores (Q, k') float32 CPU, positions (Q, k') long CPU, best first, k' = min(k, D);
    scores of ``pairs`` (P,) float32 CPU, NaN for a position no batch held, or None).
    """
    if k < 1:
        raise SettingsError(f"k must be 1 or more, got {k}")
    n_queries = q_vectors.shape[0]
    best_scores = torch.empty(n_queries, 0, device=q_vectors.device)
    best_positions = torch.empty(n_queries, 0, dtype=torch.long, device=q_vectors.device)
    pair_scores = None
    if pairs is not None:
        pair_rows, pair_docs = (t.to(q_vectors.device) for t in pairs)
        pair_scores = torch.full((len(pair_rows),), float("nan"), device=q_vectors.device)
    for positions, vectors, mask in document_batches:
        positions = torch.as_tensor(positions, dtype=torch.long, device=q_vectors.device)
        scores = maxsim(q_vectors, q_mask, vectors.float(), mask)  # (Q, b)
        if pairs is not None:
            order = positions.argsort()
            sorted_positions = positions[order]
            where = torch.searchsorted(sorted_positions, pair_docs).clamp(max=len(positions) - 1)
            hit = sorted_positions[where] == pair_docs
            column = order[where[hit]]
            pair_scores[hit] = scores[pair_rows[hit], column]
        merged = torch.cat([best_scores, scores], dim=1)
        merged_positions = torch.cat([best_positions, positions.expand(n_queries, -1)], dim=1)
        top = merged.topk(min(k, merged.shape[1]), dim=1)
        best_scores, best_positions = top.values, merged_positions.gather(1, top.indices)
    return best_scores.cpu(), best_positions.cpu(), None if pair_scores is None else pair_scores.cpu()


def encode_all(model: ColBERT, token_ids: Sequence[Sequence[int]], is_query: bool, batch_size: int = 64,
               forward: InferenceForward | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode cached token ids into one padded tensor: (N, L, dim) float32 and (N, L) bool mask,
    on the model's device, in the order of ``token_ids`` (``forward``: as in
    :meth:`~maxsim.model.ColBERT.encode_batches`)."""
    length = max((len(t) for t in token_ids), default=1)
    if is_query:
        length = model.settings.query_maxlen
    vectors = torch.zeros(len(token_ids), length, model.settings.dim, device=model.device)
    mask = torch.zeros(len(token_ids), length, dtype=torch.bool, device=model.device)
    for positions, v, m in model.encode_batches(token_ids, is_query, batch_size, forward):
        vectors[positions, : v.shape[1]], mask[positions, : m.shape[1]] = v, m
    return vectors, mask


def exact_search(
    model: ColBERT,
    query_texts: Sequence[str],
    document_tokens: Sequence[Sequence[int]],
    k: int = 100,
    batch_size: int = 64,
    progress: bool = False,
    forward: InferenceForward | None = None,
) -> Ranking:
    """Top-``k`` documents for each query by exact MaxSim over all documents.

    document_tokens: cached token ids of every document (from ``model.tokenize_documents``).
    progress: report progress over the documents (a bar on a terminal, log lines otherwise).
    forward: encode with this :class:`~maxsim.model.inference.InferenceForward` of ``model``
        (bf16 on a CPU that computes it) instead of the model itself.
    Returns a :class:`~maxsim.ranking.Ranking` of corpus positions, (Q, k') with k' = min(k, D).
    """
    if k < 1:
        raise SettingsError(f"k must be 1 or more, got {k}")
    q_vectors, q_mask = encode_all(model, model.tokenize_queries(list(query_texts)), True, batch_size, forward)
    bar = progress_bar(len(document_tokens), "exact MaxSim", "doc", enabled=progress, leave=False)

    def batches():
        for positions, vectors, mask in model.encode_batches(document_tokens, False, batch_size, forward):
            yield positions, vectors, mask
            bar.update(len(positions))

    scores, positions, _ = top_k_maxsim(q_vectors, q_mask, batches(), k)
    bar.close()
    return Ranking(positions.numpy(), scores.numpy())

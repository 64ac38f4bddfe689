"""Retrieval evaluation: exact MaxSim over a corpus and standard IR metrics (pytrec_eval)."""

from __future__ import annotations

from collections.abc import Sequence

import pytrec_eval
import torch
from tqdm.auto import tqdm

from maxsim.model import ColBERT
from maxsim.scoring import maxsim

#: maxsim metric name -> (pytrec_eval measure, cutoff applied to the run before evaluation)
METRICS = {
    "ndcg@10": ("ndcg_cut_10", None),
    "mrr@10": ("recip_rank", 10),
    "recall@100": ("recall_100", None),
    "map": ("map", None),
}


def exact_scores(
    model: ColBERT,
    query_texts: Sequence[str],
    document_tokens: Sequence[Sequence[int]],
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Exact MaxSim of every query against every document: (Q, D) float32 on the model's device.

    document_tokens: cached token ids of every document (from ``model.tokenize_documents``).
    progress: show a progress bar over the documents.
    """
    query_tokens = model.tokenize_queries(list(query_texts))
    q_vectors = torch.empty(len(query_tokens), model.settings.query_maxlen, model.settings.dim,
                            device=model.device)
    q_mask = torch.empty(len(query_tokens), model.settings.query_maxlen, dtype=torch.bool,
                         device=model.device)
    for positions, vectors, mask in model.encode_batches(query_tokens, True, batch_size):
        q_vectors[positions], q_mask[positions] = vectors, mask
    scores = torch.empty(len(query_tokens), len(document_tokens), device=model.device)
    bar = tqdm(total=len(document_tokens), desc="exact MaxSim", unit="doc", leave=False, disable=not progress)
    for positions, vectors, mask in model.encode_batches(document_tokens, False, batch_size):
        scores[:, positions] = maxsim(q_vectors, q_mask, vectors, mask)
        bar.update(len(positions))
    bar.close()
    return scores


def exact_search(
    model: ColBERT,
    query_texts: Sequence[str],
    document_tokens: Sequence[Sequence[int]],
    k: int = 100,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` documents for each query by exact MaxSim over all documents.

    Returns (scores (Q, k') float32, positions (Q, k') long) on the CPU, best first,
    k' = min(k, D).
    """
    scores = exact_scores(model, query_texts, document_tokens, batch_size, progress)
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values.cpu(), top.indices.cpu()


def evaluate_run(
    qrels: dict[str, dict[str, int]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = ("ndcg@10", "mrr@10"),
) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels`` (a query absent from the run scores 0).

    qrels: {query_id: {doc_id: relevance}}; run: {query_id: {doc_id: score}}.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {sorted(METRICS)}")
    out = {}
    for name in metrics:
        measure, cutoff = METRICS[name]
        scored = {q: _top(run.get(q, {}), cutoff) for q in qrels}
        scored = {q: docs if docs else {"__none__": 0.0} for q, docs in scored.items()}
        per_query = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(scored)
        out[name] = sum(v[measure] for v in per_query.values()) / max(1, len(qrels))
    return out


def _top(docs: dict[str, float], cutoff: int | None) -> dict[str, float]:
    if cutoff is None or len(docs) <= cutoff:
        return dict(docs)
    best = sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:cutoff]
    return dict(best)

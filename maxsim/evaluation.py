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


def run_from_ranking(query_ids: Sequence[str], doc_ids: Sequence[str], scores, positions,
                     drop_self_hits: bool = False, k: int | None = None) -> dict[str, dict[str, float]]:
    """A run ``{query_id: {doc_id: score}}`` from per-query top positions and scores.

    scores, positions: (Q, k) arrays or tensors, best first. With ``drop_self_hits`` a document
    whose id equals the query id is removed (ArguAna-style sets), then each query keeps ``k``.
    """
    run = {}
    for i, qid in enumerate(query_ids):
        hits = {}
        for s, j in zip(scores[i], positions[i]):
            did = doc_ids[int(j)]
            if drop_self_hits and did == qid:
                continue
            hits[did] = float(s)
            if k is not None and len(hits) == k:
                break
        run[qid] = hits
    return run


def write_trec_run(run: dict[str, dict[str, float]], path, tag: str = "maxsim") -> None:
    """Write a TREC run file: ``qid Q0 docid rank score tag``, best first, rank from 1."""
    from maxsim.files import atomic_write_text

    lines = []
    for qid, hits in run.items():
        ranked = sorted(hits.items(), key=lambda item: (-item[1], item[0]))
        lines.extend(f"{qid} Q0 {did} {rank} {score:.6f} {tag}" for rank, (did, score) in enumerate(ranked, start=1))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def evaluate_beir(
    model: str | None,
    data,
    split: str = "test",
    k: int = 100,
    drop_self_hits: bool = False,
    batch_size: int = 64,
    progress: bool = False,
    index=None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Evaluate a checkpoint (exact MaxSim), ``"base"`` (the untrained bundled MiniLM with a fresh
    projection, seed 0) or ``"bm25"`` on a BEIR split; with ``index`` (a folder made by
    ``maxsim index`` over this corpus), search through that index instead of exact MaxSim
    (``model`` None: the model that built the index).

    Returns (metrics: nDCG@10, MRR@10, Recall@100, MAP; the run).
    """
    from maxsim.data.training_folder import read_beir_split

    queries, corpus, qrels = read_beir_split(data, split)
    depth = k + 1 if drop_self_hits else k
    if index is not None:
        if model == "bm25":
            raise ValueError("--index searches with a ColBERT model, not bm25")
        from maxsim.retriever import Retriever

        colbert = None if model is None else ColBERT.from_pretrained(None if model == "base" else model)
        retriever = Retriever.from_index(index, model=colbert)
        known = set(corpus.ids)
        strangers = [d["id"] for d in retriever.index_data.documents if d["id"] not in known]
        if strangers:
            raise ValueError(f"the index {index} holds documents that are not in {data}'s corpus "
                             f"(e.g. {strangers[0]!r}): build it from this corpus with `maxsim index {data}`")
        hits = retriever.search(queries.texts, k=depth)
        position = {d: i for i, d in enumerate(corpus.ids)}
        scores = [[h.score for h in row] for row in hits]
        positions = [[position[h.document_id] for h in row] for row in hits]
    elif model == "bm25":
        from maxsim.data.mining import BM25Miner

        ranking = BM25Miner(corpus.texts).rank(queries.texts, depth)
        scores, positions = ranking.scores, ranking.positions
    else:
        colbert = ColBERT.from_pretrained(None if model in (None, "base") else model)
        tokens = colbert.tokenize_documents(corpus.texts)
        scores, positions = exact_search(colbert, queries.texts, tokens, depth, batch_size, progress)
    run = run_from_ranking(queries.ids, corpus.ids, scores, positions, drop_self_hits, k)
    return evaluate_run(qrels, run, ("ndcg@10", "mrr@10", "recall@100", "map")), run

"""Retrieval evaluation: exact MaxSim over a corpus and standard IR metrics (pytrec_eval)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytrec_eval
import torch

from maxsim.data.qrels import integer_gains
from maxsim.model import ColBERT
from maxsim.progress import progress as progress_bar
from maxsim.scoring import maxsim

#: maxsim metric name -> (pytrec_eval measure, cutoff applied to the run before evaluation)
METRICS = {
    "ndcg@10": ("ndcg_cut_10", None),
    "mrr@10": ("recip_rank", 10),
    "recall@100": ("recall_100", None),
    "map": ("map", None),
}


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
        raise ValueError(f"k must be 1 or more, got {k}")
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


def encode_all(model: ColBERT, token_ids: Sequence[Sequence[int]], is_query: bool, batch_size: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode cached token ids into one padded tensor: (N, L, dim) float32 and (N, L) bool mask,
    on the model's device, in the order of ``token_ids``."""
    length = max((len(t) for t in token_ids), default=1)
    if is_query:
        length = model.settings.query_maxlen
    vectors = torch.zeros(len(token_ids), length, model.settings.dim, device=model.device)
    mask = torch.zeros(len(token_ids), length, dtype=torch.bool, device=model.device)
    for positions, v, m in model.encode_batches(token_ids, is_query, batch_size):
        vectors[positions, : v.shape[1]], mask[positions, : m.shape[1]] = v, m
    return vectors, mask


def exact_search(
    model: ColBERT,
    query_texts: Sequence[str],
    document_tokens: Sequence[Sequence[int]],
    k: int = 100,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` documents for each query by exact MaxSim over all documents.

    document_tokens: cached token ids of every document (from ``model.tokenize_documents``).
    progress: report progress over the documents (a bar on a terminal, log lines otherwise).
    Returns (scores (Q, k') float32, positions (Q, k') long) on the CPU, best first,
    k' = min(k, D).
    """
    if k < 1:
        raise ValueError(f"k must be 1 or more, got {k}")
    q_vectors, q_mask = encode_all(model, model.tokenize_queries(list(query_texts)), True, batch_size)
    bar = progress_bar(len(document_tokens), "exact MaxSim", "doc", enabled=progress, leave=False)

    def batches():
        for positions, vectors, mask in model.encode_batches(document_tokens, False, batch_size):
            yield positions, vectors, mask
            bar.update(len(positions))

    scores, positions, _ = top_k_maxsim(q_vectors, q_mask, batches(), k)
    bar.close()
    return scores, positions


def evaluate_run(
    qrels: dict[str, dict[str, float]],
    run: dict[str, dict[str, float]],
    metrics: Sequence[str] = ("ndcg@10", "mrr@10"),
) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels`` (a query absent from the run scores 0).

    qrels: {query_id: {doc_id: relevance}}, graded or fractional (see
    :func:`~maxsim.data.qrels.integer_gains`); run: {query_id: {doc_id: score}}.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {sorted(METRICS)}")
    gains = integer_gains(qrels)
    out = {}
    for name in metrics:
        measure, cutoff = METRICS[name]
        scored = {q: _top(run.get(q, {}), cutoff) for q in gains}
        scored = {q: docs if docs else {"__none__": 0.0} for q, docs in scored.items()}
        per_query = pytrec_eval.RelevanceEvaluator(gains, {measure}).evaluate(scored)
        out[name] = sum(v[measure] for v in per_query.values()) / max(1, len(gains))
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


def check_trec_ids(ids: Iterable[str], source) -> None:
    """Refuse ids that a TREC run file cannot hold (its fields are separated by whitespace)."""
    for item in ids:
        if not item or any(c.isspace() for c in item):
            raise ValueError(f"{source}: id {item!r} holds whitespace, which a TREC run file (run.trec) cannot "
                             "hold. Fix: rename the id, or leave out --output")


def write_trec_run(run: dict[str, dict[str, float]], path, tag: str = "maxsim") -> None:
    """Write a TREC run file: ``qid Q0 docid rank score tag``, best first, rank from 1."""
    from maxsim.files import atomic_write_text

    check_trec_ids(run, "the queries")
    check_trec_ids({d for hits in run.values() for d in hits}, "the documents")
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
    strict: bool = False,
    trec_output: bool = False,
    allow_model_mismatch: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Evaluate a checkpoint (exact MaxSim), ``"base"`` (the untrained bundled MiniLM with a fresh
    projection, seed 0) or ``"bm25"`` on a BEIR split; with ``index`` (a folder made by
    ``maxsim index`` over this corpus), search through that index instead of exact MaxSim
    (``model`` None: the model that built the index).

    ``strict``: refuse qrels that name documents the corpus lacks (default: warn, and count them
    as relevant and unretrievable, as BEIR does). ``trec_output``: the run will be written as a
    TREC file, so ids with whitespace are refused here, before any work.

    Returns (metrics: nDCG@10, MRR@10, Recall@100, MAP; the run).
    """
    from maxsim.data.training_folder import read_beir_split

    if k < 1:
        raise ValueError(f"--k must be 1 or more, got {k}")
    queries, corpus, qrels = read_beir_split(data, split, strict=strict)
    if trec_output:
        check_trec_ids(queries.ids, f"{data}/queries.jsonl")
        check_trec_ids(corpus.ids, f"{data}/corpus.jsonl")
    depth = k + 1 if drop_self_hits else k
    if index is not None:
        if model == "bm25":
            raise ValueError("--index searches with a ColBERT model, not bm25")
        from maxsim.retriever import Retriever

        colbert = None if model is None else ColBERT.from_pretrained(None if model == "base" else model)
        retriever = Retriever.from_index(index, model=colbert, allow_model_mismatch=allow_model_mismatch)
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

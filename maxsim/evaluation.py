"""Retrieval evaluation: runs and standard IR metrics (pytrec_eval), and BEIR evaluation of a model,
an index or BM25."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytrec_eval

from maxsim.data.qrels import integer_gains
from maxsim.errors import SettingsError
from maxsim.exact_search import exact_search
from maxsim.lexical import DEFAULT_LANGUAGE
from maxsim.model import ColBERT, pick_device
from maxsim.ranking import Ranking

#: maxsim metric name -> (pytrec_eval measure, cutoff applied to the run before evaluation)
METRICS = {
    "ndcg@10": ("ndcg_cut_10", None),
    "mrr@10": ("recip_rank", 10),
    "recall@100": ("recall_100", None),
    "map": ("map", None),
}


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
        raise SettingsError(f"unknown metrics {sorted(unknown)}; known: {sorted(METRICS)}")
    return {name: sum(values.values()) / max(1, len(values)) for name in metrics
            for values in [per_query(qrels, run, name)]}


def per_query(qrels: dict[str, dict[str, float]], run: dict[str, dict[str, float]], metric: str) -> dict[str, float]:
    """``metric`` of each query of ``qrels`` ({query_id: value}; a query absent from the run scores 0)."""
    measure, cutoff = METRICS[metric]
    gains = integer_gains(qrels)
    scored = {q: _top(run.get(q, {}), cutoff) for q in gains}
    scored = {q: docs if docs else {"__none__": 0.0} for q, docs in scored.items()}
    values = pytrec_eval.RelevanceEvaluator(gains, {measure}).evaluate(scored)
    return {q: values[q][measure] for q in gains}


def _top(docs: dict[str, float], cutoff: int | None) -> dict[str, float]:
    if cutoff is None or len(docs) <= cutoff:
        return dict(docs)
    best = sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:cutoff]
    return dict(best)


def run_from_ranking(query_ids: Sequence[str], doc_ids: Sequence[str], ranking: Ranking,
                     drop_self_hits: bool = False, k: int | None = None) -> dict[str, dict[str, float]]:
    """A run ``{query_id: {doc_id: score}}`` from a ranking of corpus positions (row i: query i).

    With ``drop_self_hits`` a document whose id equals the query id is removed (ArguAna-style
    sets), then each query keeps ``k``.

    >>> ranking = Ranking.from_rows([([1, 0], [0.5, 0.25])])
    >>> run_from_ranking(["q"], ["d0", "d1"], ranking)
    {'q': {'d1': 0.5, 'd0': 0.25}}
    """
    run = {}
    for i, qid in enumerate(query_ids):
        hits = {}
        positions, scores = ranking.row(i)
        for s, j in zip(scores.tolist(), positions.tolist()):
            did = doc_ids[j]
            if drop_self_hits and did == qid:
                continue
            hits[did] = s
            if k is not None and len(hits) == k:
                break
        run[qid] = hits
    return run


def evaluation_corpus(query_texts: Sequence[str], judged: Iterable[str], corpus_ids: Sequence[str],
                      corpus_texts: Sequence[str], size: int, language: str = DEFAULT_LANGUAGE) -> list[int]:
    """Corpus positions (ascending) of a smaller corpus to evaluate on, as NanoBEIR cuts BEIR: every
    judged document, then the queries' BM25 best documents taken rank by rank across the queries
    (each query's first, then each one's second, ...) until ``size`` documents. The hard
    distractors stay, so a metric on it still separates checkpoints, for a fraction of the
    encoding; its values are not comparable with a full-corpus metric.

    judged: the ids the qrels name (all kept, even past ``size``); language: BM25's (ISO 639-1).

    >>> evaluation_corpus(["blue whale"], ["d3"], ["d0", "d1", "d2", "d3"],
    ...                   ["red fox", "blue whale song", "green tree", "grey whale"], 2)
    [1, 3]
    """
    from maxsim.data.mining import BM25Miner

    position = {d: i for i, d in enumerate(corpus_ids)}
    chosen = {position[d] for d in judged if d in position}
    if len(corpus_ids) <= size:
        return list(range(len(corpus_ids)))
    if len(chosen) >= size:
        return sorted(chosen)
    depth = min(len(corpus_ids), 2 * -(-size // max(1, len(query_texts))) + 10)
    ranked = BM25Miner(corpus_texts, language).rank(query_texts, depth).positions
    for j in ranked.T.ravel().tolist():  # every query's first, then every query's second, ...
        if len(chosen) >= size:
            break
        if j >= 0:
            chosen.add(j)
    return sorted(chosen)


def check_trec_ids(ids: Iterable[str], source) -> None:
    """Refuse ids that a TREC run file cannot hold (its fields are separated by whitespace)."""
    for item in ids:
        if not item or any(c.isspace() for c in item):
            raise SettingsError(f"{source}: id {item!r} holds whitespace, which a TREC run file (run.trec) cannot "
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
    device: str = "auto",
    hybrid=None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Evaluate a checkpoint (exact MaxSim), ``"base"`` (the untrained bundled MiniLM with a fresh
    projection, seed 0) or ``"bm25"`` on a BEIR split; with ``index`` (a folder made by
    ``maxsim index`` over this corpus), search through that index instead of exact MaxSim
    (``model`` None: the model that built the index).

    ``strict``: refuse qrels that name documents the corpus lacks (default: warn, and count them
    as relevant and unretrievable, as BEIR does). ``trec_output``: the run will be written as a
    TREC file, so ids with whitespace are refused here, before any work. ``device``: where the
    model encodes (``auto``: a CUDA GPU where one is visible, in bf16 autocast, else the CPU).
    ``hybrid`` (with ``index``; what :meth:`Retriever.search` takes): fuse with BM25.

    Returns (metrics: nDCG@10, MRR@10, Recall@100, MAP; the run).
    """
    from maxsim.data.training_folder import read_beir_split

    if k < 1:
        raise SettingsError(f"--k must be 1 or more, got {k}")
    if model != "bm25":
        pick_device(device)  # a device that is not there fails now, not after reading the corpus
    queries, corpus, qrels = read_beir_split(data, split, strict=strict)
    if trec_output:
        check_trec_ids(queries.ids, f"{data}/queries.jsonl")
        check_trec_ids(corpus.ids, f"{data}/corpus.jsonl")
    depth = k + 1 if drop_self_hits else k
    if index is not None:
        ranking = _index_ranking(index, model, device, allow_model_mismatch, data, queries, corpus, depth, hybrid)
    elif model == "bm25":
        from maxsim.data.mining import BM25Miner

        ranking = BM25Miner(corpus.texts).rank(queries.texts, depth)
    else:
        colbert = ColBERT.from_pretrained(None if model in (None, "base") else model, device=device)
        colbert.warn_if_untrained("evaluating")
        tokens = colbert.tokenize_documents(corpus.texts)
        ranking = exact_search(colbert, queries.texts, tokens, depth, batch_size, progress)
    run = run_from_ranking(queries.ids, corpus.ids, ranking, drop_self_hits, k)
    return evaluate_run(qrels, run, ("ndcg@10", "mrr@10", "recall@100", "map")), run


def _index_ranking(index, model: str | None, device: str, allow_model_mismatch: bool, data, queries, corpus,
                   depth: int, hybrid) -> Ranking:
    """The ``depth`` best corpus positions of each query through the index at ``index`` (built
    from this corpus, as it checks), searched with ``model`` (None: the one that built it)."""
    if model == "bm25":
        raise SettingsError("--index searches with a ColBERT model, not bm25")
    from maxsim.retriever import Retriever

    colbert = None if model is None else ColBERT.from_pretrained(None if model == "base" else model, device=device)
    retriever = Retriever.from_index(index, model=colbert, allow_model_mismatch=allow_model_mismatch, device=device)
    known = set(corpus.ids)
    strangers = [r["id"] for _, r in retriever.index_data.iter_documents() if r["id"] not in known]
    if strangers:
        raise SettingsError(f"the index {index} holds documents that are not in {data}'s corpus "
                            f"(e.g. {strangers[0]!r}): build it from this corpus with `maxsim index build {data}`")
    position = {d: i for i, d in enumerate(corpus.ids)}
    results = retriever.search(queries.texts, k=depth, hybrid=hybrid) if queries.texts else []
    return Ranking.from_rows([([position[h.document_id] for h in hits], [h.score for h in hits])
                              for hits in results], depth)

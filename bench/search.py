"""Index size, indexing speed, search latency and quality against exact MaxSim, on a BEIR split.

    python bench/search.py --model runs/journey/run/best        # SciFact test by default
    python bench/search.py --model base --nbits 2

Builds an index of the whole corpus, then for every test query: search through the index one
query at a time (median latency, query encoding included) and as one batch (time per query),
and compares nDCG@10 through the index with exact MaxSim over all documents (same model, same
chunks: documents are not split here, so both see the same first doc_maxlen tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maxsim.data.training_folder import read_beir_split
from maxsim.evaluation import evaluate_run, run_from_ranking
from maxsim.exact_search import exact_search
from maxsim.retriever import Retriever

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="base")
    parser.add_argument("--nbits", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    queries, corpus, qrels = read_beir_split(args.data, args.split)
    retriever = Retriever.from_pretrained(None if args.model == "base" else args.model)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        retriever.index(corpus.texts, path=Path(tmp) / "ix", document_ids=corpus.ids, nbits=args.nbits,
                        split_documents=False)
        build_s = time.perf_counter() - started
        meta = json.loads((Path(tmp) / "ix" / "index.json").read_text())
        sizes = {p.name: p.stat().st_size for p in (Path(tmp) / "ix").iterdir()}
    vector_bytes = sum(v for k, v in sizes.items() if k not in {"documents.jsonl.bz2", "spans.npy", "index.json"})
    n_tokens = meta["n_tokens"]
    print(f"index: {len(corpus)} docs, {n_tokens} tokens, {meta['n_centroids']} centroids, built in {build_s:.1f} s "
          f"({len(corpus) / build_s:.1f} docs/s); {sum(sizes.values()) / n_tokens:.1f} bytes/token all files, "
          f"{vector_bytes / n_tokens:.1f} without the stored texts")

    retriever.search(queries.texts[0], k=10)  # the first query traces the query encoder once
    latencies = []
    for text in queries.texts:
        started = time.perf_counter()
        retriever.search(text, k=10)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    retriever.search(queries.texts, k=10)
    batch_s = (time.perf_counter() - started) / len(queries)
    print(f"search, k=10: median {1000 * statistics.median(latencies):.1f} ms/query one at a time "
          f"(mean {1000 * statistics.mean(latencies):.1f}), {1000 * batch_s:.1f} ms/query in one batch of "
          f"{len(queries)}")
    started = time.perf_counter()
    batched = retriever.search(queries.texts, k=100)
    batch100_s = (time.perf_counter() - started) / len(queries)
    print(f"search, k=100: {1000 * batch100_s:.1f} ms/query in one batch")
    run = {qid: {h.document_id: h.score for h in hits} for qid, hits in zip(queries.ids, batched)}
    index_metrics = evaluate_run(qrels, run, ("ndcg@10", "mrr@10", "recall@100"))

    started = time.perf_counter()
    tokens = retriever.model.tokenize_documents(corpus.texts)
    ranking = exact_search(retriever.model, queries.texts, tokens, k=100)
    exact_s = time.perf_counter() - started
    exact_metrics = evaluate_run(qrels, run_from_ranking(queries.ids, corpus.ids, ranking),
                                 ("ndcg@10", "mrr@10", "recall@100"))
    def show(metrics):
        return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())

    print(f"exact MaxSim ({exact_s:.0f} s, encoding included): {show(exact_metrics)}")
    print(f"through the index: {show(index_metrics)}")
    result = {"model": args.model, "nbits": args.nbits, "docs_per_s": len(corpus) / build_s,
              "bytes_per_token": sum(sizes.values()) / n_tokens, "vector_bytes_per_token": vector_bytes / n_tokens,
              "median_ms": 1000 * statistics.median(latencies), "mean_ms": 1000 * statistics.mean(latencies),
              "batched_ms_k10": 1000 * batch_s, "batched_ms_k100": 1000 * batch100_s,
              "exact": exact_metrics, "index": index_metrics}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "search.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

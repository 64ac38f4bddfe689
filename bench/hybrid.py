"""Hybrid BM25 + MaxSim search on a BEIR set: the fusion chosen on a dev slice, then the test
figures and what hybrid costs per query.

    python bench/hybrid.py --model base --model runs/journey/run/best --dev runs/journey/data/dev

For each model: an index of the whole corpus (``Retriever.index``, documents split into chunks,
nbits 2, its BM25 side in English). On the dev slice (queries held out of training; the
corpus is the same): nDCG@10 of MaxSim through the index, the index's BM25, reciprocal rank
fusion (k = 60) and the weighted fusion at weights 0.1 to 0.9. The fusion with the best mean
dev nDCG@10 over the models is the one to make the default (``maxsim.fusion.DEFAULT_HYBRID``).
Then on the test split, once: nDCG@10 and Recall@100 of BM25, MaxSim, rrf and weighted at the
chosen weight; and per-query latency, one query at a time, query encoding included, of MaxSim,
BM25 and the chosen hybrid (interleaved, the median and p95 of each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from results_log import record

from maxsim.data.training_folder import read_beir_split
from maxsim.evaluation import evaluate_run
from maxsim.fusion import DEFAULT_HYBRID, Hybrid
from maxsim.index import is_index
from maxsim.retriever import Retriever

HERE = Path(__file__).resolve().parent
WEIGHTS = [round(0.1 * i, 1) for i in range(1, 10)]


def run_of(retriever: Retriever, query_ids: list[str], texts: list[str], how, k: int = 100) -> dict:
    """{query id: {document id: score}} of one way of searching."""
    if how == "bm25":
        results = retriever.search_bm25(texts, k=k)
    else:
        results = retriever.search(texts, k=k, hybrid=how)
    return {q: {h.document_id: float(h.score) for h in hits} for q, hits in zip(query_ids, results)}


def systems(weight: float | None) -> dict:
    out = {"maxsim": None, "bm25": "bm25", "rrf": Hybrid(fusion="rrf")}
    for w in WEIGHTS if weight is None else [weight]:
        out[f"weighted-{w}"] = Hybrid(fusion="weighted", weight=w)
    return out


def latency(retriever: Retriever, texts: list[str], repeats: int, hybrid: Hybrid) -> dict:
    """Median and p95 ms a query, one at a time, interleaved: MaxSim, BM25, ``hybrid``."""
    ways = {"maxsim": lambda q: retriever.search(q, k=10), "bm25": lambda q: retriever.search_bm25(q, k=10),
            "hybrid": lambda q: retriever.search(q, k=10, hybrid=hybrid)}
    for way in ways.values():  # warm-up (the encoder's traces)
        way(texts[0])
    times = {name: [] for name in ways}
    for _ in range(repeats):
        for text in texts:
            for name, way in ways.items():
                start = time.perf_counter()
                way(text)
                times[name].append(1000 * (time.perf_counter() - start))
    out = {}
    for name, values in times.items():
        values.sort()
        out[f"{name}_ms_p50"] = round(statistics.median(values), 2)
        out[f"{name}_ms_p95"] = round(values[int(0.95 * (len(values) - 1))], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--dev", required=True, help="BEIR folder of the dev slice (maxsim prepare's dev/)")
    parser.add_argument("--model", action="append", required=True, help="'base' or a checkpoint; repeat")
    parser.add_argument("--work", default="runs/hybrid-bench", help="where the indexes are built (kept)")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results = HERE / "results" / "hybrid.jsonl"
    dev_queries, _, dev_qrels = read_beir_split(args.dev, "dev")
    test_queries, corpus, test_qrels = read_beir_split(args.data, "test")
    retrievers, dev_rows = {}, {}
    for model in args.model:
        name = "base" if model == "base" else Path(model).resolve().parent.parent.name + "/" + Path(model).name
        folder = Path(args.work) / name.replace("/", "-")
        if not is_index(folder):
            start = time.perf_counter()
            retriever = Retriever.from_pretrained(None if model == "base" else model)
            retriever.index(corpus.texts, path=folder, document_ids=corpus.ids)
            took = time.perf_counter() - start
            print(f"{name}: indexed {len(corpus.ids)} documents in {took:.0f} s", file=sys.stderr)
        retrievers[name] = Retriever.from_index(folder)
        dev = {}
        for system, how in systems(None).items():
            metrics = evaluate_run(dev_qrels, run_of(retrievers[name], dev_queries.ids, dev_queries.texts, how),
                                   ("ndcg@10",))
            dev[system] = round(metrics["ndcg@10"], 4)
        dev_rows[name] = dev
        record(results, {"stage": "dev", "model": name, "queries": len(dev_queries.ids),
                         **{f"dev_ndcg@10 {s}": v for s, v in dev.items()}})
    mean = {s: statistics.mean(dev_rows[m][s] for m in dev_rows) for s in systems(None) if s.startswith("weighted")}
    best_weighted = max(mean, key=mean.get)
    rrf_mean = statistics.mean(dev_rows[m]["rrf"] for m in dev_rows)
    chosen = "rrf" if rrf_mean >= mean[best_weighted] else best_weighted
    record(results, {"stage": "choice", "models": list(dev_rows), "mean_dev_ndcg@10 rrf": round(rrf_mean, 4),
                     **{f"mean_dev_ndcg@10 {s}": round(v, 4) for s, v in mean.items()}, "chosen": chosen,
                     "best_weighted": best_weighted, "default_in_code": DEFAULT_HYBRID.model_dump()})
    weight = float(best_weighted.split("-")[1])
    chosen_settings = systems(weight)[chosen if chosen == "rrf" else f"weighted-{weight}"]
    for name, retriever in retrievers.items():
        row = {"stage": "test", "model": name, "queries": len(test_queries.ids)}
        for system, how in systems(weight).items():
            metrics = evaluate_run(test_qrels, run_of(retriever, test_queries.ids, test_queries.texts, how),
                                   ("ndcg@10", "recall@100"))
            row[f"ndcg@10 {system}"] = round(metrics["ndcg@10"], 4)
            row[f"recall@100 {system}"] = round(metrics["recall@100"], 4)
        row.update(latency(retriever, test_queries.texts[: args.latency_queries], args.repeats, chosen_settings))
        row["torch_threads"] = torch.get_num_threads()
        record(results, row)


if __name__ == "__main__":
    main()

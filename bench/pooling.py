"""Token pooling on a BEIR set: what ``--pool-factor`` costs in quality and saves in vectors.

    python bench/pooling.py --model base --model runs/journey/run/best --work runs/hybrid-bench

For each model and pool factor (default 1 and 2): an index of the whole corpus
(``Retriever.index(pool_factor=N)``, documents split into chunks, nbits 2; an index already in
``--work`` under the same name is reused, the names those of ``bench/hybrid.py`` for factor 1,
so that its indexes serve). On the test split, once: nDCG@10 and Recall@100 of MaxSim through
the index at the default search settings, the vectors stored (tokens), bytes on disk of the
index's files but the documents' texts and its BM25 side, and per-query latency, one query at
a time, query encoding included (median and p95 over the first ``--latency-queries`` queries,
``--repeats`` times, the factors interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hybrid import run_of
from results_log import record

from maxsim.data.training_folder import read_beir_split
from maxsim.evaluation import evaluate_run
from maxsim.index import is_index
from maxsim.retriever import Retriever

HERE = Path(__file__).resolve().parent


def vector_bytes(folder: Path) -> int:
    """Bytes of an index's files, without its texts (SQLite) and BM25 side (``bm25-*``)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.suffix.startswith(".sqlite")
               and not any(part.startswith("bm25-") for part in p.relative_to(folder).parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--model", action="append", required=True, help="'base' or a checkpoint; repeat")
    parser.add_argument("--pool-factor", type=int, action="append", help="repeat; default 1 and 2")
    parser.add_argument("--work", default="runs/hybrid-bench", help="where the indexes are built (kept)")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    factors = args.pool_factor or [1, 2]
    results = HERE / "results" / "pooling.jsonl"
    queries, corpus, qrels = read_beir_split(args.data, "test")
    for model in args.model:
        name = "base" if model == "base" else Path(model).resolve().parent.parent.name + "/" + Path(model).name
        retrievers, rows = {}, {}
        for factor in factors:
            folder = Path(args.work) / (name.replace("/", "-") + ("" if factor == 1 else f"-pool{factor}"))
            row = {"model": name, "pool_factor": factor, "queries": len(queries.ids), "index": str(folder)}
            if not is_index(folder):
                start = time.perf_counter()
                Retriever.from_pretrained(None if model == "base" else model).index(
                    corpus.texts, path=folder, document_ids=corpus.ids, pool_factor=factor)
                row["build_s"] = round(time.perf_counter() - start, 1)
                print(f"{name}, pool factor {factor}: indexed in {row['build_s']} s", file=sys.stderr)
            retriever = retrievers[factor] = Retriever.from_index(folder)
            if retriever.index_data.settings.pool_factor != factor:
                raise SystemExit(f"{folder} was built with pool factor {retriever.index_data.settings.pool_factor}")
            run = run_of(retriever, queries.ids, queries.texts, None)
            metrics = evaluate_run(qrels, run, ("ndcg@10", "recall@100"))
            row.update({"ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4),
                        "tokens": retriever.index_data.n_tokens, "chunks": retriever.index_data.n_chunks,
                        "vector_bytes": vector_bytes(folder)})
            rows[factor] = row
        texts = queries.texts[: args.latency_queries]
        times = {factor: [] for factor in factors}
        for retriever in retrievers.values():
            retriever.search(texts[0], k=10)  # warm-up
        for _ in range(args.repeats):
            for text in texts:
                for factor, retriever in retrievers.items():
                    start = time.perf_counter()
                    retriever.search(text, k=10)
                    times[factor].append(1000 * (time.perf_counter() - start))
        for factor, row in rows.items():
            values = sorted(times[factor])
            row["search_ms_p50"] = round(statistics.median(values), 2)
            row["search_ms_p95"] = round(values[int(0.95 * (len(values) - 1))], 2)
            row["tokens_vs_factor_1"] = round(row["tokens"] / rows[factors[0]]["tokens"], 3)
            row["torch_threads"] = torch.get_num_threads()
            record(results, row)


if __name__ == "__main__":
    main()

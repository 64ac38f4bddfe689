"""A maxsim index copied into a Qdrant collection (the client's local mode, in this process):
MUVERA's first stage against exact MaxSim over the same stored vectors, on a BEIR test split.

    python bench/qdrant.py --index runs/hybrid-bench/journey-best

Copies the index (``maxsim export-index``: its stored vectors, nothing encoded again) into a
local collection, then for the first ``--queries`` test queries: the 10 best documents with the
first stage off (exact MaxSim over every point) and with it on at several candidate counts;
recall@10 of the first stage against exact, nDCG@10 of each, and the time per query. The local
mode scores in Python, one point at a time: its times say nothing of a Qdrant server's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from results_log import record

from maxsim.data.training_folder import read_beir_split
from maxsim.evaluation import evaluate_run
from maxsim.index import IndexData
from maxsim.qdrant import export_index
from maxsim.retriever import Retriever

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--work", default="runs/qdrant-bench")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400])
    args = parser.parse_args()
    queries, _, qrels = read_beir_split(args.data, "test")
    ids, texts = queries.ids[: args.queries], queries.texts[: args.queries]
    qrels = {q: qrels[q] for q in ids if q in qrels}
    folder = Path(args.work) / "collection"
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    export_index(IndexData.load(args.index), str(folder), "bench")
    export_s = time.perf_counter() - start
    retriever = Retriever.from_qdrant(str(folder), "bench")
    q_vectors, q_mask = retriever.query_vectors(texts)

    def run(first_stage: bool, candidates: int | None):
        retriever.backend.first_stage = first_stage
        times, hits = [], []
        for i in range(len(texts)):
            begin = time.perf_counter()
            hits.append(retriever.search_vectors(q_vectors[i : i + 1], q_mask[i : i + 1], 10, ndocs=candidates)[0])
            times.append(1000 * (time.perf_counter() - begin))
        found = {q: {h.document_id: h.score for h in row} for q, row in zip(ids, hits)}
        return found, statistics.median(times)

    exact, exact_ms = run(False, None)
    row = {"index": args.index, "queries": len(ids), "documents": retriever.document_count(),
           "export_s": round(export_s, 1), "muvera": retriever.backend.collection.settings.muvera,
           "exact ndcg@10": round(evaluate_run(qrels, exact, ("ndcg@10",))["ndcg@10"], 4),
           "exact ms_p50 (local mode)": round(exact_ms, 1)}
    for candidates in args.candidates:
        found, ms = run(True, candidates)
        recall = statistics.mean(len(set(found[q]) & set(exact[q])) / max(1, len(exact[q])) for q in ids)
        row[f"muvera {candidates} recall@10 vs exact"] = round(recall, 4)
        row[f"muvera {candidates} ndcg@10"] = round(evaluate_run(qrels, found, ("ndcg@10",))["ndcg@10"], 4)
        row[f"muvera {candidates} ms_p50 (local mode)"] = round(ms, 1)
    record(HERE / "results" / "qdrant.jsonl", row)


if __name__ == "__main__":
    main()

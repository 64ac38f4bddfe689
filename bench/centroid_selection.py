"""Choosing centroids in each precision (float32, bf16, int8), and among each token's best
groups (``grouped``: int8, the default from 16,384 centroids), on one index, side by side.

    python bench/centroid_selection.py runs/search-engines/scifact-sentences-50k [--selections int8 grouped]

FOLDER is a corpus folder made by ``bench/search_engines.py`` (its ``maxsim-2`` index, queries and
exact rankings). For each selection, one query at a time on one thread at the default settings:
p50 of the whole search and of the selection alone (each query token's best centroids
found), and recall@10 and @100 against exact MaxSim. bf16 is emulated, and slow, on a CPU
without native bf16: the row is then a check of agreement, not of speed. Rows are appended to
``bench/results/centroid_selection.jsonl``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from results_log import record

from maxsim.index import IndexData, search
from maxsim.index.centroid_selection import SELECTION_PRECISIONS, CentroidSelector
from maxsim.model import cpu_computes_bf16


def recall(data: IndexData, positions: np.ndarray, exact: np.ndarray, k: int) -> float:
    docs = [data.chunk_documents(row[row >= 0]) for row in positions]
    return round(float(np.mean([len(np.intersect1d(d[:k], e[:k])) / k for d, e in zip(docs, exact)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--selections", nargs="+", choices=(*SELECTION_PRECISIONS, "grouped"),
                        default=[*SELECTION_PRECISIONS, "grouped"])
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "centroid_selection.jsonl"))
    args = parser.parse_args()
    folder = Path(args.folder)
    torch.set_num_threads(1)
    data = IndexData.load(folder / "maxsim-2")
    q, mask = torch.from_numpy(np.load(folder / "queries.npy")), torch.from_numpy(np.load(folder / "query_mask.npy"))
    exact = np.load(folder / "exact.npy")
    search(data, q, mask, 10)  # every query once first: each selection meets an index already mapped
    for selection_name in args.selections:
        grouped = selection_name == "grouped"
        precision = "int8" if grouped else selection_name
        data.selector = CentroidSelector(data.centroid_vectors, precision, grouped)
        for k in (10, 100):
            search(data, q[:5], mask[:5], k)  # warm: compile, map
            latencies, rows = [], []
            for i in range(len(q)):
                started = time.perf_counter()
                rows.append(search(data, q[i : i + 1], mask[i : i + 1], k).positions[0])
                latencies.append(time.perf_counter() - started)
            selection = []
            for i in range(len(q)):
                query = q[i][mask[i]]
                started = time.perf_counter()
                data.selector.top(query, 9 if k <= 10 else 65)
                selection.append(time.perf_counter() - started)
            positions = np.stack(rows)
            record(Path(args.results), {
                "corpus": folder.name, "selection": "grouped" if grouped else "every", "precision": precision,
                "cpu_computes_bf16": cpu_computes_bf16(),
                "centroids": len(data.centroids), "k": k, "threads": 1,
                "search_p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
                "selection_p50_ms": round(1e3 * float(np.percentile(selection, 50)), 3),
                "recall_at_10": recall(data, positions, exact, 10),
                "recall_at_100": recall(data, positions, exact, 100) if k >= 100 else None})


if __name__ == "__main__":
    main()

"""Choosing the index's default search settings on SciFact's dev slice (never on test).

    python bench/search_defaults.py --model runs/journey/run/best --dev runs/journey/data/dev

Encodes the dev queries and the dev corpus with ``--model`` (as ``bench/search_engines.py``
prepares a corpus), builds maxsim's index of it at each ``--nbits``, ranks every document by exact
MaxSim over the float32 vectors, then searches the index one query at a time on one thread at
each setting of the grid (``ncells`` x ``centroid_score_threshold`` x ``ndocs``). Per setting:
p50 ms, recall@10 (and @100 at k=100) against exact MaxSim, and nDCG@10 beside exact MaxSim's.
The defaults (:func:`maxsim.index.search_defaults`) are the fastest setting whose nDCG@10 is
within 0.005 of exact and whose recall@10 is above 0.90. With ``--every-chunk``, one more row per
nbits scores every chunk of the index exactly from its stored vectors (``ncells`` and ``ndocs``
"all"): the codec's ceiling, what no search setting can pass. Appends each row to
bench/results/search_defaults.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_log import record  # noqa: E402
from search_engines import MaxsimEngine, prepare, quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dev", required=True, help="a BEIR folder with a dev split (DATA/dev of maxsim prepare)")
    parser.add_argument("--workdir", default="runs/search-defaults")
    parser.add_argument("--nbits", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--ncells", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5])
    parser.add_argument("--ndocs", type=int, nargs="+", default=[0, 32])
    parser.add_argument("--missing-scales", type=float, nargs="+", default=[None],
                        help="shares of the missing similarity imputed (maxsim.index.warp.MISSING_SCALE; "
                        "default: its own)")
    parser.add_argument("--every-chunk", action="store_true", help="also score every chunk exactly (the ceiling)")
    args = parser.parse_args()
    from maxsim.index import IndexData, search, warp
    from maxsim.index.search import best_chunks

    folder = Path(args.workdir) / "scifact-dev"
    prepare("scifact", folder, Path(args.dev), args.model, "base", split="dev")  # encodes on every core
    torch.set_num_threads(1)  # searches are timed on one thread
    meta = json.loads((folder / "meta.json").read_text())
    q, mask = torch.from_numpy(np.load(folder / "queries.npy")), torch.from_numpy(np.load(folder / "query_mask.npy"))
    exact = quality(folder, np.load(folder / "exact.npy"))
    print(f"exact MaxSim: {exact}", flush=True)
    for nbits in args.nbits:
        path = folder / f"maxsim-{nbits}"
        if not path.exists():
            MaxsimEngine(path, nbits).build(folder, meta)
        data = IndexData.load(path)
        command = "python bench/search_defaults.py " + " ".join(sys.argv[1:])
        if args.every_chunk:
            every = np.arange(data.n_chunks)
            found = [np.pad(data.chunk_documents(best_chunks(data, q[i : i + 1], mask[i : i + 1], every, 10)[0]),
                            (0, 10 - min(10, meta["passages"])), constant_values=-1) for i in range(len(q))]
            record(HERE / "results" / "search_defaults.jsonl",
                   {"corpus": "scifact-dev", "queries": len(q), "documents": meta["passages"], "nbits": nbits,
                    "k": 10, "ncells": "all", "ndocs": "all", **quality(folder, np.stack(found)),
                    "exact_ndcg_at_10": exact["ndcg_at_10"]}, command=command)
        own_scale = warp.MISSING_SCALE
        grid = itertools.product(args.k, args.ncells, args.thresholds, args.ndocs, args.missing_scales)
        for k, ncells, threshold, ndocs, scale in grid:
            warp.MISSING_SCALE = own_scale if scale is None else scale
            for i in range(3):
                search(data, q[i : i + 1], mask[i : i + 1], k, ncells, threshold, ndocs)
            latencies, found = [], []
            for i in range(len(q)):
                started = time.perf_counter()
                ranking = search(data, q[i : i + 1], mask[i : i + 1], k, ncells, threshold, ndocs)
                latencies.append(time.perf_counter() - started)
                found.append(np.pad(data.chunk_documents(ranking.positions[0]), (0, k - len(ranking.positions[0])),
                                    constant_values=-1))
            figures = {"corpus": "scifact-dev", "queries": len(q), "documents": meta["passages"], "nbits": nbits,
                       "k": k, "ncells": ncells, "centroid_score_threshold": threshold, "ndocs": ndocs,
                       "missing_scale": warp.MISSING_SCALE,
                       "search_p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
                       **quality(folder, np.stack(found)), "exact_ndcg_at_10": exact["ndcg_at_10"]}
            record(HERE / "results" / "search_defaults.jsonl", figures, command=command)


if __name__ == "__main__":
    main()

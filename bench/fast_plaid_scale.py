"""fast-plaid on the vectors of bench/scale.py: build, search latency, recall@10 against exact
MaxSim, bytes per token. Run by bench/scale.py with the python of a virtual environment where
``pip install fast-plaid`` was run (it pins its own torch, a CUDA build; here it runs on the CPU).

    /path/to/fast-plaid-venv/bin/python bench/fast_plaid_scale.py --passages 10000 --workdir W --exact E.npy

Settings: nbits 2 (as maxsim's default), fast-plaid's own defaults otherwise (create:
kmeans_niters 4, max_points_per_centroid 256; search: n_ivf_probe 8, n_full_scores 4096), one
query at a time. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_vectors import DIM, Synthetic  # noqa: E402

N_QUERIES = 200


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return float("nan")


def main() -> None:
    from fast_plaid import search as fast_plaid_search

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--exact", required=True)
    args = parser.parse_args()
    n = args.passages
    synthetic = Synthetic(n)
    documents = [torch.from_numpy(v) for v in synthetic.passages(0, n)]
    path = Path(args.workdir) / f"fast-plaid-{n}"
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    index = fast_plaid_search.FastPlaid(index=str(path), device="cpu")
    index.create(documents_embeddings=documents, nbits=2)
    build_s = time.perf_counter() - started
    build_rss = peak_rss_gb()
    del documents
    queries, _ = synthetic.queries(N_QUERIES)
    q = torch.from_numpy(queries)
    index.search(q[:5], top_k=10, show_progress=False)  # warm
    latencies, found = [], []
    for i in range(len(q)):
        started = time.perf_counter()
        hits = index.search(q[i : i + 1], top_k=10, show_progress=False)[0]
        latencies.append(time.perf_counter() - started)
        found.append(np.array([doc for doc, _ in hits], dtype=np.int64))
    exact = np.load(args.exact)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    import fast_plaid

    print(json.dumps({
        "version": getattr(fast_plaid, "__version__", "1.7.0.2110"), "torch": torch.__version__,
        "build_s": round(build_s, 1), "peak_rss_gb": build_rss,
        "bytes_per_token": round(size / (n * synthetic.passages(0, 1).shape[1]), 2),
        "search_p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 2),
        "search_p95_ms": round(1e3 * float(np.percentile(latencies, 95)), 2),
        "recall_at_10": round(float(np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact)])), 4),
        "dim": DIM}))


if __name__ == "__main__":
    main()

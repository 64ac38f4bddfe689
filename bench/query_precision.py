"""Query encoding in each precision against float32: agreement, dev quality and one query's time.

    python bench/query_precision.py --model runs/journey/run/best --dev runs/journey/data/dev

For each precision (``float32``, ``bf16``, ``int8``; ``auto`` is bf16 where the CPU computes it
natively, else float32): the mean cosine of its query token vectors with float32's (over the
tokens MaxSim uses), dev nDCG@10 by exact MaxSim over the dev corpus (documents encoded once, as
an index encodes them), and the p50 / p95 milliseconds of encoding one query at a time. On a CPU
without native bf16 the bf16 row's time is that of emulation (slow): only its agreement and
nDCG mean anything there. Appends one row per precision to bench/results/query_precision.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_log import record  # noqa: E402

from maxsim.backends import Chunking  # noqa: E402
from maxsim.data.training_folder import read_beir_split  # noqa: E402
from maxsim.evaluation import evaluate_run  # noqa: E402
from maxsim.model import cpu_computes_bf16  # noqa: E402
from maxsim.retriever import Retriever  # noqa: E402


def exact_top(vectors: torch.Tensor, lengths: torch.Tensor, q: torch.Tensor, mask: torch.Tensor,
              k: int) -> list[np.ndarray]:
    """Each query's ``k`` best documents by exact MaxSim: vectors (T, dim) back to back, lengths (N,)."""
    out = []
    for i in range(len(q)):
        sim = vectors @ q[i][mask[i]].T
        scores = torch.segment_reduce(sim, "max", lengths=lengths, axis=0).sum(dim=1)
        out.append(scores.topk(min(k, len(scores))).indices.numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dev", required=True, help="a BEIR folder with a dev split (DATA/dev of maxsim prepare)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bf16", "int8"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    queries, corpus, qrels = read_beir_split(args.dev, args.split)
    retriever = Retriever.from_pretrained(args.model)
    vectors, doclens, _, _ = retriever.encoder.chunks(corpus.texts, Chunking(False, None), 64)
    vectors = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    lengths = torch.from_numpy(doclens.astype(np.int64))
    reference = None
    for precision in args.precisions:
        retriever.encoder.query_precision = precision
        q, mask = retriever.query_vectors(queries.texts)
        if reference is None:
            retriever.encoder.query_precision = "float32"
            reference = retriever.query_vectors(queries.texts)[0]
            retriever.encoder.query_precision = precision
        cosine = torch.nn.functional.cosine_similarity(q[mask], reference[mask], dim=-1)
        top = exact_top(vectors, lengths, q, mask, 10)
        run = {qid: {corpus.ids[d]: float(10 - r) for r, d in enumerate(row)} for qid, row in zip(queries.ids, top)}
        ndcg = evaluate_run({q_: v for q_, v in qrels.items() if v}, run, ("ndcg@10",))["ndcg@10"]
        for text in queries.texts[:5]:  # warm: the trace of one query's shape
            retriever.query_vectors([text])
        times = []
        for text in queries.texts:
            started = time.perf_counter()
            retriever.query_vectors([text])
            times.append(time.perf_counter() - started)
        figures = {"precision": precision, "native_bf16": cpu_computes_bf16(), "threads": torch.get_num_threads(),
                   "queries": len(queries.ids), "documents": len(corpus.ids),
                   "mean_token_cosine": round(float(cosine.mean()), 5),
                   "min_token_cosine": round(float(cosine.min()), 4),
                   "ndcg_at_10": round(ndcg, 4), "encode_p50_ms": round(1e3 * float(np.percentile(times, 50)), 2),
                   "encode_p95_ms": round(1e3 * float(np.percentile(times, 95)), 2)}
        print(figures, flush=True)
        record(HERE / "results" / "query_precision.jsonl", figures,
               command="python bench/query_precision.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()

"""How long data preparation takes on SciFact's train split: BM25 and dense mining.

    python bench/prepare.py                 # BM25, then dense mining with MiniLM-ColBERT
    python bench/prepare.py --skip-dense

BM25: the whole ``prepare_training_data`` run (reading, merging, bm25s indexing of 5,183
documents, ranking 809 queries, sampling, writing) and the mining part alone. Dense: ranking the
same queries by exact MaxSim with the untrained MiniLM-ColBERT (all-MiniLM-L6-v2 + a fresh
projection), reported as documents encoded per second, since encoding bounds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from maxsim.data.mining import BM25Miner, DenseMiner
from maxsim.data.prepare import prepare_training_data
from maxsim.data.training_folder import read_beir_split
from maxsim.model import ColBERT

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads")

    queries, corpus, _ = read_beir_split(args.scifact, "train")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = prepare_training_data([args.scifact], Path(tmp) / "out", mine="bm25", negatives=10)
        whole = time.perf_counter() - started
    started = time.perf_counter()
    miner = BM25Miner(corpus.texts)
    miner.rank(queries.texts, 100)
    mining = time.perf_counter() - started
    result = {"bm25": {"prepare_s": round(whole, 2), "mining_s": round(mining, 2),
                       "queries": len(queries), "documents": len(corpus), "triples": manifest["counts"]["triples"]}}
    print(f"bm25   whole prepare {whole:.2f} s, mining alone {mining:.2f} s "
          f"({len(queries)} queries x {len(corpus)} documents)")
    if not args.skip_dense:
        model = ColBERT.from_pretrained()
        started = time.perf_counter()
        dense = DenseMiner(model, corpus.texts)
        tokenise = time.perf_counter() - started
        dense.rank(queries.texts, 100)
        total = time.perf_counter() - started
        result["dense"] = {"seconds": round(total, 1), "tokenise_s": round(tokenise, 2),
                           "docs_per_s": round(len(corpus) / total, 1), "doc_maxlen": model.settings.doc_maxlen}
        print(f"dense  {total:.1f} s for {len(corpus)} documents + {len(queries)} queries: "
              f"{len(corpus) / total:.1f} docs/s (doc_maxlen {model.settings.doc_maxlen})")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "prepare.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

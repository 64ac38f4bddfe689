"""The dev evaluation inside `maxsim train`: its time and metric in float32 and through the bf16
fast path, on the whole dev corpus and on the --dev-max-documents cut.

    python bench/dev_eval.py --model runs/demo/best --dev runs/scifact-train/dev --cut 1000

On a CPU without native bf16 (AVX512-BF16 / AMX) the bf16 weights are emulated: the metric is
what a bf16 CPU computes (products of bf16 numbers, summed in float32) but the time is not
(it is slower here, not faster), so only the metric difference is meaningful on such a CPU.
Writes bench/results/dev_eval.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from maxsim.data.training_folder import read_beir_split
from maxsim.evaluation import evaluate_run, run_from_ranking
from maxsim.exact_search import exact_search
from maxsim.model import ColBERT
from maxsim.model.inference import InferenceForward, cpu_computes_bf16
from maxsim.training.validation import DevSet, smaller_corpus

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dev", required=True, help="a BEIR folder with a dev split (DATA/dev of maxsim prepare)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--cut", type=int, default=1000, help="--dev-max-documents to compare with")
    parser.add_argument("--full", action="store_true", help="also the whole dev corpus")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--output", default=str(HERE / "results" / "dev_eval.json"))
    args = parser.parse_args()
    queries, corpus, qrels = read_beir_split(args.dev, args.split)
    whole = DevSet(queries.ids, queries.texts, corpus, qrels)
    model = ColBERT.from_pretrained(args.model)
    sets = [("cut", smaller_corpus(whole, args.cut, "en"))] + ([("whole", whole)] if args.full else [])
    rows = []
    for name, dev in sets:
        tokens = model.tokenize_documents(dev.corpus.texts)
        for precision in args.precisions.split(","):
            forward = InferenceForward(model, dtype=torch.bfloat16, trace=False) if precision == "bf16" else None
            started = time.perf_counter()
            ranking = exact_search(model, dev.query_texts, tokens, 100, 64, forward=forward)
            seconds = time.perf_counter() - started
            metrics = evaluate_run(dev.qrels, run_from_ranking(dev.query_ids, dev.corpus.ids, ranking),
                                   ("ndcg@10", "mrr@10"))
            row = {"corpus": name, "documents": len(dev.corpus), "precision": precision, "seconds": round(seconds, 1),
                   **{k: round(v, 4) for k, v in metrics.items()}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"machine": platform.processor() or platform.machine(), "native_bf16": cpu_computes_bf16(),
              "threads": torch.get_num_threads(), "model": args.model, "dev": args.dev, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

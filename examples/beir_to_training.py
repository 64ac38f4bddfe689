"""Turn a BEIR split into a maxsim training folder, with seeded random negatives.

A stopgap for the README demo until ``maxsim prepare`` (hard-negative mining, pairs, CSV and
Parquet input) lands: every qrels pair (score > 0) becomes one line of triples.jsonl, with
``--negatives`` documents drawn at random (by ``--seed``) from the corpus, never one of the
query's positives.

    python examples/beir_to_training.py ../shared/data/scifact --split train --output runs/scifact-train
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from maxsim.data.training_folder import read_beir_split
from maxsim.files import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("beir", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    queries, corpus, qrels = read_beir_split(args.beir, args.split)
    rng = random.Random(args.seed)
    triples = []
    for qid in sorted(qrels):
        positives = sorted(qrels[qid])
        negatives: list[str] = []
        while len(negatives) < args.negatives:
            candidate = corpus.ids[rng.randrange(len(corpus))]
            if candidate not in qrels[qid] and candidate not in negatives:
                negatives.append(candidate)
        for positive in positives:
            triples.append({"query_id": qid, "positive_ids": [positive], "negative_ids": negatives})
    out = args.output
    atomic_write_text(out / "queries.jsonl", "".join(
        json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(queries.ids, queries.texts)))
    atomic_write_text(out / "corpus.jsonl", "".join(
        json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(corpus.ids, corpus.texts)))
    atomic_write_text(out / "triples.jsonl", "".join(json.dumps(t) + "\n" for t in triples))
    print(f"{len(queries)} queries, {len(corpus)} documents, {len(triples)} triples -> {out}")


if __name__ == "__main__":
    main()

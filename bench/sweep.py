"""Compare training recipes on a dev slice: prepare a BEIR train split, train each variant, report dev curves.

Only the dev slice that ``maxsim prepare --dev-fraction`` holds out of the *train* split is
evaluated here; the test split is never read. Use it to choose the settings of a recipe
(``bench/journey.sh``), then run the recipe once and report its test figure.

    python bench/sweep.py --beir ../shared/data/scifact --work runs/sweep --device cuda \
        --end-by $(( $(date +%s) + 600 )) --summary runs/sweep/summary.json

Variants run in the order listed in ``VARIANTS``; none is started after ``--end-by``
(seconds since the epoch). Each prints one JSON line: its settings, the dev nDCG@10 at every
evaluation, the best step and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from maxsim import TrainConfig, Trainer, prepare_training_data

JOURNEY_PREPARE = dict(dev_fraction=0.1, negatives=10, min_rank=10, max_rank=100)
JOURNEY_TRAIN = dict(batch_size=32, learning_rate=3e-5, doc_maxlen=180, epochs=4, eval_every=25)

# (name, prepare overrides, train overrides): the first is the recipe as it stands.
VARIANTS = [
    ("journey", {}, {}),
    ("epochs8", {}, dict(epochs=8)),
    ("lr6e-5", {}, dict(learning_rate=6e-5)),
    ("epochs8-lr6e-5", {}, dict(epochs=8, learning_rate=6e-5)),
    ("epochs6-lr1e-4", {}, dict(epochs=6, learning_rate=1e-4)),
    ("hard-negatives-epochs8", dict(min_rank=3, max_rank=50), dict(epochs=8)),
    ("nway4", {}, dict(nway=4)),
    ("epochs8-seed7", {}, dict(epochs=8, seed=7)),
    ("epochs8-lr6e-5-seed7", {}, dict(epochs=8, learning_rate=6e-5, seed=7)),
    ("epochs6-lr6e-5", {}, dict(epochs=6, learning_rate=6e-5)),
    ("epochs8-lr1e-4", {}, dict(epochs=8, learning_rate=1e-4)),
    ("epochs6-lr6e-5-seed7", {}, dict(epochs=6, learning_rate=6e-5, seed=7)),
    ("epochs10-lr6e-5", {}, dict(epochs=10, learning_rate=6e-5)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", default="../shared/data/scifact")
    parser.add_argument("--work", default="runs/sweep")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--end-by", type=float, default=float("inf"), help="start no variant after this time")
    parser.add_argument("--only", nargs="*", help="names of the variants to run")
    parser.add_argument("--summary", help="write all results to this JSON file as they come")
    parser.add_argument("--max-steps", type=int, help="train every variant this many steps (a quick check)")
    args = parser.parse_args()
    work = Path(args.work)
    prepared: dict[str, Path] = {}
    results = []
    for name, prep_over, train_over in VARIANTS:
        if args.only and name not in args.only:
            continue
        if time.time() > args.end_by:
            print(json.dumps({"variant": name, "skipped": "out of time"}), flush=True)
            continue
        start = time.time()
        prep = {**JOURNEY_PREPARE, **prep_over}
        key = json.dumps(prep, sort_keys=True)
        if key not in prepared:
            prepared[key] = work / f"data-{len(prepared)}"
            prepare_training_data(args.beir, prepared[key], split="train", **prep)
        train = {**JOURNEY_TRAIN, **train_over}
        if args.max_steps:
            train["max_steps"] = args.max_steps
        output = work / name
        cfg = TrainConfig(data=prepared[key], output=output, device=args.device, progress_bar=False, **train)
        best = Trainer(cfg).train()
        rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
        curve = {r["step"]: round(r["dev_ndcg@10"], 4) for r in rows if "dev_ndcg@10" in r}
        info = json.loads((best / "best.json").read_text())
        result = {"variant": name, "prepare": prep, "train": train, "dev_ndcg@10": curve,
                  "best_step": info["step"], "best_dev_ndcg@10": round(info["value"], 4),
                  "seconds": round(time.time() - start, 1)}
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.summary:
            Path(args.summary).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

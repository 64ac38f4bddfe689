"""The journey's test figures, read once, for a run whose best checkpoint and search configuration
were chosen on dev: index the test corpus with best/, then evaluate the test split with BM25, the
model alone (exact MaxSim), the configuration chosen on dev (through the index, as search.json
says) and the model alone through the index. Appends one row to bench/results/journey.jsonl.

    python bench/journey_report.py --run RUN --beir BEIR_DIR --work WORK [--seconds N] [--command CMD]

``bash bench/journey.sh`` calls it after training; ``--command`` and ``--seconds`` say what trained
the run and how long the training command took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import yaml
from results_log import record

HERE = Path(__file__).resolve().parent


def maxsim(*args: str) -> dict:
    """Run a maxsim command; its last line printed, as JSON."""
    done = subprocess.run(["maxsim", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the training run's output folder (with best/)")
    parser.add_argument("--beir", required=True, help="the BEIR folder whose test split is read")
    parser.add_argument("--work", required=True, help="a folder for the index and the runs' files")
    parser.add_argument("--seconds", type=int, help="the training command's wall time, in seconds")
    parser.add_argument("--command", help="what trained the run")
    args = parser.parse_args()
    run, work, beir = Path(args.run), Path(args.work), args.beir
    best = run / "best"
    index = work / "index"
    subprocess.run(["maxsim", "index", "build", beir, "--model", str(best), "--output", str(index), "--overwrite"],
                   check=True)
    test = {"bm25": maxsim("eval", "--model", "bm25", "--data", beir, "--split", "test"),
            "model": maxsim("eval", "--model", str(best), "--data", beir, "--split", "test"),
            "chosen": maxsim("eval", "--index", str(index), "--data", beir, "--split", "test"),
            "index_alone": maxsim("eval", "--index", str(index), "--data", beir, "--split", "test", "--no-hybrid")}
    info = json.loads((best / "best.json").read_text())
    choice = json.loads((best / "search.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    config = {k: config[k] for k in ("epochs", "max_steps", "max_time", "learning_rate", "batch_size", "doc_maxlen",
                                     "attention_dropout", "eval_every", "early_stopping_patience")}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dev = choice["dev"]
    record(HERE / "results" / "journey.jsonl", {
        "dataset": Path(beir).name, "settings": config,
        "train_s": args.seconds, "steps_trained": max(r["step"] for r in rows),
        "best_step": info["step"], "dev_queries": dev["queries"],
        "dev_ndcg_at_10": {"maxsim": dev["maxsim"]["ndcg@10"], "bm25": dev["bm25"]["ndcg@10"],
                           "best_fusion": dev["best_fusion"]["ndcg@10"], "step_0": info["baselines"]["step_0"]},
        "chosen": choice["search"], "chosen_hybrid": choice["hybrid"], "best_fusion": dev["best_fusion"]["name"],
        "p_value": choice["test"]["p_value"],
        "test": {name: {"ndcg_at_10": r["ndcg@10"], "recall_at_100": r["recall@100"]} for name, r in test.items()},
        "test_search": test["chosen"].get("search"),
    }, command=args.command)


if __name__ == "__main__":
    main()

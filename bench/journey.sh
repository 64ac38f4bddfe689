#!/usr/bin/env bash
# The README's recipe end to end on a BEIR folder with a train split, then SciFact's test split once:
# prepare the train split (BM25 negatives, 10% dev slice) -> train from all-MiniLM-L6-v2 (best
# checkpoint and search configuration chosen on the dev slice) -> index it -> evaluate the test
# split: BM25, the model alone (exact MaxSim) and the configuration chosen on dev (through the index).
# Appends one row to bench/results/journey.jsonl; the last line printed is that row.
#
#   bash bench/journey.sh [BEIR_DIR] [WORK_DIR]
#
# Settings were chosen on SciFact's dev slice, never on test (BENCHMARKS.md, "The journey"):
# attention dropout 0 (the CPU's fused attention kernel) and 20 epochs at lr 6e-5, early
# stopping after 4 evaluations without a gain. Override with EPOCHS, LR, ATTENTION_DROPOUT,
# PATIENCE or MAX_TIME (a budget instead of epochs, e.g. 40m). Needs `pip install -e .` first.
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
WORK=${2:-runs/journey}
EPOCHS=${EPOCHS:-20}
LR=${LR:-6e-5}
ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0}
PATIENCE=${PATIENCE:-4}
MAX_TIME=${MAX_TIME:-}
if [[ -e "$WORK" && ! -f "$WORK/.journey-bench" ]]; then  # never delete a folder this script did not write
    echo "error: $WORK exists and was not made by $0: choose another WORK_DIR" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.journey-bench"
length=(--epochs "$EPOCHS")
if [[ -n "$MAX_TIME" ]]; then length=(--max-time "$MAX_TIME"); fi
start=$(date +%s)
maxsim prepare "$BEIR" --split train --output "$WORK/data" --dev-fraction 0.1 --negatives 10 --min-rank 10 --max-rank 100 >&2
best=$(maxsim train --data "$WORK/data" --output "$WORK/run" "${length[@]}" --batch-size 32 \
    --learning-rate "$LR" --doc-maxlen 180 --attention-dropout "$ATTENTION_DROPOUT" --eval-every 52 \
    --early-stopping-patience "$PATIENCE" --no-progress-bar 2> >(tee "$WORK/train.log" >&2) | tail -n 1)
trained=$(( $(date +%s) - start ))
echo "journey: prepare and train took $trained s" >&2
maxsim index build "$BEIR" --model "$best" --output "$WORK/index" >&2
maxsim eval --model bm25 --data "$BEIR" --split test --output "$WORK/test-bm25" | tail -n 1 > "$WORK/test-bm25.json"
maxsim eval --model "$best" --data "$BEIR" --split test --output "$WORK/test-model" | tail -n 1 > "$WORK/test-model.json"
maxsim eval --index "$WORK/index" --data "$BEIR" --split test --output "$WORK/test-chosen" | tail -n 1 > "$WORK/test-chosen.json"
maxsim eval --index "$WORK/index" --data "$BEIR" --split test --no-hybrid | tail -n 1 > "$WORK/test-index-alone.json"
command="EPOCHS=$EPOCHS LR=$LR ATTENTION_DROPOUT=$ATTENTION_DROPOUT PATIENCE=$PATIENCE MAX_TIME=$MAX_TIME bash $0 $*"
PYTHONPATH="$(dirname "$0")" python - "$(dirname "$0")/results/journey.jsonl" "$WORK" "$trained" "$EPOCHS" "$LR" \
    "$ATTENTION_DROPOUT" "$PATIENCE" "$MAX_TIME" "$command" <<'EOF'
import json, sys
from pathlib import Path
from results_log import record

results, work, trained, epochs, lr, dropout, patience, max_time, command = sys.argv[1:]
work = Path(work)
test = {name: json.loads((work / f"test-{name}.json").read_text()) for name in ("bm25", "model", "chosen", "index-alone")}
best = json.loads((work / "run" / "best" / "best.json").read_text())
choice = json.loads((work / "run" / "best" / "search.json").read_text())
steps = max(json.loads(line)["step"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines())
record(Path(results), {
    "dataset": "scifact", "settings": {"epochs": int(epochs), "learning_rate": float(lr),
                                       "attention_dropout": float(dropout), "early_stopping_patience": int(patience),
                                       "max_time": max_time or None, "batch_size": 32, "doc_maxlen": 180},
    "prepare_and_train_s": int(trained), "steps_trained": steps, "best_step": best["step"],
    "dev": {"queries": choice["dev"]["queries"], "maxsim_ndcg_at_10": choice["dev"]["maxsim"]["ndcg@10"],
            "bm25_ndcg_at_10": choice["dev"]["bm25"]["ndcg@10"],
            "best_fusion": choice["dev"]["best_fusion"]["name"],
            "best_fusion_ndcg_at_10": choice["dev"]["best_fusion"]["ndcg@10"], "p_value": choice["test"]["p_value"]},
    "chosen_configuration": choice["search"], "chosen_hybrid": choice["hybrid"],
    "test": {name: {"ndcg_at_10": r["ndcg@10"], "recall_at_100": r["recall@100"]} for name, r in test.items()},
    "test_chosen_search": test["chosen"].get("search"),
}, command=command)
EOF

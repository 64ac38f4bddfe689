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
# attention dropout 0 (the CPU's fused attention kernel), lr 6e-5, as many steps as 40 minutes
# of training allow on the machine (--max-time), early stopping after 4 evaluations without a
# gain. Override with MAX_TIME, LR, ATTENTION_DROPOUT, PATIENCE, or EPOCHS (a number of epochs
# instead of a budget, with MAX_TIME=). Needs `pip install -e .` first.
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
WORK=${2:-runs/journey}
EPOCHS=${EPOCHS:-8}
LR=${LR:-6e-5}
ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0}
PATIENCE=${PATIENCE:-4}
MAX_TIME=${MAX_TIME-40m}
if [[ -e "$WORK" && ! -f "$WORK/.journey-bench" ]]; then  # never delete a folder this script did not write
    echo "error: $WORK exists and was not made by $0: choose another WORK_DIR" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.journey-bench"
length=(--epochs "$EPOCHS")
if [[ -n "$MAX_TIME" ]]; then length=(--max-time "$MAX_TIME"); fi
maxsim prepare "$BEIR" --split train --output "$WORK/data" --dev-fraction 0.1 --negatives 10 --min-rank 10 --max-rank 100 >&2
start=$(date +%s)
best=$(maxsim train --data "$WORK/data" --output "$WORK/run" "${length[@]}" --batch-size 32 \
    --learning-rate "$LR" --doc-maxlen 180 --attention-dropout "$ATTENTION_DROPOUT" --eval-every 52 \
    --early-stopping-patience "$PATIENCE" --no-progress-bar 2> >(tee "$WORK/train.log" >&2) | tail -n 1)
trained=$(( $(date +%s) - start ))
echo "journey: training took $trained s" >&2
command="EPOCHS=$EPOCHS LR=$LR ATTENTION_DROPOUT=$ATTENTION_DROPOUT PATIENCE=$PATIENCE MAX_TIME=$MAX_TIME bash $0 $*"
python "$(dirname "$0")/journey_report.py" --run "$WORK/run" --beir "$BEIR" --work "$WORK" --seconds "$trained" \
    --command "$command"

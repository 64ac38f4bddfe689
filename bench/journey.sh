#!/usr/bin/env bash
# The README's recipe end to end on a BEIR folder with a train split:
# prepare the train split (BM25 negatives, 10% dev slice) -> train from all-MiniLM-L6-v2
# (best checkpoint chosen on the dev slice) -> evaluate the test split with the best checkpoint.
# The last line printed is the test metrics as one JSON object.
#
#   bash bench/journey.sh [BEIR_DIR] [WORK_DIR]
#
# Settings (8 epochs, lr 6e-5) were chosen on SciFact's dev slice with bench/sweep.py, never on test. Needs `pip install -e .` first.
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
WORK=${2:-runs/journey}
EPOCHS=${EPOCHS:-8}
LR=${LR:-6e-5}
if [[ -e "$WORK" && ! -f "$WORK/.journey-bench" ]]; then  # never delete a folder this script did not write
    echo "error: $WORK exists and was not made by $0: choose another WORK_DIR" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.journey-bench"
start=$(date +%s)
maxsim prepare "$BEIR" --split train --output "$WORK/data" --dev-fraction 0.1 --negatives 10 --min-rank 10 --max-rank 100 >&2
best=$(maxsim train --data "$WORK/data" --output "$WORK/run" --epochs "$EPOCHS" --batch-size 32 \
    --learning-rate "$LR" --doc-maxlen 180 --eval-every 50 --no-progress-bar | tail -n 1)
echo "best checkpoint: $best ($(cat "$best/best.json" | tr -d '\n '))" >&2
echo "journey took $(( $(date +%s) - start )) s before the test evaluation" >&2
maxsim eval --model "$best" --data "$BEIR" --split test --output "$WORK/test" | tail -n 1

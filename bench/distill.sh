#!/usr/bin/env bash
# Issue 13's measurement on a BEIR folder with train and test splits (SciFact by default):
#   round 0  the journey: contrastive, BM25 negatives, from all-MiniLM-L6-v2 (bench/journey.sh's settings)
#   round 1  a fresh all-MiniLM-L6-v2 distilled (KL, --nway $NWAY) from round 0's best, which scores
#            its own top $CANDIDATES documents of the corpus for every training query
#   round 2  round 1's best trained on, with negatives re-mined by it (--mine dense) and scored by
#            the same teacher
# Every round picks its checkpoint on the same dev slice (10% of the training queries, seed 42);
# test is evaluated once per round, as soon as the round ends (so a run cut short keeps the rounds
# it finished); models run on the GPU where one is visible (--device auto). Prints one JSON line
# per round, then the wall time of each step. Needs `pip install -e .`; a GPU makes it minutes instead of hours.
#
#   bash bench/distill.sh [BEIR_DIR] [WORK_DIR]
#   MAX_STEPS=4 NWAY=4 CANDIDATES=8 bash bench/distill.sh tiny_beir /tmp/d   # a smoke run
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
WORK=${2:-runs/distill}
EPOCHS=${EPOCHS:-8}
LR=${LR:-6e-5}
LR_DISTILL=${LR_DISTILL:-$LR}
NWAY=${NWAY:-16}
CANDIDATES=${CANDIDATES:-32}
BATCH=${BATCH:-32}
EVAL_EVERY=${EVAL_EVERY:-50}
BASE=${BASE_MODEL:-}
length=(--epochs "$EPOCHS")
if [[ -n "${MAX_STEPS:-}" ]]; then length=(--max-steps "$MAX_STEPS"); fi
base=()
if [[ -n "$BASE" ]]; then base=(--base-model "$BASE"); fi
common=(--batch-size "$BATCH" --doc-maxlen 180 --eval-every "$EVAL_EVERY" --no-progress-bar "${length[@]}")
if [[ -e "$WORK" && ! -f "$WORK/.distill-bench" ]]; then  # never delete a folder this script did not write
    echo "error: $WORK exists and was not made by $0: choose another WORK_DIR" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK"
touch "$WORK/.distill-bench"
times=()
mx() { ${MAXSIM:-maxsim} "$@"; }  # MAXSIM="python3 -m maxsim" where the package is not installed
step() {  # step NAME COMMAND...: run it, keep its last line of stdout, time it
    local name=$1 started
    shift
    started=$(date +%s)
    last=$("$@" | tail -n 1)
    times+=("$name $(( $(date +%s) - started )) s")
}

report() {  # report ROUND: its best checkpoint's dev figures, and test once, as soon as the round ends
    local best="$WORK/r$1/best" dev
    dev=$(python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" "$best/best.json")
    step "test$1" mx eval --model "$best" --data "$BEIR" --split test --output "$WORK/test$1"
    echo "{\"round\": $1, \"checkpoint\": \"$best\", \"dev\": $dev, \"test\": $last}"
}

step prepare mx prepare "$BEIR" --split train --output "$WORK/data" --dev-fraction 0.1 --negatives 10 \
    --min-rank 10 --max-rank 100
step round0 mx train --data "$WORK/data" --output "$WORK/r0" --learning-rate "$LR" "${base[@]}" "${common[@]}"
r0=$last
report 0
step score0 mx score "$WORK/data" --teacher "$r0" --candidates "$CANDIDATES" --output "$WORK/scored1"
step round1 mx train --data "$WORK/scored1" --output "$WORK/r1" --loss distillation --nway "$NWAY" \
    --learning-rate "$LR_DISTILL" "${base[@]}" "${common[@]}"
r1=$last
report 1
step remine mx prepare "$BEIR" --split train --output "$WORK/data2" --dev-fraction 0.1 --mine dense \
    --miner-model "$r1" --dense-search exact --negatives $(( CANDIDATES - 1 )) --min-rank 1 --max-rank 100
step score1 mx score "$WORK/data2" --teacher "$r0" --output "$WORK/scored2"
step round2 mx train --data "$WORK/scored2" --output "$WORK/r2" --loss distillation --nway "$NWAY" \
    --learning-rate "$LR_DISTILL" --base-model "$r1" "${common[@]}"
report 2
printf '%s\n' "${times[@]}" >&2

#!/usr/bin/env bash
# Fingerprints of the journey's outputs, to check that a refactor changes no behaviour: run it
# before and after on the same machine and compare the printed lines (they must be equal).
#
#   bash bench/same_outputs.sh [BEIR_DIR] [WORK_DIR] > fingerprints.txt
#
# The lines are also appended, as one JSON line, to bench/results/same_outputs.jsonl.
#
# 1. `maxsim prepare` of the BEIR train split (10% dev slice): sha256 of every file written;
# 2. a seeded 6-step training run: sha256 of the final weights and the logged losses;
# 3. `maxsim index` of the first 2,000 documents with that checkpoint: sha256 of the documents
#    it holds, then `maxsim search --json` of the first 20 test queries: sha256 of the hits of a
#    plain search, a hybrid search (default fusion) and a search filtered by id;
# 4. documents added to that index and others deleted (the Python API, the same in every version),
#    then the same plain search again: sha256 of the hits.
# About 4 minutes on 2 CPU cores. Needs `pip install -e .` first.
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
WORK=${2:-runs/same-outputs}
if [[ -e "$WORK" && ! -f "$WORK/.same-outputs-bench" ]]; then  # never delete a folder this script did not write
    echo "error: $WORK exists and was not made by $0: choose another WORK_DIR" >&2
    exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK" && touch "$WORK/.same-outputs-bench"
{
maxsim prepare "$BEIR" --output "$WORK/prep" --dev-fraction 0.1 >/dev/null 2>"$WORK/prepare.log"
(cd "$WORK/prep" && find . -type f | sort | xargs sha256sum | sed 's/^/prepare /')
maxsim prepare "$BEIR" --output "$WORK/prep-nodev" >/dev/null 2>>"$WORK/prepare.log"
last=$(maxsim train --data "$WORK/prep-nodev" --output "$WORK/run" --max-steps 6 --batch-size 8 --doc-maxlen 64 \
    --learning-rate 3e-5 --seed 7 --no-progress-bar 2>"$WORK/train.log" | tail -n 1)
echo "train weights $(sha256sum "$last/model.safetensors" | cut -d' ' -f1)"
echo "train losses $(python -c "import json,sys; print([round(json.loads(l)['loss'], 6) for l in open(sys.argv[1]) if 'loss' in json.loads(l)])" "$WORK/run/metrics.jsonl")"
head -n 2000 "$BEIR/corpus.jsonl" > "$WORK/corpus.jsonl"
maxsim index build "$WORK/corpus.jsonl" --model "$last" --output "$WORK/index" >/dev/null 2>"$WORK/index.log"
echo "index documents $(python -c "import json,sys; from maxsim.index import IndexData; print(json.dumps(IndexData.load(sys.argv[1]).documents, sort_keys=True))" "$WORK/index" | sha256sum | cut -d' ' -f1)"
mapfile -t queries < <(python -c "import json,sys; [print(json.loads(l)['text']) for l in list(open(sys.argv[1]))[:20]]" "$BEIR/queries.jsonl")
maxsim search --index "$WORK/index" --json -k 10 "${queries[@]}" 2>"$WORK/search.log" > "$WORK/hits.json"
count() { python -c "import json,sys; print(sum(len(h) for h in json.load(open(sys.argv[1]))))" "$1"; }
echo "search hits $(sha256sum "$WORK/hits.json" | cut -d' ' -f1) ($(count "$WORK/hits.json") hits)"
maxsim search --index "$WORK/index" --json -k 10 --hybrid "${queries[@]}" 2>>"$WORK/search.log" > "$WORK/hybrid.json"
echo "hybrid hits $(sha256sum "$WORK/hybrid.json" | cut -d' ' -f1) ($(count "$WORK/hybrid.json") hits)"
ids=$(python -c "import json,sys; print(','.join(json.loads(l)['_id'] for l in list(open(sys.argv[1]))[:2000:7]))" "$WORK/corpus.jsonl")
maxsim search --index "$WORK/index" --json -k 10 --where "id in $ids" "${queries[@]}" 2>>"$WORK/search.log" > "$WORK/filtered.json"
echo "filtered hits $(sha256sum "$WORK/filtered.json" | cut -d' ' -f1) ($(count "$WORK/filtered.json") hits)"
python - "$WORK/index" "$BEIR/corpus.jsonl" 2>"$WORK/edit.log" <<'PY'
import json, sys
from maxsim import Retriever
retriever = Retriever.from_index(sys.argv[1])
rows = [json.loads(line) for line in list(open(sys.argv[2]))[2000:2100]]
retriever.add([r["text"] for r in rows], document_ids=[r["_id"] for r in rows],
              metadata=[{"title": r.get("title", "")} for r in rows])
held = sorted(record["id"] for record in retriever.index_data.documents)
retriever.delete(held[::5])
PY
maxsim search --index "$WORK/index" --json -k 10 "${queries[@]}" 2>>"$WORK/search.log" > "$WORK/edited.json"
echo "edited hits $(sha256sum "$WORK/edited.json" | cut -d' ' -f1) ($(count "$WORK/edited.json") hits)"
} | tee "$WORK/fingerprints.txt"
# the fingerprints, one JSON line in bench/results/same_outputs.jsonl
python - "$WORK" "bash $0 $*" <<'PY' >/dev/null
import sys
from pathlib import Path

sys.path.insert(0, str(Path("bench").resolve()))
import results_log  # noqa: E402

work = Path(sys.argv[1])
lines = (work / "fingerprints.txt").read_text().splitlines()
results_log.record(Path("bench/results/same_outputs.jsonl"), {"command": sys.argv[2], "fingerprints": lines})
PY

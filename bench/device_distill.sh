#!/usr/bin/env bash
# Run bench/distill.sh on a device machine (no network) from what bench/device_pack.sh put in .whl/
# (carry .whl/core, .whl/extra, .whl/data);
# the results come back in $OUT (distill.jsonl, distill.log).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/core/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/extra:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MAXSIM="python3 -m maxsim"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
data=$(ls -d .whl/data/*/ | head -n 1)
bash bench/distill.sh "$data" /tmp/distill > "$OUT/distill.jsonl" 2> "$OUT/distill.log"
status=$?
cat "$OUT/distill.jsonl"
grep -E "dev ndcg|best checkpoint| s$|rror" "$OUT/distill.log" | tail -n 60
exit $status

#!/usr/bin/env bash
# Issue 12's GPU checks in one device call (no network there), from what bench/device_pack.sh put in
# .whl/ (carry .whl/core, .whl/pylate, .whl/lite, .whl/data): the CUDA tests, training throughput
# and peak GPU memory side by side with PyLate 1.6 at batches 32/128/512, document encoding side by
# side at batch 256, GradCache's memory, and a torch.profiler look at maxsim's step.
# Everything it prints is also in $OUT (*.log, *.json).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pipi /tmp/site .whl/core/*.whl || exit 1
pipi /tmp/pylate-site .whl/pylate/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/lite:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
data=$(ls -d .whl/data/*/ | head -n 1)
started=$(date +%s)
lap() { echo "== $1 at $(( $(date +%s) - started )) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
lap tests
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 30 | tee "$OUT/tests.log"
lap training
common=(--device cuda --threads 16 --random-weights --pylate-python python3 --pylate-path /tmp/pylate-site
        --scifact "$data")
python3 bench/train_throughput.py "${common[@]}" --workloads scifact --batch-sizes ${BATCHES:-32 128 512} \
    --steps 10 --warmup 3 --output "$OUT/train_gpu.json" 2> "$OUT/train_gpu.stderr" | tee "$OUT/train_gpu.log"
lap encoding
python3 bench/train_throughput.py "${common[@]}" --workloads encode --batch-sizes 256 \
    --output "$OUT/encode_gpu.json" 2> "$OUT/encode_gpu.stderr" | tee "$OUT/encode_gpu.log"
lap grad-cache
timeout 120 python3 bench/grad_cache_memory.py --device cuda 2>&1 | tail -n 8 | tee "$OUT/grad_cache.log"
lap profile
timeout 150 python3 bench/gpu_profile.py --batch-size 128 --steps 8 > "$OUT/profile.log" 2>&1
grep -E "^\{" "$OUT/profile.log"
lap done
grep -iE "error|Traceback" "$OUT"/*.stderr | tail -n 10

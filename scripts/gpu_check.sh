#!/usr/bin/env bash
# The GPU check: time the pruned layers of transformer-sized FFN blocks and of a small model,
# dense against 2:4 semi-structured sparse (cuSPARSELt through PyTorch), and print the tables.
#
# Runs on a machine with an NVIDIA GPU (Ampere or later) and PyTorch; it needs no registry:
# packages the machine lacks are installed from wheels carried in ./wheels (never committed), e.g.
#   pip download --no-deps -d wheels onnx-ir==1.1.0      # on a machine that reaches the registry
# Usage: bash scripts/gpu_check.sh [OUT_FOLDER]     (about 2 minutes on an H100)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/sparse24-gpu}}"
mkdir -p "$out"
if [ -d wheels ]; then
  python3 -m pip install -q --no-index --no-deps --find-links wheels wheels/*.whl 2>&1 | tail -n 2 || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
models=$(python3 benchmarks/gpu_models.py "$out/models")
for model in $models; do
  echo
  echo "== $model"
  python3 -m sparse24_onnx.bench "$model" --backend torch --tokens 2048 \
    --report "$out/$(basename "$model" .onnx).json"
done

#!/usr/bin/env bash
# Runs the whole GPU benchmark in one call: the Triton kernel tests on the GPU,
# then `lossgrad bench --device cuda` (cross-entropy, kd_loss and js_div at
# N=16384, V=131072, bf16) against PyTorch eager, torch.compile and, when its
# wheel is present, Liger-Kernel. Sized to finish in under 8 minutes on an
# H100/H200-class GPU. It needs torch with CUDA and Triton already installed;
# wheels of anything else (liger-kernel) may be put in .whl/ beforehand.
#
#   bash scripts/gpu_bench.sh [OUT_DIR]      (default: bench-out/gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench-out}/gpu}
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lossgrad-site .whl/*.whl
    export PYTHONPATH=/tmp/lossgrad-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

python3 - <<'PY' | tee "$out/versions.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "device", torch.cuda.get_device_name())
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee -a "$out/versions.txt"

# The dispatch tests, with the Triton path on real CUDA tensors.
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_gpu.py 2>&1 | tee "$out/tests.log"

python3 -m lossgrad bench --device cuda --out "$out" 2>&1 | tee "$out/bench.log"

#!/usr/bin/env bash
# One-shot GPU check: CUDA build, the op tests (CUDA cases included), and the CUDA benchmark.
#   bash tools/gpu_check.sh            (on a machine with a GPU, a CUDA torch, nvcc, torchvision)
# Writes logs to $OUT when set (else ./gpu_check_logs).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-gpu_check_logs}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
$PY -c "import torchvision; print('torchvision', torchvision.__version__)" || echo "torchvision missing: bench ratios skipped"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
start=$(date +%s)
if ! $PY setup.py build_ext --inplace > "$LOG/build.log" 2>&1; then
  grep -E "error|Error" "$LOG/build.log" | head -40
  echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
$PY -c "import maskrcnn.ops as o; assert o.has_cuda_ops(), 'built without CUDA'; print('CUDA ops: yes')" || exit 1
MASKRCNN_REQUIRE_EXT=1 $PY -m pytest tests/ops -q -rs --durations=5 2>&1 | tee "$LOG/tests.log" | tail -25
PYTHONUNBUFFERED=1 $PY bench/ops.py --device cuda --repeat 20 2>&1 | tee "$LOG/bench_cuda.log"

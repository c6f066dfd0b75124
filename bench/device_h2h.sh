#!/usr/bin/env bash
# Issue 8 in one GPU call: build the CUDA ops, run their tests, then the head to head against
# torchvision's Mask R-CNN on DSB2018 (bench/head_to_head.py): speed first (each model alone on the
# GPU), then both from-scratch trainings for the same number of iterations, side by side on the
# one GPU (the iterations are sized from the measured step times so that both end inside BUDGET
# seconds), each validated with the Kaggle metric on the held-back fold; then, if time is left,
# our model with flip TTA (evaluate.py ablate).
#
#   bash bench/device_h2h.sh        # on the GPU machine; needs .devdata/dsb2018.npz (+ _folds.json)
#
# Env: OUT (logs, default output/device_h2h), BUDGET (seconds for the whole script, default 570),
# PYTHON, DEVICE (cuda), SKIP_BUILD=1, HOST_CC/HOST_CXX, EXTRA_SET (config overrides for every run), SPEED_STEPS,
# ITERS (fixed iterations instead of sizing them), INFER_SIZE ("520 704"), EVAL_RESERVE (s).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
el() { echo $(( $(date +%s) - START )); }
OUT=${OUT:-output/device_h2h}
W=${WORK:-/tmp/h2h}
BUDGET=${BUDGET:-570}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EVAL_RESERVE=${EVAL_RESERVE:-110}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
nproc

if [ -z "${SKIP_BUILD:-}" ]; then
  # The GPU image sets CC/CXX to /opt/gcc, whose builds crash on any C++ exception (tools/gpu_check.sh
  # diagnoses it); the system compiler works. HOST_CC/HOST_CXX choose another.
  export CC=${HOST_CC:-/usr/bin/gcc} CXX=${HOST_CXX:-/usr/bin/g++} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  rm -rf build maskrcnn/_C*.so
  if ! FORCE_CUDA=1 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "[$(el) s] built"
  $PY -c "import maskrcnn.ops as o; assert o.has_cuda_ops(), 'built without CUDA'; print('CUDA ops: yes')" || exit 1
  MASKRCNN_REQUIRE_EXT=1 timeout 90 $PY -m pytest tests/ops -q -p no:cacheprovider 2>&1 | tail -4
  echo "[$(el) s] op tests done"
fi

SET=(${EXTRA_SET:-})
H2H=(-m bench.head_to_head --data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json --device "$DEVICE")
INFER=(${INFER_SIZE:-520 704})

# ---- speed: each model alone on the GPU
timeout 200 $PY "${H2H[@]}" --skip-accuracy --models ours,ours-nchw,torchvision --speed-steps "${SPEED_STEPS:-10}" \
  --infer-size "${INFER[@]}" --out "$W/speed" --set model.channels_last=true "${SET[@]}" 2>&1 | grep -v Warning | tee "$OUT/speed.log"
cp "$W/speed/results.json" "$OUT/speed.json" 2>/dev/null
echo "[$(el) s] speed done"

# ---- accuracy: the same iterations for both, trained side by side
ITERS=${ITERS:-$($PY - "$W/speed/results.json" "$(( BUDGET - $(el) - EVAL_RESERVE ))" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["models"]
window = float(sys.argv[2])
pair = r["ours"]["train_step_s"] + r["torchvision"]["train_step_s"]
print(max(20, min(3000, int(window / (1.2 * pair)))))  # as if run one after the other, +20% for data
EOF
)}
echo "[$(el) s] training both models for $ITERS iterations"
for m in ours torchvision; do
  $PY "${H2H[@]}" --skip-speed --models $m --iters "$ITERS" --out "$W/acc_$m" \
    --set model.channels_last=true "${SET[@]}" > "$W/acc_$m.log" 2>&1 &
done
while [ -n "$(jobs -rp)" ] && [ "$(el)" -lt "$BUDGET" ]; do sleep 5; done
if [ -n "$(jobs -rp)" ]; then echo "[$(el) s] budget spent: stopping the trainings"; kill $(jobs -rp); sleep 2; fi
for m in ours torchvision; do
  grep -E "^\[accuracy\]|Error|error" "$W/acc_$m.log" | tail -5
  cp "$W/acc_$m/results.json" "$OUT/acc_$m.json" 2>/dev/null
done
echo "[$(el) s] accuracy done"

# ---- flip TTA for ours, if time is left
LEFT=$(( BUDGET - $(el) - 10 ))
if [ -f "$W/acc_ours/ours/model_final.pth" ] && [ "$LEFT" -gt 30 ]; then
  cat > "$W/tta.yaml" <<EOF
config: $W/acc_ours/ours/config.yaml
output_dir: $W/tta
split: val
max_images: ${TTA_MAX_IMAGES:-0}
device: $DEVICE
variants:
  - {name: no TTA, weights: $W/acc_ours/ours/model_final.pth}
  - {name: hflip+vflip, weights: $W/acc_ours/ours/model_final.pth, tta: [hflip, vflip]}
EOF
  timeout "$LEFT" $PY evaluate.py ablate "$W/tta.yaml" 2>&1 | grep -v Warning | tail -8
  cp "$W/tta/ablation.md" "$OUT/tta.md" 2>/dev/null
fi
tar czf "$OUT/runs.tgz" -C "$W" --exclude="*.pth" --exclude="cache" . 2>/dev/null
echo "[$(el) s] all done"

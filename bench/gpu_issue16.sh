#!/usr/bin/env bash
# Issue 16's whole GPU check in one call (~6-8 min on an H200; every phase has its own timeout and
# the script stops starting phases when BUDGET seconds are spent):
#   1. build the extension with the system compiler (CC=/usr/bin/gcc CXX=/usr/bin/g++, FORCE_CUDA=1,
#      TORCH_CUDA_ARCH_LIST=9.0) and run the op tests with the extension required (CUDA tests first);
#   2. speed: ours GN recipe, ours BN variant and torchvision's maskrcnn_resnet50_fpn, bf16, batch 8
#      of 512x512 training crops: train it/s, inference img/s at 520x704 (1,000 detections), peak
#      memory (bench/head_to_head.py --skip-accuracy);
#   3. NCHW float32 RoIAlign forward / forward+backward vs torchvision (bench/gpu_issue16.py roi-align);
#   4. fp16 autocast + GradScaler training of the DSB recipe for FP16_ITERS iterations (no NaN?);
#   5. the Sartorius recipe's peak memory at its batch size, capped at 15 GiB (fp16 and bf16);
#   6. if time is left: the speed phase again with channels_last.
# Results: $OUT/issue16_h200.json (speed.models.<name>.train_it_per_s / infer_img_per_s as
# bench/results/h2h_dsb2018_h200_2026-11-26.json, plus roi_align, fp16, memory_*), and the logs.
#
# Data: the DSB2018 stage-1 cache and its fold file in the ignored folder .devdata (../shared does
# not travel). Make them here once (CPU):
#   python -m maskrcnn make_cache --format dsb2018 --root ../shared/data/dsb2018/stage1_train --out .devdata/dsb2018.npz
#   python -m bench.gpu_issue16 folds --out .devdata/dsb2018_folds.json --data .devdata/dsb2018.npz
# The exact device call (working tree ~2 MB + .devdata ~38 MB, under the 64 MiB limit):
#   run(command="bash bench/gpu_issue16.sh", carry=[".devdata"], timeout_s=600)
# CPU dry run of every Python part with tiny sizes (no build, no CUDA tests, no torchvision needed):
#   QUICK=1 DEVICE=cpu OUT=/tmp/gpu16 bash bench/gpu_issue16.sh
#
# Env: OUT (default output/gpu_issue16), BUDGET (s, default 560), PYTHON, DEVICE (cuda), QUICK=1,
# SKIP_BUILD=1, HOST_CC/HOST_CXX, FP16_ITERS (300), MEM_ITERS (20), SPEED_STEPS (10).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
el() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(el) )); }
cap() { local c=$1 l; [ -n "$QUICK" ] && c=$(( c * 10 )); l=$(left); echo $(( l < c ? l : c )); }  # a phase's timeout
OUT=${OUT:-output/gpu_issue16}
W=${WORK:-/tmp/gpu16}
BUDGET=${BUDGET:-560}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl > /dev/null 2>&1; then  # wheels of missing packages, if carried (see docs/kaggle.md)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
$PY -c "import torchvision; print('torchvision', torchvision.__version__)" 2>/dev/null || echo "torchvision: not importable"

Q=(); H2H_Q=(); H2H_SET=(); TV=torchvision; DATA=(--data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json)
if [ -n "$QUICK" ]; then
  Q=(--quick --device "$DEVICE" --repeat 2)
  H2H_Q=(--speed-steps 1 --infer-size 64 64)
  H2H_SET=(data.batch_size=2 "data.augment.crop_size=[48,48]" data.num_workers=0
    $($PY -c "from bench.gpu_issue16 import QUICK_MODEL; print(' '.join(QUICK_MODEL))"))
  BUDGET=${BUDGET_QUICK:-3000}
  $PY -c "import torchvision" 2>/dev/null || TV=""
  [ -f .devdata/dsb2018.npz ] || DATA=()
fi
STATUS="$W/status.json"
echo '{}' > "$STATUS"
note() { $PY - "$STATUS" "$1" "$2" <<'EOF'
import json, sys
p, k, v = sys.argv[1:]
d = json.load(open(p)); d[k] = v; json.dump(d, open(p, "w"), indent=1)
EOF
}

# ---- 1. build + op tests
if [ -z "$QUICK" ] && [ -z "${SKIP_BUILD:-}" ]; then
  # The GPU image sets CC/CXX to /opt/gcc, whose builds crash on any C++ exception; the system compiler works.
  export CC=${HOST_CC:-/usr/bin/gcc} CXX=${HOST_CXX:-/usr/bin/g++} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  rm -rf build maskrcnn/_C*.so
  if ! FORCE_CUDA=1 timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; note build FAILED; echo "BUILD FAILED"
  else
    note build ok
    echo "[$(el) s] built"
    $PY -c "import maskrcnn.ops as o; assert o.has_cuda_ops(), 'built without CUDA'; print('CUDA ops: yes')" || note build "built without CUDA"
    # CUDA op tests first (they skip without CUDA), then the rest of the op tests.
    MASKRCNN_REQUIRE_EXT=1 timeout 150 $PY -m pytest tests/ops -q -p no:cacheprovider -x 2>&1 | tee "$OUT/op_tests.log" | tail -5
    note op_tests "$(grep -E 'passed|failed|error' "$OUT/op_tests.log" | tail -1)"
  fi
  echo "[$(el) s] build and op tests done"
fi

# ---- 2. speed: each model alone on the GPU
MODELS=ours,ours-bn${TV:+,$TV}
timeout "$(cap 230)" $PY -m bench.head_to_head "${DATA[@]}" --device "$DEVICE" --skip-accuracy \
  --models "$MODELS" --speed-steps "${SPEED_STEPS:-10}" --out "$W/speed" "${H2H_Q[@]}" --set "${H2H_SET[@]}" 2>&1 | grep -v Warning | tee "$OUT/speed.log"
echo "[$(el) s] speed done"

# ---- 3. RoIAlign NCHW float32 vs torchvision
timeout "$(cap 90)" $PY -m bench.gpu_issue16 roi-align --out "$W/roi_align.json" --device "$DEVICE" "${Q[@]}" > "$OUT/roi_align.log" 2>&1
tail -3 "$OUT/roi_align.log"; echo "[$(el) s] roi_align done"

# ---- 4. fp16 + GradScaler training of the DSB recipe
if [ "$(left)" -gt 60 ]; then
  timeout "$(cap 170)" $PY -m bench.gpu_issue16 fp16 --out "$W/fp16.json" --device "$DEVICE" \
    "${DATA[@]}" --iters "${FP16_ITERS:-300}" --work "$W/fp16_run" "${Q[@]}" > "$OUT/fp16.log" 2>&1
  grep -E '"all_losses_finite"|"iterations"|"error"|"final_loss_scale"|Error' "$OUT/fp16.log" | head -6
fi
echo "[$(el) s] fp16 done"

# ---- 5. Sartorius recipe memory under a 15 GiB cap (fp16 for T4/P100, then the recipe's bf16)
for amp in fp16 bf16; do
  if [ "$(left)" -gt 40 ]; then
    timeout "$(cap 100)" $PY -m bench.gpu_issue16 memory --out "$W/memory_$amp.json" --device "$DEVICE" \
      --amp $amp --iters "${MEM_ITERS:-20}" --work "$W/mem_$amp" "${Q[@]}" > "$OUT/memory_$amp.log" 2>&1
    grep -E '"peak_|"fits_cap"|"error"|Error' "$OUT/memory_$amp.log" | head -5
  fi
done
echo "[$(el) s] memory done"

# ---- 6. channels_last speed, if time is left
if [ "$(left)" -gt 120 ]; then
  timeout $(( $(left) - 20 )) $PY -m bench.head_to_head "${DATA[@]}" --device "$DEVICE" --skip-accuracy \
    --models ours,ours-bn --speed-steps "${SPEED_STEPS:-10}" --out "$W/speed_cl" "${H2H_Q[@]}" \
    --set "${H2H_SET[@]}" model.channels_last=true 2>&1 | grep -v Warning | tee "$OUT/speed_cl.log"
fi

$PY -m bench.gpu_issue16 merge --out "$OUT/issue16_h200.json" --speed "$W/speed/results.json" \
  "checks=$STATUS" "roi_align=$W/roi_align.json" "fp16=$W/fp16.json" "memory_fp16=$W/memory_fp16.json" \
  "memory_bf16=$W/memory_bf16.json" "speed_channels_last=$W/speed_cl/results.json" > /dev/null
echo "[$(el) s] all done: $OUT/issue16_h200.json"

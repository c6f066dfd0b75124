#!/usr/bin/env bash
# Every GPU check of the project in one script: a shared start, then the phases named as arguments
# (none: ops). One device call runs one or more phases inside BUDGET seconds:
#   run(command="bash bench/gpu_check.sh ops", timeout_s=600)
#   run(command="bash bench/gpu_check.sh training", carry=[".devdata"], timeout_s=600)
#
# Start (once per call): the GPU, torch and torchvision versions; wheels carried in .whl/ installed;
# the extension built with the system compiler (the GPU image sets CC/CXX to /opt/gcc, whose builds
# crash on any C++ exception; HOST_CC/HOST_CXX choose another), a check that a C++ error reaches
# Python, and the op tests with the extension required (CUDA cases included).
# Phases (logs and results under $OUT/<phase>/; BENCHMARKS.md says where each figure goes):
#   ops        python -m bench.ops --device cuda: ours vs torchvision.ops, mask IoU CUDA vs CPU
#   h2h        head to head vs torchvision's Mask R-CNN on DSB2018 (bench/head_to_head.py): speed,
#              each model alone on the GPU; then both from-scratch trainings side by side for the same
#              iterations (sized from the step times to end inside BUDGET), validated on the held-back
#              fold; then, if time is left, ours with flip TTA (evaluate.py ablate)
#   training   speed (ours GN recipe, ours BN variant, torchvision; bf16, batch 8 of 512x512 crops),
#              NCHW float32 RoIAlign vs torchvision, fp16 + GradScaler training of the DSB recipe
#              (FP16_ITERS, all losses finite?), the Sartorius recipe's peak memory under a 15 GiB cap
#              (fp16 and bf16), then, if time is left, the speed runs with channels_last
#              (bench/gpu_check.py); everything in $OUT/training/gpu_training.json
#   inference  the inference tests on this torch, merge/postprocess on the GPU against the CPU and
#              per-image timings (bench/bench_inference.py), predict.py end to end with a random-init
#              Sartorius R50 at the 1,000-detection cap (bench/bench_predict.py)
#   engine     bf16 crash-and-resume, fp16 scaler, load_model on CUDA (bench/gpu_check_engine.py)
#
# Data of h2h and training: the DSB2018 stage-1 cache and its fold file in the ignored folder
# .devdata (../shared does not travel; working tree + .devdata stay under the 64 MiB carry limit):
#   python -m maskrcnn make_cache --format dsb2018 --root ../shared/data/dsb2018/stage1_train --out .devdata/dsb2018.npz
#   python -m bench.gpu_check folds --out .devdata/dsb2018_folds.json --data .devdata/dsb2018.npz
# CPU dry run of the training phase's Python parts with tiny sizes (no build, no torchvision needed):
#   QUICK=1 DEVICE=cpu FP16_ITERS=4 MEM_ITERS=2 OUT=/tmp/gpu_check bash bench/gpu_check.sh training   (~4 min)
#
# Env: OUT (default output/gpu_check), WORK (/tmp/gpu_check), BUDGET (s for the whole call, 560),
# PYTHON, DEVICE (cuda), SKIP_BUILD=1, HOST_CC/HOST_CXX, TORCH_CUDA_ARCH_LIST (9.0), TEST_TIMEOUT
# (150); ops: REPEAT (10); h2h: ITERS (fixed iterations), EXTRA_SET (overrides for every run),
# INFER_SIZE ("520 704"), EVAL_RESERVE (110), TTA_MAX_IMAGES; training: QUICK=1, FP16_ITERS (300),
# MEM_ITERS (20); h2h and training: SPEED_STEPS (10).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
el() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(el) )); }
OUT=${OUT:-output/gpu_check}
WORK=${WORK:-/tmp/gpu_check}
BUDGET=${BUDGET:-560}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
[ -n "$QUICK" ] && BUDGET=${BUDGET_QUICK:-3000}
cap() { local c=$1 l; [ -n "$QUICK" ] && c=$(( c * 10 )); l=$(left); [ "$l" -lt 1 ] && l=1; echo $(( l < c ? l : c )); }  # a step's timeout
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(ops)
for p in "${PHASES[@]}"; do
  case $p in ops|h2h|training|inference|engine) ;; *) echo "error: unknown phase '$p' (ops, h2h, training, inference, engine)" >&2; exit 2 ;; esac
done
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl > /dev/null 2>&1; then  # wheels of missing packages, if carried (see docs/kaggle.md)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
$PY -c "import torchvision; print('torchvision', torchvision.__version__)" 2>/dev/null || echo "torchvision: not importable (its comparisons are skipped)"
echo "cpus: $(nproc); phases: ${PHASES[*]}"

STATUS="$WORK/status.json"  # build and op-test results, merged into the training phase's JSON
echo '{}' > "$STATUS"
note() { $PY - "$STATUS" "$1" "$2" <<'EOF'
import json, sys
p, k, v = sys.argv[1:]
d = json.load(open(p)); d[k] = v; json.dump(d, open(p, "w"), indent=1)
EOF
}

# ---- start: build, a C++ error through Python, op tests
if [ -z "$QUICK" ] && [ -z "${SKIP_BUILD:-}" ] && [ "$DEVICE" != cpu ]; then
  export CC=${HOST_CC:-/usr/bin/gcc} CXX=${HOST_CXX:-/usr/bin/g++} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  echo "CC=$CC CXX=$CXX: $($CXX --version | head -1)"
  rm -rf build maskrcnn/_C*.so
  if ! FORCE_CUDA=1 timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40; note build FAILED; echo "BUILD FAILED"; exit 1
  fi
  note build ok
  echo "[$(el) s] built"
  $PY -c "import maskrcnn.ops as o; assert o.has_cuda_ops(), 'built without CUDA'; print('CUDA ops: yes')" || { note build "built without CUDA"; exit 1; }
  DESELECT=()
  if ! $PY -c "import torch; from maskrcnn import _C
try:
    _C.crop_mask_intersection(torch.zeros(2, 3, 3, dtype=torch.uint8), torch.zeros(3, 2, dtype=torch.long),
                              torch.zeros(1, 3, 3, dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.long))
except RuntimeError as e:
    print('C++ error reaches Python:', str(e).splitlines()[0])"; then
    echo "C++ exceptions crash the process with this host compiler: skipping the tests that raise them; ldd:"
    ldd maskrcnn/_C*.so | grep -E "stdc|gcc_s|gomp"
    note cxx_exceptions crash
    DESELECT=(-k "not bad_inputs")
  fi
  MASKRCNN_REQUIRE_EXT=1 timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/ops -q -rs -p no:cacheprovider "${DESELECT[@]}" \
    2>&1 | tee "$OUT/op_tests.log" | tail -5
  note op_tests "$(grep -E 'passed|failed|error' "$OUT/op_tests.log" | tail -1)"
  echo "[$(el) s] build and op tests done"
fi

phase_ops() {  # $1: output folder
  timeout "$(cap 240)" $PY -m bench.ops --device "$DEVICE" --repeat "${REPEAT:-10}" 2>&1 | tee "$1/bench_cuda.log"
}

phase_h2h() {
  local o=$1 w=$WORK/h2h m iters left_s
  mkdir -p "$w"
  local set=(${EXTRA_SET:-}) infer=(${INFER_SIZE:-520 704})
  local h2h=(-m bench.head_to_head --data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json --device "$DEVICE")
  # speed: each model alone on the GPU
  timeout "$(cap 200)" $PY "${h2h[@]}" --skip-accuracy --models ours,ours-nchw,torchvision --speed-steps "${SPEED_STEPS:-10}" \
    --infer-size "${infer[@]}" --out "$w/speed" --set model.channels_last=true "${set[@]}" 2>&1 | grep -v Warning | tee "$o/speed.log"
  cp "$w/speed/results.json" "$o/speed.json" 2>/dev/null
  echo "[$(el) s] speed done"
  # accuracy: the same iterations for both, trained side by side
  iters=${ITERS:-$($PY - "$w/speed/results.json" "$(( BUDGET - $(el) - ${EVAL_RESERVE:-110} ))" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["models"]
window = float(sys.argv[2])
pair = r["ours"]["train_step_s"] + r["torchvision"]["train_step_s"]
print(max(20, min(3000, int(window / (1.2 * pair)))))  # as if run one after the other, +20% for data
EOF
)}
  echo "[$(el) s] training both models for $iters iterations"
  for m in ours torchvision; do
    $PY "${h2h[@]}" --skip-speed --models $m --iters "$iters" --out "$w/acc_$m" \
      --set model.channels_last=true "${set[@]}" > "$w/acc_$m.log" 2>&1 &
  done
  while [ -n "$(jobs -rp)" ] && [ "$(el)" -lt "$BUDGET" ]; do sleep 5; done
  if [ -n "$(jobs -rp)" ]; then echo "[$(el) s] budget spent: stopping the trainings"; kill $(jobs -rp); sleep 2; fi
  for m in ours torchvision; do
    grep -E "^\[accuracy\]|Error|error" "$w/acc_$m.log" | tail -5
    cp "$w/acc_$m/results.json" "$o/acc_$m.json" 2>/dev/null
  done
  echo "[$(el) s] accuracy done"
  # flip TTA for ours, if time is left
  left_s=$(( $(left) - 10 ))
  if [ -f "$w/acc_ours/ours/model_final.pth" ] && [ "$left_s" -gt 30 ]; then
    cat > "$w/tta.yaml" <<EOF
config: $w/acc_ours/ours/config.yaml
output_dir: $w/tta
split: val
max_images: ${TTA_MAX_IMAGES:-0}
device: $DEVICE
variants:
  - {name: no TTA, weights: $w/acc_ours/ours/model_final.pth}
  - {name: hflip+vflip, weights: $w/acc_ours/ours/model_final.pth, tta: [hflip, vflip]}
EOF
    timeout "$left_s" $PY evaluate.py ablate "$w/tta.yaml" 2>&1 | grep -v Warning | tail -8
    cp "$w/tta/ablation.md" "$o/tta.md" 2>/dev/null
  fi
  tar czf "$o/runs.tgz" -C "$w" --exclude="*.pth" --exclude="cache" . 2>/dev/null
}

phase_training() {
  local o=$1 w=$WORK/training amp
  mkdir -p "$w"
  local q=() h2h_q=() h2h_set=() tv=torchvision data=(--data .devdata/dsb2018.npz --split-file .devdata/dsb2018_folds.json)
  if [ -n "$QUICK" ]; then
    q=(--quick --device "$DEVICE" --repeat 2)
    h2h_q=(--speed-steps 1 --infer-size 64 64)
    h2h_set=(data.batch_size=2 "data.augment.crop_size=[48,48]" data.num_workers=0
      $($PY -c "from bench.gpu_check import QUICK_MODEL; print(' '.join(QUICK_MODEL))"))
    $PY -c "import torchvision" 2>/dev/null || tv=""
    [ -f .devdata/dsb2018.npz ] || data=()
  fi
  # speed: each model alone on the GPU
  timeout "$(cap 230)" $PY -m bench.head_to_head "${data[@]}" --device "$DEVICE" --skip-accuracy \
    --models "ours,ours-bn${tv:+,$tv}" --speed-steps "${SPEED_STEPS:-10}" --out "$w/speed" "${h2h_q[@]}" --set "${h2h_set[@]}" \
    2>&1 | grep -v Warning | tee "$o/speed.log"
  echo "[$(el) s] speed done"
  # RoIAlign NCHW float32 vs torchvision
  timeout "$(cap 90)" $PY -m bench.gpu_check roi-align --out "$w/roi_align.json" --device "$DEVICE" "${q[@]}" > "$o/roi_align.log" 2>&1
  tail -3 "$o/roi_align.log"; echo "[$(el) s] roi_align done"
  # fp16 + GradScaler training of the DSB recipe
  if [ "$(left)" -gt 60 ]; then
    timeout "$(cap 170)" $PY -m bench.gpu_check fp16 --out "$w/fp16.json" --device "$DEVICE" \
      "${data[@]}" --iters "${FP16_ITERS:-300}" --work "$w/fp16_run" "${q[@]}" > "$o/fp16.log" 2>&1
    grep -E '"all_losses_finite"|"iterations"|"error"|"final_loss_scale"|Error' "$o/fp16.log" | head -6
  fi
  echo "[$(el) s] fp16 done"
  # Sartorius recipe memory under a 15 GiB cap (fp16 for T4/P100, then the recipe's bf16)
  for amp in fp16 bf16; do
    if [ "$(left)" -gt 40 ]; then
      timeout "$(cap 100)" $PY -m bench.gpu_check memory --out "$w/memory_$amp.json" --device "$DEVICE" \
        --amp $amp --iters "${MEM_ITERS:-20}" --work "$w/mem_$amp" "${q[@]}" > "$o/memory_$amp.log" 2>&1
      grep -E '"peak_|"fits_cap"|"error"|Error' "$o/memory_$amp.log" | head -5
    fi
  done
  echo "[$(el) s] memory done"
  # channels_last speed, if time is left
  if [ "$(left)" -gt 120 ]; then
    timeout $(( $(left) - 20 )) $PY -m bench.head_to_head "${data[@]}" --device "$DEVICE" --skip-accuracy \
      --models ours,ours-bn --speed-steps "${SPEED_STEPS:-10}" --out "$w/speed_cl" "${h2h_q[@]}" \
      --set "${h2h_set[@]}" model.channels_last=true 2>&1 | grep -v Warning | tee "$o/speed_cl.log"
  fi
  $PY -m bench.gpu_check merge --out "$o/gpu_training.json" --speed "$w/speed/results.json" \
    "checks=$STATUS" "roi_align=$w/roi_align.json" "fp16=$w/fp16.json" "memory_fp16=$w/memory_fp16.json" \
    "memory_bf16=$w/memory_bf16.json" "speed_channels_last=$w/speed_cl/results.json" > /dev/null
  echo "results: $o/gpu_training.json"
}

phase_inference() {
  local o=$1
  timeout "$(cap 150)" $PY -m pytest -q tests/inference -p no:cacheprovider -W ignore \
    --deselect tests/inference/test_predictor.py::test_predict_py_end_to_end_with_a_tiny_random_model_and_evaluate_score \
    2>&1 | tee "$o/tests.log" | tail -4
  timeout "$(cap 120)" $PY -m bench.bench_inference --device "$DEVICE" --repeats 3 --compare-cpu 2>&1 | grep -v -i warn | tee "$o/merge_gpu.log"
  timeout "$(cap 120)" $PY -m bench.bench_inference --device cpu --repeats 2 2>&1 | grep -v -i warn | tee "$o/merge_cpu.log" | tail -13
  timeout "$(cap 260)" $PY -m bench.bench_predict --device "$DEVICE" --images 4 --tta d4 2>&1 | grep -v -i warn | tee "$o/predict.log" | tail -32
}

phase_engine() {
  timeout "$(cap 300)" $PY -m bench.gpu_check_engine --device "$DEVICE" --out "$WORK/engine" 2>&1 | tee "$1/engine.log"
}

for p in "${PHASES[@]}"; do
  if [ "$(left)" -lt 30 ]; then echo "[$(el) s] $p: skipped, the budget is spent"; continue; fi
  mkdir -p "$OUT/$p"
  echo "[$(el) s] ---- $p"
  "phase_$p" "$OUT/$p"
  echo "[$(el) s] $p done"
done
echo "[$(el) s] all done: $OUT"

#!/usr/bin/env bash
# Byte-identity check for refactors: runs the README's main command and predict.py on real
# images in several output formats, and prints the sha256 of every file they write.
#   bash tools/golden_outputs.sh > before.txt   # on the old commit
#   bash tools/golden_outputs.sh > after.txt    # on the new one; diff before.txt after.txt
# Everything is written under output/golden (a fixed relative path: checkpoints hold the config,
# whose output_dir must read the same in every checkout).
# Needs ../shared/data/dsb2018 (3 images are copied) and the built extension; ~2 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=output/golden
rm -rf "$out"; mkdir -p "$out/images"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONHASHSEED=0
for id in $(ls ../shared/data/dsb2018/stage1_train | sort | sed -n '1p;200p;400p'); do
  cp ../shared/data/dsb2018/stage1_train/$id/images/$id.png "$out/images/"
done
python train.py configs/small.yaml --set train.output_dir="$out/small" >"$out/train.log" 2>&1
for fmt in csv dsb labels-tif geojson; do
  python predict.py --weights nuclei --images "$out/images" --format $fmt --out "$out/pred_$fmt" --no-progress >"$out/pred_$fmt.log" 2>&1
done
python predict.py --weights "$out/small/model_final.pth" --images "$out/images" --format csv --tta none --out "$out/pred_small.csv" --no-progress >"$out/pred_small.log" 2>&1
cd "$out" && find small pred_* -type f ! -name '*.log' ! -name 'log.txt' ! -name '*.lock' | sort | xargs sha256sum

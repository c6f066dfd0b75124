#!/bin/sh
# One short device session for the inference code: torch-version compatibility of the tests,
# merge/postprocess on the GPU against the CPU, per-image timings (GPU and 16-core CPU), and
# predict.py end to end on the GPU with a random-init Sartorius R50 at the 1000-detection cap.
PY=${PY:-python3}  # run from the repository root: the bench scripts are modules (python -m bench.X)
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
timeout 150 $PY -m pytest -q tests/inference -p no:cacheprovider -W ignore \
  --deselect tests/inference/test_predictor.py::test_predict_py_end_to_end_with_a_tiny_random_model_and_evaluate_score 2>&1 | tail -4
timeout 120 $PY -m bench.bench_inference --device cuda --repeats 3 --compare-cpu 2>&1 | grep -v -i warn
timeout 120 $PY -m bench.bench_inference --device cpu --repeats 2 2>&1 | grep -v -i warn | tail -13
timeout 260 $PY -m bench.bench_predict --device cuda --images 4 --tta d4 2>&1 | grep -v -i warn | tail -32

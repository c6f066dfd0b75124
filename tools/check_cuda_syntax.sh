#!/usr/bin/env bash
# Compile the CUDA sources with `nvcc -c` (and ops.cpp with -DWITH_CUDA) against the headers of
# the installed torch, even a CPU-only wheel (it ships the ATen/c10 CUDA headers). Nothing is
# linked or run: this catches compile errors on machines without a CUDA torch or a GPU.
# The sources include only c10/ATen headers that need the CUDA runtime headers (not cuBLAS or
# cuSPARSE, which ATen/cuda/CUDAContext.h would pull in and a minimal toolkit may lack).
#
#   tools/check_cuda_syntax.sh                      # sm_90 (H100/H200)
#   ARCH="60 75 90" tools/check_cuda_syntax.sh      # Kaggle's P100 (6.0) and T4 (7.5), and sm_90
#   TORCH_CUDA_ARCH_LIST="6.0;7.5" tools/check_cuda_syntax.sh   # the same list setup.py reads
# Each architecture is compiled on its own (-gencode arch=compute_XX,code=sm_XX). An architecture
# this nvcc no longer supports (CUDA 13 dropped sm_50-sm_72: Maxwell, Pascal, Volta) is reported
# as skipped, not failed, unless STRICT=1; check it with a CUDA 12 nvcc (NVCC=/path/to/nvcc).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NVCC=${NVCC:-nvcc}
if [ -z "${ARCH:-}" ] && [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  ARCH=$(echo "$TORCH_CUDA_ARCH_LIST" | tr ';,' '  ' | sed 's/+PTX//g; s/\.//g')
fi
ARCH=${ARCH:-90}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
mapfile -t TORCH_INC < <($PY -c "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
PY_INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
ABI=$($PY -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
INC=(-Icsrc "-I$PY_INC")
for d in "${TORCH_INC[@]}"; do INC+=("-isystem" "$d"); done
DEFS=(-DWITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H "-D_GLIBCXX_USE_CXX11_ABI=$ABI")
# A CPU wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h (it only sets the Windows
# DLL-export switch); c10/cuda/CUDAMacros.h skips it under this macro.
if [ ! -f "${TORCH_INC[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then DEFS+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE); fi
echo "nvcc: $($NVCC --version | tail -1)"
echo "torch: $($PY -c 'import torch; print(torch.__version__)') headers"
FAILED=0
SKIPPED=""
for arch in $ARCH; do
  if ! $NVCC --list-gpu-arch 2>/dev/null | grep -qx "compute_$arch"; then
    echo "sm_$arch: not supported by this nvcc ($($NVCC --version | tail -1)): SKIPPED"
    SKIPPED="$SKIPPED sm_$arch"
    [ -n "${STRICT:-}" ] && FAILED=1
    continue
  fi
  for cu in csrc/*/*.cu; do
    echo "nvcc -c $cu (sm_$arch)"
    $NVCC -c "$cu" -o "$OUT/$(basename "$cu").$arch.o" -std=c++20 -O3 --expt-relaxed-constexpr \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC -gencode "arch=compute_$arch,code=sm_$arch" \
      "${DEFS[@]}" "${INC[@]}" || FAILED=1
  done
done
echo "c++ -fsyntax-only -DWITH_CUDA csrc/ops.cpp"
CUDA_INC=$(dirname "$(dirname "$(command -v "$NVCC")")")/include
${CXX:-c++} -fsyntax-only -std=c++20 "${DEFS[@]}" "${INC[@]}" -isystem "$CUDA_INC" csrc/ops.cpp || FAILED=1
if [ "$FAILED" != 0 ]; then echo "CUDA sources FAILED to compile."; exit 1; fi
echo "CUDA sources compile for:$(for a in $ARCH; do case "$SKIPPED" in *"sm_$a"*) ;; *) printf ' sm_%s' "$a";; esac; done)${SKIPPED:+ (skipped:$SKIPPED)}"

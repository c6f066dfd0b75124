"""Builds the compiled ops ``maskrcnn._C`` from ``csrc/``, and installs the package.

    python setup.py build_ext --inplace                 # CPU build with a CPU torch (a checkout)
    pip install --no-build-isolation .                  # the package, its extension, the model zoo and
                                                        # maskrcnn-train / -predict / -evaluate
    TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace   # CUDA build (CUDA torch + nvcc)

A CUDA build happens when torch was built with CUDA and nvcc is found (``CUDA_HOME``), or when
``FORCE_CUDA=1`` (it then needs a CUDA torch to link against). ``TORCH_CUDA_ARCH_LIST`` picks the
GPU architectures (torch's default otherwise: the visible GPU's). ninja is used when installed.
``tools/check_cuda_syntax.sh`` compiles the .cu files with ``nvcc -c`` against a CPU torch's
headers, for machines without a CUDA torch; ``bench/gpu_check.sh`` builds, tests and benchmarks
on a GPU machine in one command.

Host compiler: use one that links libstdc++ dynamically, as torch does. On an image whose
``CC``/``CXX`` point at a GCC that links it statically (seen: ``/opt/gcc`` on the lent H200
machines), the module builds and runs, but an error raised in C++ (a failed TORCH_CHECK)
segfaults instead of raising RuntimeError. Build there with
``CC=/usr/bin/gcc CXX=/usr/bin/g++``.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def make_extension():
    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "ops.cpp")) + glob.glob(os.path.join(csrc, "*", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*", "*.cu")))
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None)
    # C++20: recent torch headers use C++20 features. No fused multiply-add: NMS decides like the twin.
    # -fno-trapping-math lets the compiler vectorise loops with a guarded division (NMS, box
    # matching: ~6x on SSE2); it changes no result, only assumes no code reads the FP exception flags.
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-trapping-math"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is header code that runs serially unless OpenMP is on in this build.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    macros = []
    extension = CppExtension
    extra = {"cxx": cxx}
    if with_cuda:
        extension = CUDAExtension
        sources += cuda_sources
        macros.append(("WITH_CUDA", None))
        cuda_major = int((torch.version.cuda or "12").split(".")[0])
        extra["nvcc"] = ["-O3", "-std=c++20" if cuda_major >= 12 else "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
    rel = [os.path.relpath(s, ROOT) for s in sources]
    return extension(
        "maskrcnn._C",
        rel,
        include_dirs=[csrc],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=link,
    )


setup(
    name="maskrcnn-cells",
    version="0.1.0",
    description="A dependency-light PyTorch Mask R-CNN for microscopy cell instance segmentation",
    packages=find_packages(include=["maskrcnn", "maskrcnn.*"]),
    # The model zoo ships in the package: weights, model cards, tuned thresholds, the card template.
    package_data={"maskrcnn.zoo": ["*.pth", "*.md", "*.yaml"]},
    python_requires=">=3.9",
    # pip install --no-build-isolation .[distributed]: the Dask paths (maskrcnn.scale); the core never imports them
    extras_require={"distributed": ["dask[distributed]", "zarr", "tifffile"]},
    # torch is installed first, pinned (README); the rest as requirements.txt (pybind11 and ninja build).
    install_requires=["torch", "numpy>=1.24", "pycocotools>=2.0.7", "tqdm>=4.60", "pyyaml>=6.0", "Pillow>=9.0"],
    entry_points={"console_scripts": [
        "maskrcnn-train=maskrcnn.cli.train:main",
        "maskrcnn-predict=maskrcnn.cli.predict:main",
        "maskrcnn-evaluate=maskrcnn.cli.evaluate:main",
    ]},
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

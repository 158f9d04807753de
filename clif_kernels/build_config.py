"""How the compiled extensions are built: sources, flags and the CUDA toolkit's location.

One place for setup.py (which loads this file by path, without importing the package),
`extension.jit_build()` and `dev/cuda_aot.py`, so the three always build the same thing. Standard
library only.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

CPU_SOURCES = (
    "clif_ops.cpp", "clif_autograd.cpp", "clif_cpu.cpp", "clif_cpu_avx512.cpp",
    "clif_cpu_avx512_bwd.cpp", "clif_cpu_cache.cpp")
CUDA_SOURCES = ("clif_cuda.cpp", "clif_cuda_kernels.cu")
# No -std: torch adds the standard its headers need (C++17 up to 2.x, C++20 later).
# -fopenmp: at::parallel_for is OpenMP in the headers, and the lane loops use `omp simd`.
# -fno-trapping-math: lets GCC if-convert the kernel's selects and so vectorise the lane loops;
# the code never reads floating-point exception flags. Rounding is unchanged.
# -g0: Python's own CFLAGS, which setuptools puts first, often carry -g; debug information for
# the kernels' many template instances is a large part of the build's time and most of the
# library's size (benchmarks/NOTES.md). It does not change the generated code.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-g0"]
# The CUDA extension's host file (the kernels are nvcc's).
CUDA_HOST_FLAGS = ["-O3", "-g0"]
LINK_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]


def find_cuda_home():
    """$CUDA_HOME, else the toolkit `nvcc -dryrun` reports (torch's own guess, nvcc's parent
    folder, is wrong when nvcc is a wrapper script), else None."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    # A dry run of a compile prints the toolkit's variables, _HERE_ among them (nvcc's real bin).
    out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    for line in (out.stdout + out.stderr).splitlines():
        if "_HERE_=" in line:
            return os.path.dirname(line.split("_HERE_=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvcc_version(cuda_home):
    """(major, minor) of the toolkit's nvcc, or None when it is missing or does not answer."""
    if cuda_home is None:
        return None
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


HOW_TO_BUILD_LATER = (
    "the cpp backend (CPU) and, on a GPU, the triton backend work without it; to build it "
    "later, install a CUDA toolkit whose major version matches torch's and reinstall (or call "
    "clif_kernels.extension.jit_build(cuda=True))")


def cuda_decision(want, torch_cuda, nvcc):
    """Whether to build the CUDA extension: (build, why_not). `want` is CLIF_KERNELS_BUILD_CUDA
    ("0", "1" or None), `torch_cuda` torch.version.cuda ("12.4" or None), `nvcc` nvcc_version().
    A CUDA toolkit whose major version differs from torch's cannot build against torch's
    headers and libraries. With want == "1" what cannot work raises a RuntimeError instead."""
    if want == "0":
        return False, "CLIF_KERNELS_BUILD_CUDA=0"
    why = None
    if torch_cuda is None:
        why = "torch is not a CUDA build"
    elif nvcc is None:
        why = "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    elif int(torch_cuda.split(".")[0]) != nvcc[0]:
        why = (f"torch was built with CUDA {torch_cuda} but nvcc is CUDA {nvcc[0]}.{nvcc[1]}; "
               "the major versions must match")
    if why is not None and want == "1":
        raise RuntimeError(f"CLIF_KERNELS_BUILD_CUDA=1, but the CUDA extension cannot be "
                           f"built: {why}")
    return why is None, why


def nvidia_include_dirs():
    """Headers that torch's `nvidia` wheels ship (cuBLAS, cuSPARSE, ...), which ATen's CUDA
    headers include and a bare toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in list(nvidia.__path__):
        dirs += glob.glob(os.path.join(base, "cu*", "include"))
        dirs += glob.glob(os.path.join(base, "*", "include"))
    return sorted(set(dirs))

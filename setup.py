"""Build script: the C++ CPU extension always, the CUDA extension when it can be built.

Environment:
  CLIF_KERNELS_BUILD_CUDA=0/1  force the CUDA extension off or on (default: on when torch is a
                               CUDA build and nvcc is found).
  TORCH_CUDA_ARCH_LIST         GPU architectures (default "8.0;9.0").
  CUDA_HOME                    the CUDA toolkit (default: where `nvcc -dryrun` says nvcc lives;
                               torch's own guess, nvcc's parent folder, is wrong when nvcc is a
                               wrapper script).
"""
import glob
import os
import shutil
import subprocess

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
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


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # No -std: torch adds the standard its headers need (C++17 up to 2.x, C++20 later).
    # -fopenmp: at::parallel_for is OpenMP in the headers, and the lane loops use `omp simd`.
    # -fno-trapping-math: lets GCC if-convert the kernel's selects and so vectorise the lane
    # loops; the code never reads floating-point exception flags. Rounding is unchanged.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    exts = [CppExtension("clif_kernels._C", ["csrc/clif_ops.cpp", "csrc/clif_cpu.cpp"],
                         include_dirs=[os.path.join(ROOT, "csrc")],
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    want = os.environ.get("CLIF_KERNELS_BUILD_CUDA")
    can = torch.version.cuda is not None and cuda_home is not None
    if want == "1" and not can:
        raise RuntimeError("CLIF_KERNELS_BUILD_CUDA=1 but torch is not a CUDA build or nvcc "
                           "was not found")
    if (want is None and can) or want == "1":
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(CUDAExtension(
            "clif_kernels._C_cuda", ["csrc/clif_cuda.cpp", "csrc/clif_cuda_kernels.cu"],
            include_dirs=[os.path.join(ROOT, "csrc")] + nvidia_include_dirs(),
            extra_compile_args={"cxx": ["-O3"],
                                "nvcc": ["-O3", "--expt-relaxed-constexpr"]}))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Build script: the C++ CPU extension always, the CUDA extension when it can be built.

Environment:
  CLIF_KERNELS_BUILD_CUDA=0/1  force the CUDA extension off or on (default: on when torch is a
                               CUDA build and an nvcc of the same CUDA major version is found;
                               otherwise it is skipped with a warning that says why, and the
                               C++ extension is still built).
  TORCH_CUDA_ARCH_LIST         GPU architectures (default "8.0;9.0").
  CUDA_HOME                    the CUDA toolkit (default: where `nvcc -dryrun` says nvcc lives;
                               torch's own guess, nvcc's parent folder, is wrong when nvcc is a
                               wrapper script).
"""
import os
import runpy
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Loaded by path: importing the package would import torch and the package's own modules.
cfg = runpy.run_path(os.path.join(ROOT, "clif_kernels", "build_config.py"))


def write_build_info(**info):
    """What this build decided, for clif_kernels.extension.report() (an ignored generated file,
    installed with the package)."""
    with open(os.path.join(ROOT, "clif_kernels", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py: what the build of the extensions decided."""\n')
        f.write(f"BUILD_INFO = {info!r}\n")


def extensions():
    cuda_home = cfg["find_cuda_home"]()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    src = lambda names: [f"csrc/{n}" for n in names]  # noqa: E731
    exts = [CppExtension("clif_kernels._C", src(cfg["CPU_SOURCES"]),
                         include_dirs=[os.path.join(ROOT, "csrc")],
                         extra_compile_args={"cxx": cfg["CXX_FLAGS"]},
                         extra_link_args=cfg["LINK_FLAGS"])]
    want = os.environ.get("CLIF_KERNELS_BUILD_CUDA")
    build_cuda, why = cfg["cuda_decision"](want, torch.version.cuda,
                                           cfg["nvcc_version"](cuda_home))
    if why is not None and want != "0":
        warnings.warn(f"clif-kernels: not building the CUDA extension: {why}. "
                      + cfg["HOW_TO_BUILD_LATER"] + ".", stacklevel=1)
    write_build_info(cuda_built=build_cuda, cuda_why=why)
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(CUDAExtension(
            "clif_kernels._C_cuda", src(cfg["CUDA_SOURCES"]),
            include_dirs=[os.path.join(ROOT, "csrc")] + cfg["nvidia_include_dirs"](),
            extra_compile_args={"cxx": ["-O3"], "nvcc": cfg["NVCC_FLAGS"]}))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

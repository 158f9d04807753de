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

Nothing is written into the source tree, except by an in-place (editable) build, which puts its
outputs beside the sources by definition: the build's decisions go into `_build_info.py` beside
the compiled extensions (in the build folder), and the C++/CUDA sources are copied into the
package (`clif_kernels/csrc/`) so that `extension.jit_build()` works from an installed wheel.
Making an sdist compiles nothing and decides nothing; MANIFEST.in lists what it carries.
"""
import os
import runpy
import warnings

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
# Loaded by path: importing the package would import torch and the package's own modules.
cfg = runpy.run_path(os.path.join(ROOT, "clif_kernels", "build_config.py"))
NO_TORCH = ("building clif-kernels' extensions needs torch in the build environment: install "
            "torch, setuptools, wheel and ninja, then `pip install --no-build-isolation .` "
            "(README.md, docs/install.md)")


def _src(names):
    return [f"csrc/{n}" for n in names]


class BuildPyWithSources(build_py):
    """Also copies csrc/ into the built package, for `jit_build()` from a wheel."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds csrc/ in the source tree
        dest = os.path.join(self.build_lib, "clif_kernels", "csrc")
        os.makedirs(dest, exist_ok=True)
        for name in sorted(os.listdir(CSRC)):
            if name.endswith((".h", ".cpp", ".cu")):
                self.copy_file(os.path.join(CSRC, name), os.path.join(dest, name))


def _torch_build_ext():
    """torch's BuildExtension, taught to decide about the CUDA extension when it runs (not when
    setup.py is read: an sdist builds nothing) and to record what it decided."""
    cuda_home = cfg["find_cuda_home"]()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read when torch.utils.cpp_extension is imported
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            # Decided here, before setuptools prepares the list of extensions (an extension
            # added later lacks what its finalize_options sets on each one).
            want = os.environ.get("CLIF_KERNELS_BUILD_CUDA")
            self._cuda = cfg["cuda_decision"](want, torch.version.cuda,
                                              cfg["nvcc_version"](cuda_home))
            build_cuda, why = self._cuda
            if why is not None and want != "0":
                warnings.warn(f"clif-kernels: not building the CUDA extension: {why}. "
                              + cfg["HOW_TO_BUILD_LATER"] + ".", stacklevel=1)
            exts = self.distribution.ext_modules
            if build_cuda and not any(e.name == "clif_kernels._C_cuda" for e in exts):
                os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
                exts.append(CUDAExtension(
                    "clif_kernels._C_cuda", _src(cfg["CUDA_SOURCES"]),
                    include_dirs=[CSRC] + cfg["nvidia_include_dirs"](),
                    extra_compile_args={"cxx": cfg["CUDA_HOST_FLAGS"],
                                        "nvcc": cfg["NVCC_FLAGS"]}))
            super().finalize_options()

        def run(self):
            super().run()
            build_cuda, why = self._cuda
            self._write_build_info(cuda_built=build_cuda, cuda_why=why,
                                   torch_version=torch.__version__,
                                   torch_cuda=torch.version.cuda)

        def _build_info_path(self):
            return os.path.join(os.path.dirname(self.get_ext_fullpath("clif_kernels._C")),
                                "_build_info.py")

        def _write_build_info(self, **info):
            """What this build decided, for clif_kernels.extension.report(): beside the
            extensions it built (the build folder; the source tree only for in-place builds)."""
            with open(self._build_info_path(), "w") as f:
                f.write('"""Written by setup.py when it built the extensions: what it '
                        'decided."""\n')
                f.write(f"BUILD_INFO = {info!r}\n")

        def get_outputs(self):
            return super().get_outputs() + [self._build_info_path()]

    return BuildExt


def _cmdclass():
    try:
        build_ext = _torch_build_ext()
    except ImportError:  # fine for an sdist; a build says what is missing
        from setuptools.command.build_ext import build_ext as plain

        class build_ext(plain):
            def run(self):
                raise SystemExit(NO_TORCH)
    return {"build_ext": build_ext, "build_py": BuildPyWithSources}


def _cpp_extension():
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:  # an sdist: the sources only (MANIFEST.in adds the rest)
        return Extension("clif_kernels._C", _src(cfg["CPU_SOURCES"]))
    return CppExtension("clif_kernels._C", _src(cfg["CPU_SOURCES"]), include_dirs=[CSRC],
                        extra_compile_args={"cxx": cfg["CXX_FLAGS"]},
                        extra_link_args=cfg["LINK_FLAGS"])


cmdclass = _cmdclass()
setup(ext_modules=[_cpp_extension()], cmdclass=cmdclass)

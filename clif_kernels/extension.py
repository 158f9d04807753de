"""Loading of the compiled extensions, and a just-in-time build for a source checkout.

`clif_kernels._C` (C++ CPU kernel of the `clif_fused` ops, whose schemas ops.py declares) and
`clif_kernels._C_cuda` (CUDA kernels) are built by setup.py. Without them the package still
works with its reference and Triton backends; `jit_build()` compiles them on the spot with
`torch.utils.cpp_extension.load`.
"""
from __future__ import annotations

import importlib
import numbers
import os

import torch



CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_MAX_MIB = 2 ** 43  # the limit travels in bytes, as an int64
_loaded = {"cpp": False, "cuda": False}
_tried = False
load_errors = {}


def _import(name):
    try:
        importlib.import_module(f"clif_kernels.{name}")
        return True
    except ImportError as e:  # not built, or built against another torch
        load_errors[name] = str(e)
        return False


def load() -> dict:
    """Import whichever compiled extensions are present, once (the backends call it on first
    use; `jit_build` adds what it builds). Returns {"cpp": loaded, "cuda": loaded}."""
    global _tried
    if not _tried:
        _tried = True
        _loaded["cpp"] = _import("_C")
        _loaded["cuda"] = _loaded["cpp"] and _import("_C_cuda")
    return _loaded


def build_info() -> dict:
    """What setup.py decided when it built the package ({} for a tree it did not build)."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)


def load_failure(kind: str) -> str:
    """Why an extension did not load, as a clause to append to a message ("; ..."): the build's
    decision, or the import error; "" when neither is known."""
    if kind == "cuda" and build_info().get("cuda_why"):
        return f"; the build skipped it: {build_info()['cuda_why']}"
    err = load_errors.get("_C" if kind == "cpp" else "_C_cuda")
    return f"; importing it failed: {err}" if err else ""


def report() -> str:
    """One line per compiled extension: loaded, or why not."""
    loaded = load()
    lines = []
    for kind, module in (("cpp", "clif_kernels._C (C++ CPU kernel)"),
                         ("cuda", "clif_kernels._C_cuda (CUDA kernels)")):
        state = "loaded" if loaded[kind] else "not loaded" + load_failure(kind)
        lines.append(f"{module}: {state}")
    return "\n".join(lines)


def jit_build(cuda: bool | None = None, verbose: bool = False) -> None:
    """Compile and load the extensions from `csrc/` (needs a source checkout and a compiler;
    the CUDA one also needs nvcc and a CUDA build of torch)."""
    from torch.utils.cpp_extension import load as load_ext

    from . import build_config
    load()  # what is installed already counts; build only the rest
    if not os.path.isdir(CSRC):
        raise RuntimeError(f"no C++ sources at {CSRC}: jit_build needs a source checkout")
    if not _loaded["cpp"]:
        load_ext("clif_kernels_C", [os.path.join(CSRC, f) for f in build_config.CPU_SOURCES],
                 extra_cflags=build_config.CXX_FLAGS, extra_ldflags=build_config.LINK_FLAGS,
                 extra_include_paths=[CSRC], verbose=verbose, is_python_module=False)
        _loaded["cpp"] = True
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda and not _loaded["cuda"]:
        load_ext("clif_kernels_C_cuda",
                 [os.path.join(CSRC, f) for f in build_config.CUDA_SOURCES],
                 extra_cuda_cflags=build_config.NVCC_FLAGS,
                 extra_include_paths=[CSRC] + build_config.nvidia_include_dirs(),
                 verbose=verbose, is_python_module=False)
        _loaded["cuda"] = True


def _cache_op(name):
    if not load()["cpp"]:
        raise RuntimeError("the C++ extension is not built: " + load_errors.get("_C", ""))
    return getattr(torch.ops.clif_fused, name)


def cpu_cache_bytes() -> int:
    """Bytes of freed CPU outputs the cpp backend keeps for reuse (see `set_cpu_cache_limit`)."""
    return _cache_op("cpu_cache_bytes")()


def empty_cpu_cache() -> int:
    """Frees the cpp backend's cached CPU outputs; returns the bytes freed."""
    return _cache_op("cpu_cache_empty")()


def set_cpu_cache_limit(mib: int) -> int:
    """The most memory (MiB) the cpp backend keeps in freed outputs of 1 MiB or more, for reuse
    by its next calls; 0 turns the cache off. The default is 1024, or CLIF_KERNELS_CPU_CACHE_MB
    at the first call. Returns the previous limit in MiB.

    Why: outputs of 32 MiB or more come from fresh mmaps otherwise, whose page faults cost more
    than the kernel itself (csrc/clif_cpu_cache.h).

        >>> from clif_kernels import extension
        >>> old = extension.set_cpu_cache_limit(256)
    """
    if isinstance(mib, bool) or not isinstance(mib, numbers.Integral):
        raise TypeError(f"mib must be a whole number of MiB, got {mib!r}")
    if not 0 <= mib < _MAX_MIB:
        raise ValueError(f"mib must be >= 0 and < 2**43 (bytes must fit in int64), got {mib}")
    return _cache_op("cpu_cache_set_limit")(int(mib) << 20) >> 20

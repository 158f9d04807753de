"""Loading of the compiled extensions (loudly: one that is present but fails to load warns), and
a just-in-time build from the sources the package carries.

`clif_kernels._C` (C++ CPU kernel of the `clif_fused` ops, whose schemas ops.py declares) and
`clif_kernels._C_cuda` (CUDA kernels) are built by setup.py. Without them the package still
works with its reference and Triton backends; `jit_build()` compiles them on the spot with
`torch.utils.cpp_extension.load`.
"""
from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
# The sources: inside the package in an installed wheel (setup.py copies them there), beside it
# in a source checkout.
CSRC = next((d for d in (os.path.join(_HERE, "csrc"), os.path.join(os.path.dirname(_HERE), "csrc"))
             if os.path.isdir(d)), os.path.join(_HERE, "csrc"))
_MAX_MIB = 2 ** 43  # the limit travels in bytes, as an int64
_loaded = {"cpp": False, "cuda": False}
_tried = False
load_errors = {}
# Extensions whose file is present but does not import: module name -> (file, error).
broken = {}
_warned_slow_path = False
FIX = ("rebuild it against the torch you run: `pip install --no-build-isolation "
       "--force-reinstall --no-deps clif-kernels` (in a clone: `pip install "
       "--no-build-isolation -e .`), or compile it on the spot with "
       "clif_kernels.extension.jit_build()")


class ExtensionLoadWarning(RuntimeWarning):
    """A compiled extension is present but does not load: its backends are unavailable, and
    `backend="auto"` runs a slower one."""


class SlowPathWarning(RuntimeWarning):
    """`backend="auto"` runs the pure-PyTorch reference on a CUDA tensor."""


def _import_module(name):
    return importlib.import_module(name)


def _import(name):
    full = f"clif_kernels.{name}"
    try:
        spec = importlib.util.find_spec(full)
    except (ImportError, ValueError):
        spec = None
    try:
        _import_module(full)
        return True
    except ImportError as e:  # not built, or built against another torch
        load_errors[name] = str(e)
        if spec is not None and spec.origin:
            broken[name] = (spec.origin, f"{type(e).__name__}: {e}")
            _warn_broken(name)
        return False
    except OSError as e:  # a file that is not a loadable library
        load_errors[name] = str(e)
        broken[name] = (getattr(spec, "origin", None) or full, f"{type(e).__name__}: {e}")
        _warn_broken(name)
        return False


def _warn_broken(name):
    path, err = broken[name]
    built = build_info().get("torch_version")
    against = (f" It was built with torch {built}; this is torch {torch.__version__}."
               if built and built != torch.__version__ else "")
    what = ("the cpp backend (C++ CPU kernel) and the cuda backend are unavailable"
            if name == "_C" else "the cuda backend is unavailable")
    warnings.warn(
        f"clif-kernels: the compiled extension {path} is present but failed to load ({err}); "
        f"{what}, so backend='auto' runs a slower backend.{against} To fix it, {FIX}.",
        ExtensionLoadWarning, stacklevel=2)


def load() -> dict:
    """Import whichever compiled extensions are present, once (the backends call it on first
    use; `jit_build` adds what it builds). Returns {"cpp": loaded, "cuda": loaded}. An
    extension whose file is there but does not import warns once (ExtensionLoadWarning), naming
    the file, the error and the fix."""
    global _tried
    if not _tried:
        _tried = True
        _loaded["cpp"] = _import("_C")
        _loaded["cuda"] = _loaded["cpp"] and _import("_C_cuda")
    return _loaded


def load_failures() -> dict:
    """{module: (file, error)} for each compiled extension that is present but does not load."""
    load()
    return dict(broken)


def warn_slow_path(device, reasons) -> None:
    """Called when `backend="auto"` ends on the pure-PyTorch reference for a CUDA tensor:
    warns once per process (SlowPathWarning) with why each faster backend could not run
    (`reasons`: {backend: sentence})."""
    global _warned_slow_path
    if _warned_slow_path:
        return
    _warned_slow_path = True
    why = "; ".join(f"{name}: {r}" for name, r in reasons.items() if r)
    warnings.warn(
        f"clif-kernels: backend='auto' runs the pure-PyTorch reference on this {device} tensor, "
        f"many times slower than the fused kernels ({why}). Pass a backend by name to get an "
        f"error instead; `clif-kernels check` shows what is available.",
        SlowPathWarning, stacklevel=2)


def build_info() -> dict:
    """What setup.py decided when it built the extensions ({} for a tree it did not build):
    cuda_built, cuda_why, and the torch it built against (torch_version, torch_cuda)."""
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
    """What was built (setup.py's decisions) and, per compiled extension, whether it loaded, and
    why not."""
    loaded = load()
    info = build_info()
    if info:
        cuda = ("built" if info.get("cuda_built")
                else f"skipped ({info.get('cuda_why') or 'no reason recorded'})")
        against = (f"against torch {info['torch_version']}"
                   + (f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else "") + "; "
                   if info.get("torch_version") else "")
        lines = [f"build: {against}C++ extension built; CUDA extension {cuda}"]
    else:
        lines = ["build: no build record (the extensions were not built by setup.py here)"]
    for kind, name, module in (("cpp", "_C", "clif_kernels._C (C++ CPU kernel)"),
                               ("cuda", "_C_cuda", "clif_kernels._C_cuda (CUDA kernels)")):
        if loaded[kind]:
            state = "loaded"
        elif name in broken:
            state = f"PRESENT BUT FAILED TO LOAD: {broken[name][0]}: {broken[name][1]}"
        else:
            state = "not loaded" + load_failure(kind)
        lines.append(f"{module}: {state}")
    return "\n".join(lines)


def jit_build(cuda: bool | None = None, verbose: bool = False) -> None:
    """Compile and load the extensions from their C++/CUDA sources (shipped inside the package,
    or `csrc/` of a source checkout) with `torch.utils.cpp_extension.load`, into torch's
    extension cache. Needs a C++ compiler and ninja; the CUDA one also needs nvcc and a CUDA
    build of torch."""
    from torch.utils.cpp_extension import load as load_ext

    from . import build_config
    load()  # what is installed already counts; build only the rest
    if not os.path.isdir(CSRC):
        raise RuntimeError(f"no C++ sources at {CSRC}: this installation carries none (a wheel "
                           "built by setup.py ships them in clif_kernels/csrc)")
    if not _loaded["cpp"]:
        load_ext("clif_kernels_C", [os.path.join(CSRC, f) for f in build_config.CPU_SOURCES],
                 extra_cflags=build_config.CXX_FLAGS, extra_ldflags=build_config.LINK_FLAGS,
                 extra_include_paths=[CSRC], verbose=verbose, is_python_module=False)
        _loaded["cpp"] = True
        broken.pop("_C", None)
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda and not _loaded["cuda"]:
        load_ext("clif_kernels_C_cuda",
                 [os.path.join(CSRC, f) for f in build_config.CUDA_SOURCES],
                 extra_cuda_cflags=build_config.NVCC_FLAGS,
                 extra_include_paths=[CSRC] + build_config.nvidia_include_dirs(),
                 verbose=verbose, is_python_module=False)
        _loaded["cuda"] = True
        broken.pop("_C_cuda", None)


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

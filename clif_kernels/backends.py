"""Which backends can run where, and the choice that backend="auto" makes."""
from __future__ import annotations

import os

import torch

from .options import BACKENDS

# Read once at import: Triton itself decides at decoration time whether its kernels are
# interpreted, so a later change of the variable would not take effect anyway.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    HAS_TRITON = False


def unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype):
    """None when `backend` can run on this device and dtype, else a sentence saying why not."""
    if backend == "torch":
        return None
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if backend == "triton":
        if not HAS_TRITON:
            return "the triton package is not installed"
        if dtype == torch.float64:
            return "the Triton kernels store float32, float16 and bfloat16 only"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and TRITON_INTERPRET:
            return None
        return (f"Triton kernels need a CUDA tensor (got a {device.type} tensor); on the CPU "
                "they run only under TRITON_INTERPRET=1, set before clif_kernels is imported")
    if backend in ("cuda", "cpp"):
        from . import ops  # noqa: F401  (loads the compiled extensions and registers them)
        from . import extension
        if backend == "cpp":
            if not extension.has_cpp():
                return ("the C++ extension clif_kernels._C is not built (pip install -e . builds "
                        "it; clif_kernels.extension.jit_build() compiles it on the spot)")
            if device.type != "cpu":
                return f"the cpp backend runs on CPU tensors, got a {device.type} tensor"
            return None
        if not extension.has_cuda():
            return ("the CUDA extension clif_kernels._C_cuda is not built (it needs nvcc and a "
                    "CUDA build of torch at install time)")
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
        if dtype == torch.float64:
            return "the CUDA kernels store float32, float16 and bfloat16 only"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend, device: torch.device, dtype: torch.dtype) -> str:
    """Map "auto" to the fastest backend that runs here; check that a named one can run."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpp", "torch")
        for name in order:
            if unavailable_reason(name, device, dtype) is None:
                return name
        return "torch"
    why = unavailable_reason(backend, device, dtype)
    if why is not None:
        raise RuntimeError(f"backend={backend!r} cannot run here: {why}")
    return backend

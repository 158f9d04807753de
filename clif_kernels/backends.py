"""The backends: one object each, with where it runs, why it cannot, and its op pair.

This is the only module that knows the ops' names. The Triton module (and Triton itself) is
imported, and the compiled extension loaded, the first time a backend that needs it is asked
about, never at `import clif_kernels`.
"""
import functools
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch

from . import extension, ops

HALF_AND_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
ALL_FLOAT = HALF_AND_FLOAT + (torch.float64,)


def triton_interpret() -> bool:
    """Whether Triton runs its kernels in its interpreter (on CPU tensors). Triton reads the
    variable when the kernels are decorated, so only its value at that moment counts: the value
    when this is first asked is kept."""
    global _TRITON_INTERPRET
    if _TRITON_INTERPRET is None:
        _TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return _TRITON_INTERPRET


_TRITON_INTERPRET: Optional[bool] = None


def has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


@dataclass
class Backend:
    """One backend. `devices`/`dtypes`: what its kernels take (None: any device); `check_device`:
    for a device of `devices`, None when it can run there now, else a sentence saying why not;
    `load()`: its op pair (`load` is None for the reference, which has no op); `auto_devices`:
    the device types on which backend="auto" may pick it (None: any; `REGISTRY`'s order is
    auto's order)."""

    name: str
    devices: Optional[Tuple[str, ...]]
    dtypes: Tuple[torch.dtype, ...]
    check_device: Callable[[torch.device], Optional[str]]
    load: Optional[Callable[[], ops.OpPair]]
    auto_devices: Optional[Tuple[str, ...]]
    _pair: Optional[ops.OpPair] = field(default=None, repr=False)

    @property
    def fused(self) -> bool:
        """Whether it runs the fused op pair (every backend but the reference)."""
        return self.load is not None

    def why_not(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        """None when it can run on this device and dtype, else a sentence saying why not."""
        if self.devices is not None and device.type not in self.devices:
            kinds = " or ".join(d.upper() for d in self.devices)
            return f"the {self.name} backend runs on {kinds} tensors, got a {device.type} tensor"
        why = self.check_device(device)
        if why is None and dtype not in self.dtypes:
            kinds = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            why = f"the {self.name} backend takes {kinds}, got {dtype}"
        return why

    def op_pair(self) -> Optional[ops.OpPair]:
        if self._pair is None and self.load is not None:
            self._pair = self.load()
        return self._pair


def _no_cuda(device):
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def _version(package):
    try:
        v = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(p) for p in re.findall(r"\d+", v)[:2])


@functools.lru_cache(maxsize=None)
def _interpreter_why_not():
    """Triton 3.4 and older: the interpreter fails inside numpy 2.4 and newer ("only
    0-dimensional arrays can be converted to Python scalars")."""
    triton_v, numpy_v = _version("triton"), _version("numpy")
    if triton_v and numpy_v and triton_v < (3, 5) and numpy_v >= (2, 4):
        return (f"Triton {'.'.join(map(str, triton_v))}'s interpreter does not work with numpy "
                f"{'.'.join(map(str, numpy_v))}; install numpy<2.4 (or Triton >= 3.5)")
    return None


def _triton_why_not(device):
    if not has_triton():
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda":
        return _no_cuda(device)
    if device.type == "cpu" and triton_interpret():
        return _interpreter_why_not()
    return (f"Triton kernels need a CUDA tensor (got a {device.type} tensor); on the CPU "
            "they run only under TRITON_INTERPRET=1, set before clif_kernels is first used")


def _triton_load():
    from . import triton_kernels
    return ops.define("clif_triton", triton_kernels.clif_fwd, triton_kernels.clif_bwd,
                      ("CPU", "CUDA"))


_compiled_pair: Optional[ops.OpPair] = None


def _compiled_load():
    """The C++ library's op pair (its CPU kernel; the CUDA kernels register on the same ops),
    on the schemas declared in Python."""
    global _compiled_pair
    if _compiled_pair is None:
        extension.load()
        ops.define_schemas("clif_fused", bwd_reference=True)
        _compiled_pair = ops.register("clif_fused", python_autograd=False)
    return _compiled_pair


def _cpp_why_not(device):
    if not extension.load()["cpp"]:
        return ("the C++ extension clif_kernels._C is not built (pip install -e . builds it; "
                "clif_kernels.extension.jit_build() compiles it on the spot)"
                + extension.load_failure("cpp"))
    return None


def _cuda_why_not(device):
    if _no_cuda(device):
        return _no_cuda(device)
    if not extension.load()["cuda"]:
        return ("the CUDA extension clif_kernels._C_cuda is not built (it needs nvcc and a "
                "CUDA build of torch at install time)" + extension.load_failure("cuda"))
    return None


# The reference's name says what it is; "torch", its name before, is an alias.
REFERENCE = "reference"
ALIASES = {"torch": REFERENCE}

# Every backend, fastest first: the order in which backend="auto" tries those of a device.
REGISTRY = {b.name: b for b in (
    Backend("cuda", ("cuda",), HALF_AND_FLOAT, _cuda_why_not, _compiled_load, ("cuda",)),
    Backend("triton", ("cuda", "cpu"), HALF_AND_FLOAT, _triton_why_not, _triton_load,
            ("cuda",)),  # on the CPU only in Triton's interpreter: never auto's choice
    Backend("cpp", ("cpu",), ALL_FLOAT, _cpp_why_not, _compiled_load, ("cpu",)),
    Backend(REFERENCE, None, ALL_FLOAT, lambda device: None, None, None),
)}
# What `backend=` takes: "auto", a name of REGISTRY, or an alias.
BACKENDS = ("auto",) + tuple(REGISTRY)
# The input dtypes some backend takes.
DTYPES = tuple(dict.fromkeys(d for b in REGISTRY.values() for d in b.dtypes))


def auto_order(device_type: str) -> Tuple[str, ...]:
    """The backends backend="auto" tries on this device type, fastest first."""
    return tuple(n for n, b in REGISTRY.items()
                 if b.auto_devices is None or device_type in b.auto_devices)


def check_backend_name(backend) -> str:
    """The backend's name (an alias resolved); raises unless `backend` is "auto", a name of
    `REGISTRY` or an alias."""
    if isinstance(backend, str):
        if backend in BACKENDS:
            return backend
        if backend in ALIASES:
            return ALIASES[backend]
    aliases = ", ".join(f"{a!r} for {n!r}" for a, n in ALIASES.items())
    raise ValueError(f"backend must be one of {BACKENDS} (or {aliases}), got {backend!r}")


def unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype):
    """None when `backend` can run on this device and dtype, else a sentence saying why not."""
    backend = check_backend_name(backend)
    if backend == "auto":
        return None
    return REGISTRY[backend].why_not(device, dtype)


def _constant_under_compile(fn):
    """What torch.compiler.assume_constant_result does (dynamo calls `fn` at trace time and
    keeps its result as a constant), without importing dynamo, and with it Triton, at import.
    A test checks that the public decorator still sets this attribute and nothing else."""
    fn._dynamo_marked_constant = True
    return fn


# Run as it is at trace time under torch.compile, its result a constant of the graph: it may
# import Triton or load the compiled extension, which dynamo cannot trace.
@_constant_under_compile
def resolve_backend(backend, device: torch.device, dtype: torch.dtype) -> str:
    """Map "auto" to the fastest backend that runs here; check that a named one can run, and
    make its op pair ready (`REGISTRY[name].op_pair()`). Returns the backend's name."""
    key = (backend, device, dtype)
    if type(backend) is str:  # every call asks again: answered from what it found before
        name = _RESOLVED.get(key)
        if name is not None:
            return name
    backend = check_backend_name(backend)
    if backend == "auto":
        name = next((n for n in auto_order(device.type)
                     if REGISTRY[n].why_not(device, dtype) is None), REFERENCE)
        if device.type == "cuda" and REGISTRY[name].devices is None:  # the reference: say so
            extension.warn_slow_path(device.type, {n: REGISTRY[n].why_not(device, dtype)
                                                   for n in auto_order("cuda")
                                                   if REGISTRY[n].devices is not None})
    else:
        why = REGISTRY[backend].why_not(device, dtype)
        if why is not None:
            raise RuntimeError(f"backend={backend!r} cannot run here: {why}")
        name = backend
    REGISTRY[name].op_pair()
    if REGISTRY[name].fused:  # what a fused backend needs cannot go away in a process
        _RESOLVED[key] = name
    return name


# (backend as given, device, dtype) -> the fused backend that runs it. The reference is not
# kept: a backend may become available later (extension.jit_build()), never the other way round.
# Tests that fake a missing backend empty it.
_RESOLVED = {}

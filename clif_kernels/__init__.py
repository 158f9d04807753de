"""Fused CLIF and LIF spiking neurons for PyTorch (Huang et al., ICML 2024).

    >>> import torch, clif_kernels
    >>> spikes = clif_kernels.clif(torch.randn(8, 4, 16))

The names below load on first use, so that `import clif_kernels` (and the command line's
`--help` and `--version`) does not import torch until something needs it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from .functional import clif, lif
    from .modules import CLIFNode, LIFNode
    from .spike_bits import spikes_as_bits
    from .backends import BACKENDS
    from .options import SURROGATES

# What users call. `BACKENDS` and `SURROGATES` (the accepted names) stay reachable too.
__all__ = ["clif", "lif", "CLIFNode", "LIFNode", "spikes_as_bits", "__version__"]

_LAZY = {"clif": "functional", "lif": "functional", "CLIFNode": "modules", "LIFNode": "modules",
         "spikes_as_bits": "spike_bits",
         "BACKENDS": "backends", "SURROGATES": "options"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule: clif_kernels.functional, clif_kernels.extension, ...
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

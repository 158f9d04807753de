"""Fused CLIF and LIF spiking neurons for PyTorch (Huang et al., ICML 2024).

    >>> import torch, clif_kernels
    >>> spikes = clif_kernels.clif(torch.randn(8, 4, 16))
"""
from .backends import BACKENDS
from .functional import clif, lif
from .modules import CLIFNode, LIFNode
from .options import SURROGATES

__version__ = "0.1.0"
__all__ = ["clif", "lif", "CLIFNode", "LIFNode", "BACKENDS", "SURROGATES", "__version__"]

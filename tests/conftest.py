import os
import sys

import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter, which Triton
# switches on when the kernels are decorated: set it before anything imports clif_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Kernel outputs start as NaN (see triton_kernels._empty and alloc in csrc/clif_host.h).
os.environ["CLIF_KERNELS_POISON"] = "1"
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


def _fused_backends():
    from clif_kernels.backends import REGISTRY
    return [name for name, b in REGISTRY.items() if b.fused]


@pytest.fixture(params=_fused_backends())
def backend(request):
    """Each fused backend of `backends.REGISTRY`, skipped with the reason where it cannot
    run."""
    from checks import unavailable
    why = unavailable(request.param)
    if why is not None:
        pytest.skip(why)
    return request.param

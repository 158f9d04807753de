"""Assertions of the tests, on top of `clif_kernels.tools.verify`."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from clif_kernels import backends
from clif_kernels.tools.verify import QUANTITIES, RTOL, measure

HAS_GPU = torch.cuda.is_available()


def _test_device(b):
    """A GPU where the backend runs on one and there is one, else the CPU where it runs there
    (Triton: its interpreter), else its own device (where it then skips)."""
    if "cuda" in b.devices and (HAS_GPU or "cpu" not in b.devices):
        return "cuda"
    return "cpu"


# The device each fused backend's tests run on.
DEVICE = {name: _test_device(b) for name, b in backends.REGISTRY.items() if b.fused}
FUSED = tuple(DEVICE)


def unavailable(name, dtype=torch.float32):
    """Why `name` cannot run its tests here (None when it can)."""
    return backends.unavailable_reason(name, torch.device(DEVICE[name]), dtype)

# The independent float64 golden cases (tests/data/README.md).
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def compare(res, ref, bad, dtype):
    """Assert a backend's result equals the reference: spikes exactly and the rest to RTOL, on
    the neurons not flagged in `bad`; outputs present, of the right shape and dtype, no NaN."""
    # A guard on the test inputs, not on the kernels: with the inputs random_problem draws, about
    # 1% of neurons come near a jump; far more would mean the comparison had lost its teeth.
    assert int(bad.sum()) <= max(2, 0.05 * bad.numel()), f"{int(bad.sum())} neurons near a jump"
    for key in QUANTITIES:
        a, b = res[key], ref[key]
        assert (a is None) == (b is None), f"{key}: present {a is not None}, expected {b is not None}"
        if b is None:
            continue
        assert a.shape == b.shape, (key, a.shape, b.shape)
        assert a.dtype == dtype, (key, a.dtype)
        assert not torch.isnan(a).any(), f"{key} has NaN (an unwritten output?)"
    errs = measure(res, ref, bad)
    assert errs["spikes"] == 0, f"{errs['spikes']} spikes differ"
    for key, err in errs.items():
        if key != "spikes":
            assert err <= RTOL[dtype], f"{key}: relative error {err:.3g} > {RTOL[dtype]:.3g}"
    return errs


def golden_cases():
    with open(os.path.join(DATA, "golden_cases.json")) as f:
        cases = json.load(f)
    arrays = np.load(os.path.join(DATA, "golden_cases.npz"))
    return [(case, {k: torch.from_numpy(arrays[f"{case['name']}.{k}"]) for k in case["arrays"]})
            for case in cases]

"""Shared machinery of the tests: run a backend with gradients, and compare it with the float64
reference the way the project's standards ask (relative error per dtype, spikes exactly away from
the threshold, NaN-poisoned outputs)."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

import clif_kernels
from clif_kernels.options import make_options
from clif_kernels.reference import neuron_reference

# Normwise relative error allowed against the float64 reference. fp32: rounding of an O(T)-step
# recurrence, far under 1e-4. Half types: the kernel computes in fp32 and rounds each output
# once, so a few ulps of the storage dtype (bf16 ulp 2^-8, fp16 ulp 2^-11).
RTOL = {torch.float32: 2e-5, torch.float64: 1e-12,
        torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 4 * 2.0 ** -11}
# A neuron whose h comes within this of a point where the spike or the surrogate jumps is left
# out of the exact comparison (and counted): fp32 rounding can put it on either side.
NEAR = 1e-4

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def neuron_fn(is_clif):
    return clif_kernels.clif if is_clif else clif_kernels.lif


def random_problem(shape, dtype, *, with_state=False, is_clif=True, seed=None, scale=1.5):
    """Fresh random input, initial states and output gradients for a `[T, *]` problem."""
    g = torch.Generator().manual_seed(seed if seed is not None else int(np.random.randint(2**31)))
    x = (torch.randn(shape, generator=g) * scale + 0.3).to(dtype)
    st = shape[1:]
    v0 = (torch.randn(st, generator=g) * 0.5).to(dtype) if with_state else None
    m0 = (torch.rand(st, generator=g) * 2).to(dtype) if (with_state and is_clif) else None
    grads = {"spikes": torch.randn(shape, generator=g).to(dtype),
             "vT": torch.randn(st, generator=g).to(dtype),
             "mT": torch.randn(st, generator=g).to(dtype) if is_clif else None}
    return x, v0, m0, grads


def run_with_grads(fn, x, v0, m0, grads, **kw):
    """Forward with return_state, backward of sum(out * grad); returns outputs and gradients."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (x, v0, m0)]
    kwargs = dict(kw, return_state=True)
    if leaves[1] is not None:
        kwargs["v0"] = leaves[1]
    if leaves[2] is not None:
        kwargs["m0"] = leaves[2]
    out = fn(leaves[0], **kwargs)
    spikes, vT = out[0], out[1]
    mT = out[2] if len(out) == 3 else None
    loss = (spikes.double() * grads["spikes"].double()).sum() + (vT.double() * grads["vT"].double()).sum()
    if mT is not None and grads.get("mT") is not None:
        loss = loss + (mT.double() * grads["mT"].double()).sum()
    loss.backward()
    return {"spikes": spikes.detach(), "vT": vT.detach(),
            "mT": None if mT is None else mT.detach(),
            "grad_x": leaves[0].grad,
            "grad_v0": None if leaves[1] is None else leaves[1].grad,
            "grad_m0": None if leaves[2] is None else leaves[2].grad}


def reference64(is_clif, x, v0, m0, grads, **params):
    """Float64 reference outputs and gradients, plus the mask of neurons near a discontinuity."""
    up = lambda t: None if t is None else t.double()  # noqa: E731
    g64 = {k: up(v) for k, v in grads.items()}
    res = run_with_grads(neuron_fn(is_clif), up(x), up(v0), up(m0), g64, backend="torch", **params)
    opts = make_options(**params)
    _, _, _, h = neuron_reference(x.double(), opts, clif=is_clif, v0=up(v0), m0=up(m0),
                                  return_h=True)
    th = opts.v_threshold
    near = (h - th).abs() < NEAR * max(1.0, abs(th))
    if opts.surrogate == "rectangle":
        for edge in (th - opts.alpha / 2, th + opts.alpha / 2):
            near |= (h - edge).abs() < NEAR * max(1.0, abs(edge))
    bad = near.reshape(h.shape[0], -1).any(0) if h.numel() else torch.zeros(0, dtype=torch.bool)
    return res, bad.reshape(x.shape[1:])


def rel_err(a, b):
    """max |a - b| / max |b|, in float64 (0 for empty tensors)."""
    if b.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def compare(res, ref, bad, dtype, report=None):
    """Assert a backend's result equals the reference: spikes exactly and the rest to RTOL, on the
    neurons not flagged in `bad`. Returns the largest relative error per quantity."""
    keep = ~bad
    assert bad.double().mean().item() <= 0.05, f"too many neurons near the threshold: {bad.sum()}"
    errs = {}
    for key in ("spikes", "vT", "mT", "grad_x", "grad_v0", "grad_m0"):
        a, b = res[key], ref[key]
        if b is None:
            assert a is None, key
            continue
        assert a is not None, f"{key} missing"
        assert a.shape == b.shape, (key, a.shape, b.shape)
        assert a.dtype == dtype, (key, a.dtype)
        assert not torch.isnan(a).any(), f"{key} has NaN (unwritten output?)"
        ak, bk = (a[:, keep], b[:, keep]) if a.dim() == keep.dim() + 1 else (a[keep], b[keep])
        if key == "spikes":
            assert torch.equal(ak.double(), bk), f"spikes differ at {(ak.double() != bk).sum()}"
            continue
        errs[key] = rel_err(ak, bk)
        assert errs[key] <= RTOL[dtype], f"{key}: relative error {errs[key]:.3g} > {RTOL[dtype]}"
    if report is not None:
        report.update(errs)
    return errs


def golden_cases():
    with open(os.path.join(SHARED, "golden_cases.json")) as f:
        cases = json.load(f)
    arrays = np.load(os.path.join(SHARED, "golden_cases.npz"))
    out = []
    for case in cases:
        arr = {k: torch.from_numpy(arrays[f"{case['name']}.{k}"]) for k in case["arrays"]}
        out.append((case, arr))
    return out

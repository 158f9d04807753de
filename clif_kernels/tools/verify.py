"""Comparison of a backend with the float64 reference, shared by the tests and `check`.

Rules (the project's standards): relative error against float64 per dtype; spikes compared
exactly on neurons whose reference h never comes within rounding of a point where the spike or
the surrogate jumps; those neurons are counted, not compared.
"""
from __future__ import annotations

import numpy as np
import torch

from ..backends import REGISTRY
from ..functional import clif, lif
from ..options import make_options
from ..reference import neuron_reference

# Normwise relative error allowed against the float64 reference. fp32: rounding of an O(T)-step
# recurrence, far under 1e-4. Half types: math in fp32 and each output rounded once, so a few
# ulps of the storage dtype (bf16 ulp 2^-8, fp16 ulp 2^-11).
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5,
        torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 4 * 2.0 ** -11}
# A neuron whose reference h comes this close to a jump of the spike (the threshold) or of a
# surrogate (the edges of the rectangle and piecewise_leaky_relu windows) is left out of the
# exact comparison: fp32 rounding may put it on either side.
NEAR = 1e-4
# The reference backend: the one that runs on any device.
REFERENCE = next(n for n, b in REGISTRY.items() if b.devices is None)
QUANTITIES = ("spikes", "vT", "mT", "grad_x", "grad_v0", "grad_m0")


def neuron_fn(is_clif):
    return clif if is_clif else lif


def random_problem(shape, dtype, *, with_state=False, is_clif=True, seed=None, device="cpu"):
    """Fresh random input (mean 0.3, std 1.5: about a third of the steps fire), initial states
    and output gradients for a `[T, *]` problem."""
    if seed is None:
        seed = int(np.random.randint(2 ** 31))
    # Drawn on the target device: `check` on a GPU draws 64M-element problems.
    g = torch.Generator(device=device).manual_seed(seed)
    draw = lambda s, f=torch.randn: f(s, generator=g, device=device).to(dtype)  # noqa: E731
    x = (torch.randn(shape, generator=g, device=device) * 1.5 + 0.3).to(dtype)
    st = tuple(shape[1:])
    v0 = (draw(st) * 0.5) if with_state else None
    m0 = (draw(st, torch.rand) * 2) if (with_state and is_clif) else None
    grads = {"spikes": draw(tuple(shape)), "vT": draw(st),
             "mT": draw(st) if is_clif else None}
    return x, v0, m0, grads


def run_with_grads(fn, x, v0, m0, grads, **kw):
    """Forward with return_state, then backward of sum(spikes * gs) + sum(vT * gvT) +
    sum(mT * gmT); returns the outputs and the gradients of x, v0, m0."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True)
              for t in (x, v0, m0)]
    kwargs = dict(kw, return_state=True)
    if leaves[1] is not None:
        kwargs["v0"] = leaves[1]
    if leaves[2] is not None:
        kwargs["m0"] = leaves[2]
    out = fn(leaves[0], **kwargs)
    spikes, vT = out[0], out[1]
    mT = out[2] if len(out) == 3 else None
    loss = (spikes.double() * grads["spikes"].double()).sum() + \
        (vT.double() * grads["vT"].double()).sum()
    if mT is not None and grads.get("mT") is not None:
        loss = loss + (mT.double() * grads["mT"].double()).sum()
    loss.backward()
    return {"spikes": spikes.detach(), "vT": vT.detach(),
            "mT": None if mT is None else mT.detach(),
            "grad_x": leaves[0].grad,
            "grad_v0": None if leaves[1] is None else leaves[1].grad,
            "grad_m0": None if leaves[2] is None else leaves[2].grad}


def reference64(is_clif, x, v0, m0, grads, **params):
    """Float64 reference results, and the mask `[*]` of neurons near a discontinuity."""
    # On the input's device: float64 is cheap enough on a GPU, and the CPU would be the
    # bottleneck of `check` there.
    up = lambda t: None if t is None else t.detach().double()  # noqa: E731
    g64 = {k: up(v) for k, v in grads.items()}
    res = run_with_grads(neuron_fn(is_clif), up(x), up(v0), up(m0), g64, backend=REFERENCE,
                         **params)
    opts = make_options(**params)
    h = neuron_reference(up(x), opts, clif=is_clif, v0=up(v0), m0=up(m0), return_h=True)[-1]
    th = opts.v_threshold
    # The surrogates with a jump: the rectangle at th -+ alpha/2, piecewise_leaky_relu at
    # th -+ alpha (its window's half-width).
    edge = {"rectangle": opts.alpha / 2, "piecewise_leaky_relu": opts.alpha}.get(opts.surrogate)
    points = [th] + ([th - edge, th + edge] if edge is not None else [])
    near = torch.zeros(h.shape, dtype=torch.bool, device=h.device)
    for p in points:
        near |= (h - p).abs() < NEAR * max(1.0, abs(p))
    bad = near.any(0) if h.shape[0] else torch.zeros(h.shape[1:], dtype=torch.bool)
    return res, bad.cpu()


def rel_err(a, b):
    """max |a - b| / max |b| in float64; 0 for empty tensors, inf if `a` has NaN where `b`
    has none."""
    if b.numel() == 0:
        return 0.0
    # On a's device: copying 64M-element results to the host would dominate `check` on a GPU.
    a, b = a.detach().double(), b.detach().to(a.device).double()
    diff = (a - b).abs()
    if torch.isnan(diff).any():
        return float("inf")
    return (diff.max() / b.abs().max().clamp_min(1e-30)).item()


def measure(res, ref, bad):
    """Per quantity: relative error (spikes: number of differing spikes) on the neurons not in
    `bad`. Shapes and dtypes are checked by the caller."""
    out = {}
    for key in QUANTITIES:
        a, b = res[key], ref[key]
        if a is None or b is None:
            continue
        a, b = a.detach(), b.detach().to(a.device)
        keep = ~bad.to(a.device)
        ak, bk = (a[:, keep], b[:, keep]) if a.dim() == keep.dim() + 1 else (a[keep], b[keep])
        if key == "spikes":
            out[key] = int((ak.double() != bk).sum())
        else:
            out[key] = rel_err(ak, bk)
    return out

"""Per-step cost of a single-step CLIF neuron call on the CPU (docs/authors-neuron.md):
`clif_kernels.authors.ComplementaryLIFNeuron` called once per step, the same step written in
plain PyTorch, and `CLIFNode(step_mode="m")` called once per sequence, at a tiny and a mid size.

    python benchmarks/step_cost.py

Prints microseconds per time step, the best of 7 rounds, forward only (no grad) and
forward + backward.
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clif_kernels import CLIFNode  # noqa: E402
from clif_kernels.authors import ComplementaryLIFNeuron  # noqa: E402


class PlainStep(torch.nn.Module):
    """docs/clif-spec.md's step (soft reset, no input decay, rectangle) in PyTorch operations."""

    def __init__(self, tau=2.0):
        super().__init__()
        self.tau = tau
        self.reset()

    def reset(self):
        self.v = self.m = None

    def forward(self, x):
        v = torch.zeros_like(x) if self.v is None else self.v
        m = torch.zeros_like(x) if self.m is None else self.m
        h = (1 - 1 / self.tau) * v + x
        s = _Rectangle.apply(h - 1.0)
        m = m * torch.sigmoid(h / self.tau) + s
        self.v, self.m = h - s * (1.0 + torch.sigmoid(m)), m
        return s


class _Rectangle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (z.abs() <= 0.5).to(g.dtype)


def _median_us(fn, reps, rounds=7):
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    return min(times)  # the least disturbed round: the machine is shared


def _per_call(node, x, grad, single):
    def run():
        xs = x.clone().requires_grad_(grad)
        out = torch.stack([node(xs[t]) for t in range(len(xs))]) if single else node(xs)
        if grad:
            (out.sum() + node.v.sum()).backward()
        node.reset()
    return run


def main(T=6):
    for name, shape, reps in (("tiny", (1, 64), 2000), ("mid", (32, 64, 16, 16), 10)):
        x = torch.randn(T, *shape) * 1.5
        for grad in (False, True):
            with torch.enable_grad() if grad else torch.no_grad():
                fused = _median_us(_per_call(ComplementaryLIFNeuron(backend="cpp"), x, grad, True),
                                   reps) / T
                plain = _median_us(_per_call(PlainStep(), x, grad, True), reps) / T
                multi = _median_us(_per_call(CLIFNode(step_mode="m", backend="cpp"), x, grad,
                                             False), reps) / T
            print(f"{name} {list(shape)} {'fwd+bwd' if grad else 'fwd'}: single-step fused "
                  f"{fused:.1f} us/step, single-step PyTorch {plain:.1f} us/step, multi-step "
                  f"fused (T={T}) {multi:.1f} us/step")


if __name__ == "__main__":
    main()

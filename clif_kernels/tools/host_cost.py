"""What one neuron call costs the host, against one PyTorch op measured in the same run.

On a GPU the kernels of a mid-sized layer take tens of microseconds, so a spiking network's step
time is set by what the host does around each neuron call. Measured here on tiny inputs, where
the kernels cost next to nothing: per call, the median over interleaved rounds of

- `torch.sigmoid` (the yardstick: one PyTorch op, with its backward),
- `clif` through the functional API, on each fused backend that runs here,
- a multi-step `CLIFNode` (reset, call), on the same backends,

each in mode `fwd` (no grad) and `fwd+bwd` (`.sum().backward()`), with the ratio to sigmoid's
time in the same mode and round. The rounds interleave the providers, so that a machine's load
drifting during the run weighs on all of them alike; on a GPU each round ends with a
synchronisation, so the time is what the host and the device together take per call.
"""
from __future__ import annotations

import statistics
import time

import torch

from .. import functional
from ..backends import REGISTRY
from ..modules import CLIFNode

COLUMNS = ["device", "provider", "backend", "mode", "dtype", "T", "N", "us", "ratio", "threads",
           "torch", "triton", "git", "date"]
MODES = ("fwd", "fwd+bwd")
SHAPES = ((4, 16), (8, 64))
YARDSTICK = "torch.sigmoid"


def backends_here(device, dtype=torch.float32):
    """The fused backends that run on this device (the reference is a loop over T, not one
    call), but Triton's interpreter on the CPU, whose timings mean nothing."""
    return [n for n, b in REGISTRY.items() if b.fused and b.why_not(device, dtype) is None
            and not (n == "triton" and device.type != "cuda")]


def _callables(backend, mode, x):
    """{provider: a zero-argument call} for one mode; `x` requires grad in mode fwd+bwd."""
    node = CLIFNode(step_mode="m", backend=backend)

    def node_call():
        node.reset()
        return node(x)

    calls = {YARDSTICK: lambda: torch.sigmoid(x), "clif": lambda: functional.clif(
        x, backend=backend), "CLIFNode": node_call}
    if mode == "fwd":
        return calls
    return {name: (lambda f=f: f().sum().backward()) for name, f in calls.items()}


def measure(device, backends=None, shapes=SHAPES, rounds=7, calls_per_round=300):
    """One dict per (provider, backend, mode, shape): `us` the median per-call time over the
    rounds, `ratio` the median of its ratio to torch.sigmoid's in the same round."""
    backends = backends_here(device) if backends is None else backends
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for backend in backends:
        for mode in MODES:
            for T, N in shapes:
                x = torch.randn(T, N, device=device, requires_grad=mode == "fwd+bwd")
                calls = _callables(backend, mode, x)
                per_round = {name: [] for name in calls}
                for name, f in calls.items():  # warm-up: first-call setup, caches
                    for _ in range(20):
                        f()
                sync()
                for _ in range(rounds):
                    for name, f in calls.items():
                        t0 = time.perf_counter()
                        for _ in range(calls_per_round):
                            f()
                        sync()
                        per_round[name].append((time.perf_counter() - t0) / calls_per_round)
                base = per_round[YARDSTICK]
                for name, times in per_round.items():
                    if name == YARDSTICK and backend != backends[0]:
                        continue  # the yardstick once per (mode, shape) is enough in the CSV
                    rows.append(dict(
                        provider=name, backend="" if name == YARDSTICK else backend, mode=mode,
                        dtype="float32", T=T, N=N, us=round(statistics.median(times) * 1e6, 2),
                        ratio=round(statistics.median(t / b for t, b in zip(times, base)), 3)))
    return rows


def summary(rows):
    lines = ["| provider | backend | mode | T x N | us per call | x torch.sigmoid |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['backend'] or '-'} | {r['mode']} | "
                     f"{r['T']} x {r['N']} | {r['us']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)

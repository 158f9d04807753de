"""SpikingJelly's model zoo with SpikingJelly's ComplementaryLIFNode and with the drop-in of
`clif_kernels.spikingjelly`: how far apart they are, and what a training step costs.

    python benchmarks/sj_model_zoo.py                     # spiking_resnet18, T 4, batch 8, 32x32
    python benchmarks/sj_model_zoo.py --T 8 --batch 4 --steps 10

Needs SpikingJelly 2.0 with its model package (torchvision, h5py; requirements-compat.txt).
Prints, for each step mode: the largest difference of the outputs and of every parameter's
gradient (same weights, same input), then for each node the training step's time (SGD on the
squared mean output: forward, backward, update, reset_net; median and minimum of --steps after
two warm-up steps, the two nodes' steps alternating), the bytes autograd saves for the backward,
and the peak of the process's resident memory during a steady-state step over what it held with
the model built (glibc's free blocks handed back first; each node in a fresh process, so that
neither sees the other's memory).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _nodes():
    from spikingjelly.activation_based import neuron
    from clif_kernels import spikingjelly as cks
    return {"spikingjelly": neuron.ComplementaryLIFNode, "clif_kernels": cks.ComplementaryLIFNode}


def _build(node_cls, step_mode, seed=0):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import spiking_resnet
    torch.manual_seed(seed)
    net = spiking_resnet.spiking_resnet18(spiking_neuron=node_cls, num_classes=10)
    functional.set_step_mode(net, step_mode)
    return net


def _forward(net, x, step_mode):
    if step_mode == "m":
        return net(x)
    return torch.stack([net(x_t) for x_t in x])


def _input(args):
    g = torch.Generator().manual_seed(1)
    return torch.rand(args.T, args.batch, 3, args.size, args.size, generator=g)


def differences(args, step_mode):
    from spikingjelly.activation_based import functional
    x = _input(args)
    out = {}
    for name, cls in _nodes().items():
        net = _build(cls, step_mode)
        y = _forward(net, x, step_mode)
        y.square().mean().backward()
        out[name] = (y.detach(), {k: p.grad for k, p in net.named_parameters()})
        functional.reset_net(net)
    (y1, g1), (y2, g2) = out["spikingjelly"], out["clif_kernels"]
    rel = {k: ((g2[k] - g1[k]).abs().max() / g1[k].abs().max().clamp_min(1e-30)).item()
           for k in g1}
    worst = max(rel, key=rel.get)
    return {"outputs_max_abs_diff": (y2 - y1).abs().max().item(),
            "outputs_bit_identical": bool(torch.equal(y1, y2)),
            "grad_max_abs_diff": max((g2[k] - g1[k]).abs().max().item() for k in g1),
            "grad_worst_rel_diff": rel[worst], "grad_worst_tensor": worst}


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim():
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss():
    """Start the kernel's peak-RSS counter (VmHWM) again from the current RSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trainer(net, x, step_mode):
    from spikingjelly.activation_based import functional
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step():
        y = _forward(net, x, step_mode)
        opt.zero_grad(set_to_none=True)
        y.square().mean().backward()
        opt.step()
        functional.reset_net(net)
    return step


def timing(args, step_mode):
    """Training-step times of both nodes, their steps alternating (the machine's load drifts;
    alternation gives both the same share of it)."""
    x = _input(args)
    steps = {name: _trainer(_build(cls, step_mode), x, step_mode)
             for name, cls in _nodes().items()}
    times = {name: [] for name in steps}
    for i in range(2 + args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t)}
            for name, t in times.items()}


def memory(args, node, step_mode):
    """Runs in its own process: bytes saved for the backward, and the peak resident memory of a
    steady-state training step over what the process held with the model built."""
    from spikingjelly.activation_based import functional
    net = _build(_nodes()[node], step_mode)
    x = _input(args)
    step = _trainer(net, x, step_mode)
    _forward(net, x[:, :2], step_mode).sum().backward()  # libraries and extensions loaded
    functional.reset_net(net)
    net.zero_grad(set_to_none=True)
    _trim()
    base = _rss_bytes()
    step()
    step()
    # From memory handed back to the system (glibc keeps freed blocks; the C++ backend's output
    # cache keeps its own, which stay counted).
    _trim()
    _reset_peak_rss()
    step()
    peak = _peak_rss_bytes() - base
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = _forward(net, x, step_mode)
    del y
    functional.reset_net(net)
    return {"saved_mib": sum(saved.values()) / 2**20, "peak_rss_growth_mib": peak / 2**20}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--modes", default="m,s")
    p.add_argument("--measure", nargs=2, metavar=("NODE", "STEP_MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(memory(args, *args.measure)))
        return
    print(f"spiking_resnet18, input [T={args.T}, B={args.batch}, 3, {args.size}, {args.size}], "
          f"fp32, CPU, {args.threads} threads, torch {torch.__version__}")
    for mode in args.modes.split(","):
        print(f"step_mode={mode}: {json.dumps(differences(args, mode))}")
        times = timing(args, mode)
        for node in _nodes():
            cmd = [sys.executable, __file__, "--measure", node, mode, "--T", str(args.T),
                   "--batch", str(args.batch), "--size", str(args.size), "--threads",
                   str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = {k: round(v, 1) for k, v in {**times[node], **json.loads(res.stdout)}.items()}
            print(f"  {node:13s} {json.dumps(row)}")
        ratio = times["spikingjelly"]["median_ms"] / times["clif_kernels"]["median_ms"]
        print(f"  step time, SpikingJelly's node / ours (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()

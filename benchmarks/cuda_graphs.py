"""Eager calls against CUDA graph replay: a multi-step CLIFNode's forward + backward at T = 8,
N = 2^16 and 2^20 (fp32), the per-call host cost that a captured graph removes.

    python benchmarks/cuda_graphs.py --out benchmarks/results     # on a GPU

Writes cuda_graphs_gpu.csv (device, backend, N, eager_ms, replay_ms, torch, git, date). Without a
GPU it says so and exits 0 having measured nothing (the CPU has no CUDA graphs).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from clif_kernels import CLIFNode, backends  # noqa: E402
from clif_kernels.tools.benchmark import _device_name, _git_rev  # noqa: E402

COLUMNS = ["device", "backend", "T", "N", "eager_ms", "replay_ms", "torch", "git", "date"]
SIZES = (2**16, 2**20)
T = 8


def _median_ms(fn, reps=50, rounds=5):
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def measure(backend, N):
    """(eager ms, replay ms) of one forward + backward."""
    node = CLIFNode(step_mode="m", backend=backend)
    x = torch.randn(T, N, device="cuda", requires_grad=True)

    def step():
        node.reset()
        node(x).sum().backward()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    eager = _median_ms(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    replay = _median_ms(graph.replay)
    return eager, replay


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for cuda_graphs_gpu.csv")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU here: CUDA graphs not measured")
        return 0
    device = torch.device("cuda")
    meta = dict(device=_device_name(device), torch=torch.__version__, git=_git_rev(),
                date=datetime.date.today().isoformat())
    rows = []
    for name in backends.auto_order("cuda"):
        if not backends.REGISTRY[name].fused or backends.REGISTRY[name].why_not(
                device, torch.float32):
            continue
        for N in SIZES:
            eager, replay = measure(name, N)
            rows.append(dict(meta, backend=name, T=T, N=N, eager_ms=f"{eager:.4f}",
                             replay_ms=f"{replay:.4f}"))
            print(f"{name} T={T} N={N}: eager {eager:.4f} ms, graph replay {replay:.4f} ms")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "cuda_graphs_gpu.csv")
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel-level timings on a GPU: the CUDA and Triton forward and backward launches alone (no
autograd, no allocation of the inputs), against the bytes each must move and the copy bandwidth
measured in the same run, for a few Triton block shapes. Feeds benchmarks/NOTES.md.

    python benchmarks/tune_gpu.py --out benchmarks/results      # needs a CUDA device

The default Triton configuration is timed twice: the spread between the two is the noise floor
any other configuration must beat.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clif_kernels import backends, triton_kernels  # noqa: E402
from clif_kernels.ops import fused_options  # noqa: E402
from clif_kernels.options import make_options  # noqa: E402

FWD_CONFIGS = [(1024, 8), (1024, 8), (1024, 4), (512, 4), (2048, 8)]
BWD_CONFIGS = [(256, 4), (256, 4), (128, 4), (512, 8), (256, 8)]


def moved_bytes(kind, T, N, elt):
    """Fewest bytes: fwd reads x, writes spikes and the fp32 (v, m) checkpoints; bwd reads x,
    grad_spikes and the checkpoints, writes grad_x."""
    ck = 8 * triton_kernels.n_checkpoints(T) * N
    return (2 * elt * T * N + ck) if kind == "fwd" else (3 * elt * T * N + ck)


def bench(fn):
    if not torch.cuda.is_available():  # dry run of the script's logic (TRITON_INTERPRET=1)
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default="8:8388608,32:2097152")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = 2**28 // 4 if dev.type == "cuda" else 2**20
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    copy_gbps = 2 * 4 * n / bench(lambda: dst.copy_(src)) / 1e6
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}  copy {copy_gbps:.0f} GB/s")
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    have_cuda = backends.unavailable_reason("cuda", dev, torch.float32) is None
    for shape in args.shapes.split(","):
        T, N = (int(v) for v in shape.split(":"))
        for dt in (torch.float32, torch.bfloat16):
            x = (torch.randn(T, N, device=dev, generator=g) * 1.5 + 0.3).to(dt)
            gs = torch.randn(T, N, device=dev, generator=g).to(dt)
            # tau 2, threshold 1, soft reset, no input decay, rectangle(1), CLIF
            opts = fused_options(make_options(), True)

            def same(out, ref):
                # Another block shape must not change a single bit of the result.
                return "" if ref is None else str(all(torch.equal(a, b) for a, b in
                                                      zip(out, ref) if a.numel()))

            def record(impl, kind, cfg, ms, equal=""):
                gbps = moved_bytes(kind, T, N, dt.itemsize) / ms / 1e6
                rows.append(dict(impl=impl, kind=kind, config=cfg, dtype=str(dt)[6:], T=T, N=N,
                                 ms=f"{ms:.4f}", gbps=f"{gbps:.0f}",
                                 of_copy=f"{gbps / copy_gbps:.2f}", same_as_default=equal))
                print(f"{impl:7s} {kind} {cfg:10s} {str(dt)[6:]:9s} T={T:3d} N={N:8d} "
                      f"{ms:8.4f} ms {gbps:7.0f} GB/s {gbps / copy_gbps:5.0%} of copy {equal}")

            if have_cuda:
                fwd, bwd = backends.REGISTRY["cuda"].op_pair()
                ck = fwd(x, None, None, *opts, True)[3]
                record("cuda", "fwd", "-", bench(lambda: fwd(x, None, None, *opts, True)))
                record("cuda", "bwd", "-", bench(
                    lambda: bwd(x, None, None, ck, gs, None, None, *opts)))
            ref = None
            for block, warps in FWD_CONFIGS:
                triton_kernels.FWD_BLOCK, triton_kernels.FWD_WARPS = block, warps
                out = triton_kernels.clif_fwd(x, None, None, opts, True)
                record("triton", "fwd", f"{block}/{warps}", bench(
                    lambda: triton_kernels.clif_fwd(x, None, None, opts, True)),
                    same(out, ref))
                ref = out if ref is None else ref
            triton_kernels.FWD_BLOCK, triton_kernels.FWD_WARPS = FWD_CONFIGS[0]
            ck = triton_kernels.clif_fwd(x, None, None, opts, True)[3]
            ref = None
            for block, warps in BWD_CONFIGS:
                triton_kernels.BWD_BLOCK, triton_kernels.BWD_WARPS = block, warps
                out = triton_kernels.clif_bwd(x, None, None, ck, gs, None, None, opts)
                record("triton", "bwd", f"{block}/{warps}", bench(
                    lambda: triton_kernels.clif_bwd(x, None, None, ck, gs, None, None, opts)),
                    same(out, ref))
                ref = out if ref is None else ref
            triton_kernels.BWD_BLOCK, triton_kernels.BWD_WARPS = BWD_CONFIGS[0]
            x = gs = ck = out = ref = None  # free the device memory before the next shape
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "tune_gpu.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
            f.write(f"# copy GB/s,{copy_gbps:.0f}\n")
        print(f"wrote {path}")
    return 0 if all(math.isfinite(float(r["ms"])) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

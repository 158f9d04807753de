"""The GPU kernels A/B: the current kernels against the previous ones (loads next to their uses,
the surrogate switched per step, the tiled Triton backward), timed in one process by switching
CLIF_KERNELS_GPU_KERNELS between calls.

For each backend (cuda, triton), dtype, T and N it records, for both variants:
- the kernels alone (the fused ops, no autograd): forward, backward;
- forward + backward through autograd (`clif` and `.backward`);
- each as a share of the copy bandwidth measured in the same run (bytes the design moves);
- the variant's accuracy: spikes and gradients against the float64 reference (the tests' rule).

Then a verdict per backend: the variant to keep as the default (the faster by the geometric mean
of the autograd forward + backward over the shapes, among those that pass the accuracy check).

    python benchmarks/ab_gpu.py --out benchmarks/results          # needs a CUDA device
    python benchmarks/ab_gpu.py --ncu-target                      # one backward per variant, for ncu

Without a GPU it runs the Triton backend in the interpreter on the shapes given (for testing the
script's logic; the times mean nothing there).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from clif_kernels import backends, clif  # noqa: E402
from clif_kernels.ops import fused_options  # noqa: E402
from clif_kernels.options import make_options  # noqa: E402
from tune_gpu import moved_bytes  # noqa: E402  (this folder: sys.path[0] for a script)

VARIANTS = ("previous", "current")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_SHAPES = ("8:65536,8:262144,8:1048576,8:4194304,8:8388608,8:33554432,"
                  "32:65536,32:1048576,32:8388608")
FIELDS = ("device", "torch", "triton", "git", "date", "backend", "variant", "dtype", "T", "N",
          "mode", "ms", "gbps", "of_copy")


def git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def timer(fn):
    """Median ms of fn on a GPU (triton's do_bench); one timed call elsewhere (a dry run)."""
    if torch.cuda.is_available():
        from triton.testing import do_bench
        return do_bench(fn, warmup=10, rep=60, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def design_bytes(mode, T, N, elt):
    """Bytes the design must move (tune_gpu's floor per kernel), and their sum for a forward
    plus a backward."""
    if mode == "fwd+bwd":
        return moved_bytes("fwd", T, N, elt) + moved_bytes("bwd", T, N, elt)
    return moved_bytes(mode, T, N, elt)


def set_variant(variant):
    os.environ["CLIF_KERNELS_GPU_KERNELS"] = variant


def measure_case(backend, variant, dtype, T, N, device, time_fn=timer):
    """{mode: ms} for one case: the kernels alone and forward + backward through autograd."""
    set_variant(variant)
    g = torch.Generator(device=device).manual_seed(T * 7919 + N)
    x = (torch.randn(T, N, device=device, generator=g) * 1.5 + 0.3).to(dtype)
    gs = torch.randn(T, N, device=device, generator=g).to(dtype)
    fwd, bwd = backends.REGISTRY[backend].op_pair()
    opts = fused_options(make_options(), True)
    out = {}
    ck = fwd(x, None, None, *opts, True)[3]
    out["fwd"] = time_fn(lambda: fwd(x, None, None, *opts, True))
    out["bwd"] = time_fn(lambda: bwd(x, None, None, ck, gs, None, None, *opts))
    xr = x.detach().requires_grad_(True)

    def step():
        xr.grad = None
        clif(xr, backend=backend).backward(gs)
    out["fwd+bwd"] = time_fn(step)
    return out


def check_accuracy(backend, variant, dtype, device, T=12, N=None):
    """Worst relative error against the float64 reference over outputs, states and gradients,
    and whether every quantity is within the tests' tolerance with spikes exact."""
    from clif_kernels.tools.verify import RTOL, measure, random_problem, reference64, \
        run_with_grads
    set_variant(variant)
    if N is None:  # a size that is no multiple of any block; small in the interpreter
        N = 4099 if device.type == "cuda" else 257
    x, v0, m0, grads = random_problem((T, N), dtype, with_state=True, seed=1, device=device)
    res = run_with_grads(lambda *a, **k: clif(*a, **k), x, v0, m0, grads, backend=backend)
    ref, bad = reference64(True, x, v0, m0, grads)
    errs = measure(res, ref, bad)
    worst = max((v for k, v in errs.items() if k != "spikes"), default=0.0)
    ok = errs.get("spikes", 0) == 0 and worst <= RTOL[dtype]
    return worst, errs.get("spikes", 0), ok


def copy_gbps(device, time_fn=timer):
    n = 2 ** 26 if device.type == "cuda" else 2 ** 16
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * 4 * n / time_fn(lambda: dst.copy_(src)) / 1e6


def verdict(rows, accuracy):
    """{backend: (variant to keep, speed-up of current over previous)}: the geometric mean of
    previous/current over the autograd forward + backward rows; a variant failing accuracy is
    never kept."""
    out = {}
    for backend in sorted({r["backend"] for r in rows}):
        times = {}
        for r in rows:
            if r["backend"] == backend and r["mode"] == "fwd+bwd":
                times.setdefault((r["dtype"], r["T"], r["N"]), {})[r["variant"]] = float(r["ms"])
        ratios = [t["previous"] / t["current"] for t in times.values() if len(t) == 2]
        if not ratios:
            continue
        speedup = math.exp(sum(math.log(q) for q in ratios) / len(ratios))
        ok = {v: all(a[2] for (b, var, _), a in accuracy.items() if b == backend and var == v)
              for v in VARIANTS}
        if ok["current"] and (speedup >= 1.0 or not ok["previous"]):
            keep = "current"
        elif ok["previous"]:
            keep = "previous"
        else:
            keep = "neither (both fail the accuracy check)"
        out[backend] = (keep, speedup)
    return out


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        T, N = item.split(":")
        shapes.append((int(T), int(N)))
    return shapes


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/ab_gpu.py")
    ap.add_argument("--out", default=None, help="folder for ab_gpu.csv and summary_ab_gpu.md")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="T:N,... (default: %(default)s)")
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--time-budget", type=float, default=300.0,
                    help="seconds; later shapes are skipped past it (default: %(default)s)")
    ap.add_argument("--ncu-target", action="store_true",
                    help="run each backend's backward once per variant at T=8, N=2^23 (fp32) "
                         "and exit: the launches ncu profiles")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [b for b in args.backends.split(",")
             if backends.unavailable_reason(b, device, torch.float32) is None]
    if args.ncu_target:
        for b in names:
            for v in VARIANTS:
                measure_case(b, v, torch.float32, 8, 2 ** 23 if device.type == "cuda" else 64,
                             device, time_fn=lambda fn: fn())
        return 0
    start = time.monotonic()
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda"
                else f"cpu ({platform.machine()}, dry run)",
                torch=torch.__version__, triton=_triton_version(), git=git_revision(),
                date=datetime.date.today().isoformat())
    bw = copy_gbps(device)
    print(f"{meta['device']}: copy {bw:.0f} GB/s; backends {names}", flush=True)
    rows, accuracy, status = [], {}, 0
    for b in names:
        for dname in args.dtypes.split(","):
            for v in VARIANTS:
                accuracy[(b, v, dname)] = check_accuracy(b, v, DTYPES[dname], device)
                worst, flips, ok = accuracy[(b, v, dname)]
                print(f"accuracy {b} {v} {dname}: worst relative error {worst:.2e}, "
                      f"{flips} spikes differ: {'ok' if ok else 'FAIL'}", flush=True)
    for T, N in parse_shapes(args.shapes):
        if time.monotonic() - start > args.time_budget:
            print(f"time budget reached: T={T} N={N} and later shapes skipped", flush=True)
            status = 1
            break
        for b in names:
            for dname in args.dtypes.split(","):
                dtype = DTYPES[dname]
                for v in VARIANTS:
                    try:
                        times = measure_case(b, v, dtype, T, N, device)
                    except (RuntimeError, ValueError) as e:  # out of memory, a launch failure
                        print(f"{b} {v} {dname} T={T} N={N}: FAILED {e}", flush=True)
                        status = 1
                        continue
                    for mode, ms in times.items():
                        gbps = design_bytes(mode, T, N, dtype.itemsize) / ms / 1e6
                        rows.append(dict(meta, backend=b, variant=v, dtype=dname, T=T, N=N,
                                         mode=mode, ms=f"{ms:.4f}", gbps=f"{gbps:.0f}",
                                         of_copy=f"{gbps / bw:.3f}"))
                    print(f"{b:6} {v:8} {dname} T={T:3d} N={N:9d} " + " ".join(
                        f"{m} {t:.4f} ms" for m, t in times.items()), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    set_variant("current")
    result = verdict(rows, accuracy)
    lines = [f"# GPU kernels A/B ({meta['device']}, {meta['date']}, git {meta['git']}, "
             f"torch {meta['torch']}, triton {meta['triton']})", "",
             f"Copy bandwidth in this run: {bw:.0f} GB/s.", ""]
    for b, (keep, speedup) in result.items():
        lines.append(f"- {b}: keep **{keep}** (current over previous, forward + backward "
                     f"through autograd, geometric mean: {speedup:.2f}x)")
    lines += ["", "| backend | variant | dtype | worst rel. error | spikes differ | ok |",
              "|---|---|---|---|---|---|"]
    for (b, v, d), (worst, flips, ok) in accuracy.items():
        lines.append(f"| {b} | {v} | {d} | {worst:.2e} | {flips} | {ok} |")
    print("\n".join(lines))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "ab_gpu.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
        with open(os.path.join(args.out, "summary_ab_gpu.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    if not all(a[2] for a in accuracy.values()):
        status = 1
    return status


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())

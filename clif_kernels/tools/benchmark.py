"""Benchmarks of the fused neuron against what users would otherwise run.

Providers: `naive` (the per-step eager loop, as the paper's authors trained), `compiled`
(`torch.compile` of that loop), `spikingjelly` (SpikingJelly 2.0 `ComplementaryLIFNode`, multi-step,
when installed), `torch` (our reference), `triton`, `cuda`, `cpp`. Modes: `fwd` (inference, no
grad) and `fwd+bwd` (one training step of the neuron alone). Each row of the CSV is one
(provider, mode, dtype, T, N) with its median time, the bandwidth achieved on the bytes the fused
design must move, and peak memory; a `copy` row per run gives the device-to-device copy bandwidth
measured in the same run.

    clif-kernels bench --quick           # CPU-sized, about a minute on 2 cores
    clif-kernels bench --out results     # the full sweep (meant for a GPU)
    clif-kernels bench-model             # a spiking ResNet-18's training step (bench_model.py)

The command line (options, validation) is clif_kernels/cli.py; the plots are drawn from a clone
by benchmarks/plot.py.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
import sys
import time

import torch

from .. import functional
from ..backends import REGISTRY, unavailable_reason
from ..options import n_checkpoints
from ..reference import SpikeFn

COLUMNS = ["device", "provider", "mode", "dtype", "T", "N", "ms", "gbps", "peak_mb", "torch",
           "triton", "git", "date"]
# The package's backends come from its registry; the reference is the one that runs anywhere.
REFERENCE = next(n for n, b in REGISTRY.items() if b.devices is None)
FUSED = tuple(n for n in REGISTRY if n != REFERENCE)
PROVIDERS = ("naive", "compiled", "spikingjelly") + tuple(REGISTRY)
MODES = ("fwd", "fwd+bwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The ResNet-18 layer shape: [T, B, C, H, W] = [8, 64, 128, 32, 32], N = 2^23.
RESNET_SHAPE = (8, 64, 128, 32, 32)


def naive_clif(x_seq, tau=2.0, v_threshold=1.0):
    """The per-step eager loop (soft reset, rectangle surrogate), state in the input's dtype, as a
    single-step neuron module called T times computes it."""
    v = torch.zeros_like(x_seq[0])
    m = torch.zeros_like(x_seq[0])
    spikes = []
    for x in x_seq:
        h = v * (1.0 - 1.0 / tau) + x
        s = SpikeFn.apply(h, v_threshold, "rectangle", 1.0)
        m = m * torch.sigmoid(h / tau) + s
        v = h - s * (v_threshold + torch.sigmoid(m))
        spikes.append(s)
    return torch.stack(spikes)


def _spikingjelly_fn():
    try:
        from spikingjelly.activation_based import neuron
    except Exception:  # not installed, or its dependencies are missing
        return None

    def run(x_seq):
        node = neuron.ComplementaryLIFNode(step_mode="m")
        return node(x_seq)
    return run


def make_provider(name, device):
    """The callable for a provider on this device, or None with the reason it cannot run."""
    if name == "naive":
        return naive_clif, None
    if name == "compiled":
        return torch.compile(naive_clif), None
    if name == "spikingjelly":
        fn = _spikingjelly_fn()
        return (fn, None) if fn else (None, "spikingjelly 2.0 is not installed")
    if name == "triton" and device.type != "cuda":
        return None, "timings of Triton's interpreter mean nothing"
    why = unavailable_reason(name, device, torch.float32)
    if why is not None:
        return None, why
    return (lambda x: functional.clif(x, backend=name)), None


def design_bytes(mode, T, N, elt):
    """Bytes the fused design must move: forward reads x and writes spikes; the backward reads x
    and grad_spikes and writes grad_x; fp32 checkpoints of (v, m) every CKPT_EVERY steps past the
    first."""
    n_ckpt = n_checkpoints(T)
    fwd = 2 * elt * T * N
    if mode == "fwd":
        return fwd
    return fwd + 3 * elt * T * N + 2 * 8 * n_ckpt * N


def _timer(device):
    if device.type == "cuda":
        from triton.testing import do_bench

        def cuda_time(fn):
            # Median of ~100 ms of repetitions after warm-up; do_bench clears L2 between them.
            return do_bench(fn, warmup=25, rep=100, return_mode="median")
        return cuda_time

    def cpu_time(fn, reps=5):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]
    return cpu_time


def _case_fn(fn, mode, shape, dtype, device, n_buffers):
    """A zero-argument callable running one step of `mode`, rotating over input buffers so that
    consecutive calls do not find their input in cache."""
    # Drawn where they are used: 3 x 2^26 fp32 draws on the host would cost seconds per case.
    g = torch.Generator(device=device).manual_seed(0)
    xs = [(torch.randn(shape, generator=g, device=device) * 1.5 + 0.3).to(dtype)
          for _ in range(n_buffers)]
    grad = torch.randn(shape, generator=g, device=device).to(dtype)
    state = {"i": 0}

    def step():
        x = xs[state["i"] % n_buffers]
        state["i"] += 1
        if mode == "fwd":
            with torch.no_grad():
                return fn(x)
        x = x.detach().requires_grad_(True)
        fn(x).backward(grad)
        return x.grad
    return step


def _peak_mb(step, device):
    """MiB allocated by one step above what was allocated before it (inputs included there);
    CPU peak memory is not measured."""
    if device.type != "cuda":
        return ""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.1f}"


def copy_bandwidth(device, timer, nbytes=2**28):
    """GB/s of a device-to-device copy (read + write) of `nbytes`."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def default_sweep(quick, device):
    if quick:
        # (8, 2^20) is the CPU target shape of the C++ kernel (T=8, N=2^20).
        return [(4, 2**14), (8, 2**16), (16, 2**14), (8, 2**20)] if device.type == "cpu" else \
            [(8, 2**20), (8, 2**23)]
    # The ResNet shape first, so that a time budget cut keeps the headline numbers.
    sweep = [(8, n) for n in (2**23, 2**16, 2**18, 2**20, 2**22, 2**25)]
    sweep += [(t, 2**20) for t in (4, 16, 32, 128)]
    return sweep


def _git_rev():
    # A copy of the tree without .git (a device machine) is told its revision by the caller.
    if os.environ.get("CLIF_KERNELS_GIT_REV"):
        return os.environ["CLIF_KERNELS_GIT_REV"]
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(",", " ")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def _progress(i, total, label):
    """A bar redrawn in place on a terminal; in a log (stderr not a terminal), one line per
    case."""
    if not sys.stderr.isatty():
        if i < total:
            sys.stderr.write(f"[{i + 1}/{total}] {label}\n")
        sys.stderr.flush()
        return
    width = 30
    done = int(width * i / max(total, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{total} {label:50.50}")
    if i >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run(providers, modes, dtypes, sweep, device, time_budget=None, on_row=None, failed=None):
    """Measure everything; returns the CSV rows (dicts). `on_row(rows)` is called after each
    new row, so that a run killed part-way still leaves what it measured; each case that fails
    is reported and appended to `failed` (a list), and the sweep goes on."""
    timer = _timer(device)
    meta = {"device": _device_name(device), "torch": torch.__version__,
            "triton": _triton_version(), "git": _git_rev(),
            "date": datetime.date.today().isoformat()}
    rows = []
    copy_gbps = copy_bandwidth(device, timer, 2**28 if device.type == "cuda" else 2**26)
    rows.append(dict(meta, provider="copy", mode="copy", dtype="float32", T="", N="", ms="",
                     gbps=f"{copy_gbps:.1f}", peak_mb=""))
    if on_row:
        on_row(rows)
    fns, skipped = {}, {}
    for p in providers:
        fn, why = make_provider(p, device)
        if fn is None:
            skipped[p] = why
        else:
            fns[p] = fn
    cases = [(p, mode, dt, T, N) for (T, N) in sweep for dt in dtypes for mode in modes
             for p in fns]
    start = time.time()
    for i, (p, mode, dt, T, N) in enumerate(cases):
        if time_budget is not None and time.time() - start > time_budget:
            sys.stderr.write(f"\ntime budget of {time_budget}s spent: {len(cases) - i} cases "
                             "not run\n")
            break
        _progress(i, len(cases), f"{p} {mode} {dt} T={T} N={N}")
        shape = RESNET_SHAPE if (T, N) == (8, 2**23) else (T, N)
        dtype = DTYPES[dt]
        try:
            step = _case_fn(fns[p], mode, shape, dtype, device, 2 if N >= 2**22 else 4)
            ms = timer(step)
            peak = _peak_mb(step, device)
        except (RuntimeError, torch.OutOfMemoryError) as e:  # report, keep sweeping
            sys.stderr.write(f"\n{p} {mode} {dt} T={T} N={N} failed: {str(e)[:200]}\n")
            if failed is not None:
                failed.append(f"{p} {mode} {dt} T={T} N={N}")
            continue
        gbps = design_bytes(mode, T, N, dtype.itemsize) / ms / 1e6
        rows.append(dict(meta, provider=p, mode=mode, dtype=dt, T=T, N=N, ms=f"{ms:.4f}",
                         gbps=f"{gbps:.1f}", peak_mb=peak))
        if on_row:
            on_row(rows)
    _progress(len(cases), len(cases), "done")
    for p, why in skipped.items():
        print(f"skipped {p}: {why}")
    return rows


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return ""


def summary(rows):
    """Markdown: one line per (mode, dtype, T, N) with each provider's time, the best fused
    backend's speed-up over the others, and its share of the copy bandwidth."""
    copy = next((float(r["gbps"]) for r in rows if r["provider"] == "copy"), None)
    cases = {}
    for r in rows:
        if r["provider"] != "copy":
            cases.setdefault((r["mode"], r["dtype"], int(r["T"]), int(r["N"])), {})[
                r["provider"]] = r
    present = [p for p in PROVIDERS if any(p in c for c in cases.values())]
    head = ["mode", "dtype", "T", "N"] + [f"{p} ms" for p in present] + \
        ["best fused", "vs naive", "vs compiled", "vs spikingjelly", "of copy BW"]
    lines = [f"Device: {rows[0]['device']}; torch {rows[0]['torch']}, triton "
             f"{rows[0]['triton']}, git {rows[0]['git']}, {rows[0]['date']}. "
             f"Device-to-device copy: {copy:.0f} GB/s." if copy else "",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, dt, T, N), c in sorted(cases.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                     kv[0][2], kv[0][3])):
        cells = [mode, dt, str(T), str(N)] + [c[p]["ms"] if p in c else "-" for p in present]
        fused = [p for p in FUSED if p in c]
        if fused:
            best = min(fused, key=lambda p: float(c[p]["ms"]))
            t_best = float(c[best]["ms"])
            ratio = lambda p: f"{float(c[p]['ms']) / t_best:.1f}x" if p in c else "-"  # noqa
            share = f"{float(c[best]['gbps']) / copy:.0%}" if copy else "-"
            cells += [best, ratio("naive"), ratio("compiled"), ratio("spikingjelly"), share]
        else:
            cells += ["-"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_command(args, device):
    """`clif-kernels bench`, its arguments validated by clif_kernels/cli.py. Returns the exit
    status: 1 when a case failed."""
    providers = list(args.providers or PROVIDERS)
    if args.quick and device.type == "cpu" and args.providers is None:
        # Compiling the loop with inductor takes longer on the CPU than the whole quick sweep.
        providers = [p for p in providers if p != "compiled"]
        print("--quick on the CPU leaves out `compiled` (inductor's compile time alone exceeds "
              "the sweep); name it in --providers to include it")
    sweep = args.sweep or default_sweep(args.quick, device)
    tag = args.tag or ("gpu" if device.type == "cuda" else "cpu")
    csv_path = os.path.join(args.out, f"bench_{tag}.csv") if args.out else None

    def write_csv(rows):
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    host_table = host_cost_rows(device, os.path.join(args.out, f"host_{tag}.csv")
                                if args.out else None, quick=args.quick)
    if args.host_only:
        return 0
    failed = []
    rows = run(providers, args.modes, args.dtypes, sweep, device, args.time_budget,
               on_row=write_csv if csv_path else None, failed=failed)
    table = summary(rows)
    print(table)
    if args.out:
        write_outputs(host_table + "\n\n" + table, csv_path, args.out, tag)
    if failed:
        print(f"{len(failed)} case(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def host_cost_rows(device, csv_path=None, quick=False):
    """The host cost per call (tools/host_cost.py) with this run's metadata: prints its table,
    writes its CSV when `csv_path` is given, and returns the table. `quick`: 3 rounds of 100
    calls instead of 7 of 300."""
    from . import host_cost
    meta = {"device": _device_name(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "triton": _triton_version(), "git": _git_rev(),
            "date": datetime.date.today().isoformat()}
    sizes = dict(rounds=3, calls_per_round=100) if quick else {}
    rows = [dict(r, **meta) for r in host_cost.measure(device, **sizes)]
    table = ("Host cost per call (median over interleaved rounds; the ratio to torch.sigmoid "
             "in the same round):\n\n" + host_cost.summary(rows))
    print(table)
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=host_cost.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {csv_path}")
    return table


def write_outputs(table, csv_path, out, tag):
    """The markdown summary beside the CSV (shared by the layer and the model benchmarks)."""
    with open(os.path.join(out, f"summary_{tag}.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {csv_path} and summary_{tag}.md (a clone draws them: "
          f"python benchmarks/plot.py {csv_path})")

"""What a user's training run gains: a spiking ResNet-18 (`tools/models.py`) trained with SGD on
synthetic data, with the neuron swapped between providers.

    clif-kernels bench-model --quick --out results     # CPU, < 2 min
    clif-kernels bench-model --out results             # GPU, < 5 min

A provider is a neuron, then any `+mechanism` suffixes (MECHANISMS), each applied to the model
or around the forward. Neurons (CLIF, soft reset, tau = 2, rectangle surrogate, unless said):
  naive                the per-step eager loop (the paper's authors' way), `benchmark.naive_clif`
  compiled             torch.compile of the whole model with the loop neuron
  spikingjelly         SpikingJelly 2.0 `ComplementaryLIFNode(step_mode="m")`
  the package's backends (backends.REGISTRY): the reference (loop in fp32, autograd
                       backward) and the fused ones
  lif                  our LIF neuron (SpikingJelly's LIFNode defaults), fastest backend here:
                       what CLIF costs over LIF
Mechanisms:
  +memopt              (spikingjelly) SpikingJelly's `memopt.optimize_memory(level=1)`: every
                       block checkpointed, spike inputs stored as 1 bit
  +bits                (our neurons) the forward inside `clif_kernels.spikes_as_bits()`: the
                       layers after each neuron save its spikes as bits
  +fold                (the fused backends) every BN -> neuron and BN -> + shortcut -> neuron
                       folded into the neuron's kernels (`clif_kernels.fold_batchnorm`)
Each provider builds the same weights from the same seed and trains on the same data; the tests
check that every provider's model computes the reference model's loss and gradients.

For each provider, dtype (float32, or bfloat16 under autocast) and T, one row: the median time of
a training step (forward, backward, optimizer step), the peak memory of training, the neuron's
share of the step (profiler), and on a GPU the largest batch whose training step fits a fixed
memory budget. Peak memory, `peak_mb`: on a GPU, `max_memory_allocated` over the timed steps
minus what was allocated before the first step (model, optimizer, data); on the CPU, the growth
of the process's resident memory (VmHWM - VmRSS in /proc/self/status, the high-water mark reset
through /proc/self/clear_refs just before the first step) over all steps, each case in a fresh
process so that no provider inherits another's high-water mark or freed-but-kept memory.
"""
from __future__ import annotations

import csv
import datetime
import gc
import importlib.metadata
import os
import statistics
import sys
import time

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import REGISTRY, resolve_backend, unavailable_reason
from . import benchmark
from .models import NEURON_RANGE, BasicBlock, SpikingResNet18, Stem

FUSED = benchmark.FUSED
# The neurons a provider name starts with, and those of this package among them.
NEURONS = ("naive", "compiled", "spikingjelly") + tuple(REGISTRY) + ("lif",)
OURS = tuple(REGISTRY) + ("lif",)
# What a full run measures (and the command line accepts): any neuron followed by mechanisms
# that apply to it builds (`parse_provider`), these are the ones worth a row.
PROVIDERS = (("naive", "compiled", "spikingjelly", "spikingjelly+memopt") + tuple(REGISTRY)
             + ("lif",) + tuple(f"{b}+{m}" for m in ("bits", "fold", "fold+bits")
                                for b in FUSED))
DTYPES = ("float32", "bfloat16")
COLUMNS = ["device", "model", "provider", "neuron", "impl", "dtype", "T", "batch", "width", "ms",
           "ms_min", "ms_max", "steps", "peak_mb", "neuron_share", "max_batch", "budget_gib",
           "loss", "load1", "torch", "triton", "spikingjelly", "git", "date"]
STEP_RANGE = "clif_kernels.train_step"
IMAGE = (3, 32, 32)


class LoopCLIF(nn.Module):
    """The per-step eager loop as a multi-step module (state in the input's dtype)."""

    def forward(self, x_seq):
        return benchmark.naive_clif(x_seq)


def _spikingjelly():
    """(neuron module, None) or (None, why not)."""
    try:
        from spikingjelly.activation_based import neuron
    except Exception as e:  # not installed, or an import-time dependency is missing
        return None, f"spikingjelly is not importable ({type(e).__name__}: {e})"
    if not hasattr(neuron, "ComplementaryLIFNode"):
        return None, "this SpikingJelly has no ComplementaryLIFNode (SpikingJelly 2.0 has)"
    return neuron, None


def _memopt():
    try:
        from spikingjelly.activation_based.memopt import optimize_memory
    except Exception as e:
        return None, (f"spikingjelly.activation_based.memopt is not importable "
                      f"({type(e).__name__}: {e})")
    return optimize_memory, None


def _apply_memopt(model, example):
    optimize_memory, why = _memopt()
    if why:
        raise RuntimeError(why)
    if example is None:
        raise ValueError("spikingjelly+memopt needs an example input")

    def example_forward(m):
        m.reset_neurons()
        return m(example)
    # Level 1: the memory-budget setting checkpoints every candidate block and stores its
    # input at 1 bit per spike when the probe finds it binary. Levels 2-4 add searches that
    # need CUDA and a user's split/chunk rules.
    optimize_memory(model, (Stem, BasicBlock), example_forward, level=1,
                    checkpoint_budget="memory", compress=True)
    model.reset_neurons()
    return model


def _apply_fold(model, example):
    # Every BN -> neuron (and BN -> + shortcut -> neuron) folded into the neuron's kernels; the
    # result shares the model's modules and parameters.
    from ..batchnorm import fold_batchnorm
    folded = fold_batchnorm(model)
    folded.reset_neurons, folded.neurons = model.reset_neurons, model.neurons
    return folded


def _spikes_as_bits():
    from ..spike_bits import spikes_as_bits
    return spikes_as_bits()


class Mechanism(NamedTuple):
    """What a `+name` suffix adds to a provider's neuron. `neurons`: the neurons it applies to;
    `why_not()`: None, or why it cannot run here; `model(model, example)`: applied to the built
    model (returns it); `around()`: a context manager the forward runs in (the backward and the
    optimizer step run outside it). Either may be None."""

    neurons: tuple
    why_not: Optional[Callable[[], Optional[str]]] = None
    model: Optional[Callable] = None
    around: Optional[Callable] = None


MECHANISMS = {
    "memopt": Mechanism(("spikingjelly",), why_not=lambda: _memopt()[1], model=_apply_memopt),
    "bits": Mechanism(OURS, around=_spikes_as_bits),
    "fold": Mechanism(FUSED, model=_apply_fold),
}


def parse_provider(provider):
    """(neuron, [mechanism names]) of a provider name such as "cpp+bits"; ValueError naming
    what is wrong."""
    if not isinstance(provider, str):
        raise TypeError(f"provider must be a str, got {type(provider).__name__}")
    neuron, *mechs = provider.split("+")
    if neuron not in NEURONS:
        raise ValueError(f"unknown provider {provider!r}: it starts with no neuron of "
                         f"{', '.join(NEURONS)}")
    for m in mechs:
        if m not in MECHANISMS:
            raise ValueError(f"unknown provider {provider!r}: no mechanism {m!r} (known: "
                             f"{', '.join(MECHANISMS)})")
        if neuron not in MECHANISMS[m].neurons:
            raise ValueError(f"unknown provider {provider!r}: +{m} applies to "
                             f"{', '.join(MECHANISMS[m].neurons)}, not {neuron}")
    if len(set(mechs)) != len(mechs):
        raise ValueError(f"unknown provider {provider!r}: a mechanism is repeated")
    return neuron, mechs


def spikingjelly_version():
    try:
        return importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:
        return ""


def why_not(provider, device, dtype=torch.float32):
    """None when `provider` can run on `device`, else a sentence saying why not."""
    try:
        neuron, mechs = parse_provider(provider)
    except (TypeError, ValueError) as e:
        return str(e)
    for m in mechs:
        why = MECHANISMS[m].why_not() if MECHANISMS[m].why_not else None
        if why:
            return why
    if neuron == "spikingjelly":
        return _spikingjelly()[1]
    if neuron == "triton" and device.type != "cuda":
        return "timings of Triton's interpreter mean nothing"
    if neuron in REGISTRY:
        return unavailable_reason(neuron, device, dtype)
    return None


def make_neuron_factory(provider, device, dtype=torch.float32):
    """A zero-argument callable returning one multi-step neuron module for `provider`, and the
    name of what runs it (the `impl` column)."""
    from .. import CLIFNode, LIFNode
    provider, _ = parse_provider(provider)
    if provider in ("naive", "compiled"):
        return LoopCLIF, "loop"
    if provider.startswith("spikingjelly"):
        neuron, why = _spikingjelly()
        if why:
            raise RuntimeError(why)
        return (lambda: neuron.ComplementaryLIFNode(step_mode="m")), "spikingjelly"
    if provider == "lif":
        backend = resolve_backend("auto", device, dtype)
        return (lambda: LIFNode(step_mode="m", backend=backend)), backend
    return (lambda: CLIFNode(step_mode="m", backend=provider)), provider


def reference_factory(provider):
    """The reference-neuron module a provider's model must agree with (the reference backend:
    the CLIF reference, or the LIF reference for `lif`)."""
    from .. import CLIFNode, LIFNode
    if parse_provider(provider)[0] == "lif":
        return lambda: LIFNode(step_mode="m", backend=benchmark.REFERENCE)
    return lambda: CLIFNode(step_mode="m", backend=benchmark.REFERENCE)


def build(provider, device, width, seed=0, dtype=torch.float32, example=None,
          make_neuron=None):
    """(model, runner): the spiking ResNet-18 with `provider`'s neuron, weights drawn from
    `seed` (the same for every provider), and the callable that trains it (the model itself, or
    its torch.compile for `compiled`). `example`: an input for SpikingJelly's memory optimiser,
    which probes the model once to find the blocks whose input is binary."""
    impl = None
    neuron, mechs = parse_provider(provider)
    if make_neuron is None:
        make_neuron, impl = make_neuron_factory(provider, device, dtype)
    torch.manual_seed(seed)
    model = SpikingResNet18(make_neuron, width=width, label=neuron != "compiled")
    model = model.to(device=device, dtype=dtype)
    for m in mechs:
        if MECHANISMS[m].model is not None:
            model = MECHANISMS[m].model(model, example)
    runner = torch.compile(model) if neuron == "compiled" else model
    for m in mechs:
        if MECHANISMS[m].around is not None:
            runner = _inside(MECHANISMS[m].around, runner)
    model.impl = impl
    return model, runner


def _inside(context, runner):
    """`runner` called inside a fresh `context()` on every call."""
    def run(x):
        with context():
            return runner(x)
    return run


def make_data(T, batch, device, seed=0, dtype=torch.float32, classes=10, side=IMAGE[1]):
    """Images of IMAGE's channels and `side` x `side` pixels (the tests' tiny runs take 16: the
    same layers at a quarter of the work)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((T, batch, IMAGE[0], side, side), generator=g).to(device=device, dtype=dtype)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return x, y


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def loss_of(model, runner, x, y, amp):
    """Forward and loss from rest, under bf16 autocast when `amp` (the cross-entropy in fp32,
    or fp64 for a float64 model)."""
    model.reset_neurons()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = runner(x)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, y)


def train_step(model, runner, opt, x, y, amp):
    opt.zero_grad(set_to_none=True)
    loss = loss_of(model, runner, x, y, amp)
    loss.backward()
    opt.step()
    model.reset_neurons()  # the carried final states hold memory until the next step otherwise
    return loss.detach()


# checkpoint_wrapper (SpikingJelly's memopt) inserts this into the names it reports.
_WRAPPED = "_checkpoint_wrapped_module."


def loss_and_grads(provider, device, dtype, *, T, batch, width, seed=0, make_neuron=None,
                   side=IMAGE[1]):
    """The loss and every parameter's gradient of one forward and backward of `provider`'s
    model on the benchmark's weights and data (no optimizer step), at `dtype` without autocast:
    what the tests hold equal across providers."""
    x, y = make_data(T, batch, device, seed, dtype, side=side)
    model, runner = build(provider, device, width, seed, dtype, example=x[:, :2],
                          make_neuron=make_neuron)
    loss = loss_of(model, runner, x, y, amp=False)
    loss.backward()
    model.reset_neurons()
    return loss.detach(), {n.replace(_WRAPPED, ""): p.grad for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Memory


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMemory:
    """Peak memory of what runs between `start()` and `peak_mib()`, above what was held at
    `start()`: the CUDA caching allocator's allocated bytes on a GPU, the process's resident set
    on the CPU (Linux /proc; its high-water mark is reset at `start()`)."""

    def __init__(self, device):
        self.device = device
        self.base = 0

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
        except OSError:
            pass  # then VmHWM since the process started: still right in a fresh process
        self.base = _proc_status_kib("VmRSS") * 1024

    def peak_mib(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        return (peak - self.base) / 2**20


# ---------------------------------------------------------------------------------------------
# The neuron's share of a step (profiler)

_EVAL = "autograd::engine::evaluate_function: "


def neuron_labeller(events):
    """A function telling, for each event of a profiled training step, whether its own time is
    the neuron's.

    Forward: everything inside a NEURON_RANGE. Backward: each autograd node's evaluation is
    matched to the forward op that created it by (thread, sequence number), and is the neuron's
    when that op ran inside a NEURON_RANGE. A recomputation inside the backward (checkpointing)
    is attributed op by op the same way. Any other event takes the label of its parent."""
    events = list(events)

    def inside_eval_node(e):
        # The node's own record inside its evaluate_function event carries the forward's
        # sequence number too; it is not a forward op.
        p = e.cpu_parent
        return p is not None and p.name.startswith(_EVAL) and p.name[len(_EVAL):] == e.name

    def in_neuron_range(e):
        while e is not None:
            if e.name == NEURON_RANGE:
                return True
            if e.name.startswith(_EVAL):
                return False
            e = e.cpu_parent
        return False

    # The op that created node (thread, seq) is the last op recorded with that number: ops
    # that create no node leave the counter where it was.
    creator = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(_EVAL) and not inside_eval_node(e):
            key = (e.thread, e.sequence_nr)
            if key not in creator or e.time_range.start >= creator[key].time_range.start:
                creator[key] = e
    neuron_keys = {k for k, e in creator.items() if in_neuron_range(e)}
    memo = {}

    def label(e):
        if id(e) not in memo:
            if e.name == NEURON_RANGE:
                out = True
            elif e.name.startswith(_EVAL):
                out = (e.fwd_thread, e.sequence_nr) in neuron_keys
            elif e.sequence_nr >= 0 and not inside_eval_node(e):
                out = (e.thread, e.sequence_nr) in neuron_keys
            else:
                out = label(e.cpu_parent) if e.cpu_parent is not None else False
            memo[id(e)] = out
        return memo[id(e)]
    return label


def neuron_share(events, device_time):
    """Fraction of a profiled training step spent in the neurons (`neuron_labeller`): each
    event's self time (CPU) or its own kernels' time (`device_time`) counts for its label; the
    total is the step's wall time (STEP_RANGE) on the CPU, all kernels' time on a GPU."""
    events = list(events)
    label = neuron_labeller(events)
    if device_time:
        own = [(e, e.self_device_time_total) for e in events]
        total = sum(t for _, t in own)
    else:
        own = [(e, e.self_cpu_time_total) for e in events]
        total = sum(e.cpu_time_total for e in events if e.name == STEP_RANGE)
    neuron = sum(t for e, t in own if t > 0 and label(e))
    return neuron / total if total > 0 else float("nan")


def profile_step(model, runner, opt, x, y, amp, device):
    """The profiler's events of one training step (inside STEP_RANGE)."""
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        with record_function(STEP_RANGE):
            train_step(model, runner, opt, x, y, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof.events()


def profile_share(model, runner, opt, x, y, amp, device):
    return neuron_share(profile_step(model, runner, opt, x, y, amp, device),
                        device.type == "cuda")


# ---------------------------------------------------------------------------------------------
# Largest batch in a memory budget (GPU)


def largest_batch(peak_at, budget, start, tolerance=0.01, max_probes=12):
    """The largest batch B with peak_at(B) <= budget (bytes; peak_at returns None when B runs
    out of memory), to within `tolerance` of B. Peak memory grows about linearly in B: a line
    through the two largest fitting probes predicts where the budget ends; once a probe does
    not fit, the bracket closes by interpolation and bisection in turn. Returns (B, probes);
    B is 0 when not even batch 1 fits."""
    probes = {}

    def fits(b):
        if b not in probes:
            probes[b] = peak_at(b)
        return probes[b] is not None and probes[b] <= budget

    lo, hi = 0, None  # the largest batch that fits (0: none yet), the smallest that does not
    b, turn = max(1, start), 0
    while len(probes) < max_probes:
        if fits(b):
            lo = b
        else:
            hi = b
        if hi is None:  # still growing
            ok = sorted(k for k in probes if probes[k] is not None and probes[k] <= budget)
            if len(ok) >= 2 and probes[ok[-1]] > probes[ok[-2]]:
                b0, b1 = ok[-2], ok[-1]
                slope = (probes[b1] - probes[b0]) / (b1 - b0)
                b = max(b1 + 1, int(b1 + (budget - probes[b1]) / slope))
            else:
                b = 2 * b
            continue
        if lo == 0 and hi == 1:
            return 0, probes
        if hi - lo <= max(1, int(tolerance * lo)):
            return lo, probes
        p_lo, p_hi = (probes[lo] if lo else 0.0), probes[hi]
        turn += 1
        if turn % 2 == 1 and p_hi is not None and p_hi > p_lo:
            b = lo + int((budget - p_lo) * (hi - lo) / (p_hi - p_lo))
            b = min(max(b, lo + 1), hi - 1)
        else:
            b = (lo + hi) // 2 if lo else max(1, hi // 2)
    return lo, probes


def _peak_probe(model, runner, opt, T, amp, device, dtype):
    """peak_at(batch) for `largest_batch`: max_memory_allocated over one training step at that
    batch (None when it runs out of memory). Call it once the optimizer holds its momentum."""
    def peak_at(batch):
        x = y = None
        try:
            # Drawn on the device: a batch of thousands is hundreds of MB to draw on the host.
            x = torch.randn((T, batch) + IMAGE, device=device, dtype=dtype)
            y = torch.randint(0, 10, (batch,), device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            train_step(model, runner, opt, x, y, amp)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device)
        except torch.OutOfMemoryError:
            return None
        finally:
            del x, y
            model.reset_neurons()
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
    return peak_at


# ---------------------------------------------------------------------------------------------
# One case


def run_case(case):
    """Measure one (provider, dtype, T) case; returns the row's measured fields."""
    device = torch.device(case["device"])
    provider, T, batch, width = case["provider"], case["T"], case["batch"], case["width"]
    amp = case["dtype"] == "bfloat16"
    x, y = make_data(T, batch, device)
    model, runner = build(provider, device, width, example=x[:, :2])
    opt = make_optimizer(model)
    mem = PeakMemory(device)
    mem.start()

    def timed():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = train_step(model, runner, opt, x, y, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3, loss

    first_loss = None
    for i in range(case["warmup"]):
        _, loss = timed()
        if i == 0:
            first_loss = float(loss)
    if device.type == "cuda":
        # The timed steps' peak (steady state: the warm-up made the optimizer's momentum and
        # cuDNN's workspaces), still counted from what was allocated before the first step.
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed()[0] for _ in range(case["steps"])]
    peak = mem.peak_mib()
    share = ""
    compiled = parse_provider(provider)[0] == "compiled"
    if case.get("profile", True) and not compiled:
        try:
            share = f"{profile_share(model, runner, opt, x, y, amp, device):.3f}"
        except Exception as e:  # a profiler that records differently: keep the timings
            sys.stderr.write(f"\nneuron share of {provider} not measured: "
                             f"{type(e).__name__}: {e}\n")
    max_batch = ""
    if device.type == "cuda" and case.get("budget_gib") and not compiled:
        del x, y
        gc.collect()
        torch.cuda.empty_cache()
        # Momentum buffers exist after the timed steps, so one step per probe meets the
        # steady-state peak.
        probe = _peak_probe(model, runner, opt, T, amp, device, torch.float32)
        found, _ = largest_batch(probe, case["budget_gib"] * 2**30, start=batch,
                                 tolerance=case.get("tolerance", 0.01))
        max_batch = str(found)
    return {"impl": model.impl or ("inductor" if compiled else ""),
            "neuron": "lif" if parse_provider(provider)[0] == "lif" else "clif",
            "ms": f"{statistics.median(times):.2f}", "ms_min": f"{min(times):.2f}",
            "ms_max": f"{max(times):.2f}", "steps": len(times), "peak_mb": f"{peak:.1f}",
            "neuron_share": share, "max_batch": max_batch, "loss": f"{first_loss:.5f}"}


RESULT = "CLIF_KERNELS_CASE_RESULT "


def _serve():
    """The case server (`python -m clif_kernels.tools.bench_model --serve`): imports torch,
    this package and SpikingJelly (when installed), runs nothing else, then for each case read
    from stdin (one JSON line) forks a child that runs it and reports one RESULT line. Each case
    is thus a fresh process (its own resident-memory high-water mark) that does not pay the
    imports again (about 2 s each on 2 cores)."""
    import json
    if _spikingjelly()[1] is None:
        import torch._inductor  # noqa: F401  (SpikingJelly's neuron imports it on first call)
    for line in sys.stdin:
        case = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the case's process
            os.close(r)
            try:
                msg = {"ok": run_case(case)}
            except BaseException as e:  # reported by the parent, which goes on
                msg = {"error": f"{type(e).__name__}: {e}"}
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(msg))
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            data = json.dumps({"error": f"the case's process ended with wait status {status}"})
        sys.stdout.write(RESULT + data + "\n")
        sys.stdout.flush()
    return 0


class _CaseServer:
    def __init__(self):
        import subprocess
        self.proc = subprocess.Popen([sys.executable, "-m", "clif_kernels.tools.bench_model",
                                      "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)

    def run(self, case, timeout):
        import json
        import select
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close(kill=True)
                raise RuntimeError(f"case did not finish in {timeout} s")
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                raise RuntimeError(f"the case server exited with {code}")
            if line.startswith(RESULT):
                msg = json.loads(line[len(RESULT):])
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["ok"]
            sys.stdout.write(line)  # whatever the case printed

    def close(self, kill=False):
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.stdin.close()
            self.proc.wait()


def _run_isolated(case, timeout, server=None):
    """run_case in a fresh process forked by `server` (a new one when None)."""
    own = server is None
    server = server or _CaseServer()
    try:
        return server.run(case, timeout)
    finally:
        if own:
            server.close()


def _meta(device):
    return {"device": benchmark._device_name(device), "model": "resnet18",
            "torch": torch.__version__, "triton": benchmark._triton_version(),
            "spikingjelly": spikingjelly_version(), "git": benchmark._git_rev(),
            "date": datetime.date.today().isoformat()}


def run(providers, dtypes, Ts, device, *, batch, width, warmup, steps, budget_gib=None,
        isolate=True, time_budget=None, on_row=None, rows=None, profile=True,
        case_timeout=900, failed=None):
    """Measure every (T, dtype, provider) case, T-major in the order given, torch.compile's
    cases after all others (so that a time budget cuts them first, then the last T); returns
    the CSV rows (dicts), `rows` first. Each case that fails is reported and appended to
    `failed` (a list); the others still run."""
    rows = list(rows or [])
    meta = _meta(device)
    skipped = {}
    for p in providers:
        why = why_not(p, device)
        if why:
            skipped[p] = why
    runnable = [p for p in providers if p not in skipped]
    server = _CaseServer() if isolate else None
    cases = [(T, dt, p) for T in Ts for dt in dtypes for p in runnable if p != "compiled"]
    cases += [(T, dt, p) for T in Ts for dt in dtypes for p in runnable if p == "compiled"]
    start = time.time()
    for i, (T, dt, p) in enumerate(cases):
        if time_budget is not None and time.time() - start > time_budget:
            sys.stderr.write(f"\ntime budget of {time_budget}s spent: {len(cases) - i} cases "
                             "not run\n")
            break
        benchmark._progress(i, len(cases), f"{p} {dt} T={T} B={batch}")
        case = {"provider": p, "dtype": dt, "T": T, "batch": batch, "width": width,
                "warmup": warmup, "steps": steps, "device": str(device),
                "budget_gib": budget_gib, "profile": profile}
        load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
        try:
            res = _run_isolated(case, case_timeout, server) if isolate else run_case(case)
        except Exception as e:  # report, keep measuring the other cases
            sys.stderr.write(f"\n{p} {dt} T={T} failed: {type(e).__name__}: "
                             f"{str(e)[-1500:]}\n")
            if failed is not None:
                failed.append(f"{p} {dt} T={T}")
            if server is not None and server.proc.poll() is not None:
                server = _CaseServer()  # a timed-out case took its server with it
            continue
        finally:
            if not isolate:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(dict(meta, provider=p, dtype=dt, T=T, batch=batch, width=width,
                         budget_gib=budget_gib or "", load1=load, **res))
        if on_row:
            on_row(rows)
    if server is not None:
        server.close()
    benchmark._progress(len(cases), len(cases), "done")
    for p, why in skipped.items():
        print(f"skipped {p}: {why}")
    return rows


# ---------------------------------------------------------------------------------------------
# Summary


def _f(r, key):
    try:
        return float(r[key])
    except (KeyError, TypeError, ValueError):
        return None


def headline(rows, dtype, T):
    """One sentence: the fastest fused backend against SpikingJelly 2.0 (and with its memory
    optimiser) at (dtype, T), or None when either is missing."""
    case = {r["provider"]: r for r in rows if r["dtype"] == dtype and str(r["T"]) == str(T)}
    fused = [p for p in FUSED if p in case]
    sj = case.get("spikingjelly")
    if not fused or sj is None:
        return None
    best = min(fused, key=lambda p: float(case[p]["ms"]))
    b = case[best]
    gpu = not b["device"].startswith("cpu")
    mem_name = "peak memory" if gpu else "peak RSS growth"
    text = (f"**{dtype}, T = {T}, batch {b['batch']}: your spiking ResNet-18 trains "
            f"{float(sj['ms']) / float(b['ms']):.2f}x faster** (`{best}` {b['ms']} ms per step, "
            f"SpikingJelly 2.0 {sj['ms']} ms)")
    if _f(b, "max_batch") and _f(sj, "max_batch"):
        text += (f" **and fits {float(b['max_batch']) / float(sj['max_batch']):.2f}x the "
                 f"batch** ({b['max_batch']} against {sj['max_batch']} in "
                 f"{b['budget_gib']} GiB)")
    if _f(b, "peak_mb") and _f(sj, "peak_mb"):
        text += (f"; {mem_name} {b['peak_mb']} MB against {sj['peak_mb']} MB "
                 f"({1 - float(b['peak_mb']) / float(sj['peak_mb']):+.0%} less)"
                 .replace("(+", "(").replace("(-", "(+"))
    mo = case.get("spikingjelly+memopt")
    if mo is not None:
        text += (f". SpikingJelly with its memory optimiser: {mo['ms']} ms per step "
                 f"({float(mo['ms']) / float(b['ms']):.2f}x `{best}`'s time), {mem_name} "
                 f"{mo['peak_mb']} MB")
        if _f(mo, "max_batch"):
            text += f", largest batch {mo['max_batch']}"
    return text + "."


def summary(rows):
    if not rows:
        return "no rows"
    r0 = rows[0]
    loads = [r["load1"] for r in rows if r.get("load1")]
    lines = [f"Device: {r0['device']}; torch {r0['torch']}, triton {r0['triton'] or '-'}, "
             f"SpikingJelly {r0['spikingjelly'] or 'not installed'}, git {r0['git']}, "
             f"{r0['date']}. Spiking ResNet-18 (first-stage width {r0['width']}), 3x32x32 "
             f"synthetic inputs, SGD with momentum; median of {r0['steps']} training steps."
             + (f" 1-minute load average at each case's start: {min(loads)}-{max(loads)}."
                if loads else ""), ""]
    keys = sorted({(r["dtype"], int(r["T"])) for r in rows},
                  key=lambda k: (k[0] != "float32", -k[1]))
    for dt, T in keys:
        h = headline(rows, dt, T)
        if h:
            lines += [h, ""]
    gpu = not r0["device"].startswith("cpu")
    head = ["dtype", "T", "batch", "provider", "runs on", "step ms", "SpikingJelly / this",
            "peak MB" if gpu else "peak RSS growth MB", "this / SpikingJelly", "neuron share"]
    if gpu:
        head += [f"largest batch ({r0['budget_gib'] or '-'} GiB)", "this / SpikingJelly"]
    head += ["loss, step 1"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {p: i for i, p in enumerate(PROVIDERS)}
    for dt, T in keys:
        case = sorted((r for r in rows if r["dtype"] == dt and int(r["T"]) == T),
                      key=lambda r: order.get(r["provider"], 99))
        sj = next((r for r in case if r["provider"] == "spikingjelly"), None)
        for r in case:
            def ratio(key, inverse):
                a, b = _f(r, key), _f(sj, key) if sj else None
                if not a or not b:
                    return "-"
                return f"{(b / a if inverse else a / b):.2f}x"
            share = f"{float(r['neuron_share']):.0%}" if _f(r, "neuron_share") is not None \
                else "-"
            cells = [dt, str(T), str(r["batch"]), r["provider"], r["impl"] or "-", r["ms"],
                     ratio("ms", True), r["peak_mb"] or "-", ratio("peak_mb", False), share]
            if gpu:
                cells += [r["max_batch"] or "-", ratio("max_batch", False)]
            cells += [r["loss"]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def run_command(args, device):
    """`clif-kernels bench-model`, its arguments validated by clif_kernels/cli.py. Returns the
    exit status: 1 when a case failed."""
    cpu = device.type == "cpu"
    providers = list(args.providers or PROVIDERS)
    if args.quick and cpu and args.providers is None:
        providers = [p for p in providers if p != "compiled"]
        print("--quick on the CPU leaves out `compiled` (inductor's compile of the whole model "
              "takes longer than the run); name it in --providers to include it")
    quick_cpu = args.quick and cpu
    Ts = args.T or ([4] if quick_cpu else [8] if args.quick else [8, 4])
    time_budget = args.time_budget
    if time_budget is None and not cpu and not args.quick:
        # The full GPU run stays within about 5 minutes: no new case after 270 s (the cases of
        # torch.compile, which compiles the model anew for each dtype and T, come last).
        time_budget = 270.0
    batch = args.batch or (8 if cpu else 64)
    width = args.width
    warmup = args.warmup if args.warmup is not None else (1 if quick_cpu else 2 if cpu else 3)
    steps = args.steps or (5 if cpu or args.quick else 10)
    budget = args.mem_budget_gib if (not cpu and args.mem_budget_gib > 0) else None
    isolate = {"yes": True, "no": False, "auto": cpu}[args.isolate]
    tag = args.tag or ("model_gpu" if not cpu else "model_cpu")
    csv_path = os.path.join(args.out, f"bench_{tag}.csv") if args.out else None
    previous = []
    if csv_path and args.append and os.path.exists(csv_path):
        with open(csv_path) as f:
            previous = list(csv.DictReader(f))

    def write_csv(rows):
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    where = "each case in a fresh process" if isolate else "in this process"
    print(f"spiking ResNet-18, width {width}, batch {batch}, T {Ts}, {warmup} warm-up + "
          f"{steps} timed steps per case, {where}"
          + (f", largest batch in {budget:g} GiB" if budget else ""))
    failed = []
    rows = run(providers, args.dtypes, Ts, device, batch=batch, width=width,
               warmup=warmup, steps=steps, budget_gib=budget, isolate=isolate,
               time_budget=time_budget, on_row=write_csv if csv_path else None,
               rows=previous, profile=not args.no_profile, failed=failed)
    table = summary(rows)
    print(table)
    if args.out:
        benchmark.write_outputs(table, csv_path, args.out, tag)
    if failed:
        print(f"{len(failed)} case(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # the case server of `run(isolate=True)`
    if sys.argv[1:] != ["--serve"]:
        sys.exit("usage: python -m clif_kernels.tools.bench_model --serve (used by "
                 "clif-kernels bench-model)")
    sys.exit(_serve())

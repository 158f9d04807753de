"""Where the peak memory of a training step of the model benchmark's spiking ResNet-18 goes.

    python benchmarks/memory_breakdown.py [--providers cpp,cpp+fold+bits] [--T 4] [--batch 8]
                                          [--dtype float32|bfloat16] [--steps 3]

For each provider (in one process each, as `clif-kernels bench-model` measures: run this once
per provider for the resident-set numbers to be comparable), after `--steps` training steps:

- what autograd holds for the backward after one forward: distinct storages of the saved
  tensors, grouped by the module that saved them (convolution, BN, neuron/fold, other) and by
  kind (spike bits, the neuron's input, the fold's residual, the neuron's checkpoints,
  autocast's lower-precision copies of the weights, ...);
- the weights, their gradients and the optimizer's momentum;
- the C++ backend's output cache (freed output buffers it keeps, CLIF_KERNELS_CPU_CACHE_MB);
- the resident set through one more step: its high-water mark (VmHWM after a reset through
  /proc/self/clear_refs) read before every backward node and after it, so that the node at
  which the peak is reached, and the resident set there, are known.
"""
import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clif_kernels import spike_bits  # noqa: E402
from clif_kernels.tools import bench_model as bm  # noqa: E402

MiB = 2 ** 20


def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def cache_bytes():
    try:
        from clif_kernels import extension
        return extension.cpu_cache_bytes()
    except Exception:  # noqa: BLE001 (no extension: no cache)
        return 0


def saved_breakdown(model, x, y, bits, amp):
    """Bytes autograd holds after one forward (and the loss), by (module kind, tensor kind)."""
    stack = []
    handles = []

    def pre(mod, args, name):
        stack.append((name, mod))

    def post(mod, args, out):
        stack.pop()

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, n=name: pre(m, a, n)))
            handles.append(mod.register_forward_hook(post))
    storages = {}  # data_ptr -> (bytes, group)

    def pack(t):
        p = spike_bits._pack(t) if bits else spike_bits._Kept(t, t._version)
        packed = type(p) is spike_bits._Packed
        held = p.bits if packed else t
        s = held.untyped_storage()
        where, owner = "model", None
        for name, mod in reversed(stack):
            kind = type(mod).__name__
            if kind in ("Conv2d", "Linear", "BatchNorm2d", "FoldedBatchNormNeuron",
                        "AdaptiveAvgPool2d", "Neuron", "CLIFNode"):
                where, owner = kind, mod
                break
        weight = getattr(owner, "weight", None)
        if packed:
            what = "spike bits"
        elif type(t) is not torch.nn.Parameter and isinstance(weight, torch.Tensor) \
                and t.shape == weight.shape and t.dtype != weight.dtype:
            # autocast's lower-precision copy of the layer's weight, saved for grad_input
            what = f"{str(t.dtype)[6:]} weight copies"
        elif type(t) is torch.nn.Parameter or t.numel() < 4096:
            what = "weights/small"
        elif t.dtype == torch.float32 and t.dim() == 3 and t.shape[1] == 2:
            what = "neuron checkpoints (v, m)"
        else:
            what = f"{str(t.dtype)[6:]} activation"
        key = s.data_ptr()
        if key not in storages:
            storages[key] = (s.nbytes(), (where, what))
        return p

    model.reset_neurons()
    ctx = spike_bits.spikes_as_bits(enabled=bits)
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, spike_bits._unpack), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    for h in handles:
        h.remove()
    groups = collections.Counter()
    for nbytes, group in storages.values():
        groups[group] += nbytes
    del loss, logits
    model.reset_neurons()
    return groups, sum(groups.values())


def backward_timeline(model, runner, opt, x, y, amp):
    """One training step; the resident set's high-water mark before and after each backward
    node. Returns (rows, forward-end RSS, step peak) in bytes, rows = (node name, RSS before,
    HWM after, cache bytes before)."""
    opt.zero_grad(set_to_none=True)
    reset_hwm()
    base = status_kib("VmRSS") * 1024
    loss = bm.loss_of(model, runner, x, y, amp)
    fwd_peak = status_kib("VmHWM") * 1024
    after_fwd = status_kib("VmRSS") * 1024
    rows = []
    seen = set()

    def walk(fn):
        todo = [fn]
        while todo:
            f = todo.pop()
            if f is None or f in seen:
                continue
            seen.add(f)
            name = f.name()

            def prehook(grad_outputs, name=name):
                rows.append((name, "pre", status_kib("VmRSS") * 1024,
                             status_kib("VmHWM") * 1024, cache_bytes()))

            def posthook(grad_inputs, grad_outputs, name=name):
                rows.append((name, "post", status_kib("VmRSS") * 1024,
                             status_kib("VmHWM") * 1024, cache_bytes()))

            f.register_prehook(prehook)
            f.register_hook(posthook)
            todo.extend(n for n, _ in f.next_functions)

    walk(loss.grad_fn)
    loss.backward()
    bwd_peak = status_kib("VmHWM") * 1024
    opt.step()
    model.reset_neurons()
    step_peak = status_kib("VmHWM") * 1024
    return rows, base, fwd_peak, after_fwd, bwd_peak, step_peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="cpp,cpp+fold+bits")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    amp = args.dtype == "bfloat16"
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, "
          f"batch {args.batch}, {args.dtype}, CLIF_KERNELS_CPU_CACHE_MB="
          f"{os.environ.get('CLIF_KERNELS_CPU_CACHE_MB', '(default)')}")
    for provider in args.providers.split(","):
        x, y = bm.make_data(args.T, args.batch, cpu)
        model, runner = bm.build(provider, cpu, args.width, example=x[:, :2])
        opt = bm.make_optimizer(model)
        rss0 = status_kib("VmRSS") * 1024
        for _ in range(args.steps):
            bm.train_step(model, runner, opt, x, y, amp)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
                    if p.grad is not None)
        mom = sum(v["momentum_buffer"].numel() * v["momentum_buffer"].element_size()
                  for v in opt.state.values() if "momentum_buffer" in v)
        _, mechs = bm.parse_provider(provider)
        groups, total = saved_breakdown(model, x, y, "bits" in mechs, amp)
        print(f"\n== {provider}: weights {params / MiB:.1f} MiB, grads {grads / MiB:.1f}, "
              f"momentum {mom / MiB:.1f}; RSS growth over {args.steps} steps "
              f"{(status_kib('VmRSS') * 1024 - rss0) / MiB:.1f} MiB; output cache "
              f"{cache_bytes() / MiB:.1f} MiB")
        print(f"saved for the backward: {total / MiB:.1f} MiB (distinct storages)")
        for (where, what), nbytes in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"   {where:22s} {what:28s} {nbytes / MiB:8.1f} MiB")
        rows, base, fwd_peak, after_fwd, bwd_peak, step_peak = backward_timeline(
            model, runner, opt, x, y, amp)
        print(f"step from RSS {base / MiB:.1f} MiB: forward peak +{(fwd_peak - base) / MiB:.1f},"
              f" after the forward +{(after_fwd - base) / MiB:.1f}, backward peak "
              f"+{(bwd_peak - base) / MiB:.1f}, step peak +{(step_peak - base) / MiB:.1f}; "
              f"cache now {cache_bytes() / MiB:.1f} MiB")
        # The node during which the high-water mark rose most, and the largest rises.
        rises = []
        prev_hwm = rows[0][3] if rows else base
        for i, (name, when, rss, hwm, cache) in enumerate(rows):
            if hwm > prev_hwm:
                rises.append((hwm - prev_hwm, name, when, hwm, rss, cache))
            prev_hwm = hwm
        print("largest rises of the high-water mark (MiB: node, at which hook; HWM, RSS and "
              "cache then, above the step's start):")
        for d, name, when, hwm, rss, cache in sorted(rises, reverse=True)[:args.top]:
            print(f"   +{d / MiB:6.1f}  {name:34s} {when:4s}  HWM +{(hwm - base) / MiB:7.1f}  "
                  f"RSS +{(rss - base) / MiB:7.1f}  cache {cache / MiB:6.1f}")
        peak_row = max(rows, key=lambda r: r[2]) if rows else None
        if peak_row:
            print(f"highest RSS at a hook: +{(peak_row[2] - base) / MiB:.1f} MiB at "
                  f"{peak_row[0]} ({peak_row[1]}), cache {peak_row[4] / MiB:.1f} MiB")
        del model, runner, opt


if __name__ == "__main__":
    main()

"""What spikes as bits (clif_kernels/spike_bits.py) costs per training step of the model
benchmark's spiking ResNet-18: its pack and unpack (torch ops) on every spike tensor a layer
saves, against a copy of the same tensor (what memory traffic alone costs), and `mark`'s
cost per neuron call outside the context.

    python benchmarks/spike_bits_cost.py [--T 4] [--batch 8] [--width 64] [--threads N]
    python benchmarks/spike_bits_cost.py --step     # also: the training step, with and without

Prints the bytes autograd holds after one forward of the model (distinct storages of what is
saved; the packed bits once however many layers share them), without and with the context, in
fp32 and under bf16 autocast; then one line per spike-tensor size (milliseconds, median of
--repeat) and the totals of one training step (16 packed neuron outputs: the stem's, and in each
block the first neuron's and the second's, which the next block's convolutions save; the last
neuron feeds the average).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clif_kernels import CLIFNode, spike_bits  # noqa: E402
from clif_kernels.tools.models import SpikingResNet18  # noqa: E402


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def resnet18_spike_sizes(T, batch, width):
    """Element counts of the neuron outputs a layer saves, as tools/models.py lays them out
    (3x32x32 input; widths w, 2w, 4w, 8w at 32, 16, 8, 4 pixels): the stem's and the first
    block's 4 neurons at stage 1 (5), then 4 per stage, less the last one (averaged, not
    saved)."""
    sizes = []
    for stage, (c, hw) in enumerate([(width, 32), (2 * width, 16), (4 * width, 8),
                                     (8 * width, 4)]):
        n = 5 if stage == 0 else 4
        if stage == 3:
            n -= 1
        sizes += [T * batch * c * hw * hw] * n
    return sizes


def saved_bytes(model, x, bits, amp):
    """(bytes autograd holds for the backward after one forward, bytes of packed bits among
    them): our hooks wrapped by counting ones, entered inside the context."""
    storages, packed = {}, {}

    def pack(t):
        p = spike_bits._pack(t)
        held = p.bits if type(p) is spike_bits._Packed else t
        s = held.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        if held is not t:
            packed[s.data_ptr()] = s.nbytes()
        return p

    model.reset_neurons()
    with spikes_as_bits_or_not(bits), \
            torch.autograd.graph.saved_tensors_hooks(pack, spike_bits._unpack), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        loss = model(x).float().sum()
    del loss
    return sum(storages.values()), sum(packed.values())


def step_ab(T, batch, width, repeat):
    """Forward and backward times of the model benchmark's `cpp` and `cpp+bits` (fp32),
    alternating in one process (so that both see the same machine), medians."""
    from clif_kernels.tools import bench_model as bm
    cpu = torch.device("cpu")
    x, y = bm.make_data(T, batch, cpu)
    models = {p: bm.build(p, cpu, width) for p in ("cpp", "cpp+bits")}
    times = {p: [] for p in models}
    for i in range(2 + repeat):
        for p, (model, runner) in models.items():
            t0 = time.perf_counter()
            loss = bm.loss_of(model, runner, x, y, False)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            model.reset_neurons()
            if i >= 2:  # two warm-up steps each
                times[p].append((t1 - t0, t2 - t1))
    for p, v in times.items():
        print(f"{p:9s} forward {statistics.median(a for a, _ in v) * 1e3:.1f} ms, backward "
              f"{statistics.median(b for _, b in v) * 1e3:.1f} ms (fp32, medians of {repeat}, "
              "alternating)")


def spikes_as_bits_or_not(bits):
    return spike_bits.spikes_as_bits(enabled=bits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--step", action="store_true",
                    help="also time the training step's forward and backward (6 alternations)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = resnet18_spike_sizes(args.T, args.batch, args.width)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(sizes)} saved spike tensors per step, {sum(sizes)} elements")
    torch.manual_seed(0)
    model = SpikingResNet18(lambda: CLIFNode(step_mode="m", backend="cpp"), width=args.width)
    x = torch.randn(args.T, args.batch, 3, 32, 32)
    spikes = sum(sizes)
    for amp in (False, True):
        plain, _ = saved_bytes(model, x, False, amp)
        with_bits, packed = saved_bytes(model, x, True, amp)
        print(f"{'bf16 autocast' if amp else 'fp32':13s} saved for the backward: "
              f"{plain / 2**20:.1f} MiB, with spikes as bits {with_bits / 2**20:.1f} MiB "
              f"({packed / 2**20:.2f} MiB of bits); {(plain - with_bits) / spikes:.3f} bytes "
              f"less per saved spike element-step")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        total = {"pack": 0.0, "unpack": 0.0, "clone": 0.0}
        for n in sorted(set(sizes), reverse=True):
            s = (torch.rand(n, generator=g) < 0.15).to(dtype)
            bits = spike_bits.pack_bits(s)
            assert torch.equal(spike_bits.unpack_bits(bits, n, dtype), s)
            t = {"pack": median_ms(lambda: spike_bits.pack_bits(s), args.repeat),
                 "unpack": median_ms(lambda: spike_bits.unpack_bits(bits, n, dtype),
                                     args.repeat),
                 "clone": median_ms(lambda: s.clone(), args.repeat)}
            k = sizes.count(n)
            for key in total:
                total[key] += k * t[key]
            print(f"{str(dtype)[6:]:9s} n={n:>9d} x{k:<2d} pack {t['pack']:.3f} ms, unpack "
                  f"{t['unpack']:.3f} ms, clone {t['clone']:.3f} ms "
                  f"({n * dtype.itemsize / 2**20:.1f} MiB -> {n / 8 / 2**20:.2f} MiB)")
        print(f"{str(dtype)[6:]:9s} per step: pack {total['pack']:.2f} ms + unpack "
              f"{total['unpack']:.2f} ms (a clone of each: {total['clone']:.2f} ms)")
    x = torch.zeros(4)
    ns = median_ms(lambda: [spike_bits.mark(x) for _ in range(100000)], 5) * 1e6 / 100000
    base = median_ms(lambda: [(lambda t: t)(x) for _ in range(100000)], 5) * 1e6 / 100000
    print(f"mark() outside the context: {ns:.0f} ns per call (an identity function call: "
          f"{base:.0f} ns)")
    if args.step:
        step_ab(args.T, args.batch, args.width, 6)


if __name__ == "__main__":
    main()

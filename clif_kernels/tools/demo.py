"""`clif-kernels demo`: LIF against CLIF on a delayed-recall task, on the CPU.

The task: each sequence shows one of four cue patterns on 16 input channels for its first 4
steps, then `delay` steps of noise, then a 4-step read window announced by a "go" channel; the
label is the cue. The network: a spiking encoder layer (one multi-step fused call over the whole
sequence), 128 recurrent spiking neurons (one fused call per step, since step t needs the spikes
of step t - 1) and a linear readout of the read window's mean spikes. To answer, the network must
carry the cue across the delay, and its training signal must travel back across it.

For each delay and seed, the same network (same initial weights, but for one scale of the
recurrent weights per neuron type, chosen so that both untrained networks fire at the same rate:
see `calibrate_gain`), the same data and the same optimiser are trained with LIF and with CLIF
neurons in lock-step: the same batches, the same number of updates. The command prints the test
accuracy against delay for both (mean, min and max over seeds) and the norm of the loss gradient
reaching each time step at one long delay, at initialisation and after training; with `--out` it
writes CSVs and, when matplotlib is installed, a PNG of all three.

    clif-kernels demo --out demo_results     # about 2 minutes on 2 CPU cores
    clif-kernels demo --seconds 30 --seeds 1 --delays 0,16,32

The command line (options, validation) is clif_kernels/cli.py; docs/demo.md has a result.
"""
from __future__ import annotations

import csv
import os
import time

import torch
from torch import nn

from ..modules import CLIFNode, LIFNode

CUE_STEPS, READ_STEPS = 4, 4
CHANNELS, HIDDEN, CLASSES = 16, 128, 4
DELAYS = (0, 8, 16, 32, 48)
GRAD_DELAY = 32
KINDS = ("lif", "clif")
NOISE = 0.3
TAU = 2.0
# Fair start. With one common scale of the recurrent weights the two networks start in different
# regimes: CLIF's extra reset lowers its firing rate, so at the scale where LIF's recurrent
# activity just sustains itself after the cue, CLIF's dies out, and CLIF then receives orders of
# magnitude less gradient at the cue for that reason alone. So each neuron type's copy of the same
# random matrix is scaled until the untrained network fires at TARGET_RATE during the delay. The
# rate is low because CLIF's rate levels off below a few percent with some seeds' weights (its
# extra reset grows with its firing) and must still be able to reach it.
TARGET_RATE = 0.01
CAL_DELAY = 32
EVAL_EVERY = 25


def neuron(kind, step_mode, tau=TAU):
    """The same settings for both neurons: threshold 1, soft reset, no input decay, and the
    sigmoid surrogate (SpikingJelly's default, alpha = 4) rather than the rectangle: its
    derivative is nonzero away from the threshold, so neurons that are silent at initialisation
    still receive a gradient."""
    kw = dict(tau=tau, v_threshold=1.0, v_reset=None, decay_input=False, surrogate="sigmoid",
              step_mode=step_mode)
    return CLIFNode(**kw) if kind == "clif" else LIFNode(**kw)


def make_prototypes(gen):
    """One random binary pattern (amplitude 2) per class on the cue channels."""
    return (torch.rand(CLASSES, CHANNELS, generator=gen) < 0.5).float() * 2.0


def make_data(n, delay, gen, prototypes):
    """Inputs `[T, n, CHANNELS + 1]` (T = CUE_STEPS + delay + READ_STEPS) and labels `[n]`:
    noise everywhere, plus the class prototype during the cue and the go channel (the last one)
    during the read window."""
    T = CUE_STEPS + delay + READ_STEPS
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    x = NOISE * torch.randn(T, n, CHANNELS + 1, generator=gen)
    x[:CUE_STEPS, :, :CHANNELS] += prototypes[labels]
    x[T - READ_STEPS:, :, CHANNELS] += 1.0
    return x, labels


class RecurrentSNN(nn.Module):
    """Input -> spiking encoder (feed-forward: one fused call over all T steps) -> recurrent
    spiking layer (one fused call per step) -> linear readout of the mean spikes over the last
    READ_STEPS steps. `rec_gain` scales PyTorch's default init of the recurrent weights."""

    def __init__(self, kind, rec_gain=1.0, tau=TAU):
        super().__init__()
        self.inp = nn.Linear(CHANNELS + 1, HIDDEN)
        self.enc = neuron(kind, "m", tau)
        self.mid = nn.Linear(HIDDEN, HIDDEN)
        self.rec = nn.Linear(HIDDEN, HIDDEN, bias=False)
        with torch.no_grad():
            self.rec.weight.mul_(rec_gain)
        self.node = neuron(kind, "s", tau)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x, currents=None, spikes=None):
        """x: `[T, B, CHANNELS + 1]` -> logits `[B, CLASSES]`. When `currents` is a list, each
        step's input current to the recurrent neurons is appended to it with its gradient
        retained; when `spikes` is a list, each step's recurrent spikes are appended to it."""
        self.enc.reset()
        self.node.reset()
        drive = self.mid(self.enc(self.inp(x)))     # [T, B, HIDDEN], whole-sequence calls
        s = x.new_zeros(x.shape[1], HIDDEN)
        read = 0
        for t in range(x.shape[0]):
            i_t = drive[t] + self.rec(s)
            if currents is not None:
                i_t.retain_grad()
                currents.append(i_t)
            s = self.node(i_t)
            if spikes is not None:
                spikes.append(s.detach())
            if t >= x.shape[0] - READ_STEPS:
                read = read + s
        return self.out(read / READ_STEPS)


def delay_rate(model, x):
    """Mean firing rate of the recurrent neurons during the delay (between cue and read)."""
    spikes = []
    with torch.no_grad():
        model(x, spikes=spikes)
    return torch.stack(spikes[CUE_STEPS:len(spikes) - READ_STEPS]).mean().item()


def calibrate_gain(kind, seed, x, target=None, tau=TAU, rounds=14):
    """(scale, rate): the scale of the recurrent weights (initial weights of `seed`) at which
    the untrained network fires at `target` (default TARGET_RATE) mean rate during the delay of
    the sequences `x`, by bisection on a log scale between 1x and 32x PyTorch's default init (the
    rate grows with the scale), and the rate reached there."""
    target = TARGET_RATE if target is None else target
    lo, hi = 1.0, 32.0
    for _ in range(rounds):
        mid = (lo * hi) ** 0.5
        torch.manual_seed(seed)
        if delay_rate(RecurrentSNN(kind, mid, tau), x) < target:
            lo = mid
        else:
            hi = mid
    torch.manual_seed(seed)
    return hi, delay_rate(RecurrentSNN(kind, hi, tau), x)


def gradient_over_time(model, x, y):
    """||dL/dI_t|| for each step t (I_t: the recurrent layer's input current; mean loss over the
    batch)."""
    currents = []
    model.zero_grad()
    nn.functional.cross_entropy(model(x, currents), y).backward()
    model.zero_grad()
    return [c.grad.norm().item() for c in currents]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train_pair(delay, seed, gains, *, seconds=None, iters=None, batch=64, lr=3e-3, tau=TAU,
               probe=False):
    """Train LIF and CLIF in lock-step on one delay and seed, until `seconds` of wall time are
    spent or for `iters` updates (whichever is given; at least one update). `gains`: the scale of
    each neuron type's recurrent weights. The test accuracy reported is the one at the evaluation
    (every EVAL_EVERY updates and at the end) with the best accuracy on a separate validation
    set. With `probe`, also ||dL/dI_t|| per step at initialisation and after training.
    Returns (results, curves, grads)."""
    # The same cue patterns and initial weights at every delay of a seed: only the delay changes.
    prototypes = make_prototypes(torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(1000 * seed + delay + 1)
    x_val, y_val = make_data(256, delay, gen, prototypes)
    x_test, y_test = make_data(512, delay, gen, prototypes)
    x_probe, y_probe = make_data(256, delay, gen, prototypes)
    models, opts, grads = {}, {}, {}
    for kind in KINDS:
        torch.manual_seed(seed)
        models[kind] = RecurrentSNN(kind, gains[kind], tau)
        opts[kind] = torch.optim.Adam(models[kind].parameters(), lr=lr)
        if probe:
            grads[kind] = {"init": gradient_over_time(models[kind], x_probe, y_probe)}
    train_gen = torch.Generator().manual_seed(1000 * seed + delay + 2)
    curves = []
    start = time.time()
    n = 0
    while True:
        x, y = make_data(batch, delay, train_gen, prototypes)
        losses = {}
        for kind in KINDS:
            loss = nn.functional.cross_entropy(models[kind](x), y)
            opts[kind].zero_grad()
            loss.backward()
            opts[kind].step()
            losses[kind] = loss.item()
        n += 1
        done = n >= iters if iters is not None else time.time() - start >= seconds
        if n % EVAL_EVERY == 0 or done:
            row = {"delay": delay, "seed": seed, "iteration": n}
            for kind in KINDS:
                row[f"{kind}_train_loss"] = round(losses[kind], 5)
                row[f"{kind}_val_acc"] = accuracy(models[kind], x_val, y_val)
                row[f"{kind}_test_acc"] = accuracy(models[kind], x_test, y_test)
            curves.append(row)
        if done:
            break
    results = []
    for kind in KINDS:
        best = max(curves, key=lambda r: r[f"{kind}_val_acc"])   # the earliest of equals
        results.append({"delay": delay, "seed": seed, "neuron": kind,
                        "rec_gain": round(gains[kind], 4), "updates": n,
                        "test_acc": best[f"{kind}_test_acc"], "at_update": best["iteration"],
                        "final_test_acc": curves[-1][f"{kind}_test_acc"],
                        "seconds": round(time.time() - start, 2)})
        if probe:
            grads[kind]["trained"] = gradient_over_time(models[kind], x_probe, y_probe)
    return results, curves, grads


def run(seconds=110.0, seeds=3, delays=DELAYS, out=None, iters=None, batch=64, lr=3e-3,
        tau=TAU, grad_delay=GRAD_DELAY, threads=1):
    """The whole demo; returns (results, curves, grads, table).

    The time budget `seconds` covers calibration, training and evaluation: before each (seed,
    delay) pair, what is left of it is shared among the pairs still to run in proportion to their
    sequence lengths, so every delay gets about the same number of updates. `iters`, when given,
    fixes the number of updates per pair instead (the tests use it: the result then does not
    depend on the machine's speed)."""
    delays = tuple(sorted(set(delays)))
    if grad_delay not in delays:
        grad_delay = delays[-1]
    length = {d: CUE_STEPS + d + READ_STEPS for d in delays}
    old_threads = torch.get_num_threads()
    # The matrices here are small (64 x 128): a second thread costs more in hand-offs than it
    # saves, and on a shared 2-core machine it competes with the other work.
    torch.set_num_threads(threads)
    budget = (f"{iters} updates per pair" if iters is not None
              else f"budget {seconds:.0f} s")
    print(f"LIF vs CLIF, delayed recall of {CLASSES} cues (tau = {tau:g}): cue in steps "
          f"0-{CUE_STEPS - 1}, then `delay` steps of noise, then a {READ_STEPS}-step read window; "
          f"delays {', '.join(map(str, delays))}; {seeds} seed(s); {budget}; {threads} "
          f"thread(s)", flush=True)
    results, curves, grads = [], [], {}
    start = time.time()
    try:
        for seed in range(seeds):
            x_cal, _ = make_data(256, CAL_DELAY, torch.Generator().manual_seed(10_000 + seed),
                                 make_prototypes(torch.Generator().manual_seed(seed)))
            cal = {k: calibrate_gain(k, seed, x_cal, tau=tau) for k in KINDS}
            gains = {k: cal[k][0] for k in KINDS}
            print(f"  seed {seed}: recurrent weights scaled {gains['lif']:.2f}x (LIF), "
                  f"{gains['clif']:.2f}x (CLIF); untrained delay firing rate "
                  f"{cal['lif'][1]:.2%} / {cal['clif'][1]:.2%} (target {TARGET_RATE:.0%})",
                  flush=True)
            for i, d in enumerate(delays):
                # What is left of the budget, shared in proportion to T among the pairs left.
                left = (sum(length[e] for e in delays[i:])
                        + (seeds - seed - 1) * sum(length.values()))
                share = max(seconds - (time.time() - start), 0.0) * length[d] / left
                probe = seed == 0 and d == grad_delay
                r, c, g = train_pair(d, seed, gains, seconds=share, iters=iters, batch=batch,
                                     lr=lr, tau=tau, probe=probe)
                results += r
                curves += c
                if probe:
                    grads = g
                acc = {x["neuron"]: x["test_acc"] for x in r}
                print(f"  seed {seed} delay {d:3d}: {r[0]['updates']:4d} updates, test accuracy "
                      f"LIF {acc['lif']:6.1%}  CLIF {acc['clif']:6.1%}  "
                      f"({time.time() - start:5.1f} s)", flush=True)
    finally:
        torch.set_num_threads(old_threads)
    wall = time.time() - start
    table = summarise(results, delays)
    print(f"\nTest accuracy (512 held-out sequences, at the evaluation with the best validation "
          f"accuracy), mean [min, max] over {seeds} seed(s); chance {1 / CLASSES:.0%}:")
    print(f"{'delay':>5} {'T':>4} {'updates':>8} {'LIF':>25} {'CLIF':>25}")
    for row in table:
        cells = "".join(f"{row[k + '_mean']:8.1%} [{row[k + '_min']:6.1%}, {row[k + '_max']:6.1%}]"
                        for k in KINDS)
        print(f"{row['delay']:5d} {row['T']:4d} {row['updates']:8.0f} {cells}")
    if grads:
        T = len(grads["lif"]["init"])
        shown = sorted({0, CUE_STEPS - 1, T // 4, T // 2, T - READ_STEPS - 1, T - 1})
        print(f"\n||dL/dI_t|| at delay {grad_delay} (seed 0): the loss gradient reaching the "
              f"recurrent layer's input current at step t")
        print(f"{'':14}" + "".join(f"{'t=' + str(t):>10}" for t in shown))
        for kind in KINDS:
            for when in ("init", "trained"):
                g = grads[kind][when]
                print(f"{kind.upper():5} {when:8}" + "".join(f"{g[t]:10.2e}" for t in shown))
    print(f"\n{len(results) // 2} (seed, delay) pairs in {wall:.1f} s")
    if out:
        write_outputs(out, results, curves, grads, table, grad_delay, tau)
    return results, curves, grads, table


def summarise(results, delays):
    """One row per delay: mean, min and max over seeds of each neuron's test accuracy."""
    table = []
    for d in delays:
        rs = [r for r in results if r["delay"] == d]
        row = {"delay": d, "T": CUE_STEPS + d + READ_STEPS,
               "updates": sum(r["updates"] for r in rs) / len(rs)}
        for kind in KINDS:
            vals = [r["test_acc"] for r in rs if r["neuron"] == kind]
            row[f"{kind}_mean"] = sum(vals) / len(vals)
            row[f"{kind}_min"], row[f"{kind}_max"] = min(vals), max(vals)
            row[f"{kind}_seeds"] = len(vals)
        table.append(row)
    return table


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_outputs(out, results, curves, grads, table, grad_delay, tau=TAU):
    """demo_summary.csv (the table), demo_accuracy.csv (one row per delay, seed and neuron),
    demo_curves.csv (every evaluation), demo_gradients.csv and, with matplotlib, demo.png."""
    os.makedirs(out, exist_ok=True)
    _write_csv(os.path.join(out, "demo_summary.csv"), table)
    _write_csv(os.path.join(out, "demo_accuracy.csv"), results)
    _write_csv(os.path.join(out, "demo_curves.csv"), curves)
    if grads:
        _write_csv(os.path.join(out, "demo_gradients.csv"), [
            {"t": t, **{f"{k}_{w}": f"{grads[k][w][t]:.6e}" for k in KINDS
                        for w in ("init", "trained")}}
            for t in range(len(grads["lif"]["init"]))])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote CSVs to {out} (matplotlib is not installed: no plot)")
        return None
    style = {"lif": dict(ls="--", marker="s", color="tab:blue", label="LIF"),
             "clif": dict(ls="-", marker="o", color="tab:red", label="CLIF")}
    fig, axes = plt.subplots(1, 3 if grads else 2, figsize=(17 if grads else 11.5, 4.6))
    a = axes[0]
    ds = [r["delay"] for r in table]
    shift = {"lif": -0.6, "clif": 0.6}     # side by side, so the two sets of points stay apart
    for k in KINDS:
        a.plot([d + shift[k] for d in ds], [r[f"{k}_mean"] for r in table], **style[k])
        pts = [(r["delay"] + shift[k], r["test_acc"]) for r in results if r["neuron"] == k]
        a.plot(*zip(*pts), ls="none", marker=style[k]["marker"], color=style[k]["color"],
               alpha=0.35, ms=5)
    a.axhline(1 / CLASSES, color="grey", lw=0.8, ls=":", label="chance")
    a.set(xlabel="delay between cue and read window (steps)", ylabel="test accuracy",
          ylim=(0, 1.05), title=f"Accuracy against delay (line: mean of {table[0]['lif_seeds']} "
                                f"seeds; faint: each seed)")
    a.legend(loc="lower left")
    b = axes[1]
    colors = plt.cm.viridis([i / max(len(ds) - 1, 1) for i in range(len(ds))])
    for d, c in zip(ds, colors):
        rows = [r for r in curves if r["delay"] == d and r["seed"] == 0]
        for k in KINDS:
            b.plot([r["iteration"] for r in rows], [r[f"{k}_test_acc"] for r in rows],
                   ls=style[k]["ls"], color=c, label=f"{k.upper()}, delay {d}")
    b.axhline(1 / CLASSES, color="grey", lw=0.8, ls=":")
    b.set(xlabel="updates", ylabel="test accuracy", ylim=(0, 1.05),
          title="Learning curves, seed 0 (dashed: LIF, solid: CLIF)")
    b.legend(fontsize=7, ncol=2, loc="center right", bbox_to_anchor=(1.0, 0.74))
    if grads:
        g = axes[2]
        T = len(grads["lif"]["init"])
        for k in KINDS:
            for when, alpha in (("init", 0.4), ("trained", 1.0)):
                g.semilogy(range(T), [max(v, 1e-30) for v in grads[k][when]], ls=style[k]["ls"],
                           color=style[k]["color"], alpha=alpha,
                           label=f"{k.upper()}, {'untrained' if when == 'init' else 'trained'}")
        g.axvspan(0, CUE_STEPS - 1, color="green", alpha=0.12, label="cue")
        g.axvspan(T - READ_STEPS, T - 1, color="orange", alpha=0.15, label="read window")
        g.set(xlabel="time step t", ylabel="||dL/dI_t||  (log scale)",
              title=f"Loss gradient reaching step t, delay {grad_delay}, seed 0")
        g.legend(fontsize=7)
    fig.suptitle(f"LIF vs CLIF (tau = {tau:g}) on delayed recall of {CLASSES} cues: the same "
                 f"network, data and updates; recurrent weights scaled per neuron type so that "
                 f"both untrained networks fire at {TARGET_RATE:.0%} during the delay", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "demo.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path} and CSVs to {out}")
    return path

"""Plot a benchmark CSV (needs matplotlib): the neuron sweep's (`clif-kernels bench`): time per
call against N at T = 8, one panel per dtype, one line per provider (`plot_csv`); or the model
benchmark's (`clif-kernels bench-model`, told apart by its `model` column): bars per provider
(`plot_model_csv`). Kept in the clone, out of the installed package.

    python benchmarks/plot.py benchmarks/results/bench_gpu.csv [out.png]
"""
from __future__ import annotations

import csv
import sys


def plot_csv(csv_path, png_path=None, T=8, mode="fwd+bwd"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["mode"] == mode and r["T"] == str(T)]
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, max(len(dtypes), 1), figsize=(6 * max(len(dtypes), 1), 4.5),
                             squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        for provider in sorted({r["provider"] for r in rows if r["dtype"] == dt}):
            pts = sorted((int(r["N"]), float(r["ms"])) for r in rows
                         if r["dtype"] == dt and r["provider"] == provider)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("neurons N")
        ax.set_ylabel(f"{mode} time per call (ms)")
        ax.set_title(f"{dt}, T={T}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if rows:
        fig.suptitle(f"CLIF neuron, {rows[0]['device']} ({rows[0]['date']}, git {rows[0]['git']})")
    fig.tight_layout()
    png_path = png_path or csv_path.rsplit(".", 1)[0] + ".png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def _color(provider):
    """SpikingJelly's providers orange, this package's fused backends green (from the backend
    registry; `lif` is the fused LIF), the loops and the reference grey."""
    import os
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clif_kernels.backends import REGISTRY
    fused = {name for name, b in REGISTRY.items() if b.fused} | {"lif"}
    if provider.startswith("spikingjelly"):
        return "tab:orange"
    return "tab:green" if provider in fused else "tab:gray"


def plot_model_csv(csv_path, png_path=None):
    """The model benchmark's CSV (`clif-kernels bench-model`): one column of panels per (dtype, T),
    rows for the training step's time, its peak memory and, when measured, the largest batch;
    one bar per provider."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    keys = sorted({(r["dtype"], int(r["T"])) for r in rows},
                  key=lambda k: (k[0] != "float32", -k[1]))
    gpu = bool(rows) and not rows[0]["device"].startswith("cpu")
    metrics = [("ms", "training step (ms)"),
               ("peak_mb", "peak memory (MB)" if gpu else "peak RSS growth (MB)")]
    if any(r.get("max_batch") for r in rows):
        metrics.append(("max_batch", f"largest batch in {rows[0]['budget_gib']} GiB"))
    fig, axes = plt.subplots(len(metrics), max(len(keys), 1),
                             figsize=(5 * max(len(keys), 1), 3.2 * len(metrics)), squeeze=False)
    for j, (dt, T) in enumerate(keys):
        case = [r for r in rows if r["dtype"] == dt and int(r["T"]) == T]
        for i, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            pts = [(r["provider"], float(r[key])) for r in case if r.get(key)]
            colors = [_color(p) for p, _ in pts]
            ax.barh([p for p, _ in pts], [v for _, v in pts], color=colors)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.grid(True, axis="x", alpha=0.3)
            if i == 0:
                ax.set_title(f"{dt}, T={T}, batch {case[0]['batch']}")
    if rows:
        fig.suptitle(f"Spiking ResNet-18 training, {rows[0]['device']} ({rows[0]['date']}, "
                     f"git {rows[0]['git']})")
    fig.tight_layout()
    png_path = png_path or csv_path.rsplit(".", 1)[0] + ".png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    with open(argv[0]) as f:
        model = "model" in (csv.DictReader(f).fieldnames or [])
    print((plot_model_csv if model else plot_csv)(argv[0], argv[1] if len(argv) > 1 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

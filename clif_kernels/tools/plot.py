"""Plot a benchmark CSV: time per training step of the neuron against N at T = 8, one panel per
dtype, one line per provider. Needs matplotlib.

    python benchmarks/plot.py benchmarks/results/bench_gpu.csv
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


if __name__ == "__main__":
    print(plot_csv(*sys.argv[1:2]))

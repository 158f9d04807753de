"""Plot a benchmark CSV (see clif_kernels/tools/plot.py)."""
import sys

from clif_kernels.tools.plot import plot_csv

if __name__ == "__main__":
    print(plot_csv(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))

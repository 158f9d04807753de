"""Plot a benchmark CSV (see clif_kernels/tools/plot.py): the neuron sweep's, or the model
benchmark's (`bench --model resnet18`, told apart by its `model` column)."""
import csv
import sys

from clif_kernels.tools.plot import plot_csv, plot_model_csv

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        model = "model" in (csv.DictReader(f).fieldnames or [])
    print((plot_model_csv if model else plot_csv)(sys.argv[1],
                                                  sys.argv[2] if len(sys.argv) > 2 else None))

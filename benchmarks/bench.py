"""The neuron's benchmark sweep from a clone: the same as `clif-kernels bench` (its options)."""
import sys

from clif_kernels.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

"""Benchmark sweep; the same as `python -m clif_kernels bench`. See clif_kernels/benchmark.py."""
import sys

from clif_kernels.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

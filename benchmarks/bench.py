"""Benchmark sweep; the same as `python -m clif_kernels bench`. See clif_kernels/tools/benchmark.py."""
import sys

from clif_kernels.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

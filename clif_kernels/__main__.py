"""`python -m clif_kernels COMMAND`: the same as the `clif-kernels` command (clif_kernels/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Command line: `python -m clif_kernels check`, `... bench` and `... demo`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _reexec_interpreted(argv):
    """On a machine without a GPU, the Triton kernels run only in Triton's interpreter, which
    must be switched on before they are defined: run this command again with it on."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, "-m", "clif_kernels", *argv], env=env)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m clif_kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="every available backend against the float64 reference")
    check.add_argument("--steps", type=int, default=None, help="T (default 16 CPU, 64 GPU)")
    check.add_argument("--neurons", type=int, default=None,
                       help="N (default 3000 on the CPU, 1000003 on a GPU)")
    check.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="benchmark sweep of the neuron; with --model resnet18, a spiking "
                   "ResNet-18's training step (see --help of the command)", add_help=False)
    sub.add_parser("demo", help="CLIF vs LIF on a task that needs memory (CPU, ~2 minutes)",
                   add_help=False)
    if argv[:1] == ["bench"]:
        from .tools.benchmark import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["demo"]:
        from .tools.demo import main as demo_main
        return demo_main(argv[1:])
    args = parser.parse_args(argv)

    import torch
    if (args.command == "check" and not torch.cuda.is_available()
            and os.environ.get("TRITON_INTERPRET") != "1"):
        return _reexec_interpreted(argv)
    from .tools.check import run_check
    return run_check(args.steps, args.neurons, args.seed)


if __name__ == "__main__":
    sys.exit(main())

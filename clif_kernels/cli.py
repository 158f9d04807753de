"""The command line: `clif-kernels COMMAND` (or `python -m clif_kernels COMMAND`).

    check        every backend that runs here against the float64 reference
    bench        the neuron alone: time per call of each provider over a sweep of shapes
    bench-model  a spiking ResNet-18's training step with each provider's neuron
    demo         LIF against CLIF on a task that needs memory (CPU, about 2 minutes)

Parsing and validation import no torch, so `--help` and `--version` answer at once; a bad value
is a usage error (exit status 2, one line naming the argument), found before any work starts.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import subprocess
import sys
import tempfile

from ._version import __version__

PROG = "clif-kernels"
BENCH_MODES = ("fwd", "fwd+bwd")
BENCH_DTYPES = ("float32", "bfloat16")
MODELS = ("resnet18",)
DEMO_DELAYS = "0,8,16,32,48"


# ---------------------------------------------------------------------------------------------
# Value types: each raises argparse.ArgumentTypeError, which argparse reports as a usage error
# naming the argument.


def _int(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text):
    return _int(text, 1, "a whole number >= 1")


def non_negative_int(text):
    return _int(text, 0, "a whole number >= 0")


def _float(text, what, ok):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_seconds(text):
    return _float(text, "a finite number of seconds > 0", lambda v: v > 0)


def non_negative_float(text):
    return _float(text, "a finite number >= 0", lambda v: v >= 0)


def tau_value(text):
    return _float(text, "a finite number > 1", lambda v: v > 1)


def _names(text):
    names = [n.strip() for n in text.split(",")]
    if not any(names) or not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def choices_list(choices):
    """A comma-separated list of names from `choices`."""
    def parse(text):
        names = _names(text)
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(choices)}")
        return names
    parse.__name__ = "list"
    return parse


def names_list(text):
    """A comma-separated list of names, checked against the known ones after parsing."""
    return _names(text)


def int_list(low):
    def parse(text):
        parts = text.split(",")
        return [_int(p.strip(), low, f"comma-separated whole numbers >= {low}") for p in parts]
    parse.__name__ = "list"
    return parse


def sweep_value(text):
    """T:N pairs, comma-separated: 8:1048576,16:65536."""
    pairs = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\S+?):(\S+)\s*", part)
        if not m:
            raise argparse.ArgumentTypeError(f"expected T:N pairs such as 8:65536, got {part!r}")
        T = _int(m.group(1), 1, "T:N pairs of whole numbers >= 1")
        N = _int(m.group(2), 1, "T:N pairs of whole numbers >= 1")
        pairs.append((T, N))
    return pairs


def device_value(text):
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def tag_value(text):
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits and _.+- only, got {text!r}")
    return text


# ---------------------------------------------------------------------------------------------
# The parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none (None, False) or the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


def _sub(sub, name, help, description=None):
    p = sub.add_parser(name, help=help, description=description or help,
                       formatter_class=_HelpFormatter)
    sub.commands[name] = p
    return p


def _add_device(p):
    p.add_argument("--device", type=device_value, default="auto",
                   help="cpu, cuda or cuda:N; auto: cuda when a GPU is available, else cpu")


def _add_out(p, what):
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"folder for {what} (created; refused at once if it cannot be written)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_HelpFormatter,
        description="Fused CLIF and LIF spiking neurons for PyTorch: check the installation, "
                    "measure the speed-up here, or watch CLIF and LIF learn.",
        epilog="Each command has its own --help. Also: python -m clif_kernels COMMAND.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.commands = parser.commands = {}

    p = _sub(sub, "check", "every backend available here against the float64 reference",
             "Runs every backend available here on fresh random inputs, forward and backward, "
             "against the float64 reference, and prints the largest errors; exits 1 when a row "
             "fails or when a compiled extension that was built does not load.")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="time steps T (default: 16 on the CPU, 64 on a GPU)")
    p.add_argument("--neurons", type=positive_int, default=None,
                   help="neurons N (default: 3000 on the CPU, 1000003 on a GPU)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed")

    p = _sub(sub, "bench", "time of the neuron alone, per provider, over a sweep of shapes",
             "Times the CLIF neuron alone: each provider (the per-step eager loop `naive`, its "
             "torch.compile `compiled`, SpikingJelly 2.0 when installed, and this package's "
             "backends) in each mode and dtype over a sweep of (T, N), after the host cost "
             "of one call on tiny inputs against torch.sigmoid's. Writes CSVs and a "
             "markdown summary with --out. Exits 1 when a case fails.")
    p.add_argument("--quick", action="store_true",
                   help="a small sweep (about a minute on 2 CPU cores)")
    p.add_argument("--providers", type=names_list, default=None,
                   help="comma-separated (default: all that run here): naive, compiled, "
                        "spikingjelly and the package's backends")
    p.add_argument("--modes", type=choices_list(BENCH_MODES), default=list(BENCH_MODES),
                   help=f"comma-separated, from {', '.join(BENCH_MODES)} (default: both)")
    p.add_argument("--dtypes", type=choices_list(BENCH_DTYPES), default=list(BENCH_DTYPES),
                   help=f"comma-separated, from {', '.join(BENCH_DTYPES)} (default: both)")
    p.add_argument("--sweep", type=sweep_value, default=None, metavar="T:N,...",
                   help="the (T, N) pairs, e.g. 8:1048576,16:65536 (default: the standard "
                        "sweep, or the quick one)")
    p.add_argument("--time-budget", type=positive_seconds, default=None, metavar="SECONDS",
                   help="start no new case after this many seconds")
    _add_out(p, "bench_TAG.csv and summary_TAG.md")
    _add_device(p)
    p.add_argument("--tag", type=tag_value, default=None,
                   help="names the output files (default: gpu or cpu)")
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--host-only", action="store_true",
                   help="only the host cost per call (tiny inputs, against torch.sigmoid), "
                        "which every run measures first (host_TAG.csv)")

    p = _sub(sub, "bench-model", "a spiking ResNet-18's training step, per provider",
             "Times the training step (forward, backward, SGD step) of a spiking ResNet-18 on "
             "synthetic 3x32x32 data with each provider's neuron, its peak memory and the "
             "neuron's share of the step; on a GPU also the largest batch that fits a memory "
             "budget. Exits 1 when a case fails.")
    p.add_argument("--model", choices=MODELS, default="resnet18", help="the model")
    p.add_argument("--quick", action="store_true",
                   help="on the CPU: T=4, no torch.compile (under 2 minutes on 2 cores); on a "
                        "GPU: T=8 only, 5 timed steps")
    p.add_argument("--providers", type=names_list, default=None,
                   help="comma-separated (default: all that run here): naive, compiled, "
                        "spikingjelly, spikingjelly+memopt, the package's backends, lif, "
                        "<fused backend>+bits (spikes saved as bits)")
    p.add_argument("--dtypes", type=choices_list(BENCH_DTYPES), default=list(BENCH_DTYPES),
                   help="comma-separated, float32 and/or bfloat16 (autocast) (default: both)")
    p.add_argument("--T", type=int_list(1), default=None, metavar="T,...",
                   help="time steps (default: 8,4; --quick on the CPU: 4; on a GPU: 8)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="batch of the timed steps (default: 64 on a GPU, 8 on the CPU)")
    p.add_argument("--width", type=positive_int, default=64,
                   help="first-stage width (ResNet-18: 64)")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="warm-up steps (default: 3 on a GPU, 2 on the CPU, 1 with --quick)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="timed steps (default: 10 on a GPU, 5 on the CPU or with --quick)")
    p.add_argument("--mem-budget-gib", type=non_negative_float, default=40.0, metavar="GIB",
                   help="GPU memory budget of the largest-batch search; 0: no search")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="each case in a fresh process (auto: on the CPU, where peak memory is "
                        "the process's resident set)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the profiled step (no neuron share)")
    p.add_argument("--time-budget", type=positive_seconds, default=None, metavar="SECONDS",
                   help="start no new case after this many seconds (default: 270 for a full "
                        "GPU run, else none)")
    p.add_argument("--append", action="store_true",
                   help="keep the rows already in the CSV")
    _add_out(p, "bench_TAG.csv and summary_TAG.md")
    _add_device(p)
    p.add_argument("--tag", type=tag_value, default=None,
                   help="names the output files (default: model_gpu or model_cpu)")

    p = _sub(sub, "demo", "LIF against CLIF on a delayed-recall task (CPU, about 2 minutes)",
             "Trains the same recurrent spiking network with LIF and with CLIF neurons on a "
             "delayed-recall task, in lock-step, and prints test accuracy against delay and the "
             "gradient reaching each time step (docs/demo.md).")
    p.add_argument("--seconds", type=positive_seconds, default=110.0,
                   help="time budget for calibration, training and evaluation of all delays, "
                        "seeds and both neurons")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per delay")
    p.add_argument("--delays", type=int_list(0), default=DEMO_DELAYS, metavar="D,...",
                   help="delays in steps between cue and read window")
    p.add_argument("--tau", type=tau_value, default=2.0,
                   help="membrane time constant of both neurons")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads while training")
    _add_out(p, "the CSVs and plot")
    return parser


# ---------------------------------------------------------------------------------------------
# Checks that need torch or the file system, still before any work


def _check_out(parser, out):
    if out is None:
        return
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".clif-kernels-write-test-"):
            pass
    except OSError as e:
        parser.error(f"argument --out: cannot write to {out!r} ({e.strerror or e})")


def _resolve_device(parser, text):
    import torch
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"argument --device: {text!r}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"argument --device: {text!r}: there are "
                         f"{torch.cuda.device_count()} CUDA devices")
    return device


def _check_providers(parser, names, known):
    bad = [n for n in names if n not in known]
    if bad:
        parser.error(f"argument --providers: unknown {', '.join(map(repr, bad))}; choose "
                     f"from {', '.join(known)}")


def _reexec_interpreted(argv):
    """On a machine without a GPU, the Triton kernels run only in Triton's interpreter, which
    must be switched on before they are defined: run this command again with it on."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, "-m", "clif_kernels", *argv], env=env)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.commands[args.command]  # its usage line goes with its errors

    if args.command == "check":
        import torch
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return _reexec_interpreted(argv)
        from .tools.check import run_check
        return run_check(args.steps, args.neurons, args.seed)

    if args.command in ("bench", "bench-model"):
        if args.command == "bench" and args.model is not None:
            sub.error("argument --model: the model benchmark is its own command: "
                      f"{PROG} bench-model --model {args.model}")
        _check_out(sub, args.out)
        device = _resolve_device(sub, args.device)
        tool = importlib.import_module(
            ".tools.benchmark" if args.command == "bench" else ".tools.bench_model", __package__)
        if args.providers is not None:
            _check_providers(sub, args.providers, tool.PROVIDERS)
        return tool.run_command(args, device)

    if args.command == "demo":
        _check_out(sub, args.out)
        from .tools.demo import run
        run(args.seconds, args.seeds, tuple(args.delays), args.out, tau=args.tau,
            threads=args.threads)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())

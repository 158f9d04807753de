"""The command line (`clif-kernels`, clif_kernels/cli.py): every bad value is a usage error
(exit status 2, one error line naming the argument, no traceback) found before any work; help
and version answer without importing torch; `bench` fails when a case fails."""
import os
import subprocess
import sys

import pytest
import torch

from clif_kernels import cli
from clif_kernels.tools import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = [
    (["check", "--steps", "-3"], "--steps"),
    (["check", "--steps", "0", "--neurons", "0"], "--steps"),
    (["check", "--neurons", "0"], "--neurons"),
    (["check", "--seed", "x"], "--seed"),
    (["bench", "--sweep", "8:abc"], "--sweep"),
    (["bench", "--sweep", "8"], "--sweep"),
    (["bench", "--sweep", "8:-5"], "--sweep"),
    (["bench", "--sweep", "0:16"], "--sweep"),
    (["bench", "--device", "bogus"], "--device"),
    (["bench", "--dtypes", "float64"], "--dtypes"),
    (["bench", "--modes", "bogus"], "--modes"),
    (["bench", "--providers", ","], "--providers"),
    (["bench", "--providers", "naive,bogus"], "--providers"),
    (["bench", "--time-budget", "nan"], "--time-budget"),
    (["bench", "--time-budget", "-1"], "--time-budget"),
    (["bench", "--tag", "../x"], "--tag"),
    (["bench", "--model", "resnet18"], "--model"),
    (["bench-model", "--T", "abc"], "--T"),
    (["bench-model", "--T", "0"], "--T"),
    (["bench-model", "--batch", "-1"], "--batch"),
    (["bench-model", "--width", "0"], "--width"),
    (["bench-model", "--steps", "0"], "--steps"),
    (["bench-model", "--warmup", "-1"], "--warmup"),
    (["bench-model", "--mem-budget-gib", "inf"], "--mem-budget-gib"),
    (["bench-model", "--providers", "bogus"], "--providers"),
    (["bench-model", "--dtypes", "float16"], "--dtypes"),
    (["bench-model", "--model", "vgg"], "--model"),
    (["bench-model", "--device", "gpu"], "--device"),
    (["demo", "--tau", "nan"], "--tau"),
    (["demo", "--tau", "1"], "--tau"),
    (["demo", "--seconds", "nan"], "--seconds"),
    (["demo", "--seconds", "inf"], "--seconds"),
    (["demo", "--seconds", "0"], "--seconds"),
    (["demo", "--seeds", "0"], "--seeds"),
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--delays", "a,b"], "--delays"),
    (["demo", "--delays", "-1"], "--delays"),
    (["bogus"], "COMMAND"),
    ([], "COMMAND"),
]
if not torch.cuda.is_available():
    BAD += [(["bench", "--device", "cuda"], "--device"),
            (["bench-model", "--device", "cuda:0"], "--device")]
else:
    BAD += [(["bench", "--device", f"cuda:{torch.cuda.device_count()}"], "--device")]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (argv, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("argv,argument", BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_argument_is_a_usage_error(argv, argument, capsys):
    line = _usage_error(argv, capsys)
    if argument == "COMMAND":
        assert "COMMAND" in line or "invalid choice" in line, line
    else:
        assert f"argument {argument}" in line, line


def _blocker(tmp_path):
    """A path that cannot be a folder, even for root: it lies under a regular file."""
    (tmp_path / "file").write_text("")
    return str(tmp_path / "file" / "out")


@pytest.mark.parametrize("command", [["bench", "--sweep", "2:16", "--providers", "naive"],
                                     ["bench-model", "--providers", "naive"],
                                     ["demo", "--seconds", "1"]])
def test_unwritable_out_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before --out was checked")
    from clif_kernels.tools import bench_model, demo
    monkeypatch.setattr(benchmark, "run", no_work)
    monkeypatch.setattr(bench_model, "run", no_work)
    monkeypatch.setattr(demo, "run", no_work)
    line = _usage_error(command + ["--out", _blocker(tmp_path)], capsys)
    assert "argument --out" in line and "cannot write" in line, line


def test_bench_exits_nonzero_when_a_case_fails(monkeypatch, capsys):
    def broken(x_seq):
        raise RuntimeError("simulated failure")
    monkeypatch.setattr(benchmark, "naive_clif", broken)
    status = cli.main(["bench", "--providers", "naive", "--sweep", "2:16", "--modes", "fwd",
                       "--dtypes", "float32", "--device", "cpu"])
    assert status == 1
    assert "simulated failure" in capsys.readouterr().err


def test_bench_succeeds_and_logs_one_line_per_case(capsys):
    status = cli.main(["bench", "--providers", "naive", "--sweep", "2:16,3:8", "--modes", "fwd",
                       "--dtypes", "float32", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    # stderr is not a terminal here: no carriage returns, one line per case.
    assert "\r" not in captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("[")] == [
        "[1/2] naive fwd float32 T=2 N=16", "[2/2] naive fwd float32 T=3 N=8"]
    assert "| fwd | float32 | 2 | 16 |" in captured.out


def test_providers_come_from_the_backend_registry():
    from clif_kernels.backends import REGISTRY
    from clif_kernels.tools import bench_model
    for providers in (benchmark.PROVIDERS, bench_model.PROVIDERS):
        assert set(REGISTRY) <= set(providers)


def test_help_and_version_answer_without_importing_torch():
    code = ("import sys\n"
            "from clif_kernels import cli\n"
            "for argv in (['--help'], ['--version'], ['check', '--help'], ['bench', '--help'],\n"
            "             ['bench-model', '--help'], ['demo', '--help']):\n"
            "    try:\n"
            "        cli.main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, (argv, e.code)\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch imported: False" in out.stdout
    from clif_kernels import __version__
    assert f"clif-kernels {__version__}" in out.stdout
    # Defaults are shown.
    assert "(default: 110.0)" in out.stdout and "(default: auto)" in out.stdout


def test_python_m_and_the_parser_agree():
    out = subprocess.run([sys.executable, "-m", "clif_kernels", "check", "--steps", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "argument --steps" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_host_cost_measures_against_sigmoid_and_leaves_out_the_interpreter():
    """The host-cost rows: torch.sigmoid once per (mode, shape) with ratio 1, each fused backend
    that runs here with its ratio to it, and no Triton interpreter timings on the CPU."""
    import torch
    from clif_kernels.tools import host_cost
    cpu = torch.device("cpu")
    assert "triton" not in host_cost.backends_here(cpu)
    backends = host_cost.backends_here(cpu)
    if not backends:
        pytest.skip("no fused backend runs on this CPU")
    rows = host_cost.measure(cpu, backends=backends[:1], rounds=1, calls_per_round=2)
    cases = {(r["mode"], r["T"], r["N"]) for r in rows}
    assert cases == {(m, T, N) for m in host_cost.MODES for T, N in host_cost.SHAPES}
    for case in cases:
        got = {r["provider"]: r for r in rows if (r["mode"], r["T"], r["N"]) == case}
        assert set(got) == {host_cost.YARDSTICK, "clif", "CLIFNode"}
        assert got[host_cost.YARDSTICK]["ratio"] == 1.0
        assert all(r["us"] > 0 for r in got.values())

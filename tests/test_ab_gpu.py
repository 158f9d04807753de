"""The GPU A/B script's logic (benchmarks/ab_gpu.py) on the CPU: its GPU steps (timings and the
accuracy check) mocked, then one real tiny run of the Triton kernels in the interpreter."""
import csv
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ab_gpu  # noqa: E402


def _rows(times):
    """Rows as main writes them, from {(variant, T, N): ms} for the autograd mode."""
    return [dict(backend="cuda", variant=v, dtype="fp32", T=T, N=N, mode="fwd+bwd", ms=str(ms))
            for (v, T, N), ms in times.items()]


def test_verdict_keeps_the_faster_variant_that_passes():
    rows = _rows({("previous", 8, 64): 2.0, ("current", 8, 64): 1.0,
                  ("previous", 32, 64): 4.0, ("current", 32, 64): 4.0})
    ok = {("cuda", "previous", "fp32"): (1e-7, 0, True), ("cuda", "current", "fp32"): (1e-7, 0, True)}
    keep, speedup = ab_gpu.verdict(rows, ok)["cuda"]
    assert keep == "current" and speedup == pytest.approx(2 ** 0.5)
    slower = _rows({("previous", 8, 64): 1.0, ("current", 8, 64): 1.5})
    assert ab_gpu.verdict(slower, ok)["cuda"][0] == "previous"
    # Faster but inaccurate is not kept; neither is anything when both fail.
    bad = dict(ok)
    bad[("cuda", "current", "fp32")] = (1e-3, 3, False)
    assert ab_gpu.verdict(rows, bad)["cuda"][0] == "previous"
    bad[("cuda", "previous", "fp32")] = (1e-3, 3, False)
    assert ab_gpu.verdict(rows, bad)["cuda"][0].startswith("neither")


def test_main_with_the_gpu_steps_mocked(tmp_path, monkeypatch):
    calls = []

    def fake_measure(backend, variant, dtype, T, N, device, time_fn=None):
        calls.append((backend, variant, T, N))
        scale = 1.0 if variant == "current" else 1.5
        return {"fwd": 0.1 * scale, "bwd": 0.3 * scale, "fwd+bwd": 0.5 * scale}

    monkeypatch.setattr(ab_gpu, "measure_case", fake_measure)
    monkeypatch.setattr(ab_gpu, "check_accuracy", lambda *a, **k: (2e-7, 0, True))
    monkeypatch.setattr(ab_gpu, "copy_gbps", lambda device, time_fn=None: 1000.0)
    status = ab_gpu.main(["--out", str(tmp_path), "--backends", "triton", "--dtypes",
                          "fp32,bf16", "--shapes", "8:1048576,32:1024"])
    assert status == 0
    # Both variants of every case, previous first, in one process.
    assert len(calls) == 2 * 2 * 2 and calls[0][1] == "previous" and calls[1][1] == "current"
    with open(tmp_path / "ab_gpu.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 3
    r = rows[0]
    assert r["device"] and r["git"] and r["torch"] and r["date"]
    # Shares of the run's copy bandwidth from the design's bytes: fwd at T=8, N=2^20, fp32
    # moves 2 * 4 * 8 * 2^20 bytes in 0.15 ms.
    fwd = next(r for r in rows if r["mode"] == "fwd" and r["variant"] == "previous"
               and r["dtype"] == "fp32" and r["T"] == "8")
    assert float(fwd["gbps"]) == pytest.approx(2 * 4 * 8 * 2 ** 20 / 0.15 / 1e6, rel=1e-2)
    assert float(fwd["of_copy"]) == pytest.approx(float(fwd["gbps"]) / 1000.0, rel=1e-2)
    summary = (tmp_path / "summary_ab_gpu.md").read_text()
    assert "triton: keep **current**" in summary and "1.50x" in summary
    assert os.environ["CLIF_KERNELS_GPU_KERNELS"] == "current"


def test_main_fails_when_a_variant_is_inaccurate(tmp_path, monkeypatch):
    monkeypatch.setattr(ab_gpu, "measure_case", lambda *a, **k: {"fwd": 1.0, "bwd": 1.0,
                                                                 "fwd+bwd": 1.0})
    monkeypatch.setattr(ab_gpu, "check_accuracy",
                        lambda b, v, *a, **k: (1e-2, 5, False) if v == "current"
                        else (1e-7, 0, True))
    monkeypatch.setattr(ab_gpu, "copy_gbps", lambda device, time_fn=None: 1000.0)
    status = ab_gpu.main(["--out", str(tmp_path), "--backends", "triton", "--dtypes", "fp32",
                          "--shapes", "8:64"])
    assert status == 1
    assert "keep **previous**" in (tmp_path / "summary_ab_gpu.md").read_text()


def test_tiny_real_run_in_the_interpreter(tmp_path):
    from checks import unavailable
    if unavailable("triton") is not None:
        pytest.skip(unavailable("triton"))
    status = ab_gpu.main(["--out", str(tmp_path), "--backends", "triton", "--dtypes", "fp32",
                          "--shapes", "9:96"])
    assert status == 0
    with open(tmp_path / "ab_gpu.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 3


def test_gpu_check_script_parses_and_runs_the_ab_first():
    import subprocess
    path = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    steps = [line.split()[1] for line in open(path) if line.strip().startswith("step ")]
    # On a GPU: the build, then the A/B before anything else can use up the deadline.
    assert steps[:3] == ["build", "ab", "ncu"], steps

"""The shared core's drivers in the configurations the GPU kernels use (2, 4 or 8 neurons per
thread, loads of a segment issued first, the surrogate a template constant), compiled for the CPU
with the system's C++ compiler and run there: each must give the same bits as the plainest
configuration, over every surrogate, both resets, CLIF and LIF and awkward T. So the CPU proves
the GPU's variants of the math, not only the CPU's own."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_gpu_configurations_match_the_plain_driver_bit_for_bit(tmp_path):
    exe = tmp_path / "core_variants"
    build = subprocess.run(
        ["g++", "-O2", "-std=c++17", "-I", os.path.join(ROOT, "csrc"),
         os.path.join(ROOT, "tests", "cpp", "core_variants.cpp"), "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "checked 252 cases, 0 mismatches" in run.stdout, run.stdout[-3000:]
    # The fold's configurations: 7 lengths x 3 kinds x CLIF/LIF.
    assert "checked 42 fold cases, 0 mismatches" in run.stdout, run.stdout[-3000:]

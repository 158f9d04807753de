"""Compile the Triton kernels for sm_90 and sm_80 without a GPU (the interpreter is lenient).

Each kernel variant once per architecture: sm_90 as the JIT compiles for aligned tensors (the
compile the cost model reads, so Triton's cache serves it twice; Triton >= 3.3), sm_80 as for
any other tensors (scalar, masked accesses). The two compiles run side by side."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (90, 80)


def _aligned(arch):
    from dev import triton_aot
    return arch == 90 and triton_aot.can_align()


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tmp = tmp_path_factory.mktemp("triton_aot")
    runs = {}
    for arch in ARCHS:
        log = open(tmp / f"sm_{arch}.log", "w+")
        cmd = [sys.executable, "-m", "dev.triton_aot", str(arch)]
        if _aligned(arch):
            cmd.append("--aligned")
        runs[arch] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True), log)
    yield runs
    for proc, log in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_triton_kernels_compile_for_gpu(arch, compiles):
    proc, log = compiles[arch]
    proc.wait(timeout=900)
    log.seek(0)
    out = log.read()
    assert proc.returncode == 0, out
    label = f"sm_{arch}{' (aligned)' if _aligned(arch) else ''}"
    # Every variant of dev/triton_aot.py: 58 of the plain kernels and 20 of the fold.
    assert f"{label}: compiled 78 kernels;" in out, out
    # A spill would show up as stack use.
    assert "at most 0 bytes of stack" in out, out

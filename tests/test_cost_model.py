"""The static cost model (dev/cost_model.py) on the sm_90 SASS of every GPU kernel
variant, and the budgets the kernels are designed for: a kernel that needs more registers or
more special-function (MUFU) operations per element-step than its budget fails CI.

Budgets (per element-step; `slow` = the dearer side of every run-time branch):
- forward: CLIF 2 sigmoids = 4 MUFU (ex2 + rcp each), LIF none;
- backward: CLIF recomputes the segment's 2 sigmoids (4), and the slowest surrogate adds up to 2
  more (sigmoid: ex2 + rcp) plus the reverse walk's own; at most 10 on the slow path, 6 on the
  fast one; LIF at most 2 (the surrogate's);
- registers: forward at most 64 (full occupancy needs 32 at 256 threads per block); backward at
  most 128 (4 blocks of 128 threads or 2 of 256 per SM).
"""
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dev import cost_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUFU_BUDGET = {("fwd", "CLIF"): (4, 4), ("fwd", "LIF"): (0, 0),
               ("bwd", "CLIF"): (6, 10), ("bwd", "LIF"): (2, 2)}   # (fast, slow)
REG_BUDGET = {"fwd": 64, "bwd": 128}


def _number(v):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _check(rows):
    assert rows
    for r in rows:
        what = f"{r['impl']} {r['kind']} {r['dtype']} {r['neuron']} {r['variant']}"
        fast, slow = MUFU_BUDGET[(r["kind"], r["neuron"])]
        assert r["mufu"] <= fast, f"{what}: {r['mufu']:.2f} MUFU per element-step > {fast}"
        assert r["mufu_slow"] <= slow, f"{what}: {r['mufu_slow']:.2f} MUFU (slow path) > {slow}"
        assert r["regs"] is not None and r["regs"] <= REG_BUDGET[r["kind"]], \
            f"{what}: {r['regs']} registers > {REG_BUDGET[r['kind']]}"
        # The model found the loop: a whole number of element-steps per iteration, and the
        # work the design needs per element-step at least.
        assert r["steps_per_iter"] >= 1 and r["steps_per_iter"] == int(r["steps_per_iter"]), what
        assert r["ldg"] > 0 and r["stg"] > 0, what
        if r["neuron"] == "CLIF":
            assert r["mufu"] >= 4, f"{what}: a CLIF step needs two sigmoids"
        assert r["model_ms"] > 0


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="needs nvcc and a CUDA build of torch")
def test_cuda_kernels_within_budget():
    rows = cost_model.cuda_rows(90)
    # fwd/bwd x fp32/bf16/fp16 x 1 or 4 neurons per thread x CLIF/LIF
    assert len(rows) == 24
    _check(rows)
    for r in rows:
        lanes = int(r["variant"].split("=")[1])
        # Backward: a segment of 8 steps per iteration; forward: whole steps.
        if r["kind"] == "bwd":
            assert r["steps_per_iter"] == 8 * lanes, r
        else:
            assert r["steps_per_iter"] % lanes == 0, r


def test_triton_kernels_within_budget(tmp_path):
    pytest.importorskip("triton")
    import inspect
    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("the model compiles aligned variants, which need Triton >= 3.3")
    # Compiled in a process without the interpreter, which the tests switch on.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "triton.csv"
    proc = subprocess.run([sys.executable, "-m", "dev.cost_model", "--only",
                           "triton", "--csv", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(out) as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    _check(rows)
    for r in rows:
        per_thread = {"fwd": 1024 // 256, "bwd": 256 // 128}[r["kind"]]
        steps = 8 if r["kind"] == "bwd" else r["steps_per_iter"] / per_thread
        assert r["steps_per_iter"] == steps * per_thread, r


def test_path_walk_on_a_small_listing():
    """The parser and the path walk on a hand-written loop: a run-time branch between a cheap
    and a dear side, a cold call, a predicated exit."""
    sass = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R8, R4, R5, R6 ;
        /*0030*/               @P0 BRA 0x70 ;
        /*0040*/                   MUFU.EX2 R9, R8 ;
        /*0050*/                   MUFU.RCP R9, R9 ;
        /*0060*/                   BRA 0x90 ;
        /*0070*/                   FADD R9, R8, 1 ;
        /*0080*/                   FMUL R9, R9, R9 ;
        /*0090*/               @P1 BRA 0xb0 ;
        /*00a0*/                   CALL.REL.NOINC 0x200 ;
        /*00b0*/                   STG.E.128 desc[UR4][R2.64], R8 ;
        /*00c0*/               @!P2 EXIT ;
        /*00d0*/               @P3 BRA 0x10 ;
        /*00e0*/                   EXIT ;
    """
    (insns,) = cost_model.parse_sass(sass).values()
    assert cost_model.hot_loop(insns) == (0x10, 0xd0)
    paths = cost_model.loop_paths(insns)
    fast, slow = paths["fast"], paths["slow"]
    assert fast["mufu"] == 0 and slow["mufu"] == 2
    # Both avoid the call: 3 + 2 (or 3) + 1 + 2 + 1 instructions. The store block counts as
    # cold by the heuristic, but no path avoids it.
    assert fast["insns"] == 9 and slow["insns"] == 10
    assert fast["cold_blocks"] == slow["cold_blocks"] == 1
    assert fast["stg_bytes"] == 16 and fast["ldg_bytes"] == 16
    assert paths["in_flight_bytes"] == 16


def test_path_walk_through_a_jump_table():
    """A switch compiled to a jump table (BRX): its cases are the blocks after it that nothing
    else reaches; the fast path takes the cheapest, the slow path the dearest."""
    sass = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0020*/                   LDC R6, c[0x2][R5] ;
        /*0030*/                   BRX R6 -0x40 ;
        /*0040*/                   FADD R8, R4, 1 ;
        /*0050*/                   BRA 0xb0 ;
        /*0060*/                   MUFU.EX2 R8, R4 ;
        /*0070*/                   MUFU.RCP R8, R8 ;
        /*0080*/                   MUFU.EX2 R8, R8 ;
        /*0090*/                   BRA 0xb0 ;
        /*00a0*/                   NOP ;
        /*00b0*/                   STG.E desc[UR4][R2.64], R8 ;
        /*00c0*/               @P3 BRA 0x10 ;
        /*00d0*/                   EXIT ;
    """
    (insns,) = cost_model.parse_sass(sass).values()
    paths = cost_model.loop_paths(insns)
    assert paths["fast"]["mufu"] == 0 and paths["slow"]["mufu"] == 3
    assert paths["fast"]["stg_bytes"] == paths["slow"]["stg_bytes"] == 4

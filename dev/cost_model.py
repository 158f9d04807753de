"""A static cost model of the GPU kernels, read from their SASS: no GPU needed.

For every compiled variant (the CUDA kernels through `cuda_aot`, the Triton kernels through
`triton_aot`) it finds the hot loop (the backward branch whose range holds the most global
loads) and counts, per element-step (one neuron, one time step), what one iteration issues along
its fast path (the cheaper side of every run-time branch) and its slow path (the dearer side),
without the cold blocks (checkpoint stores, an IEEE division's slow path):

- MUFU (special-function unit), FP32-pipe arithmetic and all instructions (issue slots);
- global loads and stores and their widths;
- the waits on memory: walking the loop body (twice, so that a load issued for the next
  iteration counts there), every instruction that needs a load still in flight is a wait. For
  each wait: the load bytes the thread has in flight then, and the instructions it issued since
  the oldest of them, which hide part of the latency. `first_wait_bytes` is what is in flight at
  the first wait of an iteration.

From these, the registers, the occupancy and the number of waves, the time on an H200 for
T = 8, N = 2^23 is bounded by:

- `bandwidth`: the bytes the kernel moves (the design's, plus stores nobody asked for) at the
  copy bandwidth;
- `chain`: one thread's iteration is a chain of round trips to memory and its instructions,
  cycles = sum over waits of max(0, latency - hidden instructions x cpi / n) + instructions x
  cpi / n, with n the thread's neurons (independent chains that interleave), plus the fetch of
  the part of the loop that does not fit the instruction cache;
  a wave of resident threads takes iterations x that, and the problem takes ceil(waves) waves.
  This is Little's law per thread: the bytes a thread moves per round trip over the latency;
- `issue` and `mufu`: instructions over the SMs' issue slots, MUFU ops over the MUFU lanes.

The model's time is max(issue, mufu, (bandwidth^p + chain^p)^(1/p)): bandwidth and latency
overlap imperfectly, which the exponent p captures. latency, cpi and p were calibrated on the
only kernels an H200 has measured (`calibration()`, benchmarks/NOTES.md).

    python -m dev.cost_model                 # table for sm_90, with the calibration
    python -m dev.cost_model --csv out.csv
    python -m dev.cost_model --calibration-rows dev/calibration_sm90.csv   # from git history
"""
import argparse
import csv
import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile

# The H200 (SXM): 132 SMs at up to 1.98 GHz; per SM and clock 16 MUFU results, 128 FP32 lanes
# and 4 warp instructions issued; 65,536 registers, 2,048 threads and 32 blocks. The copy
# bandwidth is what bench measured on one (benchmarks/NOTES.md); the load latency under load is
# an estimate for HBM3e (about 0.6-0.8 us).
H200 = dict(sms=132, ghz=1.98, mufu=16, fp32=128, issue=4, regs=65536, threads=2048, blocks=32,
            icache_kb=128,
            copy_gbps=4130.0, latency_us=0.7)
SHAPE = (8, 2 ** 23)  # T, N: the ResNet shape [8, 64, 128, 32, 32]

_FP32 = {"FFMA", "FADD", "FMUL", "FMNMX", "FSET", "FSETP", "FSEL", "FCHK", "FRND", "FSWZADD"}
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


@dataclasses.dataclass
class Insn:
    addr: int
    pred: str
    op: str      # full opcode with modifiers, e.g. LDG.E.128
    args: str

    @property
    def base(self):
        return self.op.split(".")[0]

    def width_bits(self):
        mods = self.op.split(".")[1:]
        return next((_WIDTH[m] for m in mods if m in _WIDTH), 32)

    def target(self):
        m = re.search(r"0x([0-9a-f]+)", self.args)
        return int(m.group(1), 16) if m else None


def parse_sass(text):
    """{function name: [Insn]} from `cuobjdump -sass` output."""
    out = {}
    for chunk in re.split(r"\n\s*Function : ", text)[1:]:
        name, body = chunk.split("\n", 1)
        out[name.strip()] = [Insn(int(a, 16), (p or "").strip(), op, args.strip())
                             for a, p, op, args in _INSN.findall(body)]
    return out


def _blocks(insns):
    """Basic blocks as lists of Insn, split at branch targets and after control transfers."""
    leaders = {insns[0].addr}
    for i, ins in enumerate(insns):
        if ins.base in ("BRA", "EXIT", "RET", "CALL", "BRX", "JMP"):
            if i + 1 < len(insns):
                leaders.add(insns[i + 1].addr)
            if ins.base == "BRA" and ins.target() is not None:
                leaders.add(ins.target())
    blocks, cur = [], []
    for ins in insns:
        if ins.addr in leaders and cur:
            blocks.append(cur)
            cur = []
        cur.append(ins)
    if cur:
        blocks.append(cur)
    return blocks


def _counts(block):
    c = dict(insns=len(block), mufu=0, fp32=0, ldg=0, stg=0, ldg_bytes=0, stg_bytes=0)
    for ins in block:
        if ins.base == "MUFU":
            c["mufu"] += 1
        elif ins.base in _FP32:
            c["fp32"] += 1
        elif ins.base == "LDG":
            c["ldg"] += 1
            c["ldg_bytes"] += ins.width_bits() // 8
        elif ins.base == "STG":
            c["stg"] += 1
            c["stg_bytes"] += ins.width_bits() // 8
    return c


def _cold(block):
    """Blocks a steady-state iteration does not run: a call (an IEEE division's slow path), or
    stores with no arithmetic and no loads around them (the checkpoint stores)."""
    ops = {i.base for i in block}
    if "CALL" in ops:
        return True
    return "STG" in ops and "LDG" not in ops and not ops & (_FP32 | {"MUFU"}) and \
        not any(i.base == "BRA" and not i.pred and i.target() is not None and
                i.target() < block[0].addr for i in block)


def hot_loop(insns):
    """(head, tail) addresses of the backward branch whose range holds the most LDG."""
    best = None
    for ins in insns:
        t = ins.target() if ins.base == "BRA" else None
        if t is not None and t <= ins.addr:
            n = sum(1 for i in insns if t <= i.addr <= ins.addr and i.base == "LDG")
            if best is None or n > best[0]:
                best = (n, t, ins.addr)
    return None if best is None else best[1:]


def loop_paths(insns):
    """Counts along the fast and the slow path through one iteration of the hot loop."""
    loop = hot_loop(insns)
    if loop is None:
        return None
    head, tail = loop
    blocks = [b for b in _blocks(insns) if head <= b[0].addr <= tail]
    index = {b[0].addr: k for k, b in enumerate(blocks)}
    # A jump table (BRX: the surrogate switch) has no targets in the listing. Its cases are the
    # blocks after it, up to the next BRX, that nothing else reaches: no branch targets them
    # and the block before them ends in an unconditional transfer.
    targets = {i.target() for i in insns if i.base == "BRA" and i.target() is not None}

    def orphan(k):
        prev = blocks[k - 1][-1]
        return (blocks[k][0].addr not in targets and not prev.pred
                and prev.base in ("BRA", "BRX", "EXIT", "RET"))

    succ = []
    for k, b in enumerate(blocks):
        last, nxt = b[-1], []
        if last.base == "BRX":
            for j in range(k + 1, len(blocks)):
                if blocks[j - 1][-1].base == "BRX" and j > k + 1:
                    break
                if j == k + 1 or orphan(j):
                    nxt.append(j)
        elif last.base == "BRA" and last.target() is not None:
            t = last.target()
            if t in index and index[t] > k:
                nxt.append(index[t])
            if last.pred and k + 1 < len(blocks):
                nxt.append(k + 1)
        elif (last.base not in ("EXIT", "RET") or last.pred) and k + 1 < len(blocks):
            nxt.append(k + 1)
        succ.append(nxt)
    end = len(blocks) - 1  # the block holding the backward branch
    paths = {}
    for name, sign in (("fast", 1), ("slow", -1)):
        # Lexicographic: fewest cold blocks, most stored bytes, most loaded bytes (the optional
        # loads, such as grad_spikes, present), then fewest (fast) or most (slow) instructions. best[k] = (key, counts) of the best path from block k to the end.
        best = [None] * len(blocks)
        for k in range(end, -1, -1):
            c = _counts(blocks[k])
            own = (int(_cold(blocks[k])), -c["stg_bytes"], -c["ldg_bytes"],
                   sign * c["insns"])
            if k == end:
                options = [((0, 0, 0, 0), None, [])]
            else:
                options = [best[j] for j in succ[k] if best[j] is not None]
            if not options:
                continue
            key, tail_counts, tail_blocks = min(options, key=lambda o: o[0])
            total = dict(c) if tail_counts is None else {
                f: c[f] + tail_counts[f] for f in c}
            best[k] = (tuple(a + b for a, b in zip(own, key)), total, [k] + tail_blocks)
        paths[name] = best[0][1]
        paths[name]["cold_blocks"] = best[0][0][0]
        paths[name]["insn_list"] = [i for k in best[0][2] for i in blocks[k]]
    paths.update(load_waits(paths["fast"]["insn_list"]))
    paths["loop_bytes"] = 16 * sum(len(b) for b in blocks)
    return paths


def _registers(text):
    """Register numbers named in an operand list (R4, R4.64 -> {4}, {4, 5}; RZ is none)."""
    out = set()
    for num, wide in re.findall(r"\bR(\d+)(\.64)?\b", text):
        out.add(int(num))
        if wide:
            out.add(int(num) + 1)
    return out


def load_waits(path):
    """The waits on global loads along one iteration's instructions `path` (see the module's
    docstring): walked twice, the second walk counted, so that loads the first walk left in
    flight (issued for the next iteration) are waited for where the second one uses them."""
    def walk(pending):
        waits = []
        for idx, ins in enumerate(path):
            regs = _registers(ins.args)
            dest = set()
            if ins.base == "LDG":
                m = re.match(r"\s*(?:\S+\s+)?R(\d+)", ins.args)
                if m:
                    n = max(1, ins.width_bits() // 32)
                    dest = set(range(int(m.group(1)), int(m.group(1)) + n))
            if any(r in regs - dest or r in dest for r in pending):
                first = min(at for _, at in pending.values())
                # Bytes in flight: each load counted once (a wide load spans several registers).
                loads = {at: b for b, at in pending.values()}
                waits.append((sum(loads.values()), idx - first))
                pending = {}
            if dest:
                for r in dest:
                    pending[r] = (ins.width_bits() // 8, idx)
        return pending, waits

    carried, first_walk = walk({})
    shifted = {r: (b, at - len(path)) for r, (b, at) in carried.items()}
    _, waits = walk(shifted)
    return dict(waits=len(waits), wait_list=waits,
                first_wait_bytes=first_walk[0][0] if first_walk else 0,
                in_flight_bytes=max((b for b, _ in waits), default=0))


def occupancy(regs, threads_per_block, gpu=H200):
    """Resident threads per SM: register file, thread and block limits (registers are
    allocated per warp in units of 256)."""
    warps = threads_per_block // 32
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = gpu["regs"] // (per_warp * warps) if regs else gpu["blocks"]
    blocks = min(by_regs, gpu["threads"] // threads_per_block, gpu["blocks"])
    return blocks * threads_per_block


# The model's three free constants, fitted by `calibration()` to the H200's measurements of the
# kernels at git 3eabc74 (the grid and the fit: benchmarks/NOTES.md). latency: a global load's
# round trip under load; cpi: cycles per instruction of one thread's dependent chain; p: the
# exponent that combines the bandwidth and chain bounds.
CALIBRATED = dict(latency_us=0.3, cpi=1.5, p=1.0, fetch=6.0)


def design_bytes(kind, elt):
    """Bytes per element-step the design must move at T = 8 (no checkpoints): forward reads x and
    writes spikes; backward reads x and grad_spikes and writes grad_x."""
    return 2 * elt if kind == "fwd" else 3 * elt


def bounds(row, gpu=H200, shape=SHAPE, consts=None):
    """Time (ms) each bound needs for the whole [T, N] problem, and the model's time."""
    c = dict(CALIBRATED, **(consts or {}))
    T, N = shape
    es = T * N
    clk = gpu["sms"] * gpu["ghz"] * 1e9
    out = {
        "mufu_ms": es * row["mufu"] / (clk * gpu["mufu"]) * 1e3,
        "issue_ms": es * row["insns"] / (clk * gpu["issue"] * 32) * 1e3,
        "bandwidth_ms": es * (row["design_bytes"] + row["unrequested_bytes"])
        / (gpu["copy_gbps"] * 1e9) * 1e3,
    }
    # One thread: neurons_per_thread neurons, iterations over the loop for the whole T.
    steps_per_neuron = 8 if row["kind"] == "bwd" else 1  # per iteration
    neurons = row["steps_per_iter"] / steps_per_neuron
    iters = math.ceil(T / 8) if row["kind"] == "bwd" else T
    waves = N / neurons / (row["threads_per_sm"] * gpu["sms"])
    lat = c["latency_us"] * 1e-6 * gpu["ghz"] * 1e9  # cycles
    path = row["insns"] * row["steps_per_iter"]  # instructions of one iteration
    # A loop larger than the SM's instruction cache fetches the part that does not fit from L2
    # on every iteration.
    miss = max(0.0, 1.0 - gpu["icache_kb"] * 1024 / row["loop_bytes"]) if row["loop_bytes"] else 0
    # The neurons of a thread are independent chains: their instructions interleave, and each
    # waits cpi cycles for its own previous result (hidden work likewise).
    ilp = max(1.0, neurons)
    per_iter = sum(max(0.0, lat - hidden * c["cpi"] / ilp) for _, hidden in row["wait_list"]) \
        + path * (c["cpi"] / ilp + miss * c["fetch"])
    out["waves"] = waves
    out["chain_ms"] = math.ceil(waves) * iters * per_iter / (gpu["ghz"] * 1e9) * 1e3
    p = c["p"]
    mem = (out["bandwidth_ms"] ** p + out["chain_ms"] ** p) ** (1 / p)
    out["model_ms"] = max(out["mufu_ms"], out["issue_ms"], mem)
    limits = {k: out[k] for k in ("mufu_ms", "issue_ms", "bandwidth_ms", "chain_ms")}
    out["binding"] = max(limits, key=limits.get).replace("_ms", "")
    return out


def _cuobjdump():
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return tool if os.path.exists(tool) else "cuobjdump"


def _sass(cubin_path):
    tool = _cuobjdump()
    sass = subprocess.run([tool, "-sass", cubin_path], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([tool, "--dump-resource-usage", cubin_path], capture_output=True,
                           text=True, check=True).stdout
    regs, name = {}, None
    for line in usage.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
        m = re.search(r"REG:(\d+)", line)
        if m and name:
            regs[name] = int(m.group(1))
    return parse_sass(sass), regs


_CUDA_NAME = re.compile(r"clif_kernelILb([01])E(f|N3c108BFloat16E|N3c104HalfE)Li(\d+)ELb([01])E"
                        r"(?:Li(n?\d+)ELb([01])E)?")
_DTYPE = {"f": ("fp32", 4), "N3c108BFloat16E": ("bf16", 2), "N3c104HalfE": ("fp16", 2)}


def cuda_rows(arch=90, csrc=None, version="current"):
    """One row per CUDA kernel variant of csrc/ (default: this tree's). `version` labels the
    rows: "current"; "previous" marks this tree's previous kernels by their template arguments
    (the surrogate read at run time, loads next to their uses)."""
    from dev import cuda_aot
    cubin, _ = cuda_aot.compile_cubin(arch, csrc or cuda_aot.CSRC)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        funcs, regs = _sass(path)
    rows = []
    for name, insns in funcs.items():
        m = _CUDA_NAME.search(name)
        if not m:
            continue
        bwd, ty, lanes, clif, sg, prefetch = m.groups()
        dtype, elt = _DTYPE[ty]
        kind = "bwd" if bwd == "1" else "fwd"
        label = version
        variant = f"L={lanes}"
        if sg is not None:
            sg = -int(sg[1:]) if sg.startswith("n") else int(sg)
            variant += f",SG={sg}" if sg >= 0 else ",SG=any"
            if prefetch == "0" and version == "current":
                label = "previous"
        row = _row("cuda", kind, dtype, elt, variant, "CLIF" if clif == "1" else "LIF",
                   insns, regs.get(name), 256, label,
                   # This tree's host passes no vT/mT pointer when the call wants no state (the
                   # kernels then skip the stores); git 3eabc74's always had them written.
                   unrequested=(kind == "fwd" and version == CALIBRATION_REV))
        # The kernels the benchmark's call runs: the vector path, the rectangle surrogate.
        row["bench"] = int(lanes) > 1 and sg in (None, 0, -1) and row["neuron"] == "CLIF"
        rows.append(row)
    return rows


# The benchmark's options (clif's defaults: soft reset, rectangle, no initial state), as the
# Triton kernels' constants at T = 8 (no checkpoints).
BENCH_FWD = dict(HAS_V0=False, HAS_M0=False, HARD_RESET=False, IS_CLIF=True, SAVE_CKPT=False)
BENCH_BWD = dict(HAS_V0=False, HAS_M0=False, HAS_GS=True, HAS_GVT=False, HAS_GMT=False,
                 HARD_RESET=False, IS_CLIF=True, DETACH_RESET=False, SURROGATE=0)


def _triton_row(fn, ce, dtype, ckpt_dtype, kernel, warps, label):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        funcs, regs = _sass(path)
    (name, insns), = funcs.items()
    kind = "fwd" if "fwd" in fn.__name__ else "bwd"
    neuron = "CLIF" if ce.get("IS_CLIF") else "LIF"
    flags = [f for f in ("HARD_RESET", "DETACH_RESET") if ce.get(f)]
    if "SURROGATE" in ce:
        flags.append(f"SURROGATE={ce['SURROGATE']}")
    if not ce.get("HAS_V0"):
        flags.append("no optional inputs")
    if ce.get("K", 8) != 8:
        flags.append(f"K={ce['K']}")
    if ce.get("WHOLE") is False:
        flags.append("partial segment")
    if ckpt_dtype != "fp32":
        flags.append(f"ckpt ptr {ckpt_dtype}")
    row = _row("triton", kind, dtype, {"fp32": 4}.get(dtype, 2), ",".join(flags) or "-", neuron,
               insns, regs.get(name), warps * 32, label,
               unrequested=kind == "fwd" and ce.get("STORE_STATE", True))
    row["barriers"] = sum(i.base == "BAR" for i in insns)
    row["shared_insns"] = sum(i.base in ("STS", "LDS", "LDSM") for i in insns)
    return row


def triton_rows(arch=90):
    """One row per Triton kernel variant that `triton_aot` compiles for CI."""
    from dev import triton_aot
    rows = []
    for fn, ce, dtype, ckpt_dtype, kernel, warps in triton_aot.compiled_variants(arch,
                                                                               aligned=True):
        label = "previous" if triton_aot.is_previous(fn, ce) else "current"
        rows.append(_triton_row(fn, ce, dtype, ckpt_dtype, kernel, warps, label))
    return rows


def triton_bench_rows(module, label, arch=90, fwd_block=None, fwd_warps=None, extra_fwd=None,
                      bwd_fn=None, extra_bwd=None):
    """The fp32 and bf16 forward and backward of a Triton kernel module (this tree's, or an older
    revision's) as the benchmark runs them, compiled for sm_<arch>."""
    from triton.backends.compiler import GPUTarget
    import triton
    from dev import triton_aot
    target = GPUTarget("cuda", arch, 32)
    rows = []
    for dtype in ("fp32", "bf16"):
        ce = dict(BENCH_FWD, **(extra_fwd or {}), K=8,
                  BLOCK=(fwd_block(dtype) if fwd_block else module.FWD_BLOCK))
        warps = fwd_warps or module.FWD_WARPS
        fn = module.clif_fwd_kernel
        k = triton.compile(triton_aot._source(fn, triton_aot._signature(fn, ce, dtype), ce, True),
                           target=target, options={"num_warps": warps})
        rows.append(dict(_triton_row(fn, ce, dtype, "fp32", k, warps, label), bench=True))
        fn = bwd_fn or module.clif_bwd_kernel
        # T = 8: one whole segment of the checkpoint interval (8) in every revision.
        ce = dict(BENCH_BWD, **(extra_bwd or {}), K=8, BLOCK=module.BWD_BLOCK)
        # T <= 8: the launcher passes x for the checkpoint pointer.
        k = triton.compile(triton_aot._source(fn, triton_aot._signature(fn, ce, dtype, dtype),
                                              ce, True),
                           target=target, options={"num_warps": module.BWD_WARPS})
        rows.append(dict(_triton_row(fn, ce, dtype, dtype, k, module.BWD_WARPS, label),
                         bench=True))
    return rows


def _row(impl, kind, dtype, elt, variant, neuron, insns, regs, threads, version,
         unrequested=False):
    paths = loop_paths(insns)
    row = dict(impl=impl, version=version, kind=kind, dtype=dtype, neuron=neuron,
               variant=variant, regs=regs, threads_per_sm=occupancy(regs or 0, threads),
               design_bytes=design_bytes(kind, elt),
               # vT and mT, written once per neuron (T = 8 steps) when nobody asked for them.
               unrequested_bytes=2 * elt / SHAPE[0] if unrequested else 0.0)
    row["occupancy"] = row["threads_per_sm"] / H200["threads"]
    fast, slow = paths["fast"], paths["slow"]
    steps = fast["stg_bytes"] / elt  # element-steps per thread and iteration
    row["steps_per_iter"] = steps
    for key in ("insns", "mufu", "fp32", "ldg", "stg"):
        row[key] = fast[key] / steps
    row["mufu_slow"] = slow["mufu"] / (slow["stg_bytes"] / elt)
    row["insns_slow"] = slow["insns"] / (slow["stg_bytes"] / elt)
    row["load_width_bits"] = 8 * fast["ldg_bytes"] / max(fast["ldg"], 1)
    for key in ("waits", "wait_list", "first_wait_bytes", "in_flight_bytes", "loop_bytes"):
        row[key] = paths[key]
    row.update(bounds(row))
    return row


COLUMNS = ("impl", "version", "kind", "dtype", "neuron", "variant", "regs", "occupancy",
           "steps_per_iter", "insns", "insns_slow", "mufu", "mufu_slow", "fp32", "ldg", "stg",
           "load_width_bits", "waits", "first_wait_bytes", "in_flight_bytes", "loop_bytes",
           "unrequested_bytes", "waves", "mufu_ms", "issue_ms", "bandwidth_ms", "chain_ms",
           "model_ms", "binding")

# What an H200 measured at git 3eabc74 (2026-11-28; benchmarks/NOTES.md): T = 8, N = 2^23, ms.
MEASURED_3EABC74 = {
    ("triton", "fwd", "fp32"): 0.155, ("triton", "fwd", "bf16"): 0.095,
    ("triton", "bwd", "fp32"): 0.486, ("triton", "bwd", "bf16"): 0.456,
    ("cuda", "fwd+bwd", "fp32"): 0.716, ("cuda", "fwd+bwd", "bf16"): 0.675,
}
CALIBRATION_REV = "3eabc74"
CALIBRATION_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration_sm90.csv")
# What bounds() needs of a row, as the calibration file keeps it.
_KEEP = ("impl", "version", "bench", "kind", "dtype", "neuron", "variant", "regs",
         "threads_per_sm",
         "steps_per_iter", "insns", "mufu", "design_bytes", "unrequested_bytes", "loop_bytes",
         "first_wait_bytes", "wait_list")


def bench_pairs(rows):
    """{(impl, dtype): (forward row, backward row)}: the kernels the benchmark's CLIF call runs
    (clif's defaults: rectangle surrogate, soft reset; the vector path)."""
    out = {}
    for impl in ("cuda", "triton"):
        for dtype in ("fp32", "bf16"):
            pick = {}
            for r in rows:
                if (r["impl"], r["dtype"]) == (impl, dtype) and r.get("bench") in (True, "True"):
                    pick.setdefault(r["kind"], r)
            if len(pick) == 2:
                out[(impl, dtype)] = (pick["fwd"], pick["bwd"])
    return out


def fwd_bwd(pair, consts=None):
    """Model time (ms) of a forward plus a backward, and its share of the copy bandwidth."""
    fwd, bwd = pair
    t = bounds(fwd, consts=consts)["model_ms"] + bounds(bwd, consts=consts)["model_ms"]
    floor = SHAPE[0] * SHAPE[1] * (fwd["design_bytes"] + bwd["design_bytes"]) \
        / (H200["copy_gbps"] * 1e9) * 1e3
    return t, floor / t


def calibration_errors(rows, consts=None):
    """{measurement: (model ms, measured ms, relative error)} for the 3eabc74 kernels' rows."""
    out = {}
    pairs = bench_pairs(rows)
    for (impl, kind, dtype), measured in MEASURED_3EABC74.items():
        pair = pairs[(impl, dtype)]
        if kind == "fwd+bwd":
            model = fwd_bwd(pair, consts)[0]
        else:
            model = bounds(pair[0] if kind == "fwd" else pair[1], consts=consts)["model_ms"]
        out[(impl, kind, dtype)] = (model, measured, model / measured - 1)
    return out


def fit(rows):
    """The constants, on a grid, that minimise the largest relative error over the
    measurements; returns (constants, largest error)."""
    best = None
    for lat in [0.3 + 0.05 * i for i in range(15)]:
        for cpi in [1 + 0.25 * i for i in range(13)]:
            for p in (1.0, 1.5, 2.0, 3.0, 4.0, 8.0):
                for fetch in range(0, 21, 2):
                    consts = dict(latency_us=round(lat, 2), cpi=cpi, p=p, fetch=float(fetch))
                    worst = max(abs(e) for *_, e in calibration_errors(rows, consts).values())
                    if best is None or worst < best[1] - 1e-12:
                        best = (consts, worst)
    return best


def calibration_rows_from_git(arch=90, rev=CALIBRATION_REV):
    """Compile the CUDA and Triton kernels of git revision `rev` (from this clone's history)
    and return their rows."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "csrc", "clif_kernels/options.py",
                                  "clif_kernels/triton_kernels.py"], cwd=root,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        rows = [r for r in cuda_rows(arch, os.path.join(tmp, "csrc"), version=rev)]
        pkg = os.path.join(tmp, "clif_kernels")
        open(os.path.join(pkg, "__init__.py"), "w").close()
        name = f"clif_kernels_{rev}"
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        tk = importlib.import_module(f"{name}.triton_kernels")
        rows += triton_bench_rows(tk, rev, arch)
    return rows


def current_bench_rows(arch=90, cuda=True):
    """This tree's kernels as the benchmark runs them: the CUDA rows (current and previous;
    with `cuda`) and the Triton forward and backward of both variants."""
    from clif_kernels import triton_kernels as tk
    rows = cuda_rows(arch) if cuda else []
    rows += triton_bench_rows(
        tk, "current", arch, fwd_block=lambda d: tk.FWD_BLOCK if d == "fp32"
        else tk.FWD_BLOCK_16BIT, extra_fwd=dict(STORE_STATE=False, PREFETCH=True),
        extra_bwd=dict(WHOLE=tk.bwd_segments(SHAPE[0])[1]))
    rows += triton_bench_rows(tk, "previous", arch, extra_fwd=dict(STORE_STATE=False,
                                                                  PREFETCH=False),
                              bwd_fn=tk.clif_bwd_tiled_kernel)
    return rows


def predictions(rows, consts=None):
    """{(impl, version, dtype): (fwd ms, bwd ms, fwd+bwd ms, share of copy)} at T = 8,
    N = 2^23, for the benchmark's kernels among `rows`."""
    out = {}
    for version in sorted({r["version"] for r in rows}):
        for (impl, dtype), pair in bench_pairs([r for r in rows
                                                if r["version"] == version]).items():
            t, share = fwd_bwd(pair, consts)
            out[(impl, version, dtype)] = (bounds(pair[0], consts=consts)["model_ms"],
                                           bounds(pair[1], consts=consts)["model_ms"], t, share)
    return out


def save_rows(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_KEEP, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, wait_list=";".join(f"{b}:{h}" for b, h in r["wait_list"])))


def load_rows(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            for k in ("regs", "threads_per_sm", "first_wait_bytes", "loop_bytes"):
                r[k] = int(float(r[k]))
            for k in ("steps_per_iter", "insns", "mufu", "design_bytes", "unrequested_bytes"):
                r[k] = float(r[k])
            r["wait_list"] = [tuple(int(v) for v in w.split(":"))
                              for w in r["wait_list"].split(";") if w]
            r["bench"] = r["bench"] == "True"
            rows.append(r)
    return rows


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dev.cost_model")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--only", choices=("cuda", "triton"), default=None)
    ap.add_argument("--calibration-rows", metavar="CSV", default=None,
                    help=f"compile the kernels of git {CALIBRATION_REV} and write their rows")
    ap.add_argument("--fit", action="store_true",
                    help="fit the constants to the calibration rows (dev/calibration_sm90.csv)")
    args = ap.parse_args(argv)
    if args.calibration_rows:
        save_rows(calibration_rows_from_git(args.arch), args.calibration_rows)
        print(f"wrote {args.calibration_rows}")
        return 0
    if args.fit:
        rows = load_rows(CALIBRATION_CSV)
        consts, worst = fit(rows)
        print(f"fit: {consts}, largest error {worst:.1%}")
        for k, (m, meas, e) in calibration_errors(rows, consts).items():
            print(f"  {' '.join(k):22} model {m:.3f} ms, measured {meas:.3f} ms ({e:+.0%})")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1" and args.only != "cuda":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter does not compile")
    rows = []
    if args.only in (None, "cuda"):
        rows += cuda_rows(args.arch)
    if args.only in (None, "triton"):
        rows += triton_rows(args.arch)
        rows += [r for r in current_bench_rows(args.arch, cuda=False)]
    print(f"sm_{args.arch}, per element-step (fast path; *_slow: the dearer side of every "
          f"run-time branch); times for T={SHAPE[0]}, N=2^{int(math.log2(SHAPE[1]))} on an H200")
    print(" | ".join(COLUMNS))
    for r in rows:
        print(" | ".join(_fmt(r[c]) for c in COLUMNS))
    print(f"calibration (git {CALIBRATION_REV}, {CALIBRATION_CSV}): {CALIBRATED}")
    for k, (m, meas, e) in calibration_errors(load_rows(CALIBRATION_CSV)).items():
        print(f"  {' '.join(k):22} model {m:.3f} ms, measured {meas:.3f} ms ({e:+.0%})")
    print("forward + backward, T = 8, N = 2^23 (model ms, share of copy bandwidth):")
    for (impl, version, dtype), (f, b, t, share) in predictions(rows).items():
        print(f"  {impl:6} {version:8} {dtype}: fwd {f:.3f} + bwd {b:.3f} = {t:.3f} ms, "
              f"{share:.0%}")
    if args.csv:
        fields = COLUMNS + ("bench", "barriers", "shared_insns", "threads_per_sm",
                            "design_bytes", "wait_list")
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(dict(r, wait_list=";".join(f"{b}:{h}" for b, h in r["wait_list"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

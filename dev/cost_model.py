"""A static cost model of the GPU kernels, read from their SASS: no GPU needed.

For every compiled variant (the CUDA kernels through `cuda_aot`, the Triton kernels through
`triton_aot`) it finds the hot loop (the backward branch whose range holds the most global
loads), walks the loop body's blocks as a DAG and counts, per element-step (one neuron, one
time step), what one iteration issues:

- MUFU (special-function unit: ex2, rcp, tanh, ...), FP32-pipe arithmetic (FFMA, FADD, FMUL,
  FMNMX, ...) and all instructions (issue slots);
- global loads and stores with their widths, and the bytes of loads a thread has in flight
  before it first needs one of them (Little's law: the memory system needs about bandwidth x
  latency bytes in flight to stay busy).

Two paths through the loop: `fast` takes the cheaper side of every run-time branch (soft reset,
the rectangle surrogate, ...), `slow` the dearer one. Both skip the cold blocks, which a path
takes once per several steps at most or never in practice: the checkpoint stores (every 8 steps)
and the slow path of an IEEE division (a CALL). Both keep every step of a segment (the path
with the most stored bytes), so a backward path never skips the `k < len` steps.

Element-steps per iteration = bytes the path stores / storage size: every element-step stores
exactly one value (spikes forward, grad_x backward).

From the counts and the occupancy (registers, threads per block), the time each resource bounds
on an H200 for T = 8, N = 2^23, next to the design's bytes at the copy bandwidth.

    python -m dev.cost_model            # table for sm_90
    python -m dev.cost_model --csv out.csv
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
        # Lexicographic: fewest cold blocks, most stored bytes, then fewest (fast) or most (slow)
        # instructions. best[k] = (key, counts) of the best path from block k to the end.
        best = [None] * len(blocks)
        for k in range(end, -1, -1):
            c = _counts(blocks[k])
            own = (int(_cold(blocks[k])), -c["stg_bytes"], sign * c["insns"])
            if k == end:
                options = [((0, 0, 0), None)]
            else:
                options = [(best[j][0], best[j][1]) for j in succ[k] if best[j] is not None]
            if not options:
                continue
            key, tail_counts = min(options, key=lambda o: o[0])
            total = dict(c) if tail_counts is None else {
                f: c[f] + tail_counts[f] for f in c}
            best[k] = (tuple(a + b for a, b in zip(own, key)), total)
        paths[name] = best[0][1]
        paths[name]["cold_blocks"] = best[0][0][0]
    paths["in_flight_bytes"] = _loads_ahead(insns, head, tail)
    return paths


def _loads_ahead(insns, head, tail):
    """Largest number of load bytes one thread has issued before it uses any of them, within
    the loop: the loads the compiler hoisted ahead of their first use."""
    body = [i for i in insns if head <= i.addr <= tail]
    best, pending = 0, {}
    for ins in body:
        regs = set(re.findall(r"\bR(\d+)\b", ins.args))
        if ins.base == "LDG":
            dest = re.match(r"\s*R(\d+)", ins.args)
            srcs = regs - ({dest.group(1)} if dest else set())
            used = [r for r in pending if r in srcs]
        else:
            used = [r for r in pending if r in regs]
        if used:
            best = max(best, sum(pending.values()))
            pending.clear()
        if ins.base == "LDG":
            dest = re.match(r"\s*R(\d+)", ins.args)
            if dest:
                pending[dest.group(1)] = ins.width_bits() // 8
    return max(best, sum(pending.values()))


def occupancy(regs, threads_per_block, gpu=H200):
    """Resident threads per SM: register file, thread and block limits (registers are
    allocated per warp in units of 256)."""
    warps = threads_per_block // 32
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = gpu["regs"] // (per_warp * warps) if regs else gpu["blocks"]
    blocks = min(by_regs, gpu["threads"] // threads_per_block, gpu["blocks"])
    return blocks * threads_per_block


def bounds(row, gpu=H200, shape=SHAPE):
    """Time (ms) each resource needs for the whole [T, N] problem, from per element-step
    counts, and the design's bytes at the copy bandwidth."""
    T, N = shape
    es = T * N
    clk = gpu["sms"] * gpu["ghz"] * 1e9
    out = {
        "mufu_ms": es * row["mufu"] / (clk * gpu["mufu"]) * 1e3,
        "fp32_ms": es * row["fp32"] / (clk * gpu["fp32"]) * 1e3,
        "issue_ms": es * row["insns"] / (clk * gpu["issue"] * 32) * 1e3,
        "memory_ms": es * row["design_bytes"] / (gpu["copy_gbps"] * 1e9) * 1e3,
    }
    # Little's law: the bandwidth the loads a thread keeps in flight can sustain.
    inflight = row["threads_per_sm"] * row["in_flight_bytes"] * gpu["sms"]
    out["latency_ms"] = es * row["design_bytes"] / (inflight / (gpu["latency_us"] * 1e-6)) * 1e3 \
        if inflight else float("inf")
    return out


def design_bytes(kind, elt):
    """Bytes per element-step the design must move at T = 8 (no checkpoints): forward reads x and
    writes spikes; backward reads x and grad_spikes and writes grad_x."""
    return 2 * elt if kind == "fwd" else 3 * elt


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


_CUDA_NAME = re.compile(r"clif_kernelILb([01])E(f|N3c108BFloat16E|N3c104HalfE)Li(\d+)ELb([01])E")
_DTYPE = {"f": ("fp32", 4), "N3c108BFloat16E": ("bf16", 2), "N3c104HalfE": ("fp16", 2)}


def cuda_rows(arch=90):
    """One row per CUDA kernel variant."""
    from dev import cuda_aot
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        cmd = [c for c in cuda_aot.nvcc_command(arch, cubin) if c not in ("-Xptxas", "-v")]
        cmd[cmd.index("-c")] = "-cubin"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed:\n{proc.stderr[-3000:]}")
        funcs, regs = _sass(cubin)
    rows = []
    for name, insns in funcs.items():
        m = _CUDA_NAME.search(name)
        if not m:
            continue
        bwd, ty, lanes, clif = m.groups()
        dtype, elt = _DTYPE[ty]
        kind = "bwd" if bwd == "1" else "fwd"
        rows.append(_row("cuda", kind, dtype, elt, f"L={lanes}", "CLIF" if clif == "1" else "LIF",
                         insns, regs.get(name), 256))
    return rows


def triton_rows(arch=90):
    """One row per Triton kernel variant that `triton_aot` compiles for CI."""
    from dev import triton_aot
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (fn, ce, dtype, ckpt_dtype, kernel, warps) in enumerate(
                triton_aot.compiled_variants(arch, aligned=True)):
            path = os.path.join(tmp, f"{k}.cubin")
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
            if ckpt_dtype != "fp32":
                flags.append(f"ckpt ptr {ckpt_dtype}")
            rows.append(_row("triton", kind, dtype, {"fp32": 4}.get(dtype, 2),
                             ",".join(flags) or "-", neuron, insns, regs.get(name), warps * 32))
    return rows


def _row(impl, kind, dtype, elt, variant, neuron, insns, regs, threads):
    paths = loop_paths(insns)
    row = dict(impl=impl, kind=kind, dtype=dtype, neuron=neuron, variant=variant, regs=regs,
               threads_per_sm=occupancy(regs or 0, threads),
               design_bytes=design_bytes(kind, elt))
    row["occupancy"] = row["threads_per_sm"] / H200["threads"]
    fast, slow = paths["fast"], paths["slow"]
    steps = fast["stg_bytes"] / elt  # element-steps per thread and iteration
    row["steps_per_iter"] = steps
    for key in ("insns", "mufu", "fp32", "ldg", "stg"):
        row[key] = fast[key] / steps
    row["mufu_slow"] = slow["mufu"] / (slow["stg_bytes"] / elt)
    row["insns_slow"] = slow["insns"] / (slow["stg_bytes"] / elt)
    row["load_width_bits"] = 8 * fast["ldg_bytes"] / max(fast["ldg"], 1)
    row["in_flight_bytes"] = paths["in_flight_bytes"]
    row.update(bounds(row))
    limits = {k: row[k] for k in ("mufu_ms", "fp32_ms", "issue_ms", "memory_ms", "latency_ms")}
    row["binding"] = max(limits, key=limits.get).replace("_ms", "")
    row["model_ms"] = max(limits.values())
    return row


COLUMNS = ("impl", "kind", "dtype", "neuron", "variant", "regs", "occupancy", "steps_per_iter",
           "insns", "insns_slow", "mufu", "mufu_slow", "fp32", "ldg", "stg", "load_width_bits",
           "in_flight_bytes", "mufu_ms", "fp32_ms", "issue_ms", "memory_ms", "latency_ms",
           "model_ms", "binding")


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m dev.cost_model")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--only", choices=("cuda", "triton"), default=None)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" and args.only != "cuda":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter does not compile")
    rows = []
    if args.only in (None, "cuda"):
        rows += cuda_rows(args.arch)
    if args.only in (None, "triton"):
        rows += triton_rows(args.arch)
    print(f"sm_{args.arch}, per element-step (fast path; *_slow: the dearer side of every "
          f"run-time branch); times for T={SHAPE[0]}, N=2^{int(math.log2(SHAPE[1]))} on an H200")
    print(" | ".join(COLUMNS))
    for r in rows:
        print(" | ".join(_fmt(r[c]) for c in COLUMNS))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

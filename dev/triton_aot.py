"""Compile the Triton kernels for real GPU targets without a GPU.

The interpreter accepts programs that the real compiler rejects (wrong layouts, bad casts,
unsupported ops), so CI compiles every branch of both kernels for sm_90 and sm_80 here.
Run as `python -m dev.triton_aot [--aligned] 90 80`; it must not run under TRITON_INTERPRET=1.
`--aligned` compiles as the JIT does for 16-byte aligned tensors with N % 16 == 0 (Triton >= 3.3),
the variants the cost model reads; without it, as for any other tensors.
"""
from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from clif_kernels import triton_kernels as tk
from clif_kernels.options import SURROGATES

_FWD_FLAGS = ("HAS_V0", "HAS_M0", "HARD_RESET", "IS_CLIF", "SAVE_CKPT", "STORE_STATE",
              "PREFETCH")
_BWD_FLAGS = ("HAS_V0", "HAS_M0", "HAS_GS", "HAS_GVT", "HAS_GMT", "HARD_RESET", "IS_CLIF",
              "DETACH_RESET")


def _signature(fn, constexprs, dtype, ckpt_dtype="fp32"):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("scale_ptr", "shift_ptr"):  # the fold's [C], fp32 for every storage
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = f"*{ckpt_dtype}" if name == "ckpt_ptr" else f"*{dtype}"
        elif name in ("T", "N", "inner", "C"):
            sig[name] = "i64"
        else:
            sig[name] = "fp32"
    return sig


def variants():
    """(kernel, constexprs, storage dtype, checkpoint pointer dtype) that together take every
    branch: each combination of the flags that change the arithmetic, with the presence flags
    (optional inputs and gradients) all on or all off in turn. The checkpoint pointer is fp32
    when there are checkpoints (T > K); otherwise the launcher passes `x`, so the backward is
    also compiled with a checkpoint pointer of the storage dtype. The backward in both kinds of
    loop (WHOLE: the segments tile T; or a last, partial segment), and with shorter whole
    segments (T < 8). Last, the previous kernels
    (CLIF_KERNELS_GPU_KERNELS=previous) in fp32 and bf16."""
    out = []
    for i, (hard, clif) in enumerate(itertools.product([False, True], repeat=2)):
        for present in (False, True):
            ce = dict(HAS_V0=present, HAS_M0=present, SAVE_CKPT=present, STORE_STATE=present,
                      HARD_RESET=hard, IS_CLIF=clif, PREFETCH=True, K=tk.CKPT_EVERY,
                      BLOCK=tk.FWD_BLOCK)
            out.append((tk.clif_fwd_kernel, ce, "fp32", "fp32"))
    # The surrogate's branch does not interact with the flags: each flag combination once (the
    # surrogates in turn), then each surrogate in the heaviest combination (CLIF, hard reset,
    # reset gradient kept, every input present), where a spill would show first.
    n_sg = len(SURROGATES)
    combos = [(hard, clif, detach, i % n_sg, i % 2 == 0) for i, (hard, clif, detach) in
              enumerate(itertools.product([False, True], [False, True], [False, True]))]
    combos += [(True, True, False, sg, True) for sg in range(n_sg)]
    for hard, clif, detach, surrogate, present in combos:
        ce = dict(HAS_V0=present, HAS_M0=present, HAS_GS=present, HAS_GVT=present,
                  HAS_GMT=present, HARD_RESET=hard, IS_CLIF=clif, DETACH_RESET=detach,
                  SURROGATE=surrogate, K=tk.CKPT_EVERY, BLOCK=tk.BWD_BLOCK)
        for whole in (True, False):
            out.append((tk.clif_bwd_kernel, dict(ce, WHOLE=whole), "fp32", "fp32"))
    # Shorter whole segments (T < 8: one segment of T steps, no checkpoints, so the launcher
    # passes x for the checkpoint pointer), in the heaviest combination.
    for k, dtype in ((1, "fp32"), (4, "fp32"), (7, "fp32"), (4, "bf16")):
        out.append((tk.clif_bwd_kernel, dict(zip(_BWD_FLAGS, [True] * 8), SURROGATE=1, K=k,
                                             WHOLE=True, BLOCK=tk.BWD_BLOCK), dtype, dtype))
    for dtype in ("bf16", "fp16"):
        out.append((tk.clif_fwd_kernel, dict(zip(_FWD_FLAGS, [True] * 7), K=tk.CKPT_EVERY,
                                             BLOCK=tk.FWD_BLOCK_16BIT), dtype, "fp32"))
        for ckpt_dtype, whole in (("fp32", True), ("fp32", False), (dtype, True)):
            out.append((tk.clif_bwd_kernel, dict(zip(_BWD_FLAGS, [True] * 8), SURROGATE=1,
                                                 K=tk.CKPT_EVERY, WHOLE=whole,
                                                 BLOCK=tk.BWD_BLOCK), dtype, ckpt_dtype))
    for dtype in ("fp32", "bf16"):
        out.append((tk.clif_fwd_kernel, dict(zip(_FWD_FLAGS, [False, False, False, True, False,
                                                              True, False]),
                                             K=tk.CKPT_EVERY, BLOCK=tk.FWD_BLOCK), dtype,
                    "fp32"))
        out.append((tk.clif_bwd_tiled_kernel, dict(zip(_BWD_FLAGS, [False, False, True, False,
                                                                     False, False, True, False]),
                                                   SURROGATE=0, K=tk.CKPT_EVERY,
                                                   BLOCK=tk.BWD_BLOCK), dtype, "fp32"))
    return out


def fold_variants():
    """The folded calls' kernels (scale and shift, a residual, both), in the heaviest
    combination of the other flags, fp32 and bf16: compiled for CI's check, outside the cost
    model's rows (which are the default path's)."""
    out = []
    for dtype in ("fp32", "bf16"):
        for has_scale, has_res in ((True, False), (False, True), (True, True)):
            fold = dict(FOLD=True, HAS_SCALE=has_scale, HAS_RES=has_res)
            block = tk.FWD_BLOCK  # the launcher's for the fold, every dtype
            out.append((tk.clif_fold_fwd_kernel, dict(zip(_FWD_FLAGS, [True] * 7),
                                                      K=tk.CKPT_EVERY, BLOCK=block, **fold),
                        dtype, "fp32"))
            for whole in (True, False):
                out.append((tk.clif_fold_bwd_kernel, dict(zip(_BWD_FLAGS, [True] * 8),
                                                          SURROGATE=1, K=tk.CKPT_EVERY,
                                                          WHOLE=whole, BLOCK=tk.FOLD_BWD_BLOCK,
                                                          **fold), dtype, "fp32"))
        # T < 8 with the fold (scale, shift and residual): one segment of T steps.
        out.append((tk.clif_fold_bwd_kernel, dict(zip(_BWD_FLAGS, [True] * 8), SURROGATE=1,
                                                  K=4, WHOLE=True, BLOCK=tk.FOLD_BWD_BLOCK,
                                                  FOLD=True, HAS_SCALE=True, HAS_RES=True),
                    dtype, dtype))
    return out


def is_previous(fn, constexprs):
    """Whether a variant is one of the previous kernels (kept for the comparison on a GPU)."""
    return fn is tk.clif_bwd_tiled_kernel or constexprs.get("PREFETCH") is False


def _resource_usage(cubin: bytes):
    """(registers, spill stores) that cuobjdump reports for a cubin, or None if it is missing."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                              text=True).stdout
    regs = spill = None
    for token in text.replace(",", " ").split():
        if token.startswith("REG:"):
            regs = int(token[4:])
        elif token.startswith("STACK:"):
            spill = int(token[6:])
    return regs, spill


def can_align() -> bool:
    """Whether this Triton compiles aligned variants (>= 3.3, which renamed ASTSource's
    `constants` to `constexprs` and takes the divisibility attributes)."""
    return "constexprs" in inspect.signature(ASTSource).parameters


def _source(fn, signature, constexprs, aligned=False):
    if can_align():
        attrs = None
        if aligned:
            # What the JIT specialises on for 16-byte aligned tensors and N % 16 == 0 (the
            # benchmark shapes): vector loads and stores become possible.
            attrs = {(k,): [["tt.divisibility", 16]] for k, name in enumerate(fn.arg_names)
                     if name.endswith("_ptr") or name == "N"}
        return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    if aligned:
        raise RuntimeError("aligned compiles need Triton >= 3.3")
    return ASTSource(fn=fn, signature=signature, constants=constexprs)


def compiled_variants(arch: int, aligned: bool = False, fold: bool = False):
    """Yields (kernel function, constexprs, dtype, ckpt dtype, compiled kernel, num_warps) for
    every variant, compiled for sm_<arch>; `aligned`: as the JIT compiles for aligned tensors;
    `fold`: the fold's variants too."""
    target = GPUTarget("cuda", arch, 32)
    for fn, ce, dtype, ckpt_dtype in variants() + (fold_variants() if fold else []):
        fwd = fn in (tk.clif_fwd_kernel, tk.clif_fold_fwd_kernel)
        warps = tk.FWD_WARPS if fwd else tk.BWD_WARPS
        src = _source(fn, _signature(fn, ce, dtype, ckpt_dtype), ce, aligned)
        yield fn, ce, dtype, ckpt_dtype, triton.compile(src, target=target,
                                                          options={"num_warps": warps}), warps


def compile_all(arch: int, aligned: bool = False):
    """Compile every variant for sm_<arch>; returns rows (kernel, dtype, flags, regs, stack)."""
    rows = []
    for fn, ce, dtype, ckpt_dtype, kernel, _ in compiled_variants(arch, aligned, fold=True):
        usage = _resource_usage(kernel.asm["cubin"]) or (None, None)
        flags = ",".join(k for k, v in ce.items() if v is True)
        if "SURROGATE" in ce:
            flags += f",SURROGATE={ce['SURROGATE']}"
        if ckpt_dtype != "fp32":
            dtype += f" (ckpt pointer {ckpt_dtype})"
        rows.append((fn.__name__, dtype, flags.strip(",") or "-", *usage))
    return rows


def main(argv):
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter does not compile")
    aligned = "--aligned" in argv
    archs = [a for a in argv if a != "--aligned"]
    bad = [a for a in archs if not a.isdigit()]
    if bad:
        sys.exit(f"usage: python -m dev.triton_aot [--aligned] [ARCH ...]; not an arch: {bad}")
    for arch in [int(a) for a in archs] or [90, 80]:
        rows = compile_all(arch, aligned)
        worst = max((r[3] or 0) for r in rows)
        stack = max((r[4] or 0) for r in rows)
        print(f"sm_{arch}{' (aligned)' if aligned else ''}: compiled {len(rows)} kernels; at "
              f"most {worst} registers per thread, at most {stack} bytes of stack")


if __name__ == "__main__":
    main(sys.argv[1:])

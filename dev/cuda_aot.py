"""Compile csrc/clif_cuda_kernels.cu for one GPU architecture with `ptxas -v`, without a GPU, and report
registers and spills per kernel. CI runs it for sm_90 and sm_80 and fails on any spill.

    python -m dev.cuda_aot 90 80
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from clif_kernels import build_config

from clif_kernels.extension import CSRC


def nvcc_command(arch: int, out: str, csrc: str = CSRC):
    """nvcc's command line for csrc/clif_cuda_kernels.cu (or that file in another `csrc` folder,
    such as an older revision's) for sm_<arch>, with `ptxas -v`."""
    cuda_home = build_config.find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("nvcc not found")
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension
    incs = [csrc] + cpp_extension.include_paths()
    # The language standard torch's headers demand (C++20 in recent releases, C++17 before).
    with open(os.path.join(incs[1], "ATen", "ATen.h")) as f:
        std = "c++20" if "C++20" in f.read() else "c++17"
    return ([os.path.join(cuda_home, "bin", "nvcc"), "-c", os.path.join(csrc, "clif_cuda_kernels.cu"),
             "-o", out, f"-std={std}", *build_config.NVCC_FLAGS,
             "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
             "--compiler-options", "-fPIC",
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v"]
            + [f"-I{d}" for d in incs])


_CUBINS = {}


def compile_cubins(archs, csrc: str = CSRC):
    """Compile csrc/clif_cuda_kernels.cu for every arch of `archs` not compiled yet in this
    process, the nvcc runs side by side (each is one thread for most of its time)."""
    todo = [a for a in dict.fromkeys(archs) if (a, os.path.abspath(csrc)) not in _CUBINS]
    if not todo:
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for arch in todo:
            out = os.path.join(tmp, f"clif_cuda_{arch}.cubin")
            cmd = nvcc_command(arch, out, csrc)
            cmd[cmd.index("-c")] = "-cubin"
            # stderr (ptxas -v) to a file: a pipe nobody reads while the others run can fill up.
            err = open(os.path.join(tmp, f"nvcc_{arch}.log"), "w+")
            runs.append((arch, out, err, subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                          stderr=err, text=True)))
        failed = []
        for arch, out, err, proc in runs:
            proc.wait()
            err.seek(0)
            report = err.read()
            err.close()
            if proc.returncode != 0:
                failed.append(f"nvcc failed for sm_{arch}:\n{report[-4000:]}")
                continue
            with open(out, "rb") as f:
                _CUBINS[(arch, os.path.abspath(csrc))] = (f.read(), report)
        if failed:
            raise RuntimeError("\n".join(failed))


def compile_cubin(arch: int, csrc: str = CSRC):
    """(cubin bytes, ptxas -v report) of csrc/clif_cuda_kernels.cu for sm_<arch>, compiled once
    per process and folder (the spill check and the cost model read the same compile)."""
    compile_cubins([arch], csrc)
    return _CUBINS[(arch, os.path.abspath(csrc))]


def compile_report(arch: int, csrc: str = CSRC):
    """Compile for sm_<arch>; returns [(kernel, registers, spill_store_bytes, spill_load_bytes)]."""
    _, report = compile_cubin(arch, csrc)
    rows, name, spills = [], None, (0, 0)
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spills = (int(m.group(1)), int(m.group(2)))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            rows.append((_demangle(name), int(m.group(1)), *spills))
            name = None
    return rows


def _demangle(name):
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        return name


def main(argv):
    status = 0
    archs = [int(a) for a in argv] or [90, 80]
    compile_cubins(archs)
    for arch in archs:
        rows = compile_report(arch)
        for kernel, regs, st, ld in rows:
            short = kernel.replace("(anonymous namespace)::", "").replace("void ", "")
            short = short.split("(")[0].replace("clif::", "")
            print(f"sm_{arch} {short:60} {regs:4d} registers, spill {st}/{ld} bytes")
        spilled = [r for r in rows if r[2] or r[3]]
        print(f"sm_{arch}: {len(rows)} kernels, at most {max(r[1] for r in rows)} registers, "
              f"{len(spilled)} with spills")
        status |= bool(spilled) or not rows
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`clif-kernels check`: what was built and what loads, then every backend that can run here,
on fresh random inputs, against the float64 reference, as a table of the largest errors. Fails
(exit status 1) on a failing row, or when a compiled extension that was built does not load."""
from __future__ import annotations


import torch

from .. import extension
from ..backends import REGISTRY, unavailable_reason
from .verify import RTOL, measure, neuron_fn, random_problem, reference64, run_with_grads

# Option sets that between them take every branch of the kernels.
CASES = [
    ("clif", dict()),
    ("clif", dict(surrogate="sigmoid", v_reset=-0.2, decay_input=True)),
    ("clif", dict(surrogate="atan", detach_reset=True, tau=1.5)),
    ("clif", dict(surrogate="triangle", v_reset=0.0, v_threshold=0.8)),
    ("lif", dict()),
    ("lif", dict(surrogate="sigmoid", v_reset=0.0, detach_reset=True)),
]
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
COLUMNS = ("vT", "mT", "grad_x", "grad_v0", "grad_m0")


def _describe(params):
    return ",".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def extension_failures() -> list:
    """One sentence per compiled extension that was built but does not load: present but failing
    to import, or recorded as built by setup.py and missing."""
    broken = extension.load_failures()
    loaded, info = extension.load(), extension.build_info()
    out = [f"{name}: {path} does not load: {err}" for name, (path, err) in broken.items()]
    built = {"_C": ("cpp", bool(info)), "_C_cuda": ("cuda", bool(info.get("cuda_built")))}
    for name, (kind, was_built) in built.items():
        if was_built and not loaded[kind] and name not in broken:
            out.append(f"{name}: built by setup.py but not found"
                       + extension.load_failure(kind).replace("; importing it failed", ""))
    return out


def run_check(steps=None, neurons=None, seed=0, backends=None) -> int:
    """The check; returns the exit status. `backends`: the names to check (default: all)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    T = steps or (64 if device == "cuda" else 16)
    N = neurons or (1_000_003 if device == "cuda" else 3000)
    print(extension.report())
    ext_failures = extension_failures()
    for line in ext_failures:
        print(f"FAIL: {line}. To fix it, {extension.FIX}.")
    print(f"clif_kernels check on {device}: T={T}, N={N}; largest relative error against the "
          f"float64 reference; 'spikes' counts differing spikes away from the threshold")
    header = (f"{'backend':8} {'dtype':9} {'neuron':6} {'options':44} {'spikes':>6} "
              + " ".join(f"{c:>9}" for c in COLUMNS) + "  ok")
    print(header)
    print("-" * len(header))
    failures = skipped = 0
    for backend in (tuple(REGISTRY) if backends is None else backends):
        for dtype in DTYPES:
            why = unavailable_reason(backend, torch.device(device), dtype)
            if why is not None:
                skipped += 1
                continue
            for i, (neuron, params) in enumerate(CASES):
                is_clif = neuron == "clif"
                x, v0, m0, grads = random_problem((T, N), dtype, with_state=i % 2 == 1,
                                                  is_clif=is_clif, seed=seed + i, device=device)
                ref, bad = reference64(is_clif, x, v0, m0, grads, **params)
                res = run_with_grads(neuron_fn(is_clif), x, v0, m0, grads, backend=backend,
                                     **params)
                errs = measure(res, ref, bad)
                ok = errs["spikes"] == 0 and all(
                    e <= RTOL[dtype] for k, e in errs.items() if k != "spikes")
                failures += not ok
                cells = " ".join(f"{errs[c]:9.2e}" if c in errs else f"{'-':>9}"
                                 for c in COLUMNS)
                print(f"{backend:8} {str(dtype)[6:]:9} {neuron:6} {_describe(params):44} "
                      f"{errs['spikes']:6d} {cells}  {'yes' if ok else 'NO'}  "
                      f"({int(bad.sum())} near threshold)")
    print(f"\n{failures} failing rows; {skipped} backend/dtype pairs not available here "
          f"(see README's backend table). Tolerances: "
          + ", ".join(f"{str(d)[6:]} {RTOL[d]:.1e}" for d in DTYPES))
    if ext_failures:
        print(f"{len(ext_failures)} compiled extension(s) built but not loading (see FAIL above)")
    return 1 if failures or ext_failures else 0

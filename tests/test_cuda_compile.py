"""Compile the CUDA kernels for sm_90 and sm_80 with `ptxas -v` (no GPU needed) and fail on any
register spill. Skipped only where nvcc or a CUDA build of torch is missing; CI has both."""
import shutil

import pytest
import torch

from dev import cuda_aot


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="needs nvcc and a CUDA build of torch")
@pytest.mark.parametrize("arch", [90, 80])
def test_cuda_kernels_compile_without_spills(arch):
    rows = cuda_aot.compile_report(arch)
    # Current: forward 3 dtypes x CLIF/LIF x (8 or 1 neurons per thread) = 12, backward 3 x 2 x
    # (9 surrogates + the run-time one) = 60; previous: 3 x 2 x forward/backward = 12; the fold:
    # forward 3 x 2 x (8 or 1) = 12, backward 3 x 2 at 1 = 6.
    assert len(rows) == 102, rows
    spilled = [r for r in rows if r[2] or r[3]]
    assert not spilled, f"register spills on sm_{arch}: {spilled}"


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="needs nvcc and a CUDA build of torch")
def test_a_failed_compile_names_its_architecture(tmp_path):
    """The side-by-side compiles report each failure with its architecture and nvcc's message,
    and keep nothing of it."""
    (tmp_path / "clif_cuda_kernels.cu").write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match=r"(?s)nvcc failed for sm_80.*nvcc failed for sm_90"):
        cuda_aot.compile_cubins([80, 90], str(tmp_path))
    assert not [k for k in cuda_aot._CUBINS if k[1] == str(tmp_path)]

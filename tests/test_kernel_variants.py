"""The GPU backends' current kernels against their previous ones (CLIF_KERNELS_GPU_KERNELS=
previous, kept until a GPU has timed both): the same spikes, final states and gradients, bit for
bit, since both run the same per-step math in another order. Triton runs in its interpreter here;
the CUDA case needs a GPU. And a wrong value of the switch is refused by name."""
import pytest
import torch

import clif_kernels
from checks import DEVICE, unavailable


def _run(backend, x, v0, m0, **kw):
    x = x.clone().requires_grad_(True)
    v0 = v0.clone().requires_grad_(True)
    m0 = m0.clone().requires_grad_(True)
    s, vT, mT = clif_kernels.clif(x, v0=v0, m0=m0, return_state=True, backend=backend, **kw)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=g).to(t) for t in (s, vT, mT)]
    sum((t.float() * w.float()).sum() for t, w in zip((s, vT, mT), weights)).backward()
    return [t.detach() for t in (s, vT, mT, x.grad, v0.grad, m0.grad)]


# Each case in the interpreter takes tens of seconds: a few that cover a single step, a partial
# segment after a checkpoint, 16-bit storage, both resets and three surrogates.
CASES = [(1, 37, torch.float32, dict()),
         (9, 1001, torch.bfloat16, dict(v_reset=0.0, surrogate="sigmoid")),
         (20, 64, torch.float32, dict(surrogate="erf", detach_reset=True))]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("T,N,dtype,kw", CASES)
def test_current_kernels_equal_previous(monkeypatch, backend, T, N, dtype, kw):
    why = unavailable(backend, dtype)
    if why is not None:
        pytest.skip(why)
    g = torch.Generator().manual_seed(T * 1000 + N)
    x = (1.5 * torch.randn(T, 2, N, generator=g)).to(DEVICE[backend], dtype)
    v0 = (0.5 * torch.randn(2, N, generator=g)).to(x)
    m0 = (0.5 * torch.randn(2, N, generator=g)).to(x)
    monkeypatch.setenv("CLIF_KERNELS_GPU_KERNELS", "current")
    current = _run(backend, x, v0, m0, **kw)
    monkeypatch.setenv("CLIF_KERNELS_GPU_KERNELS", "previous")
    previous = _run(backend, x, v0, m0, **kw)
    names = ("spikes", "vT", "mT", "grad_x", "grad_v0", "grad_m0")
    for name, a, b in zip(names, current, previous):
        assert not torch.isnan(a.float()).any(), f"{name}: NaN (an element left unwritten)"
        assert torch.equal(a, b), f"{name}: current and previous kernels differ"


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_unknown_kernel_variant_is_refused(monkeypatch, backend):
    why = unavailable(backend)
    if why is not None:
        pytest.skip(why)
    monkeypatch.setenv("CLIF_KERNELS_GPU_KERNELS", "fastest")
    x = torch.randn(3, 16, device=DEVICE[backend])
    with pytest.raises((ValueError, RuntimeError), match="CLIF_KERNELS_GPU_KERNELS"):
        clif_kernels.clif(x, backend=backend)


@pytest.mark.parametrize("T,dtype,kw", [(4, torch.float32, dict(surrogate="sigmoid")),
                                        (16, torch.bfloat16, dict(v_reset=0.0))])
def test_triton_whole_segments_equal_the_partial_loop(monkeypatch, T, dtype, kw):
    # The backward's loop over whole segments (K divides T: one segment of T steps for T <= 8)
    # against the loop that clamps a last, partial segment, forced here: the same bits.
    from clif_kernels import triton_kernels as tk
    why = unavailable("triton", dtype)
    if why is not None:
        pytest.skip(why)
    assert tk.bwd_segments(T) == (min(T, 8), True)
    g = torch.Generator().manual_seed(T)
    x = (1.5 * torch.randn(T, 3, 101, generator=g)).to(DEVICE["triton"], dtype)
    v0 = (0.5 * torch.randn(3, 101, generator=g)).to(x)
    m0 = (0.5 * torch.randn(3, 101, generator=g)).to(x)
    whole = _run("triton", x, v0, m0, **kw)
    monkeypatch.setattr(tk, "bwd_segments", lambda T: (tk.CKPT_EVERY, False))
    partial = _run("triton", x, v0, m0, **kw)
    names = ("spikes", "vT", "mT", "grad_x", "grad_v0", "grad_m0")
    for name, a, b in zip(names, whole, partial):
        assert not torch.isnan(a.float()).any(), f"{name}: NaN (an element left unwritten)"
        assert torch.equal(a, b), f"{name}: whole-segment and partial-segment loops differ"


def test_triton_backward_segments():
    from clif_kernels import triton_kernels as tk
    assert [tk.bwd_segments(T) for T in (0, 1, 4, 7, 8, 9, 16, 17, 64)] == [
        (1, True), (1, True), (4, True), (7, True), (8, True), (8, False), (8, True),
        (8, False), (8, True)]

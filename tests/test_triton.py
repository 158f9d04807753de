"""The fused Triton backend (interpreted on CPU in CI) against the float64 reference."""
import itertools

import pytest
import torch

from checks import (compare, golden_cases, neuron_fn, random_problem, reference64, rel_err,
                    run_with_grads)
from clif_kernels import triton_kernels

BACKEND = "triton"
SURROGATES = ("rectangle", "sigmoid", "atan", "triangle")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every kernel output starts as NaN, so an element a kernel forgets to write shows up."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(triton_kernels, "_empty", nan_empty)


def check_backend(is_clif, shape, dtype, with_state=True, **params):
    x, v0, m0, grads = random_problem(shape, dtype, with_state=with_state, is_clif=is_clif)
    ref, bad = reference64(is_clif, x, v0, m0, grads, **params)
    res = run_with_grads(neuron_fn(is_clif), x, v0, m0, grads, backend=BACKEND, **params)
    return compare(res, ref, bad, dtype)


OPTION_GRID = list(itertools.product([True, False], SURROGATES, [None, -0.2], [False, True],
                                     [False, True]))


@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset", OPTION_GRID)
def test_every_option_fp32(is_clif, surrogate, v_reset, decay_input, detach_reset):
    check_backend(is_clif, (11, 3, 37), torch.float32, tau=1.9, v_threshold=0.8,
                  v_reset=v_reset, decay_input=decay_input, surrogate=surrogate,
                  detach_reset=detach_reset, alpha=None if surrogate != "atan" else 1.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset",
                         [(True, "rectangle", None, False, False),
                          (True, "sigmoid", -0.2, True, False),
                          (True, "atan", None, False, True),
                          (False, "triangle", 0.1, False, False),
                          (False, "rectangle", None, True, True)])
def test_half_dtypes(dtype, is_clif, surrogate, v_reset, decay_input, detach_reset):
    check_backend(is_clif, (9, 301), dtype, v_reset=v_reset, decay_input=decay_input,
                  surrogate=surrogate, detach_reset=detach_reset)


@pytest.mark.parametrize("T", [1, 2, 7, 8, 9, 17, 64])
@pytest.mark.parametrize("is_clif", [True, False])
def test_awkward_lengths(T, is_clif):
    check_backend(is_clif, (T, 1000 + 3), torch.float32, with_state=T % 2 == 1)


@pytest.mark.parametrize("shape", [(3, 1), (4, 513), (5, 2, 3, 5), (2, 1537)])
def test_awkward_widths(shape):
    check_backend(True, shape, torch.float32)


@pytest.mark.parametrize("case,arrays", [pytest.param(c, a, id=c["name"])
                                         for c, a in golden_cases()])
def test_golden_cases(case, arrays):
    """The independent float64 golden cases, run in float32 through the kernels."""
    is_clif = case["neuron"] == "clif"
    f32 = lambda k: None if k not in arrays else arrays[k].float()  # noqa: E731
    grads = {"spikes": f32("grad_spikes"), "vT": f32("grad_vT"), "mT": f32("grad_mT")}
    res = run_with_grads(neuron_fn(is_clif), f32("x_seq"), f32("v0"), f32("m0"), grads,
                         backend=BACKEND, **case["params"])
    assert torch.equal(res["spikes"].double(), arrays["spikes"])
    for mine, theirs in [("vT", "vT"), ("mT", "mT"), ("grad_x", "grad_x_seq"),
                         ("grad_v0", "grad_v0"), ("grad_m0", "grad_m0")]:
        if theirs in arrays:
            assert rel_err(res[mine], arrays[theirs]) < 2e-5, mine
        else:
            assert res[mine] is None, mine


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0,), (3, 0, 2)])
def test_empty(shape):
    x = torch.randn(shape, requires_grad=True)
    v0 = torch.randn(shape[1:]) if shape[1:] else None
    s, vT, mT = neuron_fn(True)(x, v0=v0, return_state=True, backend=BACKEND)
    assert s.shape == x.shape and vT.shape == x.shape[1:] and mT.shape == x.shape[1:]
    if shape[0] == 0 and v0 is not None:
        assert torch.equal(vT, v0), "with no step the final state is the initial one"
    (s.sum() + vT.sum() + mT.sum()).backward()
    assert x.grad.shape == x.shape


def test_zero_steps_passes_state_gradient_through():
    v0 = torch.randn(6, requires_grad=True)
    m0 = torch.randn(6, requires_grad=True)
    s, vT, mT = neuron_fn(True)(torch.randn(0, 6), v0=v0, m0=m0, return_state=True,
                                backend=BACKEND)
    (vT * 2 + mT * 3).sum().backward()
    assert torch.equal(v0.grad, torch.full((6,), 2.0))
    assert torch.equal(m0.grad, torch.full((6,), 3.0))


def test_non_contiguous_input():
    base = torch.randn(6, 40, 9)
    x = base.transpose(1, 2)  # [6, 9, 40], not contiguous
    ref = neuron_fn(True)(x, backend="torch")
    out = neuron_fn(True)(x, backend=BACKEND)
    assert out.shape == x.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_does_not_crash(bad):
    x = torch.randn(5, 33)
    x[2, 4] = bad
    x.requires_grad_()
    s, vT, mT = neuron_fn(True)(x, return_state=True, backend=BACKEND)
    ref_s, ref_v, ref_m = neuron_fn(True)(x.detach(), return_state=True, backend="torch")
    (s.sum() + vT.sum()).backward()
    # Neurons the bad value never touches are unaffected.
    keep = torch.ones(33, dtype=torch.bool)
    keep[4] = False
    assert torch.equal(s[:, keep], ref_s[:, keep])
    assert torch.isfinite(x.grad[:, keep]).all()


@pytest.mark.parametrize("use_vT", [False, True])
def test_unused_state_gradients(use_vT):
    """When only some outputs take part in the loss, the others count as zero gradient."""
    x, v0, m0, grads = random_problem((10, 77), torch.float32, with_state=True)
    grads["mT"] = torch.zeros_like(grads["mT"])
    if not use_vT:
        grads["vT"] = torch.zeros_like(grads["vT"])
    ref, bad = reference64(True, x, v0, m0, grads)
    xr = x.clone().requires_grad_()
    s, vT, mT = neuron_fn(True)(xr, v0=v0, m0=m0, return_state=True, backend=BACKEND)
    loss = (s * grads["spikes"]).sum() + ((vT * grads["vT"]).sum() if use_vT else 0)
    loss.backward()
    assert rel_err(xr.grad[:, ~bad], ref["grad_x"][:, ~bad]) < 2e-5


def saved_bytes(fn):
    """Bytes of the distinct tensors autograd saves while `fn` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dtype,T", [(torch.float32, 8), (torch.bfloat16, 8),
                                     (torch.float32, 4), (torch.float32, 64)])
def test_saved_memory(dtype, T):
    N = 4096
    x = torch.randn(T, N, dtype=dtype, requires_grad=True)
    nbytes = saved_bytes(lambda: neuron_fn(True)(x, backend=BACKEND))
    per_step = nbytes / (T * N)
    # x itself, plus fp32 (v, m) checkpoints every CKPT_EVERY steps past the first segment.
    expected = x.element_size() + 8 * triton_kernels.n_checkpoints(T) / T
    assert per_step == pytest.approx(expected)
    if T <= triton_kernels.CKPT_EVERY:
        assert per_step <= x.element_size()


def test_no_grad_saves_no_checkpoints():
    from clif_kernels import ops
    x = torch.randn(20, 64)
    out = ops.triton_fwd(x, None, None, 2.0, 1.0, None, False, True, False, 0, 1.0, False)
    assert out[3].numel() == 0
    with torch.no_grad():
        s = neuron_fn(True)(x.requires_grad_(), backend=BACKEND)
    assert s.grad_fn is None


def _op_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 37, generator=g)
    v0, m0 = torch.randn(37, generator=g), torch.rand(37, generator=g)
    return [
        (x, None, None, 2.0, 1.0, None, False, True, True, 0, 1.0, False),
        (x, v0, m0, 1.5, 0.7, -0.1, True, True, True, 1, 4.0, True),
        (x, v0, None, 3.0, 1.0, 0.0, False, False, True, 2, 2.0, False),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(sample):
    from clif_kernels import ops
    args = list(_op_samples()[sample])
    for i in range(3):
        if args[i] is not None:
            args[i] = args[i].clone().requires_grad_()
    torch.library.opcheck(ops.triton_fwd, tuple(args))


def test_opcheck_backward_op():
    from clif_kernels import ops
    x = torch.randn(10, 37)
    v0 = torch.randn(37)
    _, _, _, ckpt = ops.triton_fwd(x, v0, None, 2.0, 1.0, None, False, True, True, 0, 1.0, False)
    args = (x, v0, None, ckpt, torch.randn(10, 37), torch.randn(37), None, 2.0, 1.0, None,
            False, 0, 1.0, False, True)
    torch.library.opcheck(ops.triton_bwd, args)


@pytest.mark.parametrize("is_clif", [True, False])
def test_compile_fullgraph(is_clif):
    torch._dynamo.reset()
    fn = neuron_fn(is_clif)

    def step(x, v0):
        out = fn(x, v0=v0, tau=1.7, surrogate="sigmoid", return_state=True, backend=BACKEND)
        return out[0].sum() + (out[1] * out[1]).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(9, 4, 21)
    v0 = torch.randn(4, 21)
    xe, ve = x.clone().requires_grad_(), v0.clone().requires_grad_()
    xc, vc = x.clone().requires_grad_(), v0.clone().requires_grad_()
    step(xe, ve).backward()
    compiled(xc, vc).backward()
    assert torch.equal(xe.grad, xc.grad) and torch.equal(ve.grad, vc.grad)

"""The fused backends (Triton, C++ CPU, CUDA) against the float64 reference: outputs, final
states and every gradient, for every option, dtype and awkward shape. Without a GPU the Triton
kernels run in Triton's interpreter and the CUDA backend is skipped."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

from checks import DEVICE, compare, golden_cases, unavailable
import clif_kernels
from clif_kernels import backends
from clif_kernels.ops import fused_options
from clif_kernels.options import make_options
from clif_kernels.options import CKPT_EVERY, n_checkpoints
from clif_kernels.tools.verify import neuron_fn, random_problem, reference64, rel_err, run_with_grads

SURROGATES = ("rectangle", "sigmoid", "atan", "triangle")


def _available(name, dtype=torch.float32):
    return unavailable(name, dtype) is None


def check_backend(backend, is_clif, shape, dtype, with_state=True, **params):
    if not _available(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    x, v0, m0, grads = random_problem(shape, dtype, with_state=with_state, is_clif=is_clif,
                                      device=DEVICE[backend])
    ref, bad = reference64(is_clif, x, v0, m0, grads, **params)
    res = run_with_grads(neuron_fn(is_clif), x, v0, m0, grads, backend=backend, **params)
    return compare(res, ref, bad, dtype)


OPTION_GRID = list(itertools.product([True, False], SURROGATES, [None, -0.2], [False, True],
                                     [False, True]))


@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset", OPTION_GRID)
def test_every_option_fp32(backend, is_clif, surrogate, v_reset, decay_input, detach_reset):
    check_backend(backend, is_clif, (11, 3, 37), torch.float32, tau=1.9, v_threshold=0.8,
                  v_reset=v_reset, decay_input=decay_input, surrogate=surrogate,
                  detach_reset=detach_reset, alpha=None if surrogate != "atan" else 1.5)


HALF_CASES = [(True, "rectangle", None, False, False), (True, "sigmoid", -0.2, True, False),
              (True, "atan", None, False, True), (False, "triangle", 0.1, False, False),
              (False, "rectangle", None, True, True), (True, "piecewise_exp", -0.2, False, False)]


# The surrogates with SpikingJelly's parameters, each once with other neuron and reset options
# (its branch does not interact with them); N = 300 runs two AVX-512 groups and a scalar tail.
SJ_SURROGATE_CASES = [
    (True, "piecewise_leaky_relu", dict(alpha=0.7, beta=0.05), None, False, False),
    (False, "piecewise_leaky_relu", {}, 0.0, True, False),
    (True, "piecewise_exp", dict(alpha=1.5), -0.2, False, True),
    (True, "soft_sign", {}, None, True, False),
    (False, "super_spike", dict(alpha=0.8), None, False, False),
    (True, "erf", {}, 0.1, False, False),
]


@pytest.mark.parametrize("is_clif,surrogate,params,v_reset,decay_input,detach_reset",
                         SJ_SURROGATE_CASES)
def test_spikingjelly_surrogates(backend, is_clif, surrogate, params, v_reset, decay_input,
                                 detach_reset):
    check_backend(backend, is_clif, (11, 2, 150), torch.float32, tau=1.9, v_threshold=0.8,
                  v_reset=v_reset, decay_input=decay_input, surrogate=surrogate,
                  detach_reset=detach_reset, **params)


def test_window_edges(backend):
    """Inputs exactly on the windows' edges, and one float inside: the rectangle's window is
    closed (the spec's, the paper's), piecewise_leaky_relu's is open (SpikingJelly's Rect and
    PiecewiseLeakyReLU). With T = 1 from the initial state, h = x and grad_x is sigma'(x - 1)."""
    dev = DEVICE[backend]
    edges = torch.tensor([1.25, 0.75])
    inside = torch.nextafter(edges, torch.tensor(1.0))  # the floats next to them, inside
    x = torch.cat([edges, inside, torch.tensor([1.5, 1.0])]).view(1, -1).to(dev).requires_grad_()
    expected = {"rectangle": [2.0, 2.0, 2.0, 2.0, 0.0, 2.0],                 # alpha 0.5
                "piecewise_leaky_relu": [0.03, 0.03, 2.0, 2.0, 0.03, 2.0]}  # w 0.25, c 0.03
    for surrogate, params in (("rectangle", dict(alpha=0.5)),
                              ("piecewise_leaky_relu", dict(alpha=0.25, beta=0.03))):
        for fn, name in itertools.product((neuron_fn(True), neuron_fn(False)),
                                          (backend, "reference")):
            x.grad = None
            fn(x, surrogate=surrogate, backend=name, **params).sum().backward()
            assert torch.equal(x.grad.cpu()[0], torch.tensor(expected[surrogate])), \
                (surrogate, fn.__name__, name, x.grad)


# T = 5: no checkpoint (the Triton backward once failed to compile there for half types only);
# T = 12: one checkpoint and a partial segment.
@pytest.mark.parametrize("T", [5, 12])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset", HALF_CASES)
def test_half_dtypes(backend, dtype, T, is_clif, surrogate, v_reset, decay_input, detach_reset):
    check_backend(backend, is_clif, (T, 301), dtype, v_reset=v_reset, decay_input=decay_input,
                  surrogate=surrogate, detach_reset=detach_reset)


@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset",
                         HALF_CASES + [(True, "triangle", -0.1, True, True)])
def test_float64(backend, is_clif, surrogate, v_reset, decay_input, detach_reset):
    check_backend(backend, is_clif, (13, 2, 51), torch.float64, v_reset=v_reset,
                  decay_input=decay_input, surrogate=surrogate, detach_reset=detach_reset)


@pytest.mark.parametrize("T", [1, 2, 7, 8, 9, 17, 64])
@pytest.mark.parametrize("is_clif", [True, False])
def test_awkward_lengths(backend, T, is_clif):
    check_backend(backend, is_clif, (T, 1000 + 3), torch.float32, with_state=T % 2 == 1)


@pytest.mark.parametrize("shape", [(3, 1), (4, 513), (5, 2, 3, 5), (2, 1537), (9, 16), (9, 4)])
def test_awkward_widths(backend, shape):
    check_backend(backend, True, shape, torch.float32)


@pytest.mark.parametrize("case,arrays", [pytest.param(c, a, id=c["name"])
                                         for c, a in golden_cases()])
def test_golden_cases(backend, case, arrays):
    """The independent float64 golden cases, run in float32 through the kernels."""
    is_clif = case["neuron"] == "clif"
    dev = DEVICE[backend]
    f32 = lambda k: None if k not in arrays else arrays[k].float().to(dev)  # noqa: E731
    grads = {"spikes": f32("grad_spikes"), "vT": f32("grad_vT"), "mT": f32("grad_mT")}
    res = run_with_grads(neuron_fn(is_clif), f32("x_seq"), f32("v0"), f32("m0"), grads,
                         backend=backend, **case["params"])
    assert torch.equal(res["spikes"].double().cpu(), arrays["spikes"])
    for mine, theirs in [("vT", "vT"), ("mT", "mT"), ("grad_x", "grad_x_seq"),
                         ("grad_v0", "grad_v0"), ("grad_m0", "grad_m0")]:
        if theirs in arrays:
            assert rel_err(res[mine], arrays[theirs]) < 2e-5, mine
        else:
            assert res[mine] is None, mine


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0,), (3, 0, 2)])
def test_empty(backend, shape):
    dev = DEVICE[backend]
    x = torch.randn(shape, device=dev, requires_grad=True)
    v0 = torch.randn(shape[1:], device=dev) if shape[1:] else None
    s, vT, mT = neuron_fn(True)(x, v0=v0, return_state=True, backend=backend)
    assert s.shape == x.shape and vT.shape == x.shape[1:] and mT.shape == x.shape[1:]
    if shape[0] == 0 and v0 is not None:
        assert torch.equal(vT, v0), "with no step the final state is the initial one"
    (s.sum() + vT.sum() + mT.sum()).backward()
    assert x.grad.shape == x.shape


def test_zero_steps_passes_state_gradient_through(backend):
    dev = DEVICE[backend]
    v0 = torch.randn(6, device=dev, requires_grad=True)
    m0 = torch.randn(6, device=dev, requires_grad=True)
    s, vT, mT = neuron_fn(True)(torch.randn(0, 6, device=dev), v0=v0, m0=m0, return_state=True,
                                backend=backend)
    (vT * 2 + mT * 3).sum().backward()
    assert torch.equal(v0.grad.cpu(), torch.full((6,), 2.0))
    assert torch.equal(m0.grad.cpu(), torch.full((6,), 3.0))


@pytest.mark.parametrize("view", ["neurons_transposed", "time_not_outermost", "strided"])
def test_non_contiguous_input(backend, view):
    base = torch.randn(6, 40, 9, device=DEVICE[backend])
    x = {"neurons_transposed": base.transpose(1, 2),          # [6, 9, 40], dense
         "time_not_outermost": base.transpose(0, 1),          # [40, 6, 9]: needs a copy
         "strided": base[:, ::2]}[view]                       # [6, 20, 9], not dense
    assert not x.is_contiguous()
    ref = neuron_fn(True)(x, backend="reference")
    out = neuron_fn(True)(x, backend=backend)
    assert out.shape == x.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_does_not_crash(backend, bad):
    x = torch.randn(5, 33, device=DEVICE[backend])
    x[2, 4] = bad
    x.requires_grad_()
    s, vT, mT = neuron_fn(True)(x, return_state=True, backend=backend)
    ref_s = neuron_fn(True)(x.detach(), backend="reference")
    (s.sum() + vT.sum()).backward()
    # Neurons the bad value never touches are unaffected.
    keep = torch.ones(33, dtype=torch.bool, device=x.device)
    keep[4] = False
    assert torch.equal(s[:, keep], ref_s[:, keep])
    assert torch.isfinite(x.grad[:, keep]).all()


@pytest.mark.parametrize("use_vT", [False, True])
def test_unused_state_gradients(backend, use_vT):
    """When only some outputs take part in the loss, the others count as zero gradient."""
    x, v0, m0, grads = random_problem((10, 77), torch.float32, with_state=True,
                                      device=DEVICE[backend])
    grads["mT"] = torch.zeros_like(grads["mT"])
    if not use_vT:
        grads["vT"] = torch.zeros_like(grads["vT"])
    ref, bad = reference64(True, x, v0, m0, grads)
    xr = x.clone().requires_grad_()
    s, vT, mT = neuron_fn(True)(xr, v0=v0, m0=m0, return_state=True, backend=backend)
    loss = (s * grads["spikes"]).sum() + ((vT * grads["vT"]).sum() if use_vT else 0)
    loss.backward()
    keep = (~bad).to(xr.device)
    assert rel_err(xr.grad[:, keep], ref["grad_x"][:, ~bad]) < 2e-5


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves while `fn` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dtype,T", [(torch.float32, 8), (torch.bfloat16, 8),
                                     (torch.float32, 4), (torch.float32, 64)])
def test_saved_memory(backend, dtype, T):
    N = 4096
    x = torch.randn(T, N, dtype=dtype, device=DEVICE[backend], requires_grad=True)
    per_step = saved_bytes(lambda: neuron_fn(True)(x, backend=backend)) / (T * N)
    # x itself, plus fp32 (v, m) checkpoints every CKPT_EVERY steps past the first segment.
    expected = x.element_size() + 8 * n_checkpoints(T) / T
    assert per_step == pytest.approx(expected)
    if T <= CKPT_EVERY:
        assert per_step <= x.element_size()


def _fwd_op(backend):
    return backends.REGISTRY[backend].op_pair().fwd


def _bwd_op(backend):
    return backends.REGISTRY[backend].op_pair().bwd


# tau, v_threshold, v_reset, decay_input, surrogate, alpha, beta, detach_reset, is_clif
DEFAULTS = fused_options(make_options(), True)


def test_no_grad_saves_no_checkpoints(backend):
    x = torch.randn(20, 64, device=DEVICE[backend])
    out = _fwd_op(backend)(x, None, None, *DEFAULTS, False)
    assert out[3].numel() == 0
    with torch.no_grad():
        s = neuron_fn(True)(x.requires_grad_(), backend=backend)
    assert s.grad_fn is None


def _op_samples(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 37, generator=g).to(device)
    v0, m0 = torch.randn(37, generator=g).to(device), torch.rand(37, generator=g).to(device)
    return [
        (x, None, None, *DEFAULTS, True),
        (x, v0, m0, *fused_options(make_options(tau=1.5, v_threshold=0.7, v_reset=-0.1,
                                                decay_input=True, surrogate="sigmoid",
                                                detach_reset=True), True), True),
        (x, v0, None, *fused_options(make_options(tau=3.0, v_reset=0.0, alpha=0.5,
                                                  surrogate="piecewise_leaky_relu"), False),
         True),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(backend, sample):
    args = list(_op_samples(DEVICE[backend])[sample])
    for i in range(3):
        if args[i] is not None:
            args[i] = args[i].clone().requires_grad_()
    torch.library.opcheck(_fwd_op(backend), tuple(args))


def test_opcheck_backward_op(backend):
    dev = DEVICE[backend]
    x = torch.randn(10, 37, device=dev)
    v0 = torch.randn(37, device=dev)
    _, _, _, ckpt = _fwd_op(backend)(x, v0, None, *DEFAULTS, True)
    args = (x, v0, None, ckpt, torch.randn(10, 37, device=dev), torch.randn(37, device=dev),
            None, *DEFAULTS)
    torch.library.opcheck(_bwd_op(backend), args)


@pytest.mark.parametrize("is_clif", [True, False])
def test_compile_fullgraph(backend, is_clif):
    torch._dynamo.reset()
    fn = neuron_fn(is_clif)

    def step(x, v0):
        out = fn(x, v0=v0, tau=1.7, surrogate="sigmoid", return_state=True, backend=backend)
        return out[0].sum() + (out[1] * out[1]).sum()

    # The default backend (inductor), as users run it; fullgraph fails on any graph break.
    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(9, 4, 21, device=DEVICE[backend])
    v0 = torch.randn(4, 21, device=DEVICE[backend])
    xe, ve = x.clone().requires_grad_(), v0.clone().requires_grad_()
    xc, vc = x.clone().requires_grad_(), v0.clone().requires_grad_()
    step(xe, ve).backward()
    compiled(xc, vc).backward()
    # Inductor may fuse the elementwise ops around the neuron differently: fp32 rounding.
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vc.grad, ve.grad, rtol=1e-5, atol=1e-6)


def test_one_autograd_entrance(backend):
    """The public functions call the op, whose own autograd is the only one: `clif`'s output has
    the op's backward node, and the C++ library's is a C++ node (no Python on the way)."""
    pair = backends.REGISTRY[backend].op_pair()
    x = torch.randn(4, 3, 5, device=DEVICE[backend], requires_grad=True)
    direct = pair.fwd(x, None, None, *DEFAULTS, True, False)[0].grad_fn
    node = clif_kernels.clif(x, backend=backend).grad_fn
    in_python = isinstance(node, torch.autograd.function.BackwardCFunction)
    # The same node type as the op's own; a C++ node's name too (a Python node's name() is not
    # callable on every supported torch: 2.6 refuses it, and its class already names it).
    assert type(node) is type(direct)
    if not in_python:
        assert node.name() == direct.name()
    assert in_python == (backend != "cpp"), type(node).__name__


def test_backward_op_refuses_to_backpropagate():
    """The C++ library's backward op has no derivative of its own (a double backward goes
    through the reference): backpropagating through it directly is an error naming it."""
    if backends.REGISTRY["cpp"].why_not(torch.device("cpu"), torch.float32):
        pytest.skip(backends.REGISTRY["cpp"].why_not(torch.device("cpu"), torch.float32))
    pair = backends.REGISTRY["cpp"].op_pair()
    x = torch.randn(5, 7)
    _, _, _, ckpt = pair.fwd(x, None, None, *DEFAULTS, True)
    gs = torch.randn(5, 7, requires_grad=True)
    gx = pair.bwd(x, None, None, ckpt, gs, None, None, *DEFAULTS)[0]
    with pytest.raises(RuntimeError, match="clif_fused::bwd"):
        gx.sum().backward()


def _draw_away_from_jumps(opts, is_clif, v0, m0, margin):
    """An input whose h stays `margin` away from the threshold and from the edges of the
    surrogate's window, so that the surrogate term is exactly zero and finite differences flip
    no spike: the backward must then equal the true derivative."""
    from clif_kernels.reference import neuron_reference
    edges = [opts.v_threshold - opts.alpha / 2, opts.v_threshold + opts.alpha / 2,
             opts.v_threshold]
    for _ in range(200):
        x = torch.randn(6, 5, dtype=torch.float64) * 1.5
        h = neuron_reference(x, opts, clif=is_clif, v0=v0, m0=m0, return_h=True)[-1]
        far = all(((h - e).abs() > margin).all() for e in edges)
        inside = ((h - opts.v_threshold).abs() < opts.alpha / 2).any()
        if far and not inside and (h >= opts.v_threshold).any():
            return x
    pytest.fail("could not draw an input away from the jumps")


@pytest.mark.parametrize("is_clif", [True, False])
@pytest.mark.parametrize("v_reset,decay_input", [(None, False), (-0.3, True)])
def test_float64_gradcheck(backend, is_clif, v_reset, decay_input):
    """gradcheck in float64 of the paths the surrogate does not touch: membrane, reset,
    complementary potential and initial states (rectangle surrogate, h kept outside its
    window, so the surrogate term is exactly zero)."""
    if not _available(backend, torch.float64):
        pytest.skip(f"{backend} does not take float64")
    from clif_kernels.options import make_options
    params = dict(tau=1.8, v_reset=v_reset, decay_input=decay_input, alpha=0.05)
    opts = make_options(**params)
    v0 = torch.randn(5, dtype=torch.float64) * 0.3
    m0 = torch.rand(5, dtype=torch.float64)
    x = _draw_away_from_jumps(opts, is_clif, v0, m0 if is_clif else None, margin=1e-3)
    fn = neuron_fn(is_clif)
    kw = dict(params, backend=backend, return_state=True)
    if is_clif:
        f = lambda x, v0, m0: fn(x, v0=v0, m0=m0, **kw)  # noqa: E731
        inputs = (x, v0, m0)
    else:
        f = lambda x, v0: fn(x, v0=v0, **kw)  # noqa: E731
        inputs = (x, v0)
    inputs = tuple(t.clone().requires_grad_() for t in inputs)
    # Central differences in float64 at eps=1e-6 carry ~1e-10 of rounding; atol 1e-7 keeps a wide
    # margin above that while the gradients checked are of order 1e-3 to 1.
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
def test_channels_last_input_keeps_its_layout(backend, with_state):
    """A channels_last [T, B, C, H, W] input is processed where it lies: spikes, final states and
    the input gradient keep its strides, and the values are the reference's."""
    dev = DEVICE[backend]
    base = torch.randn(4, 2, 5, 6, 3, device=dev) * 1.5 + 0.3       # [T, B, H, W, C] in memory
    x = base.permute(0, 1, 4, 2, 3).detach().requires_grad_()       # [T, B, C, H, W] view
    assert not x.is_contiguous()
    v0 = (torch.randn(2, 5, 6, 3, device=dev) * 0.5).permute(0, 3, 1, 2) if with_state else None
    s, vT, mT = neuron_fn(True)(x, v0=v0, return_state=True, backend=backend)
    assert s.stride() == x.stride() and vT.stride() == x[0].stride()
    ref_s, ref_v, _ = neuron_fn(True)(x.detach(), v0=v0, return_state=True, backend="reference")
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(vT, ref_v, rtol=1e-5, atol=1e-6)
    (s * torch.arange(s.numel(), device=dev).view(s.shape).sin()).sum().backward()
    assert x.grad.stride() == x.stride()


@pytest.mark.parametrize("is_clif,surrogate,v_reset,decay_input,detach_reset", HALF_CASES)
@pytest.mark.parametrize("T", [5, 19])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpp_portable_build(monkeypatch, dtype, T, is_clif, surrogate, v_reset, decay_input,
                            detach_reset):
    """The cpp backend runs fp32, bf16 and fp16 through an AVX-512 build of the core when the
    processor has one; the portable build, which other processors run, must pass the same
    comparison."""
    if not _available("cpp"):
        pytest.skip("the C++ extension is not built")
    monkeypatch.setenv("CLIF_KERNELS_CPU_ISA", "baseline")
    check_backend("cpp", is_clif, (T, 2, 67), dtype, v_reset=v_reset,
                  decay_input=decay_input, surrogate=surrogate, detach_reset=detach_reset)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("v_reset", [None, 0.1])
def test_cpp_large_outputs(dtype, v_reset):
    """Outputs of 4 MiB or more with 64-byte aligned rows are written with streaming stores
    (csrc/clif_cpu_avx512.cpp); N = 2^19 + 48 also leaves a tail of 48 neurons for the scalar
    loop."""
    if not _available("cpp"):
        pytest.skip("the C++ extension is not built")
    check_backend("cpp", True, (5, 2**19 + 48), dtype, v_reset=v_reset)


def test_cpu_output_cache():
    """Large CPU outputs are kept when freed and handed to the next call of the same size;
    the limit bounds what is kept."""
    if not _available("cpp"):
        pytest.skip("the C++ extension is not built")
    from clif_kernels import extension
    x = torch.randn(4, 2**18)  # 4 MiB of spikes, above the cache's 1 MiB floor
    old = extension.set_cpu_cache_limit(64)
    try:
        extension.empty_cpu_cache()
        s = neuron_fn(True)(x, backend="cpp")
        ptr, expected = s.data_ptr(), neuron_fn(True)(x, backend="reference")
        del s
        assert extension.cpu_cache_bytes() >= x.numel() * 4
        s = neuron_fn(True)(x, backend="cpp")
        assert s.data_ptr() == ptr, "the freed block was not reused"
        assert torch.equal(s, expected)
        s.resize_(8, 2**18)  # an ordinary, resizable storage
        assert s.shape == (8, 2**18)
        del s
        assert extension.empty_cpu_cache() > 0 and extension.cpu_cache_bytes() == 0
        extension.set_cpu_cache_limit(0)
        del expected
        neuron_fn(True)(x, backend="cpp")
        assert extension.cpu_cache_bytes() == 0, "a zero limit keeps nothing"
        with pytest.raises(ValueError, match="mib"):
            extension.set_cpu_cache_limit(-1)
    finally:
        extension.set_cpu_cache_limit(old)


@pytest.mark.parametrize("value,limit,warns", [("7", 7, False), ("0", 0, False),
                                               ("lots", 1024, True), ("-3", 1024, True)])
def test_cpu_output_cache_env(value, limit, warns):
    """CLIF_KERNELS_CPU_CACHE_MB sets the cache's limit at the first use; a value that is not a
    whole number of MiB >= 0 warns and leaves the default."""
    if not _available("cpp"):
        pytest.skip("the C++ extension is not built")
    code = ("import warnings, torch; warnings.simplefilter('always')\n"
            "from clif_kernels import extension, functional\n"
            "functional.clif(torch.randn(2, 2**18), backend='cpp')\n"
            "print('limit', extension.set_cpu_cache_limit(1))\n")
    env = dict(os.environ, CLIF_KERNELS_CPU_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"limit {limit}" in out.stdout
    assert ("CLIF_KERNELS_CPU_CACHE_MB must be" in out.stderr) == warns, out.stderr

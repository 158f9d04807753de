"""Inputs an adversarial user passes: strided states, infinities and NaN, overflowing h, double
backward, dynamic-shape compile, torch.func, and the smaller API surprises. Each case compares
a fused backend with the reference (the `torch` backend) on the same input."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import clif_kernels
from checks import DEVICE, unavailable
from clif_kernels import extension
from clif_kernels.convert import clif_to_lif
from clif_kernels.modules import CLIFNode, LIFNode
from clif_kernels.options import make_options
from clif_kernels.reference import neuron_reference


def _fn(is_clif):
    return clif_kernels.clif if is_clif else clif_kernels.lif


def _run(backend, is_clif, x, v0=None, m0=None, **kw):
    """Outputs and gradients (of x and the given states) of a loss that weighs every output."""
    leaves = [None if t is None else t.detach().clone().requires_grad_()
              for t in (x, v0, m0 if is_clif else None)]
    args = {"v0": leaves[1]}
    if is_clif:
        args["m0"] = leaves[2]
    out = _fn(is_clif)(leaves[0], backend=backend, return_state=True, **args, **kw)
    g = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.rand(o.shape, generator=g, dtype=torch.float64)
                .to(o.device)).sum() for o in out)
    loss.backward()
    return list(out) + [t.grad for t in leaves if t is not None]


def _assert_same(res, ref, rtol=1e-5, atol=1e-5, skip=None):
    """Equal NaN places, equal infinities, finite values close; on the neurons (last dimension)
    not flagged in `skip`."""
    for a, b in zip(res, ref):
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        if skip is not None:
            a, b = a[..., ~skip], b[..., ~skip]
        assert torch.equal(torch.isnan(a), torch.isnan(b)), (a, b)
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)


# -- strided states -------------------------------------------------------------------------

def _states(kind, shape, device):
    """Views of tensors on `device` (a view moved with .to would arrive as a dense copy)."""
    n = int(np.prod(shape))
    g = torch.Generator().manual_seed(3)
    base = lambda *size, f=torch.randn: f(*size, generator=g).to(device)  # noqa: E731
    if kind == "expanded":
        return base(1).expand(n).reshape(shape), base(1, f=torch.rand).expand(n).reshape(shape)
    if kind == "sliced":
        return base(2 * n)[::2].reshape(shape), base(3 * n, f=torch.rand)[::3].reshape(shape)
    if kind == "offset":
        return base(n + 5)[5:].reshape(shape), base(n + 1, f=torch.rand)[1:].reshape(shape)
    # transposed: a [*] state whose memory order is not the neurons' order
    return base(*shape[::-1]).t(), base(*shape[::-1], f=torch.rand).t()


@pytest.mark.parametrize("kind", ["expanded", "sliced", "offset", "transposed"])
@pytest.mark.parametrize("is_clif", [True, False])
def test_strided_states(backend, kind, is_clif):
    shape = (6, 11) if kind == "transposed" else (66,)
    v0, m0 = _states(kind, shape, DEVICE[backend])
    if kind == "offset":
        assert v0.storage_offset() > 0 and m0.storage_offset() > 0
    else:
        assert not (v0.is_contiguous() or m0.is_contiguous())
    x = torch.randn(9, *shape, device=DEVICE[backend]) * 1.5 + 0.3
    _assert_same(_run(backend, is_clif, x, v0, m0), _run("reference", is_clif, x, v0, m0))


# -- infinities, NaN, overflowing h ---------------------------------------------------------

# N = 2 * 128 + 5: two full groups of the AVX-512 build and a tail of 5 neurons that takes the
# portable loops; 64-lane groups of the portable build; 4-neuron vectors on the GPU.
N_WIDE = 261
BAD = [("inf", float("inf")), ("-inf", -float("inf")), ("nan", float("nan")),
       ("overflow", 3e38)]
OPTION_SETS = [dict(), dict(v_reset=-0.2), dict(detach_reset=True),
               dict(v_reset=0.0, detach_reset=True, surrogate="sigmoid", decay_input=True),
               dict(tau=1e-30)]


def _bad_input(value, device):
    x = torch.randn(7, N_WIDE, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.3
    for t, n in [(0, 0), (1, 129), (2, 255), (3, 256), (4, 260), (6, 3), (1, 130), (2, 130)]:
        x[t, n] = value
    return x.to(device)


def _nonfinite_case(backend, name, value, opts, is_clif):
    x = _bad_input(value, DEVICE[backend])
    v0 = torch.zeros(N_WIDE, device=DEVICE[backend])
    skip = None
    if opts.get("tau") == 1e-30 and name in ("inf", "-inf"):
        # gamma = 1 - 1/tau = -1e30, so gamma * v overflows. The kernels compute
        # gamma * v + c * x as one fused multiply-add, whose exact product is finite: with an
        # infinite x, h is that infinity. The reference rounds the product to -+inf first and
        # gets inf - inf = NaN. Both are right to rounding; the neurons whose reference h is
        # NaN at some step are left out, every other neuron must agree.
        o = make_options(**opts)
        h = neuron_reference(x.cpu(), o, clif=is_clif, v0=v0.cpu(), return_h=True)[-1]
        skip = torch.isnan(h).any(0)
        assert skip.sum() < len(skip) // 10
    _assert_same(_run(backend, is_clif, x, v0, **opts), _run("reference", is_clif, x, v0, **opts),
                 skip=skip)


@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("name,value", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("is_clif", [True, False])
def test_non_finite_inputs_match_reference(backend, name, value, opts, is_clif):
    _nonfinite_case(backend, name, value, opts, is_clif)


@pytest.mark.parametrize("name,value", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("opts", OPTION_SETS[:3], ids=lambda o: ",".join(o) or "defaults")
def test_non_finite_inputs_portable_cpu_build(monkeypatch, name, value, opts):
    """The same through the C++ kernel's portable build (every neuron, not just the tail)."""
    if unavailable("cpp") is not None:
        pytest.skip(unavailable("cpp"))
    monkeypatch.setenv("CLIF_KERNELS_CPU_ISA", "baseline")
    _nonfinite_case("cpp", name, value, opts, True)


def test_non_finite_float64_cpp():
    """fp64 always takes the portable build."""
    if unavailable("cpp", torch.float64) is not None:
        pytest.skip(unavailable("cpp", torch.float64))
    x = _bad_input(float("inf"), "cpu").double()
    x[5, 7] = -float("inf")
    _assert_same(_run("cpp", True, x), _run("reference", True, x), rtol=1e-12, atol=1e-12)


# -- double backward ------------------------------------------------------------------------

@pytest.mark.parametrize("is_clif", [True, False])
def test_double_backward_matches_reference(backend, is_clif):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randn(10, 40, generator=g) * 0.8 + 0.6).to(DEVICE[backend])
    v00 = torch.randn(40, generator=g).to(DEVICE[backend])
    results = []
    for name in (backend, "reference"):
        x, v0 = x0.clone().requires_grad_(), v00.clone().requires_grad_()
        out = _fn(is_clif)(x, v0=v0, surrogate="sigmoid", backend=name, return_state=True)
        gx, gv = torch.autograd.grad(out[0].sum() + (out[1] ** 2).sum(), (x, v0),
                                     create_graph=True)
        results.append(torch.autograd.grad((gx ** 2).sum() + (gv ** 3).sum(), (x, v0)))
    for a, b in zip(*results):
        assert b.abs().max() > 0  # the second order is not trivially zero here
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_first_order_keeps_the_fused_backward(backend):
    """Without create_graph the backward is the fused kernel's (the gradients carry no graph)."""
    x = torch.randn(5, 30, device=DEVICE[backend], requires_grad=True)
    (gx,) = torch.autograd.grad(clif_kernels.clif(x, backend=backend).sum(), x)
    assert gx.grad_fn is None


# -- torch.compile with dynamic shapes, torch.func ------------------------------------------

def _compiled_matches_eager(fn, make_inputs, sizes):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for n in sizes:
        eager_in, comp_in = make_inputs(n), make_inputs(n)
        fn(*eager_in).backward()
        compiled(*comp_in).backward()
        for a, b in zip(comp_in, eager_in):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("is_clif", [True, False])
def test_compile_dynamic_shapes(backend, is_clif):
    dev = DEVICE[backend]

    def step(x, v0):
        out = _fn(is_clif)(x, v0=v0, tau=1.7, surrogate="sigmoid", return_state=True,
                           backend=backend)
        return out[0].sum() + (out[1] * out[1]).sum()

    def inputs(n):
        g = torch.Generator().manual_seed(n)
        return (torch.randn(n, 3, 2 * n + 1, generator=g).to(dev).requires_grad_(),
                torch.randn(3, 2 * n + 1, generator=g).to(dev).requires_grad_())

    _compiled_matches_eager(step, inputs, (5, 9, 12))


def test_compile_dynamic_shapes_module(backend):
    dev = DEVICE[backend]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), CLIFNode(step_mode="m", backend=backend),
                        nn.Linear(16, 3)).to(dev)

    def step(x):
        net[1].reset()
        return net(x).square().sum()

    def inputs(batch):
        g = torch.Generator().manual_seed(batch)
        return (torch.randn(4, batch, 6, generator=g).to(dev).requires_grad_(),)

    _compiled_matches_eager(step, inputs, (3, 5, 8))


def test_compile_before_any_eager_call():
    """The first call of a fresh process inside torch.compile (backend resolution, extension
    loading and Triton's import then happen at trace time, outside the graph)."""
    code = """
import torch, clif_kernels
from clif_kernels import backends
f = torch.compile(lambda x: clif_kernels.clif(x, tau=1.5).sum(), fullgraph=True, dynamic=True)
for n in (4, 6):
    x = torch.randn(n, 10, requires_grad=True)
    f(x).backward()
    y = x.detach().clone().requires_grad_()
    clif_kernels.clif(y, tau=1.5).sum().backward()
    assert torch.allclose(x.grad, y.grad, rtol=1e-5, atol=1e-6)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_constant_marker_is_what_torch_sets():
    from clif_kernels import backends

    def probe():
        return 1
    before = set(vars(probe))
    torch.compiler.assume_constant_result(probe)
    assert {k: vars(probe)[k] for k in set(vars(probe)) - before} == \
        {"_dynamo_marked_constant": True}
    assert backends.resolve_backend._dynamo_marked_constant is True


def test_func_transforms_are_refused_clearly():
    x = torch.randn(4, 3)
    for transform in (torch.func.grad, torch.vmap):
        with pytest.raises(RuntimeError, match="does not support torch.func"):
            transform(lambda t: clif_kernels.clif(t).sum())(x)


# -- the smaller surprises ------------------------------------------------------------------

def test_cpu_cache_limit_validates_its_argument():
    if unavailable("cpp") is not None:
        pytest.skip(unavailable("cpp"))
    for bad in (1.5, True, "10", None):
        with pytest.raises(TypeError, match="mib"):
            extension.set_cpu_cache_limit(bad)
    for bad in (-1, 2 ** 43):
        with pytest.raises(ValueError, match="mib"):
            extension.set_cpu_cache_limit(bad)
    old = extension.set_cpu_cache_limit(np.int64(64))
    assert extension.set_cpu_cache_limit(old) == 64


@pytest.mark.parametrize("name", ["reference", "cpp", "triton"])
def test_zero_steps_returns_new_state_tensors(name):
    if name != "reference" and unavailable(name) is not None:
        pytest.skip(unavailable(name))
    v0, m0 = torch.randn(5), torch.randn(5)
    _, vT, mT = clif_kernels.clif(torch.empty(0, 5), v0=v0, m0=m0, return_state=True,
                                  backend=name)
    assert torch.equal(vT, v0) and torch.equal(mT, m0)
    vT.add_(1.0)
    mT.add_(1.0)
    assert not torch.equal(vT, v0) and not torch.equal(mT, m0)


def test_step_mode_is_checked_on_assignment():
    node = CLIFNode()
    node.step_mode = "m"
    with pytest.raises(ValueError, match="step_mode"):
        node.step_mode = "bogus"
    assert node.step_mode == "m"


def test_surrogate_object_and_alpha_conflict():
    # A stand-in with SpikingJelly's class name and module.
    Sigmoid = type("Sigmoid", (), {"alpha": 4.0,
                                   "__module__": "spikingjelly.activation_based.surrogate"})
    with pytest.raises(ValueError, match="alpha"):
        CLIFNode(surrogate_function=Sigmoid(), alpha=0.5)
    with pytest.raises(ValueError, match="surrogate"):
        CLIFNode(surrogate="atan", surrogate_function=Sigmoid())
    assert CLIFNode(surrogate_function=Sigmoid()).opts.alpha == 4.0
    assert CLIFNode().opts.surrogate == "rectangle" and LIFNode().opts.surrogate == "sigmoid"


def test_clif_to_lif_keeps_state_seqs_and_needs_a_reset_value():
    net = nn.Sequential(nn.Linear(4, 4), CLIFNode(step_mode="m", store_state_seqs=True))
    with pytest.raises(TypeError, match="v_reset"):
        clif_to_lif(net, v_reset=None)
    lif = clif_to_lif(net, v_reset=-0.2)[1]
    assert isinstance(lif, LIFNode) and lif.store_state_seqs and lif.opts.v_reset == -0.2


@pytest.mark.parametrize("tau", [np.float32(2.0), np.float64(2.0), np.int64(2),
                                 torch.tensor(2.0), torch.tensor(2, dtype=torch.int32)])
def test_real_scalars_are_accepted(tau):
    x = torch.randn(6, 20)
    assert torch.equal(clif_kernels.clif(x, tau=tau), clif_kernels.clif(x, tau=2.0))


@pytest.mark.parametrize("tau", [np.bool_(True), torch.tensor([2.0]),
                                 torch.tensor(2.0, requires_grad=True), 1 + 2j])
def test_non_real_scalars_are_refused(tau):
    with pytest.raises(TypeError, match="tau"):
        clif_kernels.clif(torch.randn(3, 4), tau=tau)


# -- parameters out of the compute dtype's range ----------------------------------------------

# Finite in float64, but a constant of the kernels' float32 arithmetic is not a normal float32:
# (keyword arguments, the argument the error names).
OUT_OF_FLOAT32 = [
    (dict(v_reset=1e39), "v_reset"),
    (dict(v_threshold=-1e39), "v_threshold"),
    (dict(tau=1e-39), "tau"),
    (dict(tau=1e38), "tau"),                               # 1/tau is subnormal
    (dict(v_reset=1e-3, tau=1e36), "v_reset"),             # v_reset/tau is subnormal
    (dict(surrogate="rectangle", alpha=1e39), "alpha"),
    (dict(surrogate="soft_sign", alpha=1e-39), "alpha"),
    (dict(surrogate="triangle", alpha=1e-39), "alpha"),
    (dict(surrogate="triangle", alpha=1e-20), "alpha"),    # alpha^2 is subnormal
    (dict(surrogate="piecewise_leaky_relu", beta=1e-40), "beta"),
]


@pytest.mark.parametrize("name", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("kw,arg", OUT_OF_FLOAT32, ids=[str(k) for k, _ in OUT_OF_FLOAT32])
@pytest.mark.parametrize("is_clif", [True, False])
def test_parameters_out_of_float32_range_are_refused(name, kw, arg, is_clif):
    """Every backend refuses them for fp32/fp16/bf16 inputs, naming the argument and its
    limits (before, cpp and Triton returned NaN or a gradient of 0 where the reference raised or
    returned another value)."""
    if name != "reference" and unavailable(name) is not None:
        pytest.skip(unavailable(name))
    with pytest.raises(ValueError, match=rf"{arg}=.* out of range .*float32.*{arg} must be "
                                         r".*between [0-9.e+-]+ and [0-9.e+-]+"):
        _fn(is_clif)(torch.randn(4, 8), backend=name, return_state=True, **kw)


@pytest.mark.parametrize("kw,arg", OUT_OF_FLOAT32[:5] + OUT_OF_FLOAT32[6:8],
                         ids=[str(k) for k, _ in OUT_OF_FLOAT32[:5] + OUT_OF_FLOAT32[6:8]])
def test_float64_runs_what_float32_cannot(kw, arg):
    """The fp64 paths compute in float64, where these are in range: cpp equals the reference."""
    if unavailable("cpp", torch.float64) is not None:
        pytest.skip(unavailable("cpp", torch.float64))
    x = torch.randn(6, 16, dtype=torch.float64) * 2
    _assert_same(_run("cpp", True, x, **kw), _run("reference", True, x, **kw), rtol=1e-12,
                 atol=1e-12)


@pytest.mark.parametrize("kw,arg", [(dict(v_reset=1e300, tau=1e-300), "v_reset"),
                                    (dict(surrogate="triangle", alpha=1e-160), "alpha"),
                                    (dict(tau=1e-310), "tau")])
def test_parameters_out_of_float64_range_are_refused(kw, arg):
    with pytest.raises(ValueError, match=rf"{arg}=.* out of range .*float64"):
        clif_kernels.clif(torch.randn(4, 8, dtype=torch.float64), **kw)


def test_range_limits_are_those_of_the_constants():
    """The limits sit where a constant leaves the normal float32 range: 0.5/alpha for the
    rectangle (alpha <= 2^125), alpha^2 for the triangle (alpha >= 2^-63), 1/tau (tau <= 2^126)
    and tau itself (tau >= 2^-126)."""
    def err(**kw):
        return make_options(**kw).float32_error

    below = lambda v: float(np.nextafter(v, 0.0))  # noqa: E731
    above = lambda v: float(np.nextafter(v, np.inf))  # noqa: E731
    assert err(surrogate="rectangle", alpha=2.0 ** 125) is None
    assert "alpha" in err(surrogate="rectangle", alpha=above(2.0 ** 125))
    assert err(surrogate="triangle", alpha=2.0 ** -63) is None
    assert "alpha" in err(surrogate="triangle", alpha=below(2.0 ** -63))
    assert err(tau=2.0 ** 126) is None and "tau" in err(tau=above(2.0 ** 126))
    assert err(tau=2.0 ** -126) is None and "tau" in err(tau=below(2.0 ** -126))
    assert err(v_threshold=0.0, v_reset=0.0, beta=0.0, surrogate="piecewise_leaky_relu") is None


@pytest.mark.parametrize("name", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("is_clif", [True, False])
def test_zero_steps_backpropagate(name, is_clif):
    """T = 0: a loss over the (empty) spikes backpropagates on every backend, to a zero-size
    gradient of x and a zero gradient of v0 (the reference's spikes used to have no graph)."""
    if name != "reference" and unavailable(name) is not None:
        pytest.skip(unavailable(name))
    x = torch.empty(0, 3, 5, requires_grad=True)
    v0 = torch.randn(3, 5, requires_grad=True)
    spikes = _fn(is_clif)(x, v0=v0, backend=name)
    spikes.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert v0.grad is None or torch.equal(v0.grad, torch.zeros_like(v0))
    x2 = torch.empty(0, 4, requires_grad=True)
    _fn(is_clif)(x2, backend=name).sum().backward()
    assert x2.grad.shape == x2.shape

"""BatchNorm folded into the neuron: the op's scale, shift and residual against the float64
reference (outputs, final states and every gradient, for each fused backend), the errors that
name the argument, torch.compile, the BatchNormCLIF/BatchNormLIF modules against
nn.BatchNorm2d + the node, and `fold_batchnorm` on whole models against the unfused ones."""
import copy

import pytest
import torch
from torch import nn

from checks import DEVICE, unavailable
from clif_kernels import backends, clif, lif
from clif_kernels.batchnorm import BatchNormCLIF, BatchNormLIF, fold_batchnorm
from clif_kernels.modules import CLIFNode, LIFNode
from clif_kernels.options import make_options
from clif_kernels.reference import neuron_reference
from clif_kernels.tools.verify import NEAR, REFERENCE, RTOL, random_problem, rel_err

KINDS = ("affine", "residual", "both")
GRADS = ("x", "v0", "m0", "scale", "shift", "residual")


def _cdt(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def fold_problem(shape, dtype, kind, *, is_clif=True, with_state=True, seed=0, device="cpu"):
    """A random problem [T, B, C, *] and the fold's tensors: scale in [0.25, 1.75] (a BN's
    1/std times its weight), shift and residual of a third of the input's spread."""
    x, v0, m0, grads = random_problem(shape, dtype, with_state=with_state, is_clif=is_clif,
                                      seed=seed, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    C = shape[2]
    fold = {}
    if kind in ("affine", "both"):
        fold["scale"] = (torch.rand(C, generator=g) * 1.5 + 0.25).to(_cdt(dtype)).to(device)
        fold["shift"] = (torch.randn(C, generator=g) * 0.5).to(_cdt(dtype)).to(device)
    if kind in ("residual", "both"):
        fold["residual"] = (torch.randn(shape, generator=g) * 0.5).to(dtype).to(device)
    return x, v0, m0, fold, grads


def _u64(x, fold, channel_dim=2):
    """The neuron's input in float64, as the reference computes it."""
    u = x.double()
    if "scale" in fold:
        shape = [1] * (x.dim() - 1)
        shape[channel_dim % x.dim() - 1] = -1
        u = u * fold["scale"].double().view(shape) + fold["shift"].double().view(shape)
    if "residual" in fold:
        u = u + fold["residual"].double()
    return u


def near_jump(x, v0, m0, fold, is_clif, params, channel_dim=2):
    """[*] mask of the neurons whose float64 h comes within NEAR of the threshold or a
    surrogate's jump at some step (tools.verify.reference64's rule, on u)."""
    opts = make_options(**params)
    up = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    h = neuron_reference(_u64(x, fold, channel_dim).cpu(), opts, clif=is_clif, v0=up(v0),
                         m0=up(m0), return_h=True)[-1]
    edge = {"rectangle": opts.alpha / 2, "piecewise_leaky_relu": opts.alpha}.get(opts.surrogate)
    points = [opts.v_threshold] + ([opts.v_threshold - edge, opts.v_threshold + edge]
                                   if edge is not None else [])
    near = torch.zeros(h.shape, dtype=torch.bool)
    for p in points:
        near |= (h - p).abs() < NEAR * max(1.0, abs(p))
    return near.any(0) if h.shape[0] else torch.zeros(h.shape[1:], dtype=torch.bool)


def run_fold(fn, x, v0, m0, fold, grads, **kw):
    """Forward with return_state, then backward of sum(spikes gs) + sum(vT gvT) + sum(mT gmT);
    the outputs and the gradients of every input present."""
    leaves = {k: t.detach().clone().requires_grad_(True)
              for k, t in dict(fold, x=x, v0=v0, m0=m0).items() if t is not None}
    args = {k: t for k, t in leaves.items() if k != "x"}
    out = fn(leaves["x"], return_state=True, **args, **kw)
    spikes, vT = out[0], out[1]
    mT = out[2] if len(out) == 3 else None
    loss = (spikes.double() * grads["spikes"].double()).sum() + \
        (vT.double() * grads["vT"].double()).sum()
    if mT is not None:
        loss = loss + (mT.double() * grads["mT"].double()).sum()
    loss.backward()
    res = {"spikes": spikes.detach(), "vT": vT.detach(), "mT": None if mT is None else mT}
    for k in GRADS:
        res["grad_" + k] = leaves[k].grad if k in leaves else None
    return res


def check_fold(backend, shape, dtype, kind, is_clif=True, with_state=True, seed=0, **params):
    why = None if backend == REFERENCE else unavailable(backend, dtype)
    if why is not None:
        pytest.skip(why)
    dev = DEVICE.get(backend, "cpu")
    x, v0, m0, fold, grads = fold_problem(shape, dtype, kind, is_clif=is_clif,
                                          with_state=with_state, seed=seed, device=dev)
    bad = near_jump(x, v0, m0, fold, is_clif, params)
    # A neuron near a jump may fire either way; its output gradients are zeroed, so that it
    # adds nothing to the per-channel sums (grad_scale, grad_shift) on either side.
    keep = (~bad).to(dev)
    grads = {k: None if g is None else g * keep.to(g.dtype) for k, g in grads.items()}
    fn = clif if is_clif else lif
    res = run_fold(fn, x, v0, m0 if is_clif else None, fold, grads, backend=backend, **params)
    up = lambda t: None if t is None else t.double()  # noqa: E731
    ref = run_fold(fn, up(x), up(v0), up(m0) if is_clif else None,
                   {k: up(t) for k, t in fold.items()},
                   {k: up(g) for k, g in grads.items()}, backend=REFERENCE, **params)
    assert int(bad.sum()) <= max(2, 0.05 * bad.numel()), "too many neurons near a jump"
    for key, b in ref.items():
        a = res[key]
        assert (a is None) == (b is None), key
        if b is None:
            continue
        assert a.shape == b.shape, key
        assert not torch.isnan(a).any(), key
        if key in ("grad_scale", "grad_shift"):
            assert a.dtype == _cdt(dtype), key
            err = rel_err(a, b)
        else:
            assert a.dtype == dtype, key
            a, b = a.detach().cpu(), b.detach().cpu()
            sel = (lambda t: t[:, ~bad]) if a.dim() == bad.dim() + 1 else (lambda t: t[~bad])
            if key == "spikes":
                assert int((sel(a).double() != sel(b)).sum()) == 0, "spikes differ"
                continue
            err = rel_err(sel(a), sel(b))
        assert err <= RTOL[dtype], f"{key}: relative error {err:.3g} > {RTOL[dtype]:.3g}"


# [T, B, C, H, W] with C odd or 1 and N = B C H W not a multiple of any block; T = 16: whole
# segments after a checkpoint.
SHAPES = [(1, 2, 3, 5, 7), (2, 3, 1, 7, 11), (7, 2, 5, 3, 3), (9, 1, 3, 13, 5),
          (16, 1, 3, 3, 5)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("is_clif", [True, False])
def test_fold_fp32(backend, kind, shape, is_clif):
    check_fold(backend, shape, torch.float32, kind, is_clif=is_clif,
               with_state=shape[0] % 2 == 1, seed=sum(shape))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_fold_dtypes(backend, kind, dtype):
    check_fold(backend, (9, 2, 3, 5, 7), dtype, kind, seed=3)


@pytest.mark.parametrize("v_reset,surrogate,decay_input,detach_reset",
                         [(-0.2, "sigmoid", True, False), (None, "atan", False, True),
                          (0.0, "triangle", True, True)])
def test_fold_options(backend, v_reset, surrogate, decay_input, detach_reset):
    check_fold(backend, (7, 2, 3, 4, 5), torch.float32, "both", v_reset=v_reset,
               surrogate=surrogate, decay_input=decay_input, detach_reset=detach_reset,
               seed=11)


def test_fold_reference_backend():
    check_fold(REFERENCE, (7, 2, 3, 4, 5), torch.float32, "both", seed=5)


@pytest.mark.parametrize("channel_dim,channels_last", [(1, False), (3, False), (-2, False),
                                                      (2, True)])
def test_fold_any_channel_dim(channel_dim, channels_last):
    """The channel along another dim, and a channels_last input (the kernels' layout then puts
    the channels innermost): the float64 reference's spikes and gradients."""
    if unavailable("cpp") is not None:
        pytest.skip(unavailable("cpp"))
    g = torch.Generator().manual_seed(channel_dim + 7 * channels_last)
    x = torch.randn(5, 3, 4, 6, 5, generator=g) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    C = x.shape[channel_dim]
    fold = {"scale": torch.rand(C, generator=g) + 0.5, "shift": torch.randn(C, generator=g) * 0.3}
    bad = near_jump(x, None, None, fold, True, {}, channel_dim)
    grads = {"spikes": torch.randn(x.shape, generator=g) * ~bad,
             "vT": torch.randn(x.shape[1:], generator=g) * ~bad,
             "mT": torch.randn(x.shape[1:], generator=g) * ~bad}
    res = run_fold(clif, x, None, None, fold, grads, backend="cpp", channel_dim=channel_dim)
    ref = run_fold(clif, x.double(), None, None, {k: t.double() for k, t in fold.items()},
                   {k: t.double() for k, t in grads.items()}, backend=REFERENCE,
                   channel_dim=channel_dim)
    assert res["grad_x"].stride() == x.stride()
    assert torch.equal(res["spikes"][:, ~bad].double(), ref["spikes"][:, ~bad])
    for key in ("vT", "mT", "grad_x", "grad_scale", "grad_shift"):
        a, b = res[key], ref[key]
        if key in ("vT", "mT", "grad_x"):
            a, b = (a[:, ~bad], b[:, ~bad]) if key == "grad_x" else (a[~bad], b[~bad])
        assert rel_err(a, b) <= RTOL[torch.float32], key


@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (4, 0, 3, 4), (3, 2, 3, 0)])
def test_fold_empty(backend, shape):
    dev = DEVICE[backend]
    x = torch.randn(shape, device=dev, requires_grad=True)
    scale = torch.rand(3, device=dev, requires_grad=True)
    shift = torch.randn(3, device=dev, requires_grad=True)
    res = torch.randn(shape, device=dev, requires_grad=True)
    s, vT, mT = clif(x, scale=scale, shift=shift, residual=res, backend=backend,
                     return_state=True)
    assert s.shape == x.shape
    (s.sum() + vT.sum() + mT.sum()).backward()
    for t in (x, scale, shift, res):
        assert t.grad is not None and t.grad.shape == t.shape
        assert not t.grad.any()


def _cpp():
    if unavailable("cpp") is not None:
        pytest.skip(unavailable("cpp"))


@pytest.mark.parametrize("kw,match", [
    (dict(scale=torch.ones(4), shift=torch.zeros(4)), r"scale must have shape \[3\]"),
    (dict(scale=torch.ones(3), shift=torch.zeros(2)), r"shift must have shape \[3\]"),
    (dict(scale=torch.ones(3, dtype=torch.float64), shift=torch.zeros(3)),
     "scale must have dtype torch.float32"),
    (dict(scale=torch.ones(3)), "scale and shift must be given together"),
    (dict(scale=torch.ones(3), shift=torch.zeros(3, device="meta")), "shift must be on"),
    (dict(residual=torch.zeros(4, 2, 3)), "residual must have the shape of x_seq"),
    (dict(residual=torch.zeros(4, 2, 3, 5, dtype=torch.float64)), "residual must have the dtype"),
    (dict(scale=torch.ones(3), shift=torch.zeros(3), channel_dim=0), "channel_dim must name"),
    (dict(scale=torch.ones(3), shift=torch.zeros(3), channel_dim=2.0),
     "channel_dim must be an int"),
])
def test_fold_bad_arguments_are_named(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        clif(torch.randn(4, 2, 3, 5), backend=REFERENCE, **kw)


@pytest.mark.parametrize("name", ["cpp", "triton"])
@pytest.mark.parametrize("kw,match", [
    (dict(scale=torch.ones(4), shift=torch.zeros(4), inner=5),
     "channel layout does not match x"),
    (dict(scale=torch.ones(2, 2), shift=torch.zeros(2, 2)), r"scale must be \[C\]"),
    (dict(scale=torch.ones(3, dtype=torch.float16), shift=torch.zeros(3)),
     "scale must have dtype"),
    (dict(scale=torch.ones(3), shift=torch.zeros(3), inner=0), "inner must be >= 1"),
    (dict(residual=torch.zeros(4, 31)), "residual must have shape"),
    (dict(residual=torch.zeros(4, 30, dtype=torch.float64)), "residual must have dtype"),
    (dict(shift=torch.zeros(3)), "scale and shift must be given together"),
])
def test_op_checks_the_fold(name, kw, match):
    """The ops themselves (C++ and Triton) check the fold's arguments with the same words."""
    if unavailable(name) is not None:
        pytest.skip(unavailable(name))
    from clif_kernels.ops import fused_options
    pair = backends.REGISTRY[name].op_pair()
    x = torch.randn(4, 30, device=DEVICE[name])
    kw = {k: v.to(DEVICE[name]) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    args = [kw.get(k, d) for k, d in (("scale", None), ("shift", None), ("residual", None),
                                      ("inner", 1))]
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        pair.fwd(x, None, None, *fused_options(make_options(), True), False, True, *args)


def test_fold_compiles_fullgraph():
    """torch.compile(fullgraph=True) of a folded call: the same outputs and gradients as
    eager (the op's fake kernel and autograd formula under AOT autograd)."""
    _cpp()
    torch._dynamo.reset()
    x, v0, m0, fold, grads = fold_problem((5, 2, 3, 4, 4), torch.float32, "both", seed=7)

    def f(x, scale, shift, residual, v0, m0):
        return clif(x, scale=scale, shift=shift, residual=residual, v0=v0, m0=m0,
                    return_state=True, backend="cpp")

    compiled = torch.compile(f, fullgraph=True)
    results = []
    for fn in (f, compiled):
        leaves = [t.detach().clone().requires_grad_() for t in
                  (x, fold["scale"], fold["shift"], fold["residual"], v0, m0)]
        s, vT, mT = fn(*leaves)
        ((s * grads["spikes"]).sum() + (vT * grads["vT"]).sum()
         + (mT * grads["mT"]).sum()).backward()
        results.append([s, vT, mT] + [t.grad for t in leaves])
    names = ["spikes", "vT", "mT", "x", "scale", "shift", "residual", "v0", "m0"]
    for name, a, b in zip(names, *results):
        if name in ("scale", "shift"):  # per-channel sums, which inductor may order otherwise
            assert rel_err(b, a) <= RTOL[torch.float32], name
        else:
            assert torch.equal(a, b), name


def test_fold_double_backward_matches_reference():
    """create_graph=True runs the reference's formula (the kernels give first order only): the
    second-order gradients of every fold input agree with the reference backend's."""
    _cpp()
    x, v0, m0, fold, grads = fold_problem((3, 2, 3, 2, 2), torch.float64, "both", seed=9)
    out = []
    for b in ("cpp", REFERENCE):
        leaves = [t.detach().clone().requires_grad_() for t in
                  (x, fold["scale"], fold["shift"], fold["residual"])]
        s, vT, mT = clif(leaves[0], scale=leaves[1], shift=leaves[2], residual=leaves[3],
                         surrogate="sigmoid", return_state=True, backend=b)
        loss = (s * grads["spikes"]).sum() + (vT ** 2).sum()
        g = torch.autograd.grad(loss, leaves, create_graph=True)
        sum(gi.square().sum() for gi in g).backward()
        out.append([t.grad for t in leaves])
    for a, b in zip(*out):
        assert rel_err(a, b) < RTOL[torch.float64]


# ----------------------------------------------------------------------------------------------
# Modules


def _pair(module_cls, C, dtype, backend, **neuron_kw):
    node_cls = CLIFNode if module_cls is BatchNormCLIF else LIFNode
    bn = nn.BatchNorm2d(C).to(dtype)
    with torch.no_grad():  # weights and statistics away from the defaults
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    node = node_cls(step_mode="m", backend=backend, **neuron_kw)
    fused = module_cls(C, backend=backend, **neuron_kw).to(dtype)
    fused.load_state_dict(bn.state_dict())  # the unfused pair's keys
    return bn, node, fused


def _unfused_step(bn, node, x, residual):
    T, B = x.shape[:2]
    u = bn(x.flatten(0, 1)).unflatten(0, (T, B))
    return node(u if residual is None else u + residual)


@pytest.mark.parametrize("module_cls", [BatchNormCLIF, BatchNormLIF])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("with_residual", [False, True])
def test_module_equals_batchnorm_and_node(module_cls, momentum, with_residual):
    """float64: outputs, every gradient (x, weight, bias, residual) and the running statistics
    over three training steps, then eval mode, equal to nn.BatchNorm2d + the node's."""
    _cpp()
    torch.manual_seed(0)
    bn, node, fused = _pair(module_cls, 3, torch.float64, "cpp")
    bn.momentum = fused.momentum = momentum
    for step in range(4):
        train = step < 3
        bn.train(train), fused.train(train)
        x = torch.randn(4, 2, 3, 5, 5, dtype=torch.float64) * 2 + 0.5
        r = torch.randn_like(x) * 0.5 if with_residual else None
        outs = []
        for run in (lambda xx, rr: _unfused_step(bn, node, xx, rr),
                    lambda xx, rr: fused(xx, residual=rr)):
            node.reset(), fused.reset()
            xx = x.clone().requires_grad_()
            rr = None if r is None else r.clone().requires_grad_()
            s = run(xx, rr)
            g = torch.randn(s.shape, generator=torch.Generator().manual_seed(step),
                            dtype=s.dtype)
            (s * g).sum().backward()
            outs.append((s, xx.grad, None if rr is None else rr.grad))
        (s1, gx1, gr1), (s2, gx2, gr2) = outs
        assert torch.equal(s1, s2)
        assert rel_err(gx2, gx1) < RTOL[torch.float64]
        if with_residual:
            assert rel_err(gr2, gr1) < RTOL[torch.float64]
        for name in ("weight", "bias"):
            a, b = getattr(fused, name).grad, getattr(bn, name).grad
            assert rel_err(a, b) < RTOL[torch.float64], name
            getattr(fused, name).grad = getattr(bn, name).grad = None
        for name, buf in bn.named_buffers():
            assert rel_err(fused.get_buffer(name).double(), buf.double()) < \
                RTOL[torch.float64], name


def test_module_fp32_within_tolerance():
    """float32: spikes equal away from the threshold, gradients within float32's tolerance, of
    the float64 unfused pair."""
    _cpp()
    torch.manual_seed(1)
    bn, node, fused = _pair(BatchNormCLIF, 5, torch.float32, "cpp")
    bn64, node64 = copy.deepcopy(bn).double(), CLIFNode(step_mode="m", backend=REFERENCE)
    x = torch.randn(7, 2, 5, 3, 3) * 1.5 + 0.3
    r = torch.randn_like(x) * 0.5
    x64, r64 = x.double().requires_grad_(), r.double().requires_grad_()
    T, B = x.shape[:2]
    u64 = bn64(x64.flatten(0, 1)).unflatten(0, (T, B)) + r64
    z = (neuron_reference(u64.detach(), node64.opts, return_h=True)[-1]
         - node64.v_threshold).abs()
    alpha = node64.opts.alpha  # the rectangle's edges at |z| = alpha / 2
    bad = ((z < NEAR) | ((z - alpha / 2).abs() < NEAR)).any(0)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * (~bad)
    s64 = node64(u64)
    (s64 * g.double()).sum().backward()
    xx, rr = x.clone().requires_grad_(), r.clone().requires_grad_()
    s = fused(xx, residual=rr)
    (s * g).sum().backward()
    assert torch.equal(s[:, ~bad], s64[:, ~bad].float())
    assert rel_err(xx.grad, x64.grad) <= RTOL[torch.float32]
    assert rel_err(rr.grad, r64.grad) <= RTOL[torch.float32]
    for name in ("weight", "bias"):
        assert rel_err(getattr(fused, name).grad, getattr(bn64, name).grad) \
            <= RTOL[torch.float32], name


def test_module_state_dict_is_batchnorms():
    bn, node, fused = _pair(BatchNormCLIF, 4, torch.float32, "cpp")
    assert fused.state_dict().keys() == bn.state_dict().keys()
    again = BatchNormCLIF.from_modules(bn, CLIFNode(tau=3.0, v_reset=0.0))
    assert again.neuron.tau == 3.0 and again.neuron.v_reset == 0.0
    for k, v in bn.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_module_refuses_bad_input():
    fused = BatchNormCLIF(3)
    with pytest.raises(ValueError, match="x has 4 channels"):
        fused(torch.randn(2, 2, 4, 3, 3))
    with pytest.raises(ValueError, match="multi-step input"):
        fused(torch.randn(2, 3))
    with pytest.raises(ValueError, match="step_mode must be 'm'"):
        BatchNormCLIF(3, step_mode="s")


# ----------------------------------------------------------------------------------------------
# The transform on whole models, in float64: outputs, loss, every gradient and the running
# statistics after a few training steps, and eval mode.


def _compare_models(net, folded, make_input, reset, steps=3):
    opt = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (net, folded)]
    for step in range(steps + 1):
        train = step < steps
        x = make_input(step)
        results = []
        for m, o in zip((net, folded), opt):
            m.train(train)
            reset(m)
            out = m(x)
            loss = out.square().mean()
            o.zero_grad()
            if train:
                loss.backward()
                results.append((out, loss, {k: p.grad.clone() for k, p in
                                            m.named_parameters()}))
                o.step()
            else:
                results.append((out, loss, {}))
        (o1, l1, g1), (o2, l2, g2) = results
        assert rel_err(o2, o1) < RTOL[torch.float64]
        assert rel_err(l2, l1) < RTOL[torch.float64]
        assert g1.keys() == g2.keys()
        for k in g1:
            assert rel_err(g2[k], g1[k]) < RTOL[torch.float64], k
        b1, b2 = dict(net.named_buffers()), dict(folded.named_buffers())
        assert b1.keys() == b2.keys()
        for k in b1:
            assert rel_err(b2[k].double(), b1[k].double()) < RTOL[torch.float64], k


def test_transform_our_resnet18():
    _cpp()
    from clif_kernels.tools.models import SpikingResNet18
    torch.manual_seed(0)
    net = SpikingResNet18(lambda: CLIFNode(step_mode="m", backend="cpp"), width=4).double()
    folded = fold_batchnorm(copy.deepcopy(net))
    # The stem, and both neurons of each of the 8 blocks.
    assert folded.folded == 1 + 8 * 2
    assert folded.state_dict().keys() == net.state_dict().keys()
    folded.load_state_dict(net.state_dict())
    gen = torch.Generator().manual_seed(1)
    _compare_models(net, folded,
                    lambda step: torch.rand(3, 2, 3, 8, 8, generator=gen, dtype=torch.float64),
                    lambda m: [n.reset() for n in m.modules() if isinstance(n, CLIFNode)])


def test_transform_spikingjelly_resnet18():
    _cpp()
    pytest.importorskip("spikingjelly.activation_based.model.spiking_resnet")
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.model import spiking_resnet
    from clif_kernels import spikingjelly as cks
    torch.manual_seed(0)
    net = spiking_resnet.spiking_resnet18(spiking_neuron=cks.ComplementaryLIFNode,
                                          num_classes=10)
    functional.set_step_mode(net, "m")
    net = net.double()
    folded = fold_batchnorm(copy.deepcopy(net))
    # bn1 of the stem, and sn1, sn2 (with the shortcut) of each of the 8 blocks.
    assert folded.folded == 1 + 8 * 2
    assert folded.state_dict().keys() == net.state_dict().keys()
    gen = torch.Generator().manual_seed(1)
    _compare_models(net, folded,
                    lambda step: torch.rand(2, 2, 3, 16, 16, generator=gen,
                                            dtype=torch.float64),
                    functional.reset_net, steps=2)


def test_transform_leaves_other_neurons_alone():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.act = nn.ReLU()
            self.bn2 = nn.BatchNorm2d(3)
            self.sn = CLIFNode(step_mode="m", backend=REFERENCE)

        def forward(self, x):
            y = self.act(self.bn(x.flatten(0, 1))).unflatten(0, x.shape[:2])
            # bn2's output is used twice: folding would hide it from one of them.
            z = self.bn2(y.flatten(0, 1)).unflatten(0, x.shape[:2])
            return self.sn(z) + z

    net = Block()
    folded = fold_batchnorm(copy.deepcopy(net))
    assert folded.folded == 0
    x = torch.randn(2, 2, 3, 4, 4)
    assert torch.equal(folded(x), net(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_keeps_no_bn_output(dtype):
    """What autograd keeps (distinct storages, by saved_tensors_hooks): the folded module keeps
    x once (the op and the statistics' backward share it) and [C]-sized tensors; the unfused
    BatchNorm2d + node keep x and BN's output, T B C H W elements more (docs/memory.md)."""
    _cpp()
    bn, node, fused = _pair(BatchNormCLIF, 3, torch.float32, "cpp")
    x = (torch.randn(4, 2, 3, 5, 5) * 1.5).to(dtype).requires_grad_()

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            if t.numel():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        folded = saved_bytes(lambda: fused(x))
        unfused = saved_bytes(lambda: _unfused_step(bn, node, x, None))
    elt = x.numel() * x.element_size()
    # x itself, plus per-channel tensors (mean, scale, shift: a few times C values).
    assert elt <= folded <= elt + 64 * 3 * 8
    assert unfused - folded >= elt


def test_module_unfused_path_when_the_node_cannot_fold():
    """A node recording per-step states cannot take the fold: the module then runs BN and the
    node as separate calls, with the same outputs, gradients and statistics."""
    _cpp()
    torch.manual_seed(3)
    a = BatchNormCLIF(3, backend="cpp").double()
    b = BatchNormCLIF(3, backend="cpp", store_state_seqs=True).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 2, 3, 4, 4, dtype=torch.float64) * 2
    r = torch.randn_like(x)
    out = []
    for m in (a, b):
        xx = x.clone().requires_grad_()
        s = m(xx, residual=r)
        (s * torch.arange(s.numel(), dtype=s.dtype).view(s.shape).sin()).sum().backward()
        out.append((s, xx.grad, m.weight.grad, m.running_mean.clone(), m.running_var.clone()))
    assert b.neuron.v_seq is not None  # it did take the unfused path
    for p, q in zip(*out):
        assert rel_err(q, p) < RTOL[torch.float64]


def _peak_allocated(fn):
    """The most bytes that `fn` held at once through torch's CPU allocator (the profiler's
    memory events: every allocation, a TensorIterator's internal dtype copies included)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fold_grads_make_no_full_size_temporaries(dtype):
    """The fold's backward formula (the gradients of x, scale and shift from that of u) holds,
    beside its output gx, under 3/8 of [T, N]'s fp32 bytes at once (it runs over chunks of time
    steps), with the values of the one-pass formula: what it added at the backward's peak was a
    full-size fp32 product, and in bf16 fp32 copies of the gradient, x and gx besides (8 and 14
    bytes per element in all, against 4.5 and 3 now)."""
    from clif_kernels.ops import _fold_grads
    g = torch.Generator().manual_seed(0)
    T, C = 8, 16
    x = torch.randn((T, 2, C, 16, 16), generator=g).to(dtype)
    gu = torch.randn((T, 2, C, 16, 16), generator=g).to(dtype)
    scale = torch.rand(C, generator=g) + 0.5
    out = []
    peak = _peak_allocated(lambda: out.extend(_fold_grads(gu, x, scale, None, 16 * 16)))
    gx, gscale, gshift, gres = out
    assert gres is None
    assert peak <= x.numel() * (x.element_size() + 1.5)  # gx + 3/8 of fp32 [T, N]
    # The one-pass formula's values: gx exactly, the sums to fp32 rounding.
    shape = (T, 2, C, 256)
    u32 = gu.view(shape).float()
    assert torch.equal(gx, (u32 * scale.view(C, 1)).to(dtype).view(x.shape))
    torch.testing.assert_close(gscale, (u32 * x.view(shape).float()).sum((0, 1, 3)))
    torch.testing.assert_close(gshift, u32.sum((0, 1, 3)))

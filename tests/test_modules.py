"""The neuron modules: step modes, carried state, reset/detach, SpikingJelly surrogate mapping
and equivalence, CLIF-to-LIF conversion."""
import pytest
import torch
from torch import nn

import clif_kernels
from clif_kernels import CLIFNode, LIFNode, backends
from clif_kernels.convert import clif_to_lif
from clif_kernels.modules import surrogate_spec
from clif_kernels.tools.verify import rel_err

try:
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate
except Exception:  # not installed (CI), or its dependencies are missing
    sj_neuron = None


def _x(T=6, N=(3, 17)):
    return torch.randn(T, *N) * 1.5 + 0.3


@pytest.mark.parametrize("cls,fn", [(CLIFNode, clif_kernels.clif), (LIFNode, clif_kernels.lif)])
def test_multi_step_equals_functional(cls, fn):
    node = cls(step_mode="m", backend="reference")
    x = _x()
    s = node(x)
    o = node.opts
    ref = fn(x, tau=o.tau, v_threshold=o.v_threshold, v_reset=o.v_reset,
             decay_input=o.decay_input, surrogate=o.surrogate, alpha=o.alpha,
             return_state=True, backend="reference")
    assert torch.equal(s, ref[0]) and torch.equal(node.v, ref[1])
    if cls is CLIFNode:
        assert torch.equal(node.m, ref[2])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("cls", [CLIFNode, LIFNode])
def test_single_steps_equal_one_sequence(backend, cls):
    """T single-step calls carry the state exactly as one multi-step call, gradients included
    (they flow through the carried state into earlier calls)."""
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)
    x = _x()
    g = torch.randn_like(x)
    xs, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    single, multi = cls(step_mode="s", backend=backend), cls(step_mode="m", backend=backend)
    out_s = torch.stack([single(xs[t]) for t in range(x.shape[0])])
    out_m = multi(xm)
    assert torch.equal(out_s, out_m)
    torch.testing.assert_close(single.v, multi.v, rtol=1e-6, atol=1e-6)
    ((out_s * g).sum() + single.v.sum()).backward()
    ((out_m * g).sum() + multi.v.sum()).backward()
    torch.testing.assert_close(xs.grad, xm.grad, rtol=1e-5, atol=1e-6)


def test_reset_and_detach():
    node = CLIFNode(step_mode="m", backend="reference")
    x = _x().requires_grad_()
    node(x)
    assert node.v.requires_grad and node.m.requires_grad
    node.detach()
    assert not node.v.requires_grad and not node.m.requires_grad
    v_before = node.v.clone()
    node(x.detach())
    assert not torch.equal(node.v, v_before)
    node.reset()
    assert node.v is None and node.m is None
    fresh = CLIFNode(step_mode="m", backend="reference")
    assert torch.equal(node(x.detach()), fresh(x.detach()))


def test_state_restarts_when_batch_shape_changes():
    node = CLIFNode(step_mode="m", backend="reference")
    node(_x(N=(4, 5)))
    out = node(_x(N=(2, 5)))
    assert out.shape == (6, 2, 5) and node.v.shape == (2, 5)


def _sj_standin(name, **params):
    """A stand-in for a SpikingJelly 2.0 surrogate object (its class name and module), so that
    the mapping is checked where SpikingJelly is not installed; tests/test_spikingjelly.py
    checks the real classes against SpikingJelly's neurons."""
    cls = type(name, (), {"__module__": "spikingjelly.activation_based.surrogate"})
    obj = cls()
    obj.__dict__.update(params)
    return obj


def test_surrogate_mapping():
    assert surrogate_spec("sigmoid", None) == ("sigmoid", None, None)
    # SpikingJelly's Rect(a): height a on the open window |z| < 0.5/a = piecewise_leaky_relu
    # with w = 0.5/a and c = 0 (the paper's rectangle has the closed window).
    assert surrogate_spec(_sj_standin("Rect", alpha=2.0)) == ("piecewise_leaky_relu", 0.25, 0.0)
    assert surrogate_spec(_sj_standin("PiecewiseLeakyReLU", w=0.5, c=0.1)) == \
        ("piecewise_leaky_relu", 0.5, 0.1)
    # PiecewiseQuadratic(a): a - a^2 |z| = the triangle with alpha 1/a.
    assert surrogate_spec(_sj_standin("PiecewiseQuadratic", alpha=4.0)) == ("triangle", 0.25, None)
    for name, ours in (("ATan", "atan"), ("Sigmoid", "sigmoid"), ("Erf", "erf"),
                       ("PiecewiseExp", "piecewise_exp"), ("SoftSign", "soft_sign"),
                       ("SuperSpike", "super_spike")):
        assert surrogate_spec(_sj_standin(name, alpha=3.0)) == (ours, 3.0, None)
    with pytest.raises(ValueError, match="spiking=False"):
        surrogate_spec(_sj_standin("Sigmoid", alpha=4.0, spiking=False))
    with pytest.raises(ValueError, match="must be > 0"):
        surrogate_spec(_sj_standin("Rect", alpha=0.0))
    # Only SpikingJelly's classes: a look-alike elsewhere, or an unknown one, is refused.
    for obj in (type("PiecewiseExp", (), {"alpha": 1.0})(), _sj_standin("QPseudoSpike", alpha=2.0)):
        with pytest.raises(ValueError, match="unsupported surrogate.*rectangle.*Rect"):
            surrogate_spec(obj)
    with pytest.raises(ValueError, match="step_mode"):
        CLIFNode(step_mode="x")
    with pytest.raises(TypeError, match="store_state_seqs"):
        CLIFNode(store_state_seqs="yes")


def test_spikingjelly_attribute_names():
    node = LIFNode(tau=3.0, v_threshold=0.5, v_reset=-0.1, decay_input=False,
                   detach_reset=True, surrogate="piecewise_leaky_relu", alpha=0.3, beta=0.02)
    assert (node.tau, node.v_threshold, node.v_reset, node.decay_input, node.detach_reset) == \
        (3.0, 0.5, -0.1, False, True)
    assert (node.opts.alpha, node.opts.beta) == (0.3, 0.02)
    with pytest.raises(AttributeError):  # read-only: the options are validated once
        node.tau = 2.0


def test_clif_to_lif():
    net = nn.Sequential(nn.Linear(5, 5), CLIFNode(step_mode="m", tau=3.0, v_threshold=0.8),
                        nn.Sequential(nn.Linear(5, 5), CLIFNode(step_mode="m")))
    clif_to_lif(net, v_reset=-0.2)
    nodes = [m for m in net.modules() if isinstance(m, (CLIFNode, LIFNode))]
    assert len(nodes) == 2 and all(isinstance(m, LIFNode) for m in nodes)
    o = nodes[0].opts
    assert (o.tau, o.v_threshold, o.v_reset, o.decay_input, o.surrogate) == \
        (3.0, 0.8, -0.2, False, "rectangle")
    assert net(torch.randn(4, 2, 5)).shape == (4, 2, 5)


@pytest.mark.skipif(sj_neuron is None, reason="SpikingJelly 2.0 is not installed")
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_matches_spikingjelly(alpha):
    """A SpikingJelly network with our CLIFNode gives the same spikes, states and gradients as
    with SpikingJelly's ComplementaryLIFNode; reset_net and detach_net drive our node."""
    torch.manual_seed(0)
    lin = nn.Linear(7, 9)
    ours = nn.Sequential(lin, CLIFNode(step_mode="m",
                                       surrogate_function=sj_surrogate.Rect(alpha=alpha)))
    theirs = nn.Sequential(lin, sj_neuron.ComplementaryLIFNode(
        step_mode="m", surrogate_function=sj_surrogate.Rect(alpha=alpha)))
    x = torch.randn(8, 3, 7) * 2
    grads = []
    for net in (ours, theirs):
        lin.zero_grad()
        s = net(x)
        (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum().backward()
        grads.append((s.detach(), net[1].v.detach().clone(), net[1].m.detach().clone(),
                      lin.weight.grad.clone()))
        sj_functional.detach_net(net)
        assert not net[1].v.requires_grad
        sj_functional.reset_net(net)
    (s1, v1, m1, g1), (s2, v2, m2, g2) = grads
    assert torch.equal(s1, s2)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(g1, g2)
    assert ours[1].v is None
    assert sj_surrogate.Rect(alpha=alpha).alpha == alpha  # the object is left as it was


class _Block(nn.Module):
    """conv -> bn -> CLIF over T steps: the unit of a spiking ResNet."""

    def __init__(self, backend):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.node = CLIFNode(step_mode="m", backend=backend)

    def forward(self, x):  # x: [T, B, C, H, W]
        T, B = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (T, B))
        return self.node(y)


def _block_cases():
    """(backend, device) pairs that run here: torch/cpp/triton(interpreted) on the CPU, and
    torch/cuda/triton on the GPU when there is one."""
    cases = [(b, "cpu") for b in ("reference", "cpp", "triton")]
    if torch.cuda.is_available():
        cases += [(b, "cuda") for b in ("reference", "cuda", "triton")]
    return [pytest.param(b, d, id=f"{b}-{d}") for b, d in cases
            if backends.unavailable_reason(b, torch.device(d), torch.float32) is None]


@pytest.mark.parametrize("backend,device", _block_cases())
def test_block_compiles_fullgraph(backend, device):
    """A conv-bn-CLIF block, T=4, compiles with fullgraph=True (no graph break) forward and
    backward, and matches eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    blk = _Block(backend).to(device)
    x = torch.randn(4, 2, 3, 8, 8, device=device)
    eager = blk(x)
    eager.sum().backward()
    g_eager = blk.conv.weight.grad.clone()
    blk.zero_grad()
    blk.node.reset()
    out = torch.compile(blk, fullgraph=True)(x)
    out.sum().backward()
    assert torch.equal(out, eager)
    # Inductor reorders the conv and batch-norm reductions: fp32 rounding, measured normwise.
    assert rel_err(blk.conv.weight.grad, g_eager) < 1e-5


def _autocast_cases():
    cases = [pytest.param(c.values[0], c.values[1], torch.bfloat16, id=f"{c.id}-bf16")
             for c in _block_cases()]
    cases += [pytest.param(c.values[0], c.values[1], torch.float16, id=f"{c.id}-fp16")
              for c in _block_cases() if c.values[1] == "cuda"]
    return cases


@pytest.mark.parametrize("backend,device,dtype", _autocast_cases())
def test_trains_under_autocast(backend, device, dtype):
    """Under autocast (bf16 on CPU, bf16 and fp16 on GPU) the neuron takes the low-precision
    input as it comes, computes in fp32 inside, and a conv-bn-CLIF network trains: finite loss
    and gradients, weights move."""
    torch.manual_seed(0)
    blk = _Block(backend).to(device)
    head = nn.Linear(8, 2).to(device)
    opt = torch.optim.SGD(list(blk.parameters()) + list(head.parameters()), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10, enabled=dtype == torch.float16)
    seen = []
    blk.node.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out.dtype)))
    x = torch.randn(4, 4, 3, 8, 8, device=device) * 2
    y = torch.randint(0, 2, (4,), device=device)
    w0 = blk.conv.weight.detach().clone()
    for _ in range(3):
        with torch.autocast(device, dtype=dtype):
            s = blk(x)                                   # [T, B, 8, H, W]
            logits = head(s.float().mean((0, 3, 4)))
            loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        assert torch.isfinite(loss) and torch.isfinite(blk.conv.weight.grad).all()
        scaler.step(opt)
        scaler.update()
        blk.node.reset()
    assert all(o == i for i, o in seen), "spikes come back in the input's dtype"
    assert any(i == dtype for i, _ in seen), seen
    assert not torch.equal(blk.conv.weight, w0)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("cls", [CLIFNode, LIFNode])
def test_store_state_seqs(backend, cls):
    """store_state_seqs=True keeps v (and m) after every step, with gradients, and changes
    neither the spikes nor the carried state."""
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)
    x = _x(T=7)
    plain, traced = cls(step_mode="m", backend=backend), cls(step_mode="m", backend=backend,
                                                            store_state_seqs=True)
    xt = x.clone().requires_grad_()
    s_plain, s_traced = plain(x), traced(xt)
    assert torch.equal(s_plain, s_traced)
    seqs = traced.state_seqs
    assert len(seqs) == (2 if cls is CLIFNode else 1)
    assert all(q.shape == x.shape for q in seqs)
    torch.testing.assert_close(seqs[0][-1], plain.v, rtol=1e-6, atol=1e-6)
    for t in (0, 3):  # the state after step t is that of a run over the first t + 1 steps
        fresh = cls(step_mode="m", backend=backend)
        fresh(x[:t + 1])
        torch.testing.assert_close(seqs[0][t], fresh.v, rtol=1e-6, atol=1e-6)
        if cls is CLIFNode:
            torch.testing.assert_close(seqs[1][t], fresh.m, rtol=1e-6, atol=1e-6)
    seqs[0].sum().backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    traced.reset()
    assert traced.state_seqs is None


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("cls", [CLIFNode, LIFNode])
def test_store_state_seqs_with_zero_steps(backend, cls):
    """T = 0 with store_state_seqs: empty spikes and empty sequences (it used to fail in
    torch.stack), the carried state unchanged."""
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)
    node = cls(step_mode="m", backend=backend, store_state_seqs=True)
    node(_x(T=3))
    v = node.v.clone()
    x = torch.empty(0, 3, 17, requires_grad=True)
    spikes = node(x)
    assert spikes.shape == x.shape
    assert [q.shape for q in node.state_seqs] == [x.shape] * (2 if cls is CLIFNode else 1)
    assert torch.equal(node.v, v)
    spikes.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_clif_to_lif_keeps_the_training_mode(backend):
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)
    net = nn.Sequential(nn.Linear(4, 4), CLIFNode(step_mode="m", backend=backend)).eval()
    clif_to_lif(net, v_reset=-0.1)
    assert isinstance(net[1], LIFNode) and not net[1].training
    net.train()
    assert clif_to_lif(CLIFNode(), v_reset=0.0).training


@pytest.mark.skipif(sj_neuron is None, reason="SpikingJelly is not installed")
@pytest.mark.parametrize("cls", [CLIFNode, LIFNode])
def test_annealed_surrogate_object_is_read_by_value(cls):
    """A surrogate object's tensor parameter changed in place between calls (an annealing
    schedule) is followed: the gradient is that of a node built with the new value."""
    alpha = torch.tensor(4.0)
    sg = sj_surrogate.Sigmoid(alpha=alpha)
    node = cls(step_mode="m", surrogate_function=sg, backend="reference")
    x = _x()

    def grad(n):
        xg = x.clone().requires_grad_()
        n(xg).sum().backward()
        n.reset()
        return xg.grad

    g4 = grad(node)
    for change in (lambda: sg.alpha.fill_(0.5), lambda: sg.alpha.mul_(3.0)):
        change()
        fresh = cls(step_mode="m", surrogate="sigmoid", alpha=float(sg.alpha), backend="reference")
        g = grad(node)
        assert torch.equal(g, grad(fresh)) and not torch.equal(g, g4)
        assert node.opts.alpha == float(sg.alpha)

"""The SpikingJelly-native drop-ins (`clif_kernels.spikingjelly`) against SpikingJelly 2.0 itself:
the same neuron for every surrogate object the kernels take (window edges included), the same
module in every way SpikingJelly sees one, and the same network in its model zoo."""
import pytest
import torch
from torch import nn

from clif_kernels import CLIFNode, backends, clif
from clif_kernels.tools.verify import rel_err

try:
    from spikingjelly.activation_based import base as sj_base
    from spikingjelly.activation_based import functional as sj_functional
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate
except ImportError as e:  # requirements-compat.txt installs it; CI's old-torch job does not
    pytest.skip(f"SpikingJelly 2.0 is not installed ({e})", allow_module_level=True)

from clif_kernels import spikingjelly as cks  # noqa: E402

S = sj_surrogate
# Every SpikingJelly 2.0 surrogate the kernels take, with |z| of its window's edge (None: a
# smooth one): the edges are where a strict and a non-strict comparison differ.
SURROGATES = [
    (S.Rect(), 0.5), (S.Rect(alpha=2.0), 0.25),
    (S.PiecewiseLeakyReLU(), 1.0), (S.PiecewiseLeakyReLU(w=0.5, c=0.0), 0.5),
    (S.PiecewiseQuadratic(), 1.0), (S.PiecewiseQuadratic(alpha=2.0), 0.5),
    (S.Sigmoid(), None), (S.ATan(), None), (S.PiecewiseExp(), None), (S.SoftSign(), None),
    (S.SuperSpike(alpha=1.5), None), (S.Erf(), None),
]
KINDS = {"clif": (sj_neuron.ComplementaryLIFNode, cks.ComplementaryLIFNode),
         "lif": (sj_neuron.LIFNode, cks.LIFNode)}


def _sg_id(sg):
    return f"{type(sg).__name__}({','.join(f'{v:g}' for v in sg._sg_params.values())})"


def _skip_unless(backend):
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)


def _inputs(kind, edge, T=6, shape=(4, 80)):
    """[T, *shape] currents; at t = 0, from the initial state, some neurons get z = h - 1 exactly
    on the threshold, on the window's edges and on the floats just inside them (h = x for CLIF,
    x / tau = x / 2 for SpikingJelly's LIF with its input decay, both exact)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, *shape, generator=g) * 1.5 + 0.3
    h = torch.tensor([1.0])
    if edge is not None:
        e = torch.tensor([1.0 + edge, 1.0 - edge])
        h = torch.cat([h, e, torch.nextafter(e, torch.tensor(1.0))])
        h = h[(h - 1.0) + 1.0 == h]  # where z = h - 1 is exact (not next to h = 0)
    x.view(T, -1)[0, :len(h)] = h if kind == "clif" else 2 * h
    return x, len(h)


def _run(node, x, grad):
    x = x.clone().requires_grad_()
    spikes = node(x)
    (spikes * grad).sum().backward()
    m = node.m if hasattr(node, "m") else None
    return spikes.detach(), node.v.detach(), None if m is None else m.detach(), x.grad


def _assert_same(ours, theirs):
    assert torch.equal(ours[0], theirs[0]), "spikes differ"
    for a, b, what in zip(ours[1:], theirs[1:], ("v", "m", "grad_x")):
        if b is None:
            assert a is None, what
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("kind", ["clif", "lif"])
@pytest.mark.parametrize("sg,edge", SURROGATES, ids=[_sg_id(s) for s, _ in SURROGATES])
def test_surrogates_match_spikingjelly(sg, edge, kind, backend):
    """Spikes, v, m and input gradients of our node equal SpikingJelly's with the same surrogate
    object, inputs on its window's edges included (a strict edge where SpikingJelly has one)."""
    _skip_unless(backend)
    sj_cls, our_cls = KINDS[kind]
    x, n = _inputs(kind, edge)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    theirs = _run(sj_cls(surrogate_function=sg, step_mode="m"), x, grad)
    ours = _run(our_cls(surrogate_function=sg, step_mode="m", backend=backend), x, grad)
    _assert_same(ours, theirs)
    # On the edges the gradient of the first step is the surrogate's value there: compare the
    # elements themselves (the tolerance above is far below any window's height).
    torch.testing.assert_close(ours[3].view(x.shape[0], -1)[0, :n],
                               theirs[3].view(x.shape[0], -1)[0, :n], rtol=1e-5, atol=1e-7)


def test_rect_edge_follows_its_convention():
    """SpikingJelly's Rect passes no gradient on its window's edge (|z| < 0.5/alpha); the
    paper's rectangle of the functional API does (|z| <= alpha/2)."""
    x = torch.tensor([[1.5, 0.5, 1.25]], requires_grad=True)  # z = 0.5, -0.5, 0.25
    for node, expected in ((cks.ComplementaryLIFNode(surrogate_function=S.Rect(), step_mode="m"),
                            [0.0, 0.0, 1.0]),
                           (CLIFNode(surrogate_function=S.Rect(), step_mode="m"), [0.0, 0.0, 1.0]),
                           (CLIFNode(surrogate="rectangle", step_mode="m"), [1.0, 1.0, 1.0])):
        x.grad = None
        node(x).sum().backward()
        assert x.grad[0].tolist() == expected, node


@pytest.mark.parametrize("kind", ["clif", "lif"])
def test_is_a_spikingjelly_neuron(kind):
    """Base classes, attributes (names, values, types), initial and reset states, extra_repr,
    the shared default surrogate, attributes read on every call, reset_net and detach_net."""
    sj_cls, our_cls = KINDS[kind]
    theirs, ours = sj_cls(step_mode="m"), our_cls(step_mode="m")
    for base in (sj_cls, sj_neuron.BaseNode, sj_base.MemoryModule, sj_base.StepModule):
        assert isinstance(ours, base), base
    names = ["tau", "v_threshold", "v_reset", "detach_reset", "step_mode", "surrogate_function"]
    names += (["store_state_seqs", "state_seqs"] if kind == "clif"
              else ["decay_input", "store_v_seq", "v_seq"])
    for name in names:
        a, b = getattr(ours, name), getattr(theirs, name)
        assert type(a) is type(b) and (a is b or a == b), (name, a, b)
    assert ours.surrogate_function is theirs.surrogate_function  # SpikingJelly's shared default
    assert dict(ours.named_memories()) == dict(theirs.named_memories())  # {"v": 0.0, ...}
    assert ours.extra_repr() == theirs.extra_repr() and repr(ours) == repr(theirs)
    assert ours.supported_step_mode() == theirs.supported_step_mode()

    x, _ = _inputs(kind, None, T=5, shape=(3, 7))
    for node in (theirs, ours):  # attributes are read on every call, as SpikingJelly reads them
        node.v_threshold = 0.8
        node.surrogate_function = S.ATan(alpha=3.0)
    grad = torch.randn(x.shape)
    _assert_same(_run(ours, x, grad), _run(theirs, x, grad))
    for node in (theirs, ours):  # ... a parameter changed in place too
        node.surrogate_function.alpha = 0.7
        sj_functional.reset_net(node)
    _assert_same(_run(ours, x, grad), _run(theirs, x, grad))
    sj_functional.detach_net(ours)   # our states are views of the kernel's output
    assert not ours.v.requires_grad
    sj_functional.reset_net(ours)
    sj_functional.reset_net(theirs)
    assert dict(ours.named_memories()) == dict(theirs.named_memories())
    assert all(type(v) is float for _, v in ours.named_memories())


def test_state_sequences_and_step_modes():
    """store_state_seqs (CLIF) and store_v_seq (LIF, both step modes), single-step mode, and
    SpikingJelly's functional interface give SpikingJelly's values."""
    x, _ = _inputs("clif", None, T=5, shape=(3, 7))
    pairs = [(sj_neuron.ComplementaryLIFNode(step_mode="m", store_state_seqs=True),
              cks.ComplementaryLIFNode(step_mode="m", store_state_seqs=True), "state_seqs"),
             (sj_neuron.LIFNode(step_mode="m", store_v_seq=True),
              cks.LIFNode(step_mode="m", store_v_seq=True), "v_seq"),
             (sj_neuron.LIFNode(step_mode="s", store_v_seq=True),
              cks.LIFNode(step_mode="s", store_v_seq=True), "v_seq"),
             (sj_neuron.ComplementaryLIFNode(step_mode="s"), cks.ComplementaryLIFNode(), None)]
    for theirs, ours, seq in pairs:
        outs = []
        for node in (theirs, ours):
            if node.step_mode == "s":
                spikes = torch.stack([node(x_t) for x_t in x])
            else:
                spikes = node(x)
            seqs = getattr(node, seq) if seq else None
            outs.append((spikes, node.v, seqs))
        (s1, v1, q1), (s2, v2, q2) = outs
        assert torch.equal(s1, s2)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
        if seq == "state_seqs":
            assert len(q1) == len(q2) == 2
            for a, b in zip(q1, q2):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        elif seq:
            torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-6)
    # SpikingJelly's functional interface: states in, outputs and states out.
    theirs, ours = sj_neuron.ComplementaryLIFNode(step_mode="m"), cks.ComplementaryLIFNode(
        step_mode="m")
    (s1,), (v1, m1) = sj_base.to_functional_forward(theirs)((x,), (0.0, 0.0))
    (s2,), (v2, m2) = sj_base.to_functional_forward(ours)((x,), (0.0, 0.0))
    assert torch.equal(s1, s2) and ours.v == 0.0, "the module's own state is left alone"
    torch.testing.assert_close((v2, m2), (v1, m1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda sg: cks.ComplementaryLIFNode(surrogate_function=sg),
    lambda sg: cks.LIFNode(surrogate_function=sg),
    lambda sg: CLIFNode(surrogate_function=sg)], ids=["sj-clif", "sj-lif", "ours"])
def test_unsupported_surrogates_raise(make):
    with pytest.raises(ValueError, match="spiking=False"):
        make(S.Sigmoid(spiking=False))

    class MySigmoid(S.Sigmoid):  # may change the derivative: not taken for SpikingJelly's
        pass

    for sg in (S.QPseudoSpike(), S.LeakyKReLU(), S.S2NN(), MySigmoid()):
        with pytest.raises(ValueError, match="unsupported surrogate.*PiecewiseLeakyReLU"):
            make(sg)


def test_surrogate_changed_after_construction_is_checked():
    node = cks.ComplementaryLIFNode(step_mode="m")
    node.surrogate_function = S.Sigmoid(spiking=False)
    with pytest.raises(ValueError, match="spiking=False"):
        node(torch.randn(3, 4))
    with pytest.raises(ValueError, match="backend"):
        cks.LIFNode(backend="gpu")


def test_functional_names_take_spikingjelly_parameters():
    """The functional API's names for the new surrogates give what the SpikingJelly object
    gives (Rect as piecewise_leaky_relu with w = 0.5/alpha and c = 0)."""
    x, _ = _inputs("clif", 0.25, T=4, shape=(2, 9))
    cases = [(S.Rect(alpha=2.0), dict(surrogate="piecewise_leaky_relu", alpha=0.25, beta=0.0)),
             (S.PiecewiseLeakyReLU(w=0.7, c=0.02),
              dict(surrogate="piecewise_leaky_relu", alpha=0.7, beta=0.02)),
             (S.PiecewiseQuadratic(alpha=2.0), dict(surrogate="triangle", alpha=0.5)),
             (S.PiecewiseExp(alpha=1.5), dict(surrogate="piecewise_exp", alpha=1.5)),
             (S.SoftSign(alpha=3.0), dict(surrogate="soft_sign", alpha=3.0)),
             (S.SuperSpike(alpha=1.5), dict(surrogate="super_spike", alpha=1.5)),
             (S.Erf(alpha=2.5), dict(surrogate="erf", alpha=2.5))]
    for sg, kw in cases:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        cks.ComplementaryLIFNode(surrogate_function=sg, step_mode="m")(xa).sum().backward()
        clif(xb, **kw).sum().backward()
        assert torch.equal(xa.grad, xb.grad), type(sg).__name__


# --- SpikingJelly's model zoo --------------------------------------------------------------

def _model_zoo():
    """SpikingJelly's spiking_resnet18 and its monitor module: the model package imports
    torchvision and h5py, the monitor tensorboard (requirements-compat.txt installs them)."""
    try:
        from spikingjelly.activation_based import monitor
        from spikingjelly.activation_based.model import spiking_resnet
    except ImportError as e:
        pytest.skip(f"SpikingJelly's model zoo or monitor cannot be imported: {e}")
    return spiking_resnet.spiking_resnet18, monitor


class _Log:
    """SpikingJelly's logger switched on, its warnings collected."""

    def __enter__(self):
        from spikingjelly.logger import logger
        self.logger, self.records = logger, []
        logger.enable("spikingjelly")
        self.sink = logger.add(lambda m: self.records.append(str(m)), level="WARNING")
        return self.records

    def __exit__(self, *exc):
        self.logger.remove(self.sink)
        self.logger.disable("spikingjelly")


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_spiking_resnet18(step_mode):
    """SpikingJelly's spiking_resnet18 built with its ComplementaryLIFNode and with ours, same
    weights, tiny input: same outputs, every parameter gradient the same; SpikingJelly's
    monitor finds every neuron, and set_step_mode, reset_net and detach_net log nothing."""
    build, sj_monitor = _model_zoo()
    torch.manual_seed(0)
    theirs = build(spiking_neuron=sj_neuron.ComplementaryLIFNode, num_classes=10)
    ours = build(spiking_neuron=cks.ComplementaryLIFNode, num_classes=10)
    ours.load_state_dict(theirs.state_dict())
    n_neurons = sum(isinstance(m, sj_neuron.ComplementaryLIFNode) for m in theirs.modules())
    assert n_neurons == 17
    x = torch.rand(2, 2, 3, 32, 32)  # [T, B, C, H, W]
    results = []
    for net in (theirs, ours):
        with _Log() as warnings:
            sj_functional.set_step_mode(net, step_mode)
            mon = sj_monitor.OutputMonitor(net, sj_neuron.BaseNode)
            if step_mode == "m":
                out = net(x)
            else:
                out = torch.stack([net(x_t) for x_t in x])
            out.square().mean().backward()
            sj_functional.detach_net(net)
            sj_functional.reset_net(net)
        assert warnings == [], warnings
        assert len(mon.monitored_layers) == n_neurons
        assert len(mon.records) == n_neurons * (1 if step_mode == "m" else x.shape[0])
        mon.remove_hooks()
        results.append((out.detach(), {k: p.grad for k, p in net.named_parameters()}))
    (o1, g1), (o2, g2) = results
    assert sum(isinstance(m, cks.ComplementaryLIFNode) for m in ours.modules()) == n_neurons
    assert torch.equal(o2, o1), "same spikes, so the same outputs, bit for bit"
    assert g1.keys() == g2.keys()
    # Normwise: the gradients sum over the batch and the pixels, and fp32 rounding of sums that
    # cancel is large next to some elements (the worst tensor is about 1.4e-6 here).
    errs = {k: rel_err(g2[k], g1[k]) for k in g1}
    assert max(errs.values()) < 1e-5, errs


def test_clif_to_lif_keeps_spikingjelly_neurons():
    from clif_kernels.convert import clif_to_lif
    net = nn.Sequential(nn.Linear(4, 4), cks.ComplementaryLIFNode(tau=3.0, step_mode="m",
                                                                  surrogate_function=S.Erf()))
    lif = clif_to_lif(net, v_reset=-0.2)[1]
    assert type(lif) is cks.LIFNode and isinstance(lif, sj_neuron.LIFNode)
    assert (lif.tau, lif.v_reset, lif.decay_input, lif.step_mode) == (3.0, -0.2, False, "m")
    assert type(lif.surrogate_function) is S.Erf
    assert net(torch.randn(5, 2, 4)).shape == (5, 2, 4)


@pytest.mark.parametrize("kind", ["clif", "lif"])
@pytest.mark.parametrize("sg_cls,alpha0", [(S.Sigmoid, 4.0), (S.ATan, 2.0), (S.Rect, 1.0)])
def test_annealed_tensor_alpha_follows_spikingjelly(kind, sg_cls, alpha0):
    """An annealing schedule that changes a tensor alpha in place (`*=`, fill_) between
    iterations gives SpikingJelly's gradients at every step (the options used to be cached on
    the tensor object, which compares equal to itself after the change)."""
    sj_cls, our_cls = KINDS[kind]
    sg_theirs, sg_ours = sg_cls(alpha=torch.tensor(alpha0)), sg_cls(alpha=torch.tensor(alpha0))
    theirs = sj_cls(step_mode="m", surrogate_function=sg_theirs)
    ours = our_cls(step_mode="m", surrogate_function=sg_ours, backend="cpp")
    x, _ = _inputs(kind, None, T=5, shape=(3, 7))
    grad = torch.randn(x.shape)
    seen = []
    for step in range(4):
        r_ours, r_theirs = _run(ours, x, grad), _run(theirs, x, grad)
        _assert_same(r_ours, r_theirs)
        seen.append(r_ours[3])
        for sg in (sg_theirs, sg_ours):
            sg.alpha *= 0.5 if step % 2 == 0 else 3.0
            sj_functional.reset_net(theirs)
            sj_functional.reset_net(ours)
    for sg in (sg_theirs, sg_ours):
        sg.alpha.fill_(alpha0 * 0.3)
    _assert_same(_run(ours, x, grad), _run(theirs, x, grad))
    assert not any(torch.equal(seen[0], g) for g in seen[1:]), "alpha changed nothing"


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_eval_mode_matches_spikingjelly(backend):
    """In eval mode SpikingJelly's CLIF fires with a plain Heaviside step, which passes no
    surrogate gradient (the potentials still pass theirs); so does the drop-in, unless
    surrogate_in_eval=True, which keeps the surrogate as in training."""
    _skip_unless(backend)
    x, _ = _inputs("clif", None, T=6, shape=(3, 7))
    grad = torch.randn(x.shape)

    def _run(node, x, grad):  # the spikes have no graph in eval mode: the loss weighs v too
        x = x.clone().requires_grad_()
        spikes = node(x)
        ((spikes * grad).sum() + (node.v * grad[0]).sum() + node.m.sum()).backward()
        return spikes.detach(), node.v.detach(), node.m.detach(), x.grad
    theirs = sj_neuron.ComplementaryLIFNode(step_mode="m").eval()
    ours = cks.ComplementaryLIFNode(step_mode="m", backend=backend).eval()
    kept = cks.ComplementaryLIFNode(step_mode="m", backend=backend, surrogate_in_eval=True).eval()
    trained = cks.ComplementaryLIFNode(step_mode="m", backend=backend)
    r_theirs, r_ours = _run(theirs, x, grad), _run(ours, x, grad)
    _assert_same(r_ours, r_theirs)
    r_kept, r_trained = _run(kept, x, grad), _run(trained, x, grad)
    _assert_same(r_kept, r_trained)
    assert not torch.allclose(r_ours[3], r_kept[3]), "the two modes gave one gradient"
    assert r_ours[3].abs().sum() > 0, "the potentials pass a gradient"
    for node in (theirs, ours):  # single-step mode too
        node.step_mode = "s"
        sj_functional.reset_net(node)
    xs = [x_t.clone().requires_grad_() for x_t in x]
    outs = []
    for node in (theirs, ours):
        out = torch.stack([node(x_t) for x_t in xs])
        outs.append((out, torch.autograd.grad((out * grad).sum() + node.v.sum(), xs)))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # without a gradient, eval runs the fused kernels as in training
        assert torch.equal(ours(x[0]), theirs(x[0]))
    with pytest.raises(TypeError, match="surrogate_in_eval"):
        cks.ComplementaryLIFNode(surrogate_in_eval=1)


@pytest.mark.parametrize("kind", ["clif", "lif"])
def test_backend_is_checked_on_assignment(kind):
    node = KINDS[kind][1](step_mode="m", backend="cpp")
    with pytest.raises(ValueError, match="backend must be one of.*'cupy'"):
        node.backend = "cupy"
    assert node.backend == "cpp"
    node.backend = "auto"
    assert node.backend == "auto"


@pytest.mark.parametrize("kind", ["clif", "lif"])
def test_state_sequences_with_zero_steps(kind):
    """T = 0 with the state sequences recorded: empty spikes and sequences (SpikingJelly's
    recording loop stacks an empty list and fails)."""
    our_cls = KINDS[kind][1]
    node = (our_cls(step_mode="m", store_state_seqs=True) if kind == "clif"
            else our_cls(step_mode="m", store_v_seq=True))
    x = torch.empty(0, 3, 7, requires_grad=True)
    spikes = node(x)
    assert spikes.shape == x.shape
    seqs = node.state_seqs if kind == "clif" else [node.v_seq]
    assert [q.shape for q in seqs] == [x.shape] * len(seqs)
    spikes.sum().backward()
    assert x.grad.shape == x.shape


def test_clif_to_lif_keeps_state_seqs_and_eval_mode():
    from clif_kernels.convert import clif_to_lif
    net = nn.Sequential(nn.Linear(4, 4), cks.ComplementaryLIFNode(step_mode="m",
                                                                  store_state_seqs=True))
    lif = clif_to_lif(net.eval(), v_reset=-0.1)[1]
    assert type(lif) is cks.LIFNode and lif.store_v_seq and not lif.training
    net(torch.randn(3, 2, 4))
    assert lif.v_seq.shape == (3, 2, 4)
    sj = nn.Sequential(sj_neuron.ComplementaryLIFNode(step_mode="m", store_state_seqs=True))
    lif = clif_to_lif(sj.eval(), v_reset=-0.1)[0]
    assert lif.store_state_seqs and not lif.training

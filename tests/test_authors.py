"""`clif_kernels.authors.ComplementaryLIFNeuron` in a model built the way the paper authors'
factories build theirs (every neuron made as `neuron(**kwargs)` from the model's keywords,
single-step calls over T with a BatchNorm per step), against a single-step neuron written here
from docs/clif-spec.md with a rectangle surrogate of the authors' convention."""
import inspect

import pytest
import torch
from torch import nn

from clif_kernels import backends
from clif_kernels.authors import FACTORY_KEYWORDS, ComplementaryLIFNeuron
from clif_kernels.tools.verify import rel_err


class _RectangleFn(torch.autograd.Function):
    """Heaviside forward; 1/alpha inside the closed window |z| <= alpha/2 backward."""

    @staticmethod
    def forward(ctx, z, alpha):
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * (z.abs() <= ctx.alpha / 2).to(z.dtype) / ctx.alpha, None


def _standin(module, name, forward=None, **params):
    """An object of a class named `name` in `module`, as the authors' code defines (their
    `modules.surrogate`) or imports (SpikingJelly 0.0.0.0.12's `clock_driven.surrogate`)."""
    def init(self, spiking=True, **kw):
        nn.Module.__init__(self)
        self.spiking = spiking
        for k, v in {**params, **kw}.items():
            setattr(self, k, v)

    body = {"__init__": init, "__module__": module}
    if forward is not None:
        body["forward"] = forward
    return type(name, (nn.Module,), body)


# A stand-in of the authors' surrogate class: their module and class name, their convention.
Rectangle = _standin("modules.surrogate", "Rectangle",
                     forward=lambda self, z: _RectangleFn.apply(z, self.alpha), alpha=1.0)


class SpecNeuron(nn.Module):
    """One step per call of docs/clif-spec.md, in the authors' constructor's terms (their
    neuron's reset does not read detach_reset)."""

    def __init__(self, tau=2., decay_input=False, v_threshold=1., v_reset=None,
                 surrogate_function=None, detach_reset=False, cupy_fp32_inference=False,
                 **kwargs):
        super().__init__()
        self.tau, self.decay_input, self.v_threshold, self.v_reset = (tau, decay_input,
                                                                      v_threshold, v_reset)
        self.surrogate_function = surrogate_function or Rectangle()
        self.reset()

    def reset(self):
        self.v, self.m = None, None

    def forward(self, x):
        init = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x, init) if self.v is None else self.v
        m = torch.zeros_like(x) if self.m is None else self.m
        h = (1 - 1 / self.tau) * v + (x / self.tau if self.decay_input else x)
        if self.v_reset is not None:
            h = h + self.v_reset / self.tau
        m = m * torch.sigmoid(h / self.tau)
        s = self.surrogate_function(h - self.v_threshold)
        m = m + s
        if self.v_reset is None:
            v = h - s * self.v_threshold
        else:
            v = (1 - s) * h + s * self.v_reset
        self.v, self.m = v - s * torch.sigmoid(m), m
        return s


class Block(nn.Module):
    """A pre-activation residual block whose neurons come from the factory's keywords."""

    def __init__(self, channels, neuron, **kwargs):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(channels), neuron(**kwargs)
        # No bias before a BatchNorm: its gradient is 0 up to rounding, which a relative error
        # cannot compare.
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(channels), neuron(**kwargs)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # BatchNorm next

    def forward(self, x):
        out = self.conv1(self.act1(self.bn1(x)))
        return x + self.conv2(self.act2(self.bn2(out)))


class TinyResNet(nn.Module):
    def __init__(self, neuron, num_classes, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(kwargs.get("c_in", 3), 8, 3, padding=1, bias=False)
        self.block = Block(8, neuron, **kwargs)
        self.bn, self.act = nn.BatchNorm2d(8), neuron(**kwargs)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.act(self.bn(self.block(self.conv(x)))))


def tiny_resnet(neuron=None, num_classes=10, **kwargs):
    """Called as the authors' `spiking_resnet18(neuron=..., num_classes=..., tau=...,
    surrogate_function=..., c_in=..., fc_hw=...)`."""
    return TinyResNet(neuron, num_classes, **kwargs)


def _reset(net):
    for m in net.modules():
        if m is not net and hasattr(m, "reset"):
            m.reset()


def _step(net, opt, x, y, T):
    """One training iteration as their loop runs it: T single-step calls, the mean output."""
    opt.zero_grad()
    outs = [net(x) for _ in range(T)]
    loss = nn.functional.cross_entropy(torch.stack(outs).mean(0), y)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    opt.step()
    _reset(net)
    return torch.stack(outs).detach(), grads


def _skip_unless(backend):
    why = backends.unavailable_reason(backend, torch.device("cpu"), torch.float32)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_factory_model_trains_like_the_spec_neuron(backend):
    _skip_unless(backend)
    torch.manual_seed(0)
    kw = dict(tau=2.0, surrogate_function=Rectangle(), c_in=3, fc_hw=1)
    theirs = tiny_resnet(neuron=SpecNeuron, num_classes=10, **kw)
    ours = tiny_resnet(neuron=lambda **k: ComplementaryLIFNeuron(backend=backend, **k),
                       num_classes=10, **kw)
    ours.load_state_dict(theirs.state_dict())
    assert sum(isinstance(m, ComplementaryLIFNeuron) for m in ours.modules()) == 3
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in (theirs, ours)]
    g = torch.Generator().manual_seed(1)
    for it in range(3):
        x = torch.randn(4, 3, 8, 8, generator=g) * 2
        y = torch.randint(0, 10, (4,), generator=g)
        (out_t, grad_t), (out_o, grad_o) = (_step(n, o, x, y, T=4)
                                            for n, o in zip((theirs, ours), opts))
        torch.testing.assert_close(out_o, out_t, rtol=1e-5, atol=1e-5)
        errs = {k: rel_err(grad_o[k], grad_t[k]) for k in grad_t}
        assert max(errs.values()) < 1e-5, (it, errs)
        assert any(v.abs().sum() > 0 for k, v in grad_t.items() if "block.conv1" in k)
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_their_constructor():
    """Their parameters in their order with their defaults (then backend, step_mode keyword
    only); their factories' extra keywords accepted; anything else refused by name."""
    params = list(inspect.signature(ComplementaryLIFNeuron.__init__).parameters.values())[1:]
    positional = [(p.name, p.default) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [("tau", 2.0), ("decay_input", False), ("v_threshold", 1.0),
                          ("v_reset", None), ("surrogate_function", None),
                          ("detach_reset", False), ("cupy_fp32_inference", False)]
    assert set(FACTORY_KEYWORDS) == {"c_in", "fc_hw"}
    node = ComplementaryLIFNeuron(2.0, False, 1.0, None, Rectangle(), True, True, c_in=3,
                                  fc_hw=1)
    assert node.step_mode == "s" and node.detach_reset is True
    assert node.opts.surrogate == "rectangle" and node.opts.alpha == 1.0
    assert not node.opts.detach_reset, "their reset carries its gradient whatever the flag"
    with pytest.raises(TypeError, match="v_treshold"):
        ComplementaryLIFNeuron(v_treshold=0.5)
    with pytest.raises(TypeError, match="cupy_fp32_inference"):
        ComplementaryLIFNeuron(cupy_fp32_inference="yes")


def test_their_surrogates_are_translated():
    """Their Rectangle keeps its alpha and closed window (the edges pass the gradient);
    SpikingJelly 0.0.0.0.12's classes of their training script map as 2.0's do; a string
    works; an unknown class is refused with the list of supported ones."""
    old = "spikingjelly.clock_driven.surrogate"
    cases = [(Rectangle(alpha=0.5), ("rectangle", 0.5)),
             (_standin(old, "Sigmoid", alpha=4.0)(), ("sigmoid", 4.0)),
             (_standin(old, "PiecewiseQuadratic", alpha=2.0)(), ("triangle", 0.5)),
             ("atan", ("atan", 2.0))]
    for sg, (name, alpha) in cases:
        o = ComplementaryLIFNeuron(surrogate_function=sg).opts
        assert (o.surrogate, o.alpha) == (name, alpha), sg
    node = ComplementaryLIFNeuron(surrogate_function=Rectangle(alpha=0.5), backend="reference")
    x = torch.tensor([1.25, 0.75, 1.3], requires_grad=True)  # z = 0.25, -0.25 (edges), 0.3
    node(x).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 0.0]
    vendored = _standin("clif_repo.modules.surrogate", "Rectangle", alpha=1.0)()
    assert ComplementaryLIFNeuron(surrogate_function=vendored).opts.surrogate == "rectangle"
    with pytest.raises(ValueError, match="unsupported surrogate.*Rectangle"):
        ComplementaryLIFNeuron(surrogate_function=_standin("modules.surrogate", "Triangle",
                                                           alpha=1.0)())


@pytest.mark.parametrize("v_reset,decay_input", [(None, True), (-0.2, False), (0.0, True)])
def test_options_follow_the_spec_neuron(v_reset, decay_input):
    """Hard resets and input decay, step by step, with the state carried and reset."""
    _skip_unless("cpp")
    kw = dict(tau=3.0, v_reset=v_reset, decay_input=decay_input, v_threshold=0.8)
    ours, theirs = ComplementaryLIFNeuron(backend="cpp", **kw), SpecNeuron(**kw)
    g = torch.Generator().manual_seed(2)
    xs = (torch.randn(6, 5, 40, generator=g) * 2).requires_grad_()
    outs = []
    for node in (ours, theirs):
        spikes = torch.stack([node(x_t) for x_t in xs])
        grad, = torch.autograd.grad(spikes.sum() + node.v.sum() + node.m.sum(), xs)
        outs.append((spikes.detach(), node.v.detach(), grad))
        node.reset()
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][2], outs[1][2], rtol=1e-5, atol=1e-5)

"""The PyTorch reference against the spec's formulas, autograd's gradcheck and the golden cases."""
import itertools
import math

import numpy as np
import pytest
import torch

import clif_kernels
from checks import golden_cases
from clif_kernels.tools.verify import neuron_fn, random_problem, rel_err, run_with_grads
from clif_kernels.options import make_options
from clif_kernels import reference

SURROGATES = tuple(clif_kernels.SURROGATES)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def spec_forward_backward(x, v0, m0, gs, gvT, gmT, opts, is_clif):
    """The spec's forward and hand-written BPTT backward, transcribed in numpy float64."""
    gamma, c, b = opts.constants()
    th, tau, alpha = opts.v_threshold, opts.tau, opts.alpha
    T = x.shape[0]
    v = np.full(x.shape[1:], opts.v_init) if v0 is None else v0.copy()
    m = np.zeros(x.shape[1:]) if m0 is None else m0.copy()
    hs, ms_prev, s_out = [], [], []
    for t in range(T):
        h = gamma * v + c * x[t] + b
        s = (h >= th).astype(np.float64)
        a = _sig(h / tau)
        ms_prev.append(m)
        m = m * a + s if is_clif else m
        r = _sig(m) if is_clif else 0.0
        if opts.hard_reset:
            v = (1 - s) * h + s * opts.v_reset - s * r
        else:
            v = h - s * th - s * r
        hs.append(h)
        s_out.append(s)

    def sg(z):
        if opts.surrogate == "rectangle":
            return (np.abs(z) <= alpha / 2) / alpha
        if opts.surrogate == "sigmoid":
            g = _sig(alpha * z)
            return alpha * g * (1 - g)
        if opts.surrogate == "atan":
            return (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)
        if opts.surrogate == "triangle":
            return np.maximum(0, 1 / alpha - np.abs(z) / alpha ** 2)
        if opts.surrogate == "piecewise_leaky_relu":
            return np.where(np.abs(z) < alpha, 1 / (2 * alpha), opts.beta)
        if opts.surrogate == "piecewise_exp":
            return alpha / 2 * np.exp(-alpha * np.abs(z))
        if opts.surrogate == "soft_sign":
            return 1 / (2 * alpha * (1 / alpha + np.abs(z)) ** 2)
        if opts.surrogate == "super_spike":
            return alpha / (1 + np.abs(z)) ** 2
        assert opts.surrogate == "erf", opts.surrogate
        return alpha / math.sqrt(math.pi) * np.exp(-(alpha * z) ** 2)

    gv, gm = gvT.copy(), (gmT.copy() if is_clif else np.zeros_like(gvT))
    gx = np.zeros_like(x)
    for t in reversed(range(T)):
        h, mp = hs[t], ms_prev[t]
        s = (h >= th).astype(np.float64)
        a = _sig(h / tau)
        if is_clif:
            mt = mp * a + s
            r = _sig(mt)
            gm1 = gm + gv * (-s * r * (1 - r))
        else:
            r, gm1 = 0.0, 0.0
        if opts.detach_reset:
            dvds = 0.0
        else:
            dvds = (opts.v_reset - h - r) if opts.hard_reset else (-th - r)
        gs1 = gs[t] + gv * dvds + gm1
        dvdh = (1 - s) if opts.hard_reset else 1.0
        gh = gv * dvdh + gs1 * sg(h - th)
        if is_clif:
            gh = gh + gm1 * mp * a * (1 - a) / tau
        gx[t] = c * gh
        gm = gm1 * a if is_clif else gm
        gv = gamma * gh
    return np.stack(s_out) if T else np.zeros_like(x), v, m, gx, gv, gm


@pytest.mark.parametrize("is_clif", [True, False])
@pytest.mark.parametrize("surrogate,v_reset,decay_input,detach_reset",
                         list(itertools.product(SURROGATES, [None, -0.2], [False, True],
                                                [False, True])))
def test_reference_matches_spec_formulas(is_clif, surrogate, v_reset, decay_input, detach_reset):
    params = dict(tau=1.7, v_threshold=0.9, v_reset=v_reset, decay_input=decay_input,
                  surrogate=surrogate, detach_reset=detach_reset)
    x, v0, m0, grads = random_problem((7, 5, 3), torch.float64, with_state=True, is_clif=is_clif)
    res = run_with_grads(neuron_fn(is_clif), x, v0, m0, grads, backend="reference", **params)
    n = lambda t: None if t is None else t.numpy()  # noqa: E731
    s, vT, mT, gx, gv0, gm0 = spec_forward_backward(
        x.numpy(), v0.numpy(), n(m0), grads["spikes"].numpy(), grads["vT"].numpy(),
        n(grads["mT"]) if is_clif else None, make_options(**params), is_clif)
    assert res["spikes"].sum() > 0, "test input never fires"
    np.testing.assert_array_equal(res["spikes"].numpy(), s)
    np.testing.assert_allclose(res["vT"].numpy(), vT, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res["grad_x"].numpy(), gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res["grad_v0"].numpy(), gv0, rtol=1e-10, atol=1e-12)
    if is_clif:
        np.testing.assert_allclose(res["mT"].numpy(), mT, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(res["grad_m0"].numpy(), gm0, rtol=1e-10, atol=1e-12)


class _SmoothSpike(torch.autograd.Function):
    """The spike with its Heaviside replaced by the surrogate's primitive, so that finite
    differences see exactly the derivative the surrogate claims."""

    @staticmethod
    def forward(ctx, h, v_threshold, surrogate, alpha, beta=0.0):
        ctx.save_for_backward(h)
        ctx.params = (v_threshold, surrogate, alpha, beta)
        z = h - v_threshold
        if surrogate == "sigmoid":
            return torch.sigmoid(alpha * z)
        if surrogate == "atan":
            return torch.atan(math.pi / 2 * alpha * z) / math.pi + 0.5
        if surrogate == "piecewise_exp":
            return torch.where(z >= 0, 1 - torch.exp(-alpha * z) / 2, torch.exp(alpha * z) / 2)
        if surrogate == "soft_sign":
            return (torch.nn.functional.softsign(alpha * z) + 1) / 2
        if surrogate == "super_spike":
            return alpha * z / (1 + z.abs())
        assert surrogate == "erf", surrogate
        return torch.erfc(-alpha * z) / 2

    backward = reference.SpikeFn.backward


@pytest.mark.parametrize("is_clif", [True, False])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "piecewise_exp", "soft_sign",
                                       "super_spike", "erf"])
@pytest.mark.parametrize("v_reset,decay_input", [(None, False), (-0.3, False), (None, True)])
def test_reference_gradcheck(monkeypatch, is_clif, surrogate, v_reset, decay_input):
    """gradcheck of every path of the reference's graph (membrane, reset, complementary
    potential, initial states). The Heaviside has no derivative for finite differences to see,
    so the smooth surrogates' primitives stand in for it; `detach_reset` is left out because it
    deliberately drops part of the true derivative (the spec-formula test covers it)."""
    monkeypatch.setattr(reference, "SpikeFn", _SmoothSpike)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    v0 = (torch.randn(6, dtype=torch.float64) * 0.3).requires_grad_()
    m0 = torch.rand(6, dtype=torch.float64, requires_grad=True)
    kw = dict(surrogate=surrogate, v_reset=v_reset, decay_input=decay_input, tau=1.8,
              backend="reference", return_state=True)
    if is_clif:
        f = lambda x, v0, m0: clif_kernels.clif(x, v0=v0, m0=m0, **kw)  # noqa: E731
        inputs = (x, v0, m0)
    else:
        f = lambda x, v0: clif_kernels.lif(x, v0=v0, **kw)  # noqa: E731
        inputs = (x, v0)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("case,arrays", [pytest.param(c, a, id=c["name"]) for c, a in golden_cases()])
def test_reference_golden(case, arrays):
    is_clif = case["neuron"] == "clif"
    grads = {"spikes": arrays["grad_spikes"], "vT": arrays["grad_vT"],
             "mT": arrays.get("grad_mT")}
    res = run_with_grads(neuron_fn(is_clif), arrays["x_seq"], arrays.get("v0"),
                         arrays.get("m0"), grads, backend="reference", **case["params"])
    assert torch.equal(res["spikes"], arrays["spikes"])
    pairs = [("vT", "vT"), ("mT", "mT"), ("grad_x", "grad_x_seq"), ("grad_v0", "grad_v0"),
             ("grad_m0", "grad_m0")]
    for mine, theirs in pairs:
        if theirs in arrays:
            assert rel_err(res[mine], arrays[theirs]) < 1e-12, mine
        else:
            assert res[mine] is None, mine

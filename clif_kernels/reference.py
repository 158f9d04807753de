"""Pure PyTorch reference of the CLIF and LIF neurons: an explicit loop over time.

This is the implementation every fused backend is tested against, and the fallback backend
("reference"). It follows `clif-spec.md` line by line; its backward is plain autograd through the
loop, with the surrogate derivative supplied by `SpikeFn`.

Shapes: `x_seq: [T, *]`, `v0, m0: [*]`, spikes `[T, *]`, `vT, mT: [*]`.
State is kept in float32 (float64 when the input is float64), whatever the storage dtype.
"""
from __future__ import annotations

import math

import torch

from .options import NeuronOptions


def surrogate_grad(z: torch.Tensor, surrogate: str, alpha: float,
                   beta: float = 0.0) -> torch.Tensor:
    """sigma'(z): the derivative the spike pretends to have at z = h - v_threshold (spec,
    Surrogate derivatives; `beta` is piecewise_leaky_relu's slope outside its window)."""
    if surrogate == "rectangle":
        return (z.abs() <= alpha / 2).to(z.dtype) / alpha
    if surrogate == "sigmoid":
        g = torch.sigmoid(alpha * z)
        return alpha * g * (1 - g)
    if surrogate == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)
    if surrogate == "triangle":
        return torch.clamp(1 / alpha - z.abs() / alpha ** 2, min=0)
    if surrogate == "piecewise_leaky_relu":
        # Strict: the window's edges |z| = alpha take the outside value (NaN too).
        return torch.full_like(z, beta).masked_fill(z.abs() < alpha, 1 / (2 * alpha))
    if surrogate == "piecewise_exp":
        return (alpha / 2) * torch.exp(-alpha * z.abs())
    if surrogate == "soft_sign":
        return (alpha / 2) / (1 + alpha * z.abs()) ** 2
    if surrogate == "super_spike":
        return alpha / (1 + z.abs()) ** 2
    if surrogate == "erf":
        return (alpha / math.sqrt(math.pi)) * torch.exp(-(alpha * z) ** 2)
    raise ValueError(f"unknown surrogate {surrogate!r}")


class SpikeFn(torch.autograd.Function):
    """Heaviside step s = (h >= threshold) whose backward is the surrogate derivative."""

    @staticmethod
    def forward(ctx, h, v_threshold, surrogate, alpha, beta=0.0):
        ctx.save_for_backward(h)
        ctx.params = (v_threshold, surrogate, alpha, beta)
        return (h >= v_threshold).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (h,) = ctx.saved_tensors
        v_threshold, surrogate, alpha, beta = ctx.params
        return (grad_s * surrogate_grad(h - v_threshold, surrogate, alpha, beta),
                None, None, None, None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def neuron_reference(x_seq, opts: NeuronOptions, *, clif=True, v0=None, m0=None, return_h=False,
                     spike_grad=True, scale=None, shift=None, residual=None):
    """Run the neuron over all T steps.

    Args:
        x_seq: `[T, *]` input current.
        opts: validated parameters (see `options.make_options`).
        clif: CLIF when True, LIF (no complementary potential) when False.
        v0, m0: `[*]` initial states, or None for the spec's defaults.
        return_h: also return the charged potentials `h_seq: [T, *]` (in compute dtype), which the
            tests use to find neurons whose spikes sit within rounding of the threshold.
        spike_grad: False fires with a plain Heaviside step, which passes no gradient (the
            potentials still do).
        scale, shift: the folded affine map (a BatchNorm's normalisation), tensors that
            broadcast against `x_seq[0]` in the compute dtype; residual: `[T, *]` like x_seq.
            The neuron then runs on u_t = x_t * scale + shift (+ residual_t), computed in the
            compute dtype.

    Returns:
        `(spikes [T, *] in x_seq.dtype, vT, mT)` with states in x_seq.dtype (`mT` is None for LIF),
        followed by `h_seq` when `return_h`.

    Example:
        >>> from clif_kernels.options import make_options
        >>> s, vT, mT = neuron_reference(torch.randn(4, 10), make_options())
    """
    cdt = compute_dtype(x_seq.dtype)
    gamma, c, b = opts.constants()
    th = opts.v_threshold
    shape = x_seq.shape[1:]
    v = (v0.to(cdt) if v0 is not None
         else torch.full(shape, opts.v_init, dtype=cdt, device=x_seq.device))
    m = (m0.to(cdt) if m0 is not None else torch.zeros(shape, dtype=cdt, device=x_seq.device))
    spikes, hs = [], []
    for t in range(x_seq.shape[0]):
        u = x_seq[t].to(cdt)
        if scale is not None:
            u = u * scale + shift
        if residual is not None:
            u = u + residual[t].to(cdt)
        h = gamma * v + c * u + b
        if spike_grad:
            s = SpikeFn.apply(h, th, opts.surrogate, opts.alpha, opts.beta)
        else:
            s = (h >= th).to(h.dtype)
        s_reset = s.detach() if opts.detach_reset else s
        if opts.hard_reset:
            v = (1 - s_reset) * h + s_reset * opts.v_reset
        else:
            v = h - s_reset * th
        if clif:
            a = torch.sigmoid(h / opts.tau)
            m = m * a + s
            v = v - s_reset * torch.sigmoid(m)
        spikes.append(s)
        hs.append(h)
    if spikes:
        spikes = torch.stack(spikes).to(x_seq.dtype)
    else:
        # No step: empty spikes, still a function of the inputs (as the fused backends' are), so
        # that a loss over them backpropagates (to zero-size and zero gradients).
        spikes = x_seq.clone()
        for s0 in (v0, m0, scale, shift, residual):
            if s0 is not None and s0.requires_grad:
                spikes = spikes + 0 * s0.to(x_seq.dtype)
        # With no step, v and m may still be the caller's v0/m0 objects: return new tensors (an
        # in-place edit of one must not change the other), with the gradient passing through.
        v, m = v.clone(), m.clone()
    out = (spikes, v.to(x_seq.dtype), m.to(x_seq.dtype) if clif else None)
    if return_h:
        h_seq = torch.stack(hs) if hs else torch.empty(x_seq.shape, dtype=cdt, device=x_seq.device)
        out = out + (h_seq,)
    return out

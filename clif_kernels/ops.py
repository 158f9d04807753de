"""torch.library registration of the fused kernels, with fake (meta) kernels and autograd.

Two pairs of ops on the flattened problem `x: [T, N]`, with the same signatures:
`clif_kernels::triton_fwd/triton_bwd` (Triton, defined here) and `clif_fused::fwd/bwd` (the
compiled extension: the C++ kernel on CPU tensors, the CUDA kernels on CUDA tensors; schemas in
csrc/clif_ops.cpp). fwd -> (spikes [T, N], vT [N], mT [N] or [0], ckpt [C, 2, N] in fp32, or
fp64 for fp64 input); bwd -> (grad_x [T, N], grad_v0 [N] or [0], grad_m0 [N] or [0]).
The autograd formula is shared: the forward op saves `x`, the initial states and the checkpoints,
and the backward op recomputes everything else. It is registered on the ops (what torch.compile
traces) and wrapped in `FusedNeuron` (what eager calls use).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import extension, triton_kernels


def _fwd_fake(x, is_clif, save):
    T, N = x.shape
    n_ckpt = triton_kernels.n_checkpoints(T)
    return (torch.empty_like(x), x.new_empty((N,)), x.new_empty((N if is_clif else 0,)),
            x.new_empty((n_ckpt if save else 0, 2, N),
                        dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))


def _bwd_fake(x, v0, m0, is_clif):
    N = x.shape[1]
    return (torch.empty_like(x), x.new_empty((N if v0 is not None else 0,)),
            x.new_empty((N if (m0 is not None and is_clif) else 0,)))


def _setup_context(ctx, inputs, output):
    """The autograd formula's forward half, shared by the custom ops and `FusedNeuron`:
    `inputs` are the op's arguments (x, v0, m0, tau, ...), `output` its results."""
    x, v0, m0, tau, v_threshold, v_reset, decay_input, is_clif, save = inputs[:9]
    surrogate, alpha, detach_reset = inputs[9:12]
    ctx.save_for_backward(x, v0, m0, output[3])
    ctx.params = (tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                  is_clif)
    ctx.has_v0, ctx.has_m0 = v0 is not None, m0 is not None
    # Unused outputs (vT, mT) then arrive as None and the kernel skips their loads.
    ctx.set_materialize_grads(False)


def _backward(ctx, bwd_op, grad_spikes, grad_vT, grad_mT):
    """Gradients of (x, v0, m0) through `bwd_op`."""
    x, v0, m0, ckpt = ctx.saved_tensors
    tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, is_clif = ctx.params
    # LIF's mT is an empty placeholder; its gradient (zeros under AOT autograd) is dropped.
    gx, gv0, gm0 = bwd_op(x, v0, m0, ckpt, _contig(grad_spikes), _contig(grad_vT),
                          _contig(grad_mT) if is_clif else None, tau, v_threshold,
                          v_reset, decay_input, surrogate, alpha, detach_reset, is_clif)
    return gx, gv0 if ctx.has_v0 else None, gm0 if (ctx.has_m0 and is_clif) else None


def register_autograd(fwd_op, bwd_op):
    """Attach the shared backward to a backend's forward op (what torch.compile traces)."""

    def backward(ctx, grad_spikes, grad_vT, grad_mT, _grad_ckpt):
        return (*_backward(ctx, bwd_op, grad_spikes, grad_vT, grad_mT),
                None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd(fwd_op, backward, setup_context=_setup_context)


class FusedNeuron(torch.autograd.Function):
    """The same autograd formula for eager mode, around a backend's op pair called below the
    autograd dispatch key. The custom op's own autograd wrapper (Python, run on every call,
    grad or not) cost more than the kernels at small sizes: on 2 CPU cores, a [4, 64] input's
    forward + backward took 463 us through it and 120 us through this class (2026-11-28).
    `functional` uses this class in eager mode and the ops under torch.compile.

        spikes, vT, mT, ckpt = FusedNeuron.apply(fwd_op, bwd_op, x, v0, m0, tau, ...)
    """

    # forward takes ctx (no separate setup_context): with a setup_context, Function.apply binds
    # the arguments through inspect.signature on every call, 60 us here.
    @staticmethod
    def forward(ctx, fwd_op, bwd_op, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = fwd_op(*args)
        _setup_context(ctx, args, output)
        ctx.bwd_op = bwd_op
        ctx.mark_non_differentiable(output[3])
        return output

    @staticmethod
    def backward(ctx, grad_spikes, grad_vT, grad_mT, _grad_ckpt):
        grads = _backward(ctx, ctx.bwd_op, grad_spikes, grad_vT, grad_mT)
        return (None, None, *grads) + (None,) * 9


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------------------------------------
# Triton backend. The op's signature carries the surrogate and detach flag too, although the
# forward does not use them, so that setup_context can hand them to the backward.

@torch.library.custom_op("clif_kernels::triton_fwd", mutates_args=())
def triton_fwd(x: Tensor, v0: Optional[Tensor], m0: Optional[Tensor], tau: float,
               v_threshold: float, v_reset: Optional[float], decay_input: bool, is_clif: bool,
               save: bool, surrogate: int, alpha: float,
               detach_reset: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_kernels.clif_fwd(x, v0, m0, tau, v_threshold, v_reset, decay_input, is_clif,
                                   save)


@triton_fwd.register_fake
def _(x, v0, m0, tau, v_threshold, v_reset, decay_input, is_clif, save, surrogate, alpha,
      detach_reset):
    return _fwd_fake(x, is_clif, save)


@torch.library.custom_op("clif_kernels::triton_bwd", mutates_args=())
def triton_bwd(x: Tensor, v0: Optional[Tensor], m0: Optional[Tensor], ckpt: Tensor,
               grad_spikes: Optional[Tensor], grad_vT: Optional[Tensor],
               grad_mT: Optional[Tensor], tau: float, v_threshold: float,
               v_reset: Optional[float], decay_input: bool, surrogate: int, alpha: float,
               detach_reset: bool, is_clif: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return triton_kernels.clif_bwd(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, tau,
                                   v_threshold, v_reset, decay_input, surrogate, alpha,
                                   detach_reset, is_clif)


@triton_bwd.register_fake
def _(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, tau, v_threshold, v_reset, decay_input,
      surrogate, alpha, detach_reset, is_clif):
    return _bwd_fake(x, v0, m0, is_clif)


register_autograd(triton_fwd, triton_bwd)


# ---------------------------------------------------------------------------------------------
# The compiled ops (C++ CPU kernel and CUDA kernels): schemas in csrc/clif_ops.cpp, one op pair
# dispatched on the device. Only their fake kernels and autograd are registered here.

_fused_registered = False


def register_fused() -> bool:
    """Register fake kernels and autograd for `clif_fused::fwd/bwd` once the C++ library is
    loaded. Returns whether the ops exist."""
    global _fused_registered
    if _fused_registered:
        return True
    if not extension.has_cpp():
        return False

    @torch.library.register_fake("clif_fused::fwd")
    def _(x, v0, m0, tau, v_threshold, v_reset, decay_input, is_clif, save, surrogate, alpha,
          detach_reset):
        return _fwd_fake(x, is_clif, save)

    @torch.library.register_fake("clif_fused::bwd")
    def _(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, tau, v_threshold, v_reset,
          decay_input, surrogate, alpha, detach_reset, is_clif):
        return _bwd_fake(x, v0, m0, is_clif)

    register_autograd(torch.ops.clif_fused.fwd.default, torch.ops.clif_fused.bwd.default)
    _fused_registered = True
    return True


extension.load()
register_fused()

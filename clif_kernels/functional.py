"""The public functional API: `clif` and `lif` over a whole sequence `[T, *]`."""
import math
from typing import Optional, Tuple, Union

import torch

from .backends import DTYPES, REGISTRY, resolve_backend
from .options import DEFAULTS as D
from .options import options_for
from .reference import neuron_reference
from .spike_bits import mark as _mark_spikes


def _check_state(name, state, x_seq):
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(state).__name__}")
    if state.shape != x_seq.shape[1:]:
        raise ValueError(f"{name} must have the shape of x_seq[0], {tuple(x_seq.shape[1:])}; "
                         f"got {tuple(state.shape)}")
    if state.dtype != x_seq.dtype:
        raise TypeError(f"{name} must have the dtype of x_seq, {x_seq.dtype}; got {state.dtype}")
    if state.device != x_seq.device:
        raise ValueError(f"{name} must be on the device of x_seq, {x_seq.device}; "
                         f"got {state.device}")


def _memory_order(x_seq):
    """The neuron dimensions of `x_seq` (numbered from 0 = x_seq's dim 1) from the outermost to
    the innermost in memory; the identity when that order would not make it dense (the op then
    copies it)."""
    dims = list(range(x_seq.dim() - 1))
    order = sorted(dims, key=lambda d: -x_seq.stride(d + 1))
    if order != dims and x_seq.permute(0, *[d + 1 for d in order]).is_contiguous():
        return order
    return dims


def _dense(state, order):
    """A state as the kernels address it (it may be any strided view), its dimensions in
    `order` (None: as they are)."""
    if state is None:
        return None
    return (state if order is None else state.permute(order)).contiguous()


def _needs_grad(x_seq, v0, m0, *more):
    if not torch.is_grad_enabled():
        return False
    if x_seq.requires_grad or (v0 is not None and v0.requires_grad) or (
            m0 is not None and m0.requires_grad):
        return True
    for t in more:  # a loop, not any(genexpr): this runs on every call
        if t is not None and t.requires_grad:
            return True
    return False


def _check_fold(x_seq, scale, shift, residual, channel_dim):
    """The fold's arguments of `clif`/`lif`, checked with their names; returns the channel dim
    of x_seq (counted from 0, T's) or None without scale."""
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift must be given together (the neuron runs on "
                         "x_seq * scale + shift)")
    cdt = torch.float64 if x_seq.dtype == torch.float64 else torch.float32
    dim = None
    if scale is not None:
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
        dim = channel_dim + x_seq.dim() if channel_dim < 0 else channel_dim
        if not 1 <= dim < x_seq.dim():
            raise ValueError(f"channel_dim must name a neuron dimension of x_seq (1 to "
                             f"{x_seq.dim() - 1}; 0 is time), got {channel_dim}")
        C = x_seq.shape[dim]
        for name, t in (("scale", scale), ("shift", shift)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
            if t.shape != (C,):
                raise ValueError(f"{name} must have shape [{C}] (x_seq.shape[{channel_dim}], "
                                 f"the channels), got {tuple(t.shape)}")
            if t.dtype != cdt:
                raise TypeError(f"{name} must have dtype {cdt} (the compute dtype of "
                                f"{x_seq.dtype} input), got {t.dtype}")
            if t.device != x_seq.device:
                raise ValueError(f"{name} must be on the device of x_seq, {x_seq.device}; "
                                 f"got {t.device}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a tensor, got {type(residual).__name__}")
        if residual.shape != x_seq.shape:
            raise ValueError(f"residual must have the shape of x_seq, {tuple(x_seq.shape)}; "
                             f"got {tuple(residual.shape)}")
        if residual.dtype != x_seq.dtype:
            raise TypeError(f"residual must have the dtype of x_seq, {x_seq.dtype}; got "
                            f"{residual.dtype}")
        if residual.device != x_seq.device:
            raise ValueError(f"residual must be on the device of x_seq, {x_seq.device}; "
                             f"got {residual.device}")
    return dim


def run(x_seq, is_clif, v0, m0, return_state, backend, opts, spike_grad=True, scale=None,
        shift=None, residual=None, channel_dim=2):
    """`clif`/`lif` with validated `options.NeuronOptions`: what the modules call, so that their
    options are checked once, not on every step. `spike_grad=False`: the spike is a plain
    Heaviside step with no surrogate gradient (SpikingJelly's CLIF in eval mode); gradients
    still flow through the potentials. The fused kernels have no such mode: when a gradient is
    needed, the reference computes that call. `scale`, `shift` ([C] along x_seq's
    `channel_dim`) and `residual` (like x_seq): the fold, see `clif`."""
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"x_seq must be a tensor, got {type(x_seq).__name__}")
    if x_seq.dim() < 1:
        raise ValueError("x_seq must have at least one dimension (time first: [T, *])")
    if x_seq.dtype not in DTYPES:
        kinds = ", ".join(str(d).replace("torch.", "") for d in DTYPES)
        raise TypeError(f"x_seq must be a floating tensor ({kinds}); got {x_seq.dtype}")
    if not isinstance(return_state, bool):
        raise TypeError(f"return_state must be a bool, got {type(return_state).__name__}")
    # Eager only: under torch.compile this would be traced into the graph as a call of its own,
    # and dynamo handles torch.func itself.
    if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
        raise RuntimeError("clif_kernels does not support torch.func transforms (grad, vmap, "
                           "jacrev, ...): call it outside them and use torch.autograd.grad")
    if v0 is not None:
        _check_state("v0", v0, x_seq)
    if m0 is not None:
        _check_state("m0", m0, x_seq)
    folded = scale is not None or residual is not None
    cdim = _check_fold(x_seq, scale, shift, residual, channel_dim) if folded else None
    fold_tensors = (scale, shift, residual) if folded else ()
    if opts.float32_error is not None and x_seq.dtype != torch.float64:
        raise ValueError(opts.float32_error)
    pair = REGISTRY[resolve_backend(backend, x_seq.device, x_seq.dtype)].op_pair()
    ref_fold = {}
    if folded:
        ref_fold["residual"] = residual
        if scale is not None:  # [C] broadcast along the channel dim of x_seq[0]
            shape = [1] * (x_seq.dim() - 1)
            shape[cdim - 1] = -1
            ref_fold.update(scale=scale.view(shape), shift=shift.view(shape))
    if not spike_grad and _needs_grad(x_seq, v0, m0, *fold_tensors):
        spikes, vT, mT = neuron_reference(x_seq, opts, clif=is_clif, v0=v0, m0=m0,
                                          spike_grad=False, **ref_fold)
    elif pair is None:  # the reference
        spikes, vT, mT = neuron_reference(x_seq, opts, clif=is_clif, v0=v0, m0=m0, **ref_fold)
    else:
        # Work where the input lies: the ops take any dense [T, *] (no view here, so no view
        # node in the autograd graph); any other dense, time-outermost layout (channels_last)
        # is permuted to its memory order, and the outputs and the input gradient come back
        # with the input's strides, with no copy.
        order = None
        if x_seq.is_contiguous():  # the common case: one call, nothing to rearrange
            xp = x_seq
        else:
            order = _memory_order(x_seq)
            if order == sorted(order):
                order = None  # strided, not a permutation of dense: .contiguous() copies
            xp = (x_seq if order is None else
                  x_seq.permute(0, *[d + 1 for d in order])).contiguous()
        fold = ()
        if folded:
            # The fold's layout in the kernels' rows: the neurons of the dims inside the
            # channel dim in memory order (one channel's run).
            inner = 1
            if scale is not None:
                pos = cdim if order is None else 1 + order.index(cdim - 1)  # in xp
                # (with no neuron at all, any inner >= 1 describes the empty layout)
                inner = max(math.prod(xp.shape[pos + 1:]), 1)
            res = None
            if residual is not None:
                res = (residual if order is None else
                       residual.permute(0, *[d + 1 for d in order])).contiguous()
            fold = (scale if scale is None else scale.contiguous(),
                    shift if shift is None else shift.contiguous(), res, inner)
        spikes, vT, mT, _ = pair.fwd(xp,
                                     None if v0 is None else _dense(v0, order),
                                     None if m0 is None or not is_clif else _dense(m0, order),
                                     *opts.op_values(is_clif),
                                     _needs_grad(x_seq, v0, m0, *fold_tensors),
                                     return_state, *fold)
        if order is not None:
            inv = [order.index(d) for d in range(len(order))]
            spikes = spikes.permute(0, *[d + 1 for d in inv])
            if return_state:
                vT = vT.permute(inv)
                mT = mT.permute(inv) if is_clif else None
        if not return_state:  # the kernels stored no final state ([0] placeholders)
            return _mark_spikes(spikes)
        if not is_clif:
            mT = None
    spikes = _mark_spikes(spikes)  # saved as bits by the next layers in spike_bits' context
    if not return_state:
        return spikes
    return (spikes, vT, mT) if is_clif else (spikes, vT)


def clif(x_seq: torch.Tensor, *, tau: float = D["tau"], v_threshold: float = D["v_threshold"],
         v_reset: Optional[float] = D["v_reset"], decay_input: bool = D["decay_input"],
         surrogate: str = D["surrogate"], alpha: Optional[float] = D["alpha"],
         beta: Optional[float] = D["beta"], detach_reset: bool = D["detach_reset"],
         v0: Optional[torch.Tensor] = None, m0: Optional[torch.Tensor] = None,
         return_state: bool = False, backend: str = "auto",
         scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
         residual: Optional[torch.Tensor] = None, channel_dim: int = 2,
         ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """CLIF neuron over a whole sequence.

    Args:
        x_seq: `[T, *]` input current, float16/bfloat16/float32/float64.
        tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset: as in
            `clif-spec.md`; `v_reset=None` is the soft reset, `alpha=None` the surrogate's default.
            surrogate: "rectangle", "sigmoid", "atan", "triangle", or, with SpikingJelly 2.0's
            parameters, "piecewise_leaky_relu" (alpha its w, beta its c), "piecewise_exp",
            "soft_sign", "super_spike", "erf".
        beta: the surrogate's second parameter (only piecewise_leaky_relu has one; default
            0.01).
        v0, m0: `[*]` initial membrane and complementary potentials (default: the spec's).
        return_state: also return the final states.
        backend: "auto" (the fastest that runs here) or a name of `backends.REGISTRY`:
            "cuda", "triton", "cpp", "reference" (the plain PyTorch loop; "torch" is an alias).
        scale, shift: a per-channel affine map folded into the kernels (a BatchNorm's
            normalisation): the neuron runs on u = x_seq * scale[c] + shift[c], c the index
            along `channel_dim` (default 2, the C of `[T, B, C, ...]`); `[C]` tensors in the
            compute dtype (float32, float64 for float64 input), given together. Gradients reach
            x_seq, scale and shift.
        residual: a tensor like x_seq added to u (a residual block's shortcut).

    Returns:
        spikes `[T, *]` in x_seq's dtype, or `(spikes, vT, mT)` with `return_state=True`.

    Example:
        >>> x = torch.randn(8, 32, 128)
        >>> s, vT, mT = clif(x, return_state=True)
    """
    opts = options_for((tau, v_threshold, v_reset, decay_input, surrogate, alpha, beta,
                        detach_reset))
    return run(x_seq, True, v0, m0, return_state, backend, opts, scale=scale, shift=shift,
               residual=residual, channel_dim=channel_dim)


def lif(x_seq: torch.Tensor, *, tau: float = D["tau"], v_threshold: float = D["v_threshold"],
        v_reset: Optional[float] = D["v_reset"], decay_input: bool = D["decay_input"],
        surrogate: str = D["surrogate"], alpha: Optional[float] = D["alpha"],
        beta: Optional[float] = D["beta"], detach_reset: bool = D["detach_reset"],
        v0: Optional[torch.Tensor] = None, return_state: bool = False, backend: str = "auto",
        scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
        residual: Optional[torch.Tensor] = None, channel_dim: int = 2,
        ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """LIF neuron over a whole sequence: `clif` without the complementary potential (the
    fold's `scale`, `shift`, `residual` and `channel_dim` as there).

    Returns spikes `[T, *]`, or `(spikes, vT)` with `return_state=True`.

    Example:
        >>> s = lif(torch.randn(8, 1000), tau=2.0, v_reset=0.0)
    """
    opts = options_for((tau, v_threshold, v_reset, decay_input, surrogate, alpha, beta,
                        detach_reset))
    return run(x_seq, False, v0, None, return_state, backend, opts, scale=scale, shift=shift,
               residual=residual, channel_dim=channel_dim)

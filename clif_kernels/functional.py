"""The public functional API: `clif` and `lif` over a whole sequence `[T, *]`."""
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


def _needs_grad(x_seq, v0, m0):
    return torch.is_grad_enabled() and (
        x_seq.requires_grad or (v0 is not None and v0.requires_grad)
        or (m0 is not None and m0.requires_grad))


def run(x_seq, is_clif, v0, m0, return_state, backend, opts, spike_grad=True):
    """`clif`/`lif` with validated `options.NeuronOptions`: what the modules call, so that their
    options are checked once, not on every step. `spike_grad=False`: the spike is a plain
    Heaviside step with no surrogate gradient (SpikingJelly's CLIF in eval mode); gradients
    still flow through the potentials. The fused kernels have no such mode: when a gradient is
    needed, the reference computes that call."""
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
    if opts.float32_error is not None and x_seq.dtype != torch.float64:
        raise ValueError(opts.float32_error)
    pair = REGISTRY[resolve_backend(backend, x_seq.device, x_seq.dtype)].op_pair()
    if not spike_grad and _needs_grad(x_seq, v0, m0):
        spikes, vT, mT = neuron_reference(x_seq, opts, clif=is_clif, v0=v0, m0=m0,
                                          spike_grad=False)
    elif pair is None:  # the reference
        spikes, vT, mT = neuron_reference(x_seq, opts, clif=is_clif, v0=v0, m0=m0)
    else:
        # Work where the input lies: the ops take any dense [T, *] (no view here, so no view
        # node in the autograd graph); any other dense, time-outermost layout (channels_last)
        # is permuted to its memory order, and the outputs and the input gradient come back
        # with the input's strides, with no copy.
        order = None if x_seq.is_contiguous() else _memory_order(x_seq)  # contiguous: 1 call
        if order is not None and order == sorted(order):
            order = None  # strided, not a permutation of dense: the .contiguous() below copies
        xp = x_seq if order is None else x_seq.permute(0, *[d + 1 for d in order])

        spikes, vT, mT, _ = pair.fwd(xp.contiguous(), _dense(v0, order),
                                     _dense(m0, order) if is_clif else None,
                                     *opts.op_values(is_clif), _needs_grad(x_seq, v0, m0),
                                     return_state)
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

    Returns:
        spikes `[T, *]` in x_seq's dtype, or `(spikes, vT, mT)` with `return_state=True`.

    Example:
        >>> x = torch.randn(8, 32, 128)
        >>> s, vT, mT = clif(x, return_state=True)
    """
    opts = options_for((tau, v_threshold, v_reset, decay_input, surrogate, alpha, beta,
                        detach_reset))
    return run(x_seq, True, v0, m0, return_state, backend, opts)


def lif(x_seq: torch.Tensor, *, tau: float = D["tau"], v_threshold: float = D["v_threshold"],
        v_reset: Optional[float] = D["v_reset"], decay_input: bool = D["decay_input"],
        surrogate: str = D["surrogate"], alpha: Optional[float] = D["alpha"],
        beta: Optional[float] = D["beta"], detach_reset: bool = D["detach_reset"],
        v0: Optional[torch.Tensor] = None, return_state: bool = False, backend: str = "auto",
        ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """LIF neuron over a whole sequence: `clif` without the complementary potential.

    Returns spikes `[T, *]`, or `(spikes, vT)` with `return_state=True`.

    Example:
        >>> s = lif(torch.randn(8, 1000), tau=2.0, v_reset=0.0)
    """
    opts = options_for((tau, v_threshold, v_reset, decay_input, surrogate, alpha, beta,
                        detach_reset))
    return run(x_seq, False, v0, None, return_state, backend, opts)

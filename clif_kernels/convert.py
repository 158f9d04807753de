"""Deployment: replace CLIF neurons by LIF neurons with a hard reset.

CLIF's complementary potential costs a state and two sigmoids per step; LIF hardware and
deployment stacks do not have it. The paper's authors report that a network trained with CLIF
keeps most of its accuracy when its neurons become hard-reset LIF neurons, best with a negative
reset value (the complementary term had lowered the membrane after each spike, and a reset below
zero imitates that). Try a few values of `v_reset` on held-out data.
"""
from __future__ import annotations

from torch import nn

from .modules import CLIFNode, FusedStepping, LIFNode
from .options import DEFAULT_BETA


def clif_to_lif(model: nn.Module, v_reset: float = 0.0) -> nn.Module:
    """Replace, in place, every `CLIFNode` of `model` (and a SpikingJelly
    `ComplementaryLIFNode`) by a `LIFNode` with the same tau, threshold, surrogate, input decay,
    step mode and backend, and a hard reset to `v_reset`. Returns `model` (a bare node is
    returned converted). A `clif_kernels.spikingjelly.ComplementaryLIFNode` becomes that
    module's `LIFNode`, a SpikingJelly neuron too.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), CLIFNode(step_mode="m"))
        >>> net = clif_to_lif(net, v_reset=-0.2)
    """
    if v_reset is None:
        raise TypeError("v_reset must be a number: the LIF nodes get a hard reset to it "
                        "(a soft-reset LIF would not imitate the complementary term)")
    if _is_clif(model):
        return _to_lif(model, v_reset)
    for name, child in model.named_children():
        if _is_clif(child):
            setattr(model, name, _to_lif(child, v_reset))
        else:
            clif_to_lif(child, v_reset)
    return model


def _is_clif(m):
    return isinstance(m, CLIFNode) or type(m).__name__ == "ComplementaryLIFNode"


def _to_lif(node, v_reset):
    """The LIF node replacing `node`, in its training mode (a model in eval() stays so)."""
    return _lif_like(node, v_reset).train(node.training)


def _lif_like(node, v_reset):
    if isinstance(node, CLIFNode):
        o = node.neuron_options()
        sg = node.__dict__.get("_surrogate_object")
        if sg is not None:  # the same object, so that its annealing goes on
            surrogate = dict(surrogate_function=sg)
        else:
            surrogate = dict(surrogate=o.surrogate, alpha=o.alpha,
                             beta=o.beta if o.surrogate in DEFAULT_BETA else None)
        return LIFNode(tau=o.tau, v_threshold=o.v_threshold, v_reset=v_reset,
                       decay_input=o.decay_input, detach_reset=o.detach_reset,
                       step_mode=node.step_mode, backend=node.backend,
                       store_state_seqs=node.store_state_seqs, **surrogate)
    if isinstance(node, FusedStepping):
        # clif_kernels.spikingjelly's node (SpikingJelly is installed): its LIFNode, so that the
        # network stays made of SpikingJelly neurons (SpikingJelly's LIFNode calls its
        # store_state_seqs store_v_seq).
        from .spikingjelly import LIFNode as SpikingJellyLIFNode
        return SpikingJellyLIFNode(tau=node.tau, decay_input=False,
                                   v_threshold=node.v_threshold, v_reset=float(v_reset),
                                   surrogate_function=node.surrogate_function,
                                   step_mode=node.step_mode, store_v_seq=node.store_state_seqs,
                                   backend=node.backend)
    # SpikingJelly's own ComplementaryLIFNode: soft reset, no input decay, its surrogate object.
    return LIFNode(tau=float(node.tau), v_threshold=float(node.v_threshold), v_reset=v_reset,
                   decay_input=False, surrogate_function=node.surrogate_function,
                   step_mode=node.step_mode,
                   store_state_seqs=bool(getattr(node, "store_state_seqs", False)))

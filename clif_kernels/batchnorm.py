"""BatchNorm folded into the neuron: a conv-BN-neuron block without BN's output in memory.

In a conv-BN-neuron block autograd keeps the conv's input, BN's input and BN's output (the
neuron's input). BN's normalisation is a per-channel affine map `u = x * scale + shift`, which
the fused kernels apply on the fly, in the forward and again in the backward's recompute
(`functional.clif`'s `scale`, `shift`, `residual`): nobody keeps u, and BN's input, which BN's
statistics need anyway, serves both.

- `BatchNormCLIF`, `BatchNormLIF`: `nn.BatchNorm2d` and a neuron in one module, multi-step
  `[T, B, C, *]`, statistics over T * B and the spatial dims (SpikingJelly's
  `SeqToANNContainer(BatchNorm2d)`, or its `layer.BatchNorm2d` in step mode "m"). The state_dict
  is BatchNorm2d's (the neuron has none), so `load_state_dict(bn.state_dict())` takes the
  unfused pair's weights. `module(x, residual=r)` adds a shortcut before the neuron.
- `fold_batchnorm(model)`: rewrites the BN -> neuron and BN -> (+ shortcut) -> neuron patterns of
  a model (torch.fx) with the same weights; the modules stay where they were, so the
  state_dict's keys are the model's.

Gradients: the op returns the gradient of u; those of x, scale, shift and the residual are
torch ops in its autograd formula, and the batch statistics' own (through the mean and the
variance to x) come from `_BatchStats`, which keeps no tensor but x (the op's own saved input)
and the [C] mean.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import nn

from .modules import CLIFNode, FusedStepping, LIFNode, _Node

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _BatchStats(torch.autograd.Function):
    """(mean, biased variance) of x per channel (dim `channel_dim`), in the compute dtype.
    Written out so that the backward keeps only x and the mean: autograd through
    `torch.var_mean` of an fp32 copy of a bf16 x would keep that copy."""

    @staticmethod
    def forward(ctx, x, channel_dim):
        dims = tuple(d for d in range(x.dim()) if d != channel_dim)
        xc = x.to(_compute_dtype(x))
        var, mean = torch.var_mean(xc, dim=dims, correction=0)
        ctx.save_for_backward(x, mean)
        ctx.channel_dim = channel_dim
        return mean, var

    @staticmethod
    def backward(ctx, g_mean, g_var):
        x, mean = ctx.saved_tensors
        shape = [1] * x.dim()
        shape[ctx.channel_dim] = mean.shape[0]
        n = x.numel() // max(mean.shape[0], 1)
        gx = torch.zeros((), dtype=mean.dtype, device=x.device)
        if g_mean is not None:
            gx = gx + (g_mean / n).view(shape)
        if g_var is not None:
            gx = gx + (x.to(mean.dtype) - mean.view(shape)) * (g_var * (2.0 / n)).view(shape)
        return gx.expand(x.shape).to(x.dtype), None


def batchnorm_affine(bn: _BatchNorm, x: torch.Tensor, channel_dim: int = 2):
    """(scale, shift), `[C]` in x's compute dtype, such that `x * scale + shift` is what `bn`
    computes on x, with `bn`'s statistics over every dim of x but `channel_dim`; in training it
    updates `bn`'s running statistics (and num_batches_tracked) as `bn(x)` would."""
    C = x.shape[channel_dim]
    if C != bn.num_features:
        raise ValueError(f"x has {C} channels (dim {channel_dim}), the batch norm "
                         f"{bn.num_features}")
    cdt = _compute_dtype(x)
    # _BatchNorm.forward's momentum and counting, as they are.
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    if batch:
        n = x.numel() // C
        if bn.training and n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"input size {tuple(x.shape)}")
        mean, var = _BatchStats.apply(x, channel_dim)
        if bn.training and bn.running_mean is not None:
            with torch.no_grad():  # the unbiased variance, as BatchNorm keeps it
                bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype) * factor)
                bn.running_var.mul_(1 - factor).add_(
                    (var * (n / max(n - 1, 1))).to(bn.running_var.dtype) * factor)
    else:
        mean, var = bn.running_mean.to(cdt), bn.running_var.to(cdt)
    inv = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = bn.weight.to(cdt) * inv
        shift = bn.bias.to(cdt) - mean * scale
    else:
        scale, shift = inv, -mean * inv
    return scale, shift


def _unfused(bn, x, residual):
    """`bn(x) (+ residual)` for `x: [T, B, C, *]`, as a separate call (where the fold does not
    apply): _BatchNorm's forward itself on [T * B, C, *], past a multi-step wrapper's
    (SpikingJelly's layer.BatchNorm2d) and the input-rank check of a 2d class."""
    u = nn.functional.batch_norm(
        x.flatten(0, 1), bn.running_mean if not bn.training or bn.track_running_stats else None,
        bn.running_var if not bn.training or bn.track_running_stats else None, bn.weight,
        bn.bias, bn.training or (bn.running_mean is None and bn.running_var is None),
        _momentum(bn), bn.eps).view(x.shape)
    return u if residual is None else u + residual


def _momentum(bn):
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def _can_fold(node) -> bool:
    """Whether `node` runs whole sequences in one fused call that can take the fold: this
    package's nodes (and its SpikingJelly drop-ins) in step mode "m", recording no per-step
    states."""
    if not isinstance(node, FusedStepping) or getattr(node, "step_mode", "m") != "m":
        return False
    if isinstance(node, _Node):
        return not node.store_state_seqs
    stores = getattr(node, "_stores_seqs", None)
    return hasattr(node, "_memories") and not (stores is not None and stores())


def _fold_call(node, x, fold):
    """The node's multi-step call with the fold's keywords, its carried state handled as its
    own call handles it."""
    if isinstance(node, _Node):
        states = node._carried(x, x.shape[1:])
        (spikes,), states = node.multi_step_functional_forward((x,), states, **fold)
        node._keep(states)
        return spikes
    # SpikingJelly's MemoryModule.multi_step_forward, with the keywords passed on (its neurons'
    # own multi_step_forward takes none).
    states = node.materialize_states((x,), tuple(node._memories.values()), "m")
    (spikes,), states = node.multi_step_functional_forward((x,), states, **fold)
    for name, value in zip(node._memories, states):
        node._memories[name] = value
    return spikes


def bn_neuron_forward(bn: _BatchNorm, node: nn.Module, x: torch.Tensor,
                      residual: Optional[torch.Tensor] = None, channel_dim: int = 2):
    """`node(bn(x) + residual)` for a multi-step `x: [T, B, C, *]` (BN's statistics over
    every dim but `channel_dim`), with BN and the residual folded into the node's kernels
    when it can take them (`_can_fold`), else as separate calls."""
    if not _can_fold(node):
        if channel_dim != 2:
            raise ValueError(f"{type(node).__name__} cannot take the fold (a multi-step node "
                             "of this package can), and the unfused path needs channel_dim=2")
        return node(_unfused(bn, x, residual))
    scale, shift = batchnorm_affine(bn, x, channel_dim)
    return _fold_call(node, x, dict(scale=scale, shift=shift, residual=residual,
                                    channel_dim=channel_dim))


class _BatchNormNeuron(nn.BatchNorm2d):
    _neuron_cls = CLIFNode

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, **neuron_kwargs) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        neuron_kwargs.setdefault("step_mode", "m")
        if neuron_kwargs["step_mode"] != "m":
            raise ValueError("a batch norm folded into the neuron runs whole sequences: "
                             f"step_mode must be 'm', got {neuron_kwargs['step_mode']!r}")
        # No parameters or buffers: the state_dict stays BatchNorm2d's.
        self.neuron = self._neuron_cls(**neuron_kwargs)

    def _check_input_dim(self, input):
        if input.dim() < 3:
            raise ValueError(f"expected a multi-step input [T, B, C, *], got {input.dim()}D")

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`x: [T, B, C, *]` -> spikes of the neuron on `bn(x) (+ residual)`."""
        self._check_input_dim(x)
        return bn_neuron_forward(self, self.neuron, x, residual, 2)

    def reset(self):
        """Forget the neuron's carried state."""
        self.neuron.reset()

    @classmethod
    def from_modules(cls, bn: _BatchNorm, neuron: Optional[_Node] = None):
        """The module with `bn`'s configuration, parameters and statistics, and `neuron`'s
        options (a `CLIFNode`/`LIFNode`; default: the neuron class's defaults)."""
        kw = {}
        if neuron is not None:
            if not isinstance(neuron, cls._neuron_cls):
                raise TypeError(f"neuron must be a {cls._neuron_cls.__name__}, got "
                                f"{type(neuron).__name__}")
            o = neuron.neuron_options()
            kw = dict(tau=o.tau, v_threshold=o.v_threshold, v_reset=o.v_reset,
                      decay_input=o.decay_input, surrogate=o.surrogate, alpha=o.alpha,
                      beta=o.beta if o.surrogate == "piecewise_leaky_relu" else None,
                      detach_reset=o.detach_reset, backend=neuron.backend)
        ref = bn.weight if bn.affine else bn.running_mean
        module = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                     device=None if ref is None else ref.device,
                     dtype=None if ref is None else ref.dtype, **kw)
        module.load_state_dict(bn.state_dict())
        module.train(bn.training)
        return module


class BatchNormCLIF(_BatchNormNeuron):
    """`nn.BatchNorm2d` then a `CLIFNode`, folded: `[T, B, C, *]` in, spikes out. The first
    arguments are BatchNorm2d's (statistics over T, B and the spatial dims); the keywords after
    them are `CLIFNode`'s (step_mode "m"). `forward(x, residual=None)`."""

    _neuron_cls = CLIFNode


class BatchNormLIF(_BatchNormNeuron):
    """`nn.BatchNorm2d` then a `LIFNode` (its defaults: hard reset to 0, input decay),
    folded. See `BatchNormCLIF`."""

    _neuron_cls = LIFNode


# ----------------------------------------------------------------------------------------------
# The transform.

class FoldedBatchNormNeuron(nn.Module):
    """What `fold_batchnorm` puts in place of `neuron(bn(x) (+ residual))`: calls the model's
    own BN and neuron modules, which stay registered where they were (held here by reference,
    so the state_dict and `reset_net` see them once, under their own names)."""

    def __init__(self, bn: _BatchNorm, neuron: nn.Module):
        super().__init__()
        self.__dict__["bn"] = bn
        self.__dict__["neuron"] = neuron

    def forward(self, x, residual=None):
        neuron = self.__dict__["neuron"]
        node = neuron if isinstance(neuron, FusedStepping) else getattr(neuron, "node", neuron)
        if node is not neuron and getattr(neuron, "label", False):
            # A wrapper that labels its calls for the profiler (tools/models.Neuron).
            from .tools.models import NEURON_RANGE
            with torch.profiler.record_function(NEURON_RANGE):
                return self._call(node, x, residual)
        return self._call(node, x, residual)

    def _call(self, node, x, residual):
        return bn_neuron_forward(self.__dict__["bn"], node, x, residual, 2)


def _is_neuron(module) -> bool:
    """A node of this package (or a wrapper holding one as `.node`)."""
    return isinstance(module, FusedStepping) or isinstance(getattr(module, "node", None),
                                                           FusedStepping)


# SpikingJelly's layers and neurons (not its models, whose forward is what is traced).
_SJ_LEAVES = ("spikingjelly.activation_based.layer", "spikingjelly.activation_based.neuron",
              "spikingjelly.activation_based.base")


class _Tracer(torch.fx.Tracer):
    # BN, the neurons (stateful) and SpikingJelly's layers (which branch on their step mode and
    # on shapes) are called, not traced through.
    def is_leaf_module(self, m, qualname):
        return (isinstance(m, _BatchNorm) or _is_neuron(m)
                or isinstance(getattr(m, "node", None), nn.Module)
                or type(m).__module__.startswith(_SJ_LEAVES)
                or super().is_leaf_module(m, qualname))


# Calls that only regroup the leading (time, batch) dims between BN and the neuron (the
# multi-step containers' flatten and unflatten): replayed on BN's input.
_RESHAPES = {"unflatten", "view", "reshape", "flatten"}
_ADDS = {operator.add, operator.iadd, torch.add}


def _single_user(node):
    return len(node.users) == 1


def _bn_chain(modules, node):
    """(BN's call, the reshape calls from it to `node`) when `node` is BN's output, possibly
    regrouped, used only on the way to the neuron; else None."""
    chain = []
    while node.op == "call_method" and node.target in _RESHAPES and _single_user(node):
        chain.append(node)
        node = node.args[0]
    if (node.op == "call_module" and isinstance(modules[node.target], _BatchNorm)
            and _single_user(node) and len(node.args) == 1 and not node.kwargs):
        return node, chain[::-1]
    return None


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """`model` with every `neuron(bn(...))` and `neuron(bn(...) + shortcut)` (the shortcut's
    add in either order, BN's output possibly regrouped between [T * B, C, *] and
    [T, B, C, *]) calling `FoldedBatchNormNeuron` instead: BN's output is never materialised.
    The neuron must be one of this package's multi-step nodes (or a module holding one as
    `.node`); others are left alone. Same modules, parameters and buffers, under the same names
    (the state_dict loads either way); the result is a `torch.fx.GraphModule` (the model's
    forward traced, with BN and the neurons as leaves). The number of folds is
    `result.folded`."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    modules = dict(model.named_modules())
    folds = []
    for node in list(graph.nodes):
        if node.op != "call_module" or not _is_neuron(modules[node.target]):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        arg, residual, found = node.args[0], None, None
        if (arg.op in ("call_function", "call_method") and _single_user(arg)
                and (arg.target in _ADDS or arg.target in ("add", "__add__", "__iadd__", "add_"))
                and len(arg.args) == 2 and not arg.kwargs):
            for i in (0, 1):
                a, other = arg.args[i], arg.args[1 - i]
                if isinstance(a, torch.fx.Node) and isinstance(other, torch.fx.Node):
                    found = _bn_chain(modules, a)
                    if found is not None:
                        residual = other
                        break
            add = arg
        else:
            found = _bn_chain(modules, arg) if isinstance(arg, torch.fx.Node) else None
            add = None
        if found is None:
            continue
        bn_call, chain = found
        name = f"_folded_bn_neuron_{len(folds)}"
        folds.append((name, FoldedBatchNormNeuron(modules[bn_call.target],
                                                  modules[node.target])))
        with graph.inserting_before(node):
            x = bn_call.args[0]
            for step in chain:  # the same regrouping, on BN's input
                x = graph.node_copy(step, lambda n, s=step, v=x: v if n is s.args[0] else n)
            args = (x,) if residual is None else (x, residual)
            fused = graph.call_module(name, args)
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        if add is not None:
            graph.erase_node(add)
        for step in reversed(chain):
            graph.erase_node(step)
        graph.erase_node(bn_call)
    fused = dict(folds)
    root = {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            root[n.target] = fused[n.target] if n.target in fused else _attr(model, n.target)
    gm = torch.fx.GraphModule(root, graph, class_name=type(model).__name__ + "Folded")
    # The modules the graph no longer calls stay, under their names (state_dict, reset).
    for name, module in model.named_modules():
        if name and (isinstance(module, _BatchNorm) or _is_neuron(module)) \
                and not _has_submodule(gm, name):
            gm.add_submodule(name, module)
    gm.folded = len(folds)
    gm.train(model.training)
    return gm


def _attr(model, target):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _has_submodule(gm, name):
    try:
        gm.get_submodule(name)
        return True
    except AttributeError:
        return False

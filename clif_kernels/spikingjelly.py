"""SpikingJelly-native drop-ins: `ComplementaryLIFNode` and `LIFNode` are SpikingJelly 2.0's own
classes underneath, with their forward running this package's fused kernels.

    -from spikingjelly.activation_based.neuron import ComplementaryLIFNode, LIFNode
    +from clif_kernels.spikingjelly import ComplementaryLIFNode, LIFNode

Each subclasses SpikingJelly's class of the same name and takes its constructor arguments (plus
`backend=`, keyword only), so SpikingJelly and its users see SpikingJelly neurons: the base
classes (`BaseNode`, `MemoryModule`, `StepModule`: monitors, `functional.reset_net`,
`detach_net`, `set_step_mode` and `to_functional_forward` find them), the attributes
(`tau`, `v_threshold`, `v_reset`, `surrogate_function`, `detach_reset`, ...; read on every call,
as SpikingJelly reads them), the states `v`, `m` as SpikingJelly registers and resets them,
`store_state_seqs` / `store_v_seq`, and `extra_repr`. Only the state transition differs: the
functional forwards of `modules.FusedStepping` (one fused launch per call; in multi-step mode the
whole sequence), which SpikingJelly's own `MemoryModule` machinery calls.

Importing this module imports SpikingJelly; `import clif_kernels` does not. README.md
("Migrating from SpikingJelly") lists what is the same and what differs.
"""
from __future__ import annotations

import inspect
import numbers

import torch
from spikingjelly.activation_based import neuron as _sj_neuron

from .backends import check_backend_name
from .modules import FusedStepping, _by_value, surrogate_key, surrogate_spec
from .options import make_options

__all__ = ["ComplementaryLIFNode", "LIFNode"]


def _defaults(cls):
    """SpikingJelly's default arguments of `cls.__init__`: the same objects (its default
    surrogate is one instance shared by every node built without one, and so is ours)."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


_CLIF_DEFAULTS = _defaults(_sj_neuron.ComplementaryLIFNode)
_LIF_DEFAULTS = _defaults(_sj_neuron.LIFNode)


class _SpikingJellyFused(FusedStepping):
    """What the two nodes add to SpikingJelly's classes (it comes first in their MRO)."""

    def _state(self, value, init, shape, dtype, device):
        """A state as SpikingJelly's materialize_states makes it, except that the initial state
        stays None (the kernels fill it in without reading memory): a number is a constant
        state, a tensor of another shape starts again, one of another dtype or device is
        converted."""
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return None if float(value) == init else torch.full(shape, float(value), dtype=dtype,
                                                                device=device)
        if isinstance(value, torch.Tensor):
            if value.shape != shape:
                return None
            if value.dtype != dtype or value.device != device:
                return value.to(dtype=dtype, device=device)
        return value

    def _shape_of_step(self, inputs, step_mode):
        x = inputs[0]
        return (x.shape[1:] if step_mode == "m" else x.shape), x.dtype, x.device

    @property
    def backend(self):
        """The backend of the next call: "auto" or one of `backends.REGISTRY` (checked when
        assigned)."""
        return self.__dict__["_backend"]

    @backend.setter
    def backend(self, value):
        check_backend_name(value)
        self.__dict__["_backend"] = value

    def neuron_options(self):
        # SpikingJelly reads its attributes on every call, and so do these nodes: the options
        # are validated again only when one of them changed, compared by value (validation
        # costs about as much as the rest of a small call's Python).
        sg = self.surrogate_function
        key = (tuple(_by_value(v) for v in self._option_values()), surrogate_key(sg))
        cached = self.__dict__.get("_options_cache")
        if cached is None or cached[0] != key or torch.compiler.is_compiling():
            name, alpha, beta = surrogate_spec(sg)
            cached = (key, self._make_options(name, alpha, beta))
            if not torch.compiler.is_compiling():
                self.__dict__["_options_cache"] = cached
        return cached[1]

    def multi_step_forward(self, x_seq, *args, **kwargs):
        if x_seq.shape[0] == 0 and self._stores_seqs():
            # No step: SpikingJelly's recording loop would stack an empty list; one (empty)
            # launch, and empty sequences.
            states = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
            (spikes,), states = self.multi_step_functional_forward((x_seq,), states)
            for name, value in zip(self._memories, states):
                self._memories[name] = value
            self._set_empty_seqs(x_seq)
            return spikes
        return super().multi_step_forward(x_seq, *args, **kwargs)

    def detach(self):
        # SpikingJelly detaches its states in place; a state of ours may be a view of the
        # kernel's flat output, which cannot be detached in place: it is replaced instead.
        for name, value in self._memories.items():
            if isinstance(value, torch.Tensor) and value._is_view():
                self._memories[name] = value.detach()
        super().detach()


class ComplementaryLIFNode(_SpikingJellyFused, _sj_neuron.ComplementaryLIFNode):
    """SpikingJelly 2.0's `ComplementaryLIFNode` (soft reset, no input decay; tau, v_threshold,
    surrogate_function), with the fused kernels stepping it. `backend`: that of clif_kernels.clif
    ("auto" or a name of `backends.REGISTRY`). `surrogate_in_eval`: keep the surrogate gradient in
    eval mode (SpikingJelly's fires a plain Heaviside there, which passes none)."""

    _is_clif = True

    def __init__(self, tau: float = _CLIF_DEFAULTS["tau"],
                 v_threshold: float = _CLIF_DEFAULTS["v_threshold"],
                 surrogate_function=_CLIF_DEFAULTS["surrogate_function"],
                 step_mode: str = _CLIF_DEFAULTS["step_mode"],
                 store_state_seqs: bool = _CLIF_DEFAULTS["store_state_seqs"], *,
                 backend: str = "auto", surrogate_in_eval: bool = False):
        check_backend_name(backend)
        if not isinstance(surrogate_in_eval, bool):
            raise TypeError(f"surrogate_in_eval must be a bool, got "
                            f"{type(surrogate_in_eval).__name__}")
        super().__init__(tau, v_threshold, surrogate_function, step_mode, store_state_seqs)
        self.backend = backend
        self.surrogate_in_eval = surrogate_in_eval
        self.neuron_options()  # an unsupported surrogate fails here, not on the first call

    def spike_grad(self):
        # SpikingJelly's CLIF fires with a plain Heaviside step in eval mode: no surrogate
        # gradient (the potentials still pass theirs), unless surrogate_in_eval.
        return self.training or self.surrogate_in_eval

    def _stores_seqs(self):
        return self.store_state_seqs

    def _set_empty_seqs(self, x_seq):
        self.state_seqs = [x_seq.new_empty(x_seq.shape), x_seq.new_empty(x_seq.shape)]

    # SpikingJelly's CLIF reads tau, v_threshold and its surrogate only: its v_reset and
    # detach_reset attributes (None, False) are not used.
    def _option_values(self):
        return self.tau, self.v_threshold

    def _make_options(self, surrogate, alpha, beta):
        return make_options(tau=self.tau, v_threshold=self.v_threshold, surrogate=surrogate,
                            alpha=alpha, beta=beta)

    def materialize_states(self, inputs, states, step_mode):
        shape, dtype, device = self._shape_of_step(inputs, step_mode)
        v, m = states
        if isinstance(m, torch.Tensor) and m.dim() == 0 and len(shape):
            m = m.to(dtype=dtype, device=device).expand(shape)
        return (self._state(v, 0.0, shape, dtype, device),
                self._state(m, 0.0, shape, dtype, device))


class LIFNode(_SpikingJellyFused, _sj_neuron.LIFNode):
    """SpikingJelly 2.0's `LIFNode` (its defaults: input decay, hard reset to 0, Sigmoid), with
    the fused kernels stepping it. `backend` as for `ComplementaryLIFNode`."""

    _is_clif = False

    def __init__(self, tau: float = _LIF_DEFAULTS["tau"],
                 decay_input: bool = _LIF_DEFAULTS["decay_input"],
                 v_threshold: float = _LIF_DEFAULTS["v_threshold"],
                 v_reset=_LIF_DEFAULTS["v_reset"],
                 surrogate_function=_LIF_DEFAULTS["surrogate_function"],
                 detach_reset: bool = _LIF_DEFAULTS["detach_reset"],
                 step_mode: str = _LIF_DEFAULTS["step_mode"],
                 store_v_seq: bool = _LIF_DEFAULTS["store_v_seq"], *, backend: str = "auto"):
        check_backend_name(backend)
        super().__init__(tau, decay_input, v_threshold, v_reset, surrogate_function,
                         detach_reset, step_mode, store_v_seq)
        self.backend = backend
        self.neuron_options()

    def _stores_seqs(self):
        return self.store_v_seq

    def _set_empty_seqs(self, x_seq):
        self.v_seq = x_seq.new_empty(x_seq.shape)

    def _option_values(self):
        return self.tau, self.v_threshold, self.v_reset, self.decay_input, self.detach_reset

    def _make_options(self, surrogate, alpha, beta):
        return make_options(tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset,
                            decay_input=self.decay_input, surrogate=surrogate, alpha=alpha,
                            beta=beta, detach_reset=self.detach_reset)

    def materialize_states(self, inputs, states, step_mode):
        shape, dtype, device = self._shape_of_step(inputs, step_mode)
        init = 0.0 if self.v_reset is None else float(self.v_reset)
        return (self._state(states[0], init, shape, dtype, device),)

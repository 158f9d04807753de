"""Neuron modules: `CLIFNode` and `LIFNode`, which need nothing but torch, and the stepping logic
they share with the SpikingJelly-native nodes of `clif_kernels.spikingjelly`.

State (`v`, and `m` for CLIF) is carried from one call to the next until `reset()`; `detach()`
cuts the graph through it (SpikingJelly's `functional.reset_net` and `functional.detach_net` call
these). Gradients flow through the carried state into the previous call.

    >>> node = CLIFNode(step_mode="m")
    >>> spikes = node(torch.randn(8, 32, 128))     # [T, N, *]
    >>> node.reset()

The stepping logic lives once, in `FusedStepping`: SpikingJelly 2.0's functional interface
(`single_step_functional_forward`, `multi_step_functional_forward`: inputs and states in, outputs
and new states out), each call one fused launch. `CLIFNode` drives it from its own attributes;
`clif_kernels.spikingjelly` puts the same class in front of SpikingJelly's own neurons, whose
`MemoryModule` drives it as it drives theirs.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .backends import check_backend_name
from .functional import run
from .options import DEFAULT_BETA, SURROGATES, _finite_float, make_options
from .options import DEFAULTS as D

# SpikingJelly 2.0's surrogate classes (spikingjelly.activation_based.surrogate) that the kernels
# compute, by class name: the kernel surrogate of the same function, and its (alpha, beta) from
# the object's parameters. Rect(a) is a * [|z| < 0.5/a], an open window: piecewise_leaky_relu
# with w = 0.5/a and c = 0 (the paper's rectangle has a closed one). PiecewiseQuadratic(a) is
# a - a^2 |z| inside |z| <= 1/a: the triangle with alpha 1/a (0 on the edges either way).
SJ_SURROGATE_MODULE = "spikingjelly.activation_based.surrogate"
SJ_SURROGATES = {
    "Rect": ("piecewise_leaky_relu", ("alpha",), lambda a: (0.5 / a, 0.0)),
    "PiecewiseLeakyReLU": ("piecewise_leaky_relu", ("w", "c"), lambda w, c: (w, c)),
    "PiecewiseQuadratic": ("triangle", ("alpha",), lambda a: (1.0 / a, None)),
    "Sigmoid": ("sigmoid", ("alpha",), lambda a: (a, None)),
    "ATan": ("atan", ("alpha",), lambda a: (a, None)),
    "PiecewiseExp": ("piecewise_exp", ("alpha",), lambda a: (a, None)),
    "SoftSign": ("soft_sign", ("alpha",), lambda a: (a, None)),
    "SuperSpike": ("super_spike", ("alpha",), lambda a: (a, None)),
    "Erf": ("erf", ("alpha",), lambda a: (a, None)),
}
# The surrogate classes of the paper authors' code (github.com/HuuYuLong/Complementary-LIF),
# which runs on SpikingJelly 0.0.0.0.12: their own `Rectangle(alpha)` in `modules.surrogate`
# (1/alpha inside the closed window |z| <= alpha/2: the paper's rectangle, the same alpha), and
# the SpikingJelly 0.0.0.0.12 classes their training script picks (`clock_driven.surrogate`,
# with the formulas of SpikingJelly 2.0's classes of the same names).
AUTHORS_SURROGATE_MODULE = "modules.surrogate"
OLD_SJ_SURROGATE_MODULE = "spikingjelly.clock_driven.surrogate"
SURROGATE_CLASSES = {
    **{(SJ_SURROGATE_MODULE, name): entry for name, entry in SJ_SURROGATES.items()},
    **{(OLD_SJ_SURROGATE_MODULE, name): SJ_SURROGATES[name]
       for name in ("Sigmoid", "ATan", "PiecewiseQuadratic")},
    (AUTHORS_SURROGATE_MODULE, "Rectangle"): ("rectangle", ("alpha",), lambda a: (a, None)),
}


def _surrogate_entry(cls):
    """The SURROGATE_CLASSES entry of exactly this class, or None. The authors' module is
    found under any package (`modules.surrogate`, or `<package>.modules.surrogate` when their
    code is vendored)."""
    module = cls.__module__
    if module.endswith("." + AUTHORS_SURROGATE_MODULE):
        module = AUTHORS_SURROGATE_MODULE
    return SURROGATE_CLASSES.get((module, cls.__name__))


def _supported():
    return (f"the names {sorted(SURROGATES)}, SpikingJelly 2.0's "
            f"{', '.join(sorted(SJ_SURROGATES))}, SpikingJelly 0.0.0.0.12's Sigmoid, ATan and "
            "PiecewiseQuadratic, or the paper authors' modules.surrogate.Rectangle")


def surrogate_spec(surrogate, alpha=None, beta=None):
    """(name, alpha, beta) in this package's convention from a surrogate name (with `alpha` and
    `beta` as given) or a surrogate object of `SURROGATE_CLASSES` (which carries its own
    parameters; the table has the conversions). An object with `spiking=False`, a subclass of
    one of those classes, or any other object raises."""
    if isinstance(surrogate, str):
        return surrogate, alpha, beta
    cls = type(surrogate)
    entry = _surrogate_entry(cls)
    if entry is None:
        raise ValueError(f"unsupported surrogate {cls.__module__}.{cls.__qualname__}: the fused "
                         f"kernels compute {_supported()} (exactly those classes, not "
                         "subclasses: a subclass may change the derivative)")
    if alpha is not None or beta is not None:
        raise ValueError(f"alpha={alpha!r}, beta={beta!r} conflict with the surrogate object "
                         f"{cls.__name__}, which carries its own parameters; give one")
    if getattr(surrogate, "spiking", True) is not True:
        raise ValueError(f"{cls.__name__}(spiking=False) outputs the surrogate's primitive, not "
                         "spikes; the fused kernels fire binary spikes and cannot do that (use "
                         "spiking=True, or SpikingJelly's own neuron)")
    name, params, convert = entry
    values = [_finite_float(f"{cls.__name__}.{p}", getattr(surrogate, p)) for p in params]
    if values[0] <= 0:
        raise ValueError(f"{cls.__name__}.{params[0]} must be > 0, got {values[0]}")
    a, b = convert(*values)
    return name, a, b


def _by_value(value):
    """A parameter as part of a cache key: a number as itself, a 0-d CPU tensor by its value (the
    tensor object alone would compare equal to itself after an in-place change such as
    `sg.alpha.fill_(0.5)` or `sg.alpha *= 0.5`), any other tensor as a key that never matches
    (its validation then runs, and refuses it)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and value.device.type == "cpu" and not value.requires_grad:
            return (value.dtype, value.item())
        return object()
    return value


def surrogate_key(sg):
    """What `surrogate_spec(sg)` depends on, by value: equal keys give equal results."""
    entry = _surrogate_entry(type(sg))
    names = entry[1] if entry is not None else ()
    return (type(sg), getattr(sg, "spiking", None),
            tuple(_by_value(getattr(sg, k, None)) for k in names))


# The fold's keywords of `functional.run` that the multi-step call passes on.
_FOLD_KEYWORDS = ("scale", "shift", "residual", "channel_dim")


class FusedStepping:
    """The stepping logic of every neuron module here, in SpikingJelly 2.0's functional form.

    `states` is `(v,)` for LIF, `(v, m)` for CLIF; a state is a tensor of the input step's shape,
    dtype and device, or None for the spec's initial state (which the kernels fill in without
    reading memory). A class using it provides `_is_clif`, `backend` and `neuron_options()`.
    """

    _is_clif = True

    def neuron_options(self):
        """The validated `options.NeuronOptions` of the next call."""
        raise NotImplementedError

    def single_step_functional_forward(self, inputs, states, **kwargs):
        """One step: `inputs[0]` is `[N, *]`; one fused launch of T = 1."""
        (spikes,), states = self._fused(inputs[0].unsqueeze(0), states)
        return (spikes[0],), states

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        """A whole sequence: `inputs[0]` is `[T, N, *]`; one fused launch. The keywords
        `scale`, `shift`, `residual` and `channel_dim`, when given, fold a per-channel affine map
        and a residual into it (`functional.clif`; `clif_kernels.batchnorm` passes them)."""
        fold = {k: kwargs[k] for k in _FOLD_KEYWORDS if k in kwargs}
        return self._fused(inputs[0], states, **fold)

    def spike_grad(self):
        """Whether the spike passes its surrogate gradient in this call (the nodes here always
        do; SpikingJelly's CLIF does not in eval mode)."""
        return True

    def _fused(self, x_seq, states, **fold):
        opts = self.neuron_options()
        if self._is_clif:
            spikes, v, m = run(x_seq, True, states[0], states[1], True, self.backend, opts,
                               self.spike_grad(), **fold)
            return (spikes,), (v, m)
        spikes, v = run(x_seq, False, states[0], None, True, self.backend, opts,
                        self.spike_grad(), **fold)
        return (spikes,), (v,)


class _Node(FusedStepping, nn.Module):
    _default_surrogate = D["surrogate"]

    def __init__(self, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                 step_mode, backend, store_state_seqs, surrogate_function, beta):
        super().__init__()
        if surrogate_function is not None:
            if surrogate is not None:
                raise ValueError("give surrogate or surrogate_function, not both "
                                 f"(got {surrogate!r} and {surrogate_function!r})")
            surrogate = surrogate_function
        elif surrogate is None:
            surrogate = self._default_surrogate
        name, alpha, beta = surrogate_spec(surrogate, alpha, beta)
        self.opts = make_options(tau=tau, v_threshold=v_threshold, v_reset=v_reset,
                                 decay_input=decay_input, surrogate=name, alpha=alpha,
                                 beta=beta, detach_reset=detach_reset)
        # A surrogate object is read again on every call (its parameters may be annealed, in
        # place or by assignment), by value; kept out of nn.Module's registries so that the
        # node's state_dict and repr stay those of a string surrogate.
        if not isinstance(surrogate, str):
            self.__dict__["_surrogate_object"] = surrogate
            self.__dict__["_surrogate_key"] = surrogate_key(surrogate)
        if not isinstance(store_state_seqs, bool):
            raise TypeError(f"store_state_seqs must be a bool, got {type(store_state_seqs).__name__}")
        self.store_state_seqs = store_state_seqs
        self.step_mode = step_mode
        self.backend = backend
        self.reset()

    @property
    def backend(self):
        """The backend of every call: "auto" or a name of `backends.REGISTRY` (checked at
        construction and on assignment)."""
        return self._backend

    @backend.setter
    def backend(self, value):
        check_backend_name(value)
        self._backend = value

    def neuron_options(self):
        sg = self.__dict__.get("_surrogate_object")
        if sg is None:
            return self.opts
        key = surrogate_key(sg)
        if key != self.__dict__["_surrogate_key"] or torch.compiler.is_compiling():
            name, alpha, beta = surrogate_spec(sg)
            o = self.opts
            opts = make_options(tau=o.tau, v_threshold=o.v_threshold, v_reset=o.v_reset,
                                decay_input=o.decay_input, surrogate=name, alpha=alpha,
                                beta=beta, detach_reset=o.detach_reset)
            if torch.compiler.is_compiling():
                return opts
            self.opts = opts
            self.__dict__["_surrogate_key"] = key
        return self.opts

    # SpikingJelly's attribute names, read-only: the options are validated once, in `opts`.
    tau = property(lambda self: self.opts.tau)
    v_threshold = property(lambda self: self.opts.v_threshold)
    v_reset = property(lambda self: self.opts.v_reset)
    decay_input = property(lambda self: self.opts.decay_input)
    detach_reset = property(lambda self: self.opts.detach_reset)

    @property
    def step_mode(self):
        """"s": one step of `[N, *]` per call; "m": a whole `[T, N, *]` sequence per call."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value):
        # Checked on every assignment (SpikingJelly's set_step_mode assigns it too).
        if value not in ("s", "m"):
            raise ValueError(f"step_mode must be 's' or 'm', got {value!r}")
        self._step_mode = value

    def _set(self, **values):
        # Plain attributes (never parameters, buffers or modules): nn.Module.__setattr__'s
        # checks, on every call, cost more than the kernels of a small layer.
        if torch.compiler.is_compiling():
            for name, value in values.items():
                setattr(self, name, value)
        else:
            self.__dict__.update(values)

    def reset(self):
        """Forget the carried state (the next call starts from the spec's initial state)."""
        self._set(v=None, m=None, v_seq=None, m_seq=None)

    @property
    def state_seqs(self):
        """SpikingJelly 2.0's name: `[v_seq, m_seq]` for CLIF, `[v_seq]` for LIF, or None."""
        if self.v_seq is None:
            return None
        return [self.v_seq, self.m_seq] if self._is_clif else [self.v_seq]

    def detach(self):
        """Cut the autograd graph through the carried state."""
        if self.v is not None:
            self.v = self.v.detach()
        if self.m is not None:
            self.m = self.m.detach()

    def _state_like(self, state, x, shape):
        # A carried state from a batch of another shape (the last, smaller batch of an epoch)
        # cannot continue: start again, as SpikingJelly does after reset_net.
        if state is None or state.shape != shape or state.device != x.device:
            return None
        return state.to(x.dtype)

    def _carried(self, x, shape):
        """The carried states for a step of `shape`, of x's dtype and device."""
        v0 = self._state_like(self.v, x, shape)
        if not self._is_clif:
            return (v0,)
        return v0, (self._state_like(self.m, x, shape) if v0 is not None else None)

    def _keep(self, states):
        if torch.compiler.is_compiling():
            self._set(v=states[0], m=states[1] if self._is_clif else None)
            return
        d = self.__dict__  # as _set, without its keyword dictionary: this runs on every call
        d["v"] = states[0]
        if self._is_clif:
            d["m"] = states[1]

    def forward(self, x):
        if self.step_mode == "s":
            (spikes,), states = self.single_step_functional_forward((x,),
                                                                    self._carried(x, x.shape))
            self._keep(states)
            return spikes
        states = self._carried(x, x.shape[1:])
        if not self.store_state_seqs or not x.shape[0]:
            (spikes,), states = self._fused(x, states)  # multi_step_functional_forward's body
            self._keep(states)
            if self.store_state_seqs:  # no step: empty sequences
                self._set(v_seq=x.new_empty(x.shape),
                          m_seq=x.new_empty(x.shape) if self._is_clif else None)
            return spikes
        # The fused kernels keep no per-step state, so the sequence runs as T fused single steps
        # (the same values as one launch, as the tests check), each step's states kept with their
        # gradients: for monitoring, at the cost of T launches.
        spikes, seqs = [], []
        for x_t in x:
            (s,), states = self.single_step_functional_forward((x_t,), states)
            spikes.append(s)
            seqs.append(states)
        self._keep(states)
        self._set(v_seq=torch.stack([st[0] for st in seqs]),
                  m_seq=torch.stack([st[1] for st in seqs]) if self._is_clif else None)
        return torch.stack(spikes)

    def extra_repr(self):
        o = self.neuron_options()
        sg = f"{o.surrogate}(alpha={o.alpha}" + (
            f", beta={o.beta})" if o.surrogate in DEFAULT_BETA else ")")
        return (f"tau={o.tau}, v_threshold={o.v_threshold}, v_reset={o.v_reset}, "
                f"decay_input={o.decay_input}, surrogate={sg}, "
                f"detach_reset={o.detach_reset}, step_mode={self.step_mode}, "
                f"backend={self.backend}")


class CLIFNode(_Node):
    """CLIF neuron module (Huang et al., ICML 2024). Defaults are the paper's: soft reset, no
    input decay, rectangle surrogate (`surrogate=None`; or a name, with `alpha` and `beta`; or a
    SpikingJelly 2.0 surrogate object as `surrogate_function`, which carries its own
    parameters). `step_mode="s"`: input `[N, *]`, one fused step; `"m"`: input `[T, N, *]`, the
    whole sequence in one fused launch. Needs no SpikingJelly; for a node that is a SpikingJelly
    neuron, see `clif_kernels.spikingjelly.ComplementaryLIFNode`."""

    _is_clif = True

    def __init__(self, tau: float = D["tau"], v_threshold: float = D["v_threshold"],
                 v_reset: Optional[float] = D["v_reset"], decay_input: bool = D["decay_input"],
                 surrogate: Optional[str] = None, alpha: Optional[float] = D["alpha"],
                 detach_reset: bool = D["detach_reset"], step_mode: str = "s",
                 backend: str = "auto", store_state_seqs: bool = False,
                 surrogate_function: Any = None, beta: Optional[float] = D["beta"]) -> None:
        super().__init__(tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                         step_mode, backend, store_state_seqs, surrogate_function, beta)


class LIFNode(_Node):
    """LIF neuron module with SpikingJelly's `LIFNode` defaults: hard reset to 0, input decay,
    sigmoid surrogate (alpha 4)."""

    _is_clif = False
    _default_surrogate = "sigmoid"

    # SpikingJelly's LIFNode defaults where they differ from the options' (v_reset,
    # decay_input, the surrogate); the rest are the options'.
    def __init__(self, tau: float = D["tau"], v_threshold: float = D["v_threshold"],
                 v_reset: Optional[float] = 0.0, decay_input: bool = True,
                 surrogate: Optional[str] = None, alpha: Optional[float] = D["alpha"],
                 detach_reset: bool = D["detach_reset"], step_mode: str = "s",
                 backend: str = "auto", store_state_seqs: bool = False,
                 surrogate_function: Any = None, beta: Optional[float] = D["beta"]) -> None:
        super().__init__(tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                         step_mode, backend, store_state_seqs, surrogate_function, beta)

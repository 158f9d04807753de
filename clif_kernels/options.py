"""The neuron's options, declared once, and their validation, shared by every backend.

`NeuronOptions` is the one definition: each field carries its public keyword's default (what
`clif`, `lif` and the modules take), its type in the fused ops' schema and its check, and the
field order is the ops' argument order. The ops' schemas (`ops.FWD_SCHEMA`, `ops.BWD_SCHEMA`:
the options, then the per-call arguments of `CALL_ARGS`), `ops.FusedOptions`, and the C++
entry points (csrc/clif_host.h's CLIF_OP_OPTIONS, checked against the schema by the dispatcher
and by a test) follow it.

Every backend receives the same normalised `NeuronOptions` (from `make_options`, keywords only),
so a bad argument is rejected once, with its name, before any kernel runs.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Optional

import numpy as np
import torch

# Index of each surrogate in the kernels' switch (docs/clif-spec.md has the formulas; the C++
# enum Surrogate in csrc/clif_core.h is the twin, and a test checks that the two agree), and the
# default alpha: the paper's for the first four, SpikingJelly 2.0's for the others, which take
# SpikingJelly's parameters (piecewise_leaky_relu: alpha is its w, beta its c).
SURROGATES = {"rectangle": 0, "sigmoid": 1, "atan": 2, "triangle": 3,
              "piecewise_leaky_relu": 4, "piecewise_exp": 5, "soft_sign": 6, "super_spike": 7,
              "erf": 8}
DEFAULT_ALPHA = {"rectangle": 1.0, "sigmoid": 4.0, "atan": 2.0, "triangle": 1.0,
                 "piecewise_leaky_relu": 1.0, "piecewise_exp": 1.0, "soft_sign": 2.0,
                 "super_spike": 1.0, "erf": 2.0}
# The surrogates with a second parameter, and its default (0 for every other surrogate, which
# refuses one).
DEFAULT_BETA = {"piecewise_leaky_relu": 0.01}
# Steps per recomputed segment of the fused backwards; csrc/clif_core.h has the C++ twin
# (kCkptEvery), and a test checks that the two agree. 8 keeps the backward's register tiles at
# 2 * 8 values per neuron and covers the common T = 4..8 with no checkpoint at all.
CKPT_EVERY = 8


def n_checkpoints(T: int) -> int:
    """Number of (v, m) checkpoints a fused forward stores for T steps: one at the start of
    every segment of CKPT_EVERY steps after the first."""
    return max(-(-T // CKPT_EVERY) - 1, 0)


def _option(default, schema, check):
    """A field of NeuronOptions: its public default, its type in the ops' schema, and
    `check(name, value)`, which returns the value normalised or raises naming the argument."""
    return field(default=default, metadata={"schema": schema, "check": check})


@dataclass(frozen=True)
class NeuronOptions:
    """The spec's parameters (docs/clif-spec.md). Build it with `make_options(**keywords)`: the
    fields then hold validated values (`alpha` is never None, `beta` is the surrogate's second
    parameter, 0 for those without one). The defaults here are the public keywords' defaults;
    in the ops, `surrogate` is its index in SURROGATES."""

    tau: float = _option(2.0, "float", lambda n, v: _positive(n, v))
    v_threshold: float = _option(1.0, "float", lambda n, v: _finite_float(n, v))
    v_reset: Optional[float] = _option(None, "float?", lambda n, v: _optional_float(n, v))
    decay_input: bool = _option(False, "bool", lambda n, v: _flag(n, v))
    surrogate: str = _option("rectangle", "int", lambda n, v: _surrogate_name(n, v))
    alpha: Optional[float] = _option(None, "float", lambda n, v: _optional_float(n, v))
    beta: Optional[float] = _option(None, "float", lambda n, v: _optional_float(n, v))
    detach_reset: bool = _option(False, "bool", lambda n, v: _flag(n, v))
    # Not an option: why the options cannot run in float32 arithmetic (`range_error`), None
    # when they can.
    float32_error: Optional[str] = field(default=None, compare=False, repr=False)

    @property
    def hard_reset(self) -> bool:
        return self.v_reset is not None

    @property
    def surrogate_id(self) -> int:
        return SURROGATES[self.surrogate]

    @property
    def v_init(self) -> float:
        """The membrane potential before step 0 when no `v0` is given."""
        return 0.0 if self.v_reset is None else self.v_reset

    def op_values(self, is_clif: bool) -> tuple:
        """The fused ops' option arguments in schema order (the fields, the surrogate as its
        index, then `is_clif`), built once per instance: a call should not rebuild them."""
        cached = getattr(self, "_op_values", None)
        if cached is None:
            base = tuple(self.surrogate_id if f.name == "surrogate" else getattr(self, f.name)
                         for f in OPTION_FIELDS)
            cached = (base + (False,), base + (True,))
            if not torch.compiler.is_compiling():  # a side effect dynamo need not trace
                object.__setattr__(self, "_op_values", cached)  # frozen; not a field
        return cached[is_clif]

    def constants(self):
        """(gamma, c, b) of the charge h = gamma * v + c * x + b."""
        return charge_constants(self.tau, self.v_reset, self.decay_input)


# The options' fields, in the ops' order, and the public keywords' defaults.
OPTION_FIELDS = tuple(f for f in fields(NeuronOptions) if "schema" in f.metadata)
DEFAULTS = {f.name: f.default for f in OPTION_FIELDS}
# The fused ops' arguments after the options: (name, schema type, the ops that take it), and
# optionally a default, which the schema carries (a call may then leave the argument out). Both
# ops take `is_clif`; the forward's `save` stores the backward's checkpoints, `store_state` the
# final states. A new argument is
# one line here (the forward's own ones last), then its consumers: the C++ entry points
# (csrc/clif_host.h, fwd_op/bwd_op) and the Triton ones (triton_kernels.clif_fwd/clif_bwd).
CALL_ARGS = (("is_clif", "bool", ("fwd", "bwd")),
             ("save", "bool", ("fwd",)),
             # Whether the forward writes vT and mT: a call that returns no state asks for none,
             # and the kernels skip those stores (then [0] tensors).
             ("store_state", "bool", ("fwd",), True))
# The folded affine map and residual, last in both ops' schemas, all optional: the neuron then
# runs on u = x * scale[c] + shift[c] (+ residual), c = (n // inner) % len(scale) the channel of
# flattened neuron n (a conv-BN-neuron block's normalisation and shortcut, applied in the
# kernels' forward and again in the backward's recompute, so that nobody keeps u). scale and
# shift are [C] in the compute dtype (fp32, or fp64 for fp64 input), residual is [T, N] like x.
# The backward returns the gradient with respect to u; the autograd formula (ops.py) turns it
# into those of x, scale, shift and residual. (name, schema type, default).
FOLD_ARGS = (("scale", "Tensor?", None), ("shift", "Tensor?", None),
             ("residual", "Tensor?", None), ("inner", "int", 1))
# Every scalar argument of the fused ops, in order: (name, schema type, ops).
OP_ARGS = (tuple((f.name, f.metadata["schema"], ("fwd", "bwd")) for f in OPTION_FIELDS)
           + tuple(a[:3] for a in CALL_ARGS))
# The defaults the schema declares: {name: Python value}.
OP_DEFAULTS = {a[0]: a[3] for a in CALL_ARGS if len(a) > 3}


# The smallest normal magnitude and the largest finite value of the dtypes the kernels compute in:
# float32 for fp16, bf16 and fp32 storage, float64 for fp64.
COMPUTE_LIMITS = {"float32": (1.1754943508222875e-38, 3.4028234663852886e38),
                  "float64": (2.2250738585072014e-308, 1.7976931348623157e308)}


def _constants_of(tau, v_threshold, v_reset, surrogate, alpha, beta):
    """Every constant the kernels compute with, as (argument, its value, zero allowed,
    [(expression, coefficient, power), ...]): each expression is coefficient * argument**power."""
    alpha_terms = [("alpha", 1.0, 1), ("alpha/2", 0.5, 1), ("1/alpha", 1.0, -1),
                   ("1/(2 alpha)", 0.5, -1)]
    if surrogate == "triangle":
        alpha_terms.append(("alpha^2", 1.0, 2))
    out = [("tau", tau, False, [("tau", 1.0, 1), ("1/tau", 1.0, -1)]),
           ("v_threshold", v_threshold, True, [("v_threshold", 1.0, 1)]),
           ("alpha", alpha, False, alpha_terms),
           ("beta", beta, True, [("beta", 1.0, 1)])]
    if v_reset is not None:
        out.append(("v_reset", v_reset, True, [("v_reset", 1.0, 1), ("v_reset/tau", 1.0 / tau, 1)]))
    return out


def range_error(tau, v_threshold, v_reset, surrogate, alpha, beta, compute):
    """None when every constant the kernels derive from the options is zero or a normal number
    of `compute` ("float32" or "float64"), else a sentence naming the argument and its limits.
    A subnormal constant would be flushed to zero by the C++ kernels (and kept by the others),
    an overflowed one would turn into inf: either way the backends would disagree."""
    tiny, big = COMPUTE_LIMITS[compute]
    for name, value, zero_ok, terms in _constants_of(tau, v_threshold, v_reset, surrogate,
                                                      alpha, beta):
        mag = abs(value)
        if zero_ok and mag == 0.0:
            continue
        lo, hi = 0.0, math.inf
        for _expr, coef, power in terms:
            if power == 1:
                lo, hi = max(lo, tiny / coef), min(hi, big / coef)
            elif power == -1:
                lo, hi = max(lo, coef / big), min(hi, coef / tiny)
            else:
                lo, hi = max(lo, math.sqrt(tiny / coef)), min(hi, math.sqrt(big / coef))
        if not lo <= mag <= hi:
            exprs = ", ".join(t[0] for t in terms)
            inputs = "float64" if compute == "float64" else "float16, bfloat16 and float32"
            zero = "0 or " if zero_ok else ""
            return (f"{name}={value!r} is out of range for the kernels' {compute} arithmetic "
                    f"(which {inputs} inputs use): {name} must be {zero}of magnitude between "
                    f"{lo:.8g} and {hi:.8g}, so that {exprs} are normal {compute} numbers")
    return None


def _in_plain_range(*values):
    """A quick test that passes the usual options without computing `range_error`: magnitudes
    in [1e-15, 1e15] (or 0) keep every constant, squares and quotients included, normal in
    float32."""
    return all(v is None or v == 0.0 or 1e-15 <= abs(v) <= 1e15 for v in values)


def charge_constants(tau, v_reset, decay_input):
    """(gamma, c, b) of the charge h = gamma * v + c * x + b (spec, Forward)."""
    gamma = 1.0 - 1.0 / tau
    c = 1.0 / tau if decay_input else 1.0
    b = v_reset / tau if v_reset is not None else 0.0
    return gamma, c, b


def _finite_float(name, value):
    """A real scalar as a float: Python and numpy numbers, and 0-d CPU tensors (what configs
    hand over); no bool. Written with comparisons only, so torch.compile(dynamic=True) traces
    it (math.isfinite on a symbolic float is not traceable)."""
    if isinstance(value, torch.Tensor):
        if (value.dim() != 0 or value.device.type != "cpu" or value.requires_grad
                or value.dtype == torch.bool or value.is_complex()):
            raise TypeError(f"{name} must be a real number; a tensor must be a 0-d real CPU "
                            f"tensor without grad, got {tuple(value.shape)} {value.dtype} on "
                            f"{value.device}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _positive(name, value):
    value = _finite_float(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _optional_float(name, value):
    return None if value is None else _finite_float(name, value)


def _surrogate_name(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {sorted(SURROGATES)}; "
                        f"got {type(value).__name__}")
    key = value.lower()
    if key not in SURROGATES:
        raise ValueError(f"{name} must be one of {sorted(SURROGATES)}, got {value!r}")
    return key


# (name, check, default) of each option, as plain tuples: torch.compile traces make_options, and
# torch 2.6's dynamo cannot index a field's metadata (a mappingproxy).
_CHECKS = tuple((f.name, f.metadata["check"], f.default) for f in OPTION_FIELDS)


# Options already checked, by their keywords' values and types (so that True is not taken for
# 1.0, which make_options treats differently): the public functions take keywords on every
# call, and checking them again cost more than a small kernel. Bounded, as a training script
# uses a handful of option sets.
_CHECKED = {}
_CHECKED_MAX = 256
_PLAIN = frozenset((float, int, bool, str, type(None)))


def options_for(values: tuple) -> NeuronOptions:
    """`make_options` of the keywords `values` (all of `DEFAULTS`, in its order), remembered when
    every value is a plain float, int, bool, str or None."""
    if torch.compiler.is_compiling():
        return make_options(**dict(zip(DEFAULTS, values)))
    types = tuple(map(type, values))
    key = values + types
    try:  # only plain keys are stored, so any other misses (or cannot be hashed)
        opts = _CHECKED.get(key)
    except TypeError:
        opts = None
    if opts is None:
        opts = make_options(**dict(zip(DEFAULTS, values)))
        if _PLAIN.issuperset(types) and len(_CHECKED) < _CHECKED_MAX:
            _CHECKED[key] = opts
    return opts


def make_options(**keywords) -> NeuronOptions:
    """Check the spec's keyword arguments (those of NeuronOptions; the others take their
    defaults) and fill in the surrogate's default alpha (and beta, for the one surrogate that
    has a second parameter)."""
    unknown = set(keywords) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; the options are {list(DEFAULTS)}")
    o = {name: check(name, keywords.get(name, default)) for name, check, default in _CHECKS}
    key = o["surrogate"]
    if o["alpha"] is None:
        o["alpha"] = DEFAULT_ALPHA[key]
    if o["alpha"] <= 0.0:
        raise ValueError(f"alpha must be > 0, got {o['alpha']}")
    if key in DEFAULT_BETA:
        if o["beta"] is None:
            o["beta"] = DEFAULT_BETA[key]
    elif o["beta"] is not None:
        raise ValueError(f"beta is the second parameter of {sorted(DEFAULT_BETA)}; the "
                         f"{key} surrogate has none, got beta={keywords['beta']!r}")
    else:
        o["beta"] = 0.0
    float32_error = None
    ranged = (o["tau"], o["v_threshold"], o["v_reset"], key, o["alpha"], o["beta"])
    if not _in_plain_range(o["tau"], o["v_threshold"], o["v_reset"], o["alpha"], o["beta"]):
        why = range_error(*ranged, "float64")
        if why is not None:
            raise ValueError(why)
        float32_error = range_error(*ranged, "float32")
    return NeuronOptions(**o, float32_error=float32_error)

"""Validation of the neuron's keyword arguments, shared by every backend.

Every backend receives the same normalised `NeuronOptions`, so a bad argument is rejected once,
with its name, before any kernel runs.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class NeuronOptions:
    """The spec's parameters after validation; `alpha` is never None here, `beta` is the
    surrogate's second parameter (0 for those without one)."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: Optional[float] = None
    decay_input: bool = False
    surrogate: str = "rectangle"
    alpha: float = 1.0
    detach_reset: bool = False
    beta: float = 0.0
    # Why the options cannot run in float32 arithmetic (`range_error`), None when they can.
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

    def constants(self):
        """(gamma, c, b) of the charge h = gamma * v + c * x + b."""
        return charge_constants(self.tau, self.v_reset, self.decay_input)


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
            return (f"{name}={value!r} is out of range for the kernels' {compute} arithmetic "
                    f"(which {inputs} inputs use): {name} must be {'0 or ' if zero_ok else ''}of magnitude between "
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


def make_options(tau=2.0, v_threshold=1.0, v_reset=None, decay_input=False,
                 surrogate="rectangle", alpha=None, detach_reset=False,
                 beta=None) -> NeuronOptions:
    """Check the spec's keyword arguments and fill in the surrogate's default alpha (and beta,
    for the one surrogate that has a second parameter)."""
    tau = _finite_float("tau", tau)
    if tau <= 0.0:
        raise ValueError(f"tau must be > 0, got {tau}")
    v_threshold = _finite_float("v_threshold", v_threshold)
    if v_reset is not None:
        v_reset = _finite_float("v_reset", v_reset)
    if not isinstance(surrogate, str):
        raise TypeError(f"surrogate must be a string, one of {sorted(SURROGATES)}; "
                        f"got {type(surrogate).__name__}")
    key = surrogate.lower()
    if key not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if alpha is None:
        alpha = DEFAULT_ALPHA[key]
    alpha = _finite_float("alpha", alpha)
    if alpha <= 0.0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if key in DEFAULT_BETA:
        beta = DEFAULT_BETA[key] if beta is None else _finite_float("beta", beta)
    elif beta is not None:
        raise ValueError(f"beta is the second parameter of {sorted(DEFAULT_BETA)}; the "
                         f"{key} surrogate has none, got beta={beta!r}")
    else:
        beta = 0.0
    float32_error = None
    if not _in_plain_range(tau, v_threshold, v_reset, alpha, beta):
        why = range_error(tau, v_threshold, v_reset, key, alpha, beta, "float64")
        if why is not None:
            raise ValueError(why)
        float32_error = range_error(tau, v_threshold, v_reset, key, alpha, beta, "float32")
    return NeuronOptions(tau, v_threshold, v_reset, _flag("decay_input", decay_input), key,
                         alpha, _flag("detach_reset", detach_reset), beta, float32_error)

"""Neuron modules, drop-in for SpikingJelly's `ComplementaryLIFNode` and `LIFNode`.

State (`v`, and `m` for CLIF) is carried from one call to the next until `reset()`; `detach()`
cuts the graph through it (SpikingJelly's `functional.reset_net` and `functional.detach_net` call
these). Gradients flow through the carried state into the previous call.

    >>> node = CLIFNode(step_mode="m")
    >>> spikes = node(torch.randn(8, 32, 128))     # [T, N, *]
    >>> node.reset()
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import clif, lif
from .options import make_options


def surrogate_spec(surrogate, alpha=None):
    """(name, alpha) in this package's convention from a name, an object with `alpha`, or a
    SpikingJelly surrogate (`Rect`, `Sigmoid`, `ATan`).

    SpikingJelly's `Rect(alpha)` has height alpha and half-width 0.5/alpha; the paper's rectangle
    here has height 1/alpha and half-width alpha/2, so `Rect(a)` maps to alpha = 1/a. Its
    `Sigmoid(alpha)` and `ATan(alpha)` are the same functions as here.
    """
    if isinstance(surrogate, str):
        return surrogate, alpha
    if alpha is not None:
        raise ValueError(f"alpha={alpha!r} conflicts with the surrogate object "
                         f"{type(surrogate).__name__}, which carries its own alpha; give one")
    kind = type(surrogate).__name__.lower()
    a = getattr(surrogate, "alpha", None)
    if a is None:
        raise TypeError(f"surrogate object {type(surrogate).__name__} has no `alpha`")
    a = float(a)
    if kind in ("rect", "rectangle"):
        return "rectangle", (1.0 / a if type(surrogate).__name__ == "Rect" else a)
    for name in ("sigmoid", "atan", "triangle"):
        if kind == name:
            return name, a
    raise ValueError(f"unsupported surrogate {type(surrogate).__name__}; use rectangle, sigmoid, "
                     "atan or triangle (or SpikingJelly's Rect, Sigmoid, ATan)")


class _Node(nn.Module):
    _is_clif = True
    _default_surrogate = "rectangle"

    def __init__(self, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                 step_mode, backend, store_state_seqs, surrogate_function):
        super().__init__()
        if surrogate_function is not None:
            if surrogate is not None:
                raise ValueError("give surrogate or surrogate_function, not both "
                                 f"(got {surrogate!r} and {surrogate_function!r})")
            surrogate = surrogate_function
        elif surrogate is None:
            surrogate = self._default_surrogate
        name, alpha = surrogate_spec(surrogate, alpha)
        self.opts = make_options(tau, v_threshold, v_reset, decay_input, name, alpha,
                                 detach_reset)
        if not isinstance(store_state_seqs, bool):
            raise TypeError(f"store_state_seqs must be a bool, got {type(store_state_seqs).__name__}")
        self.store_state_seqs = store_state_seqs
        self.step_mode = step_mode
        self.backend = backend
        self.reset()

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

    def reset(self):
        """Forget the carried state (the next call starts from the spec's initial state)."""
        self.v = None
        self.m = None
        self.v_seq = None
        self.m_seq = None

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

    def _kwargs(self):
        o = self.opts
        return dict(tau=o.tau, v_threshold=o.v_threshold, v_reset=o.v_reset,
                    decay_input=o.decay_input, surrogate=o.surrogate, alpha=o.alpha,
                    detach_reset=o.detach_reset, backend=self.backend, return_state=True)

    def _state_like(self, state, x):
        # A carried state from a batch of another shape (the last, smaller batch of an epoch)
        # cannot continue: start again, as SpikingJelly does after reset_net.
        if state is None or state.shape != x.shape or state.device != x.device:
            return None
        return state.to(x.dtype)

    def _run(self, x_seq):
        """One fused call over `x_seq: [T, N, *]` from the carried state; updates it."""
        v0 = self._state_like(self.v, x_seq[0])
        if self._is_clif:
            m0 = self._state_like(self.m, x_seq[0]) if v0 is not None else None
            spikes, self.v, self.m = clif(x_seq, v0=v0, m0=m0, **self._kwargs())
        else:
            spikes, self.v = lif(x_seq, v0=v0, **self._kwargs())
        return spikes

    def forward(self, x):
        if self.step_mode == "s":
            return self._run(x.unsqueeze(0))[0]
        if not self.store_state_seqs:
            return self._run(x)
        # The fused kernels keep no per-step state, so the sequence runs as T fused single steps
        # (the same values as one launch, as the tests check), each step's states kept with their
        # gradients: for monitoring, at the cost of T launches.
        spikes, vs, ms = [], [], []
        for x_t in x:
            spikes.append(self._run(x_t.unsqueeze(0))[0])
            vs.append(self.v)
            ms.append(self.m)
        self.v_seq = torch.stack(vs)
        self.m_seq = torch.stack(ms) if self._is_clif else None
        return torch.stack(spikes)

    def extra_repr(self):
        o = self.opts
        return (f"tau={o.tau}, v_threshold={o.v_threshold}, v_reset={o.v_reset}, "
                f"decay_input={o.decay_input}, surrogate={o.surrogate}(alpha={o.alpha}), "
                f"detach_reset={o.detach_reset}, step_mode={self.step_mode}, "
                f"backend={self.backend}")


class CLIFNode(_Node):
    """CLIF neuron module (Huang et al., ICML 2024). Defaults are the paper's: soft reset, no input
    decay, rectangle surrogate (`surrogate=None`; or a name, with `alpha`; or SpikingJelly's
    object as `surrogate_function`, which carries its own alpha). `step_mode="s"`: input `[N, *]`, one fused step; `"m"`: input
    `[T, N, *]`, the whole sequence in one fused launch."""

    _is_clif = True

    def __init__(self, tau=2.0, v_threshold=1.0, v_reset=None, decay_input=False,
                 surrogate=None, alpha=None, detach_reset=False, step_mode="s",
                 backend="auto", store_state_seqs=False, surrogate_function=None):
        super().__init__(tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                         step_mode, backend, store_state_seqs, surrogate_function)


class LIFNode(_Node):
    """LIF neuron module with SpikingJelly's `LIFNode` defaults: hard reset to 0, input decay,
    sigmoid surrogate (alpha 4)."""

    _is_clif = False
    _default_surrogate = "sigmoid"

    def __init__(self, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
                 surrogate=None, alpha=None, detach_reset=False, step_mode="s",
                 backend="auto", store_state_seqs=False, surrogate_function=None):
        super().__init__(tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset,
                         step_mode, backend, store_state_seqs, surrogate_function)

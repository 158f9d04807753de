"""A drop-in for the paper authors' neuron: `ComplementaryLIFNeuron` with their constructor.

The authors' code (github.com/HuuYuLong/Complementary-LIF, on SpikingJelly 0.0.0.0.12) builds its
models with factories such as `spiking_resnet18(neuron=N, tau=2.0, surrogate_function=..., c_in=3,
fc_hw=1)`, which create every neuron as `N(**kwargs)`: each neuron receives the model's keywords
too. Their models are single-step: the training loop calls the network once per time step, with
a BatchNorm per step. This class takes that call as it is:

    -from modules.neuron import ComplementaryLIFNeuron
    +from clif_kernels.authors import ComplementaryLIFNeuron

- the constructor's parameters, order and defaults are theirs (`tau=2.`, `decay_input=False`,
  `v_threshold=1.`, `v_reset=None`, `surrogate_function=Rectangle()`, `detach_reset=False`,
  `cupy_fp32_inference=False`), plus `backend=` (keyword only);
- the keywords their factories hand to every neuron (`FACTORY_KEYWORDS`: `c_in`, `fc_hw`) are
  accepted and unused, as theirs does; any other unknown keyword raises (theirs swallows every
  keyword, so a misspelt option there is silently lost);
- their surrogate classes are taken with their parameters: their `Rectangle(alpha)` (the paper's
  rectangle, closed window |z| <= alpha/2), SpikingJelly 0.0.0.0.12's `Sigmoid`, `ATan` and
  `PiecewiseQuadratic`, and SpikingJelly 2.0's classes (`modules.SURROGATE_CLASSES`); a
  surrogate name ("rectangle", "sigmoid", ...) works too. Parameters are read on every call;
- one call is one step (input `[N, *]`), the state carried until `reset()` (SpikingJelly's
  `functional.reset_net` calls it), with the step of docs/clif-spec.md, which is theirs:
  charge, decay of m with sigmoid(h / tau), fire, m += s, reset, v -= s * sigmoid(m);
- `detach_reset` is accepted and, as in their neuron (whose reset does not read it), has no
  effect: the reset carries its gradient;
- `cupy_fp32_inference` is accepted and has no effect (the fused kernels always run).

Each call is one fused launch of T = 1; docs/authors-neuron.md measures what that costs and shows
how to convert such a model to multi-step, where a whole sequence is one launch.
"""
from __future__ import annotations

from typing import Optional

from .modules import CLIFNode

__all__ = ["ComplementaryLIFNeuron", "FACTORY_KEYWORDS"]

# What the authors' model factories pass to every neuron besides its own options: the input's
# channels and the classifier's spatial size.
FACTORY_KEYWORDS = ("c_in", "fc_hw")


class ComplementaryLIFNeuron(CLIFNode):
    """The authors' single-step CLIF neuron, fused. See the module docstring for what is
    theirs; `backend` is that of `clif_kernels.clif`, `step_mode` may be set to "m" (a whole
    `[T, N, *]` sequence per call, one launch) as for `CLIFNode`."""

    def __init__(self, tau: float = 2., decay_input: bool = False, v_threshold: float = 1.,
                 v_reset: Optional[float] = None, surrogate_function=None,
                 detach_reset: bool = False, cupy_fp32_inference: bool = False, *,
                 backend: str = "auto", step_mode: str = "s", **kwargs):
        unknown = sorted(set(kwargs) - set(FACTORY_KEYWORDS))
        if unknown:
            raise TypeError(f"ComplementaryLIFNeuron got unexpected keyword arguments {unknown}; "
                            f"it takes the authors' options, backend, step_mode and the "
                            f"keywords their model factories pass ({', '.join(FACTORY_KEYWORDS)})")
        for name, flag in (("detach_reset", detach_reset),
                           ("cupy_fp32_inference", cupy_fp32_inference)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if isinstance(surrogate_function, str):
            surrogate, surrogate_function = surrogate_function, None
        else:
            surrogate = None if surrogate_function is not None else "rectangle"
        super().__init__(tau=tau, v_threshold=v_threshold, v_reset=v_reset,
                         decay_input=decay_input, surrogate=surrogate, detach_reset=False,
                         step_mode=step_mode, backend=backend,
                         surrogate_function=surrogate_function)
        self._given_detach_reset = detach_reset
        self.cupy_fp32_inference = cupy_fp32_inference

    @property
    def detach_reset(self):
        """As given; without effect, as in the authors' neuron."""
        return self._given_detach_reset

"""The fused op pair every compiled backend implements, defined once: arguments, schemas, fake
kernels and autograd.

A backend is a pair of ops on the flattened problem `x: [T, N]`:

    fwd(x, v0, m0, <options>, save, store_state=True, <fold>)
        -> (spikes [T, N], vT [N], mT [N] or [0], ckpt)
    bwd(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, <options>, <fold>)
        -> (grad_x [T, N], grad_v0 [N] or [0], grad_m0 [N] or [0])

`<fold>` are `options.FOLD_ARGS`, all optional: `scale`, `shift` ([C], compute dtype),
`residual` ([T, N]) and `inner`; the neuron then runs on u = x * scale[c] + shift[c]
(+ residual), c = (n // inner) % C, inside the kernels (forward and the backward's recompute),
and the backward's first output is the gradient of u. The autograd formula turns it into those
of x, scale, shift and residual (`_fold_grads`).

`<options>` are the fields of `FusedOptions`, in its order: the options of
`options.NeuronOptions` (the surrogate as its index), then `is_clif`; the forward's last
arguments are its own of `options.CALL_ARGS` (`save`). `ckpt` holds fp32 (fp64 for fp64 input)
checkpoints of (v, m), `[n_checkpoints(T), 2, N]`, or `[0, 2, N]` without `save`. Missing
output gradients count as zero. The schemas (`FWD_SCHEMA`, `BWD_SCHEMA`) are declared here, once,
from `options.OP_ARGS`, for every backend: the Triton ops implement them in Python, the C++
library (`clif_fused`) in csrc/clif_host.h, whose parameter lists the dispatcher checks
against them.

Autograd has two entrances with one formula (`_setup_context`, `_backward`):
- `register_autograd` on the ops, which is what torch.compile traces;
- `FusedNeuron`, an autograd.Function around the ops called below the autograd key, which eager
  calls use. The custom op's own autograd layer runs Python on every call, grad or not, and at
  small sizes cost more than the kernels (benchmarks/NOTES.md, "Fixed cost per call").
  `torch.compile(fullgraph=True)` cannot trace `FusedNeuron` (its forward enters a private
  dispatch guard that dynamo does not model), so the two stay; a test runs both and compares
  outputs, gradients and saved tensors bit for bit.

Nothing here imports Triton or loads the compiled extension: `backends` does that on first use.
"""
from collections import namedtuple
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .options import DEFAULT_BETA, FOLD_ARGS, OP_ARGS, OP_DEFAULTS, OPTION_FIELDS, SURROGATES, \
    make_options, n_checkpoints
from .reference import neuron_reference


# The ops' scalar arguments both ops take, in schema order (`fused_options` fills them).
FusedOptions = namedtuple("FusedOptions", [a[0] for a in OP_ARGS if a[2] == ("fwd", "bwd")])
# The forward's own arguments, after those.
FWD_ARGS = tuple(a[0] for a in OP_ARGS if a[2] == ("fwd",))
_N_OPT = len(FusedOptions._fields)


def fused_options(opts, is_clif: bool) -> FusedOptions:
    """The ops' arguments for validated `options.NeuronOptions`."""
    values = {f.name: getattr(opts, f.name) for f in OPTION_FIELDS}
    values["surrogate"] = opts.surrogate_id
    return FusedOptions(**values, is_clif=is_clif)


def _schema_args(op):
    def arg(name, schema):
        return f"{schema} {name}" + (f"={OP_DEFAULTS[name]}" if name in OP_DEFAULTS else "")
    return ", ".join(arg(name, schema) for name, schema, ops in OP_ARGS if op in ops)


def _fold_default(value):
    return "None" if value is None else repr(value)


# The fold's arguments (options.FOLD_ARGS), last in both schemas.
_FOLD_SCHEMA = ", ".join(f"{schema} {name}={_fold_default(d)}" for name, schema, d in FOLD_ARGS)
FOLD_NAMES = tuple(a[0] for a in FOLD_ARGS)
FWD_SCHEMA = (f"(Tensor x, Tensor? v0, Tensor? m0, {_schema_args('fwd')}, {_FOLD_SCHEMA}) "
              "-> (Tensor, Tensor, Tensor, Tensor)")
BWD_SCHEMA = (f"(Tensor x, Tensor? v0, Tensor? m0, Tensor ckpt, Tensor? grad_spikes, "
              f"Tensor? grad_vT, Tensor? grad_mT, {_schema_args('bwd')}, {_FOLD_SCHEMA}) "
              "-> (Tensor, Tensor, Tensor)")
assert all(ops in (("fwd", "bwd"), ("fwd",)) for _, _, ops in OP_ARGS)


class OpPair(NamedTuple):
    fwd: Callable
    bwd: Callable


def _ckpt_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def fold_args(values) -> dict:
    """The fold's arguments by name from the ops' trailing positional ones (defaults filled)."""
    out = {name: d for name, _, d in FOLD_ARGS}
    out.update(zip(FOLD_NAMES, values))
    return out


def check_fold(x, scale, shift, residual, inner):
    """What the C++ entry points check of the fold's arguments (csrc/clif_host.h,
    check_fold), for the Triton ops and the fake kernels: each error names the argument."""
    T, N = x.shape
    cdt = _ckpt_dtype(x)
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift must be given together (the folded map is "
                         "x * scale + shift)")
    if scale is not None:
        C = scale.shape[0] if scale.dim() == 1 else -1
        for name, t in (("scale", scale), ("shift", shift)):
            if t.dim() != 1 or t.shape[0] != C or C < 1:
                raise ValueError(f"{name} must be [C] with C >= 1 (shift as long as scale), "
                                 f"got {tuple(t.shape)}")
            if t.dtype != cdt:
                raise TypeError(f"{name} must have dtype {cdt} (the compute dtype of {x.dtype} "
                                f"input), got {t.dtype}")
            if t.device != x.device:
                raise ValueError(f"{name} must be on {x.device}, got {t.device}")
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
        if inner < 1:
            raise ValueError(f"inner must be >= 1, got {inner!r}")
        if N % (C * inner):
            raise ValueError(f"the channel layout does not match x: N = {N} neurons is not a "
                             f"multiple of channels ({C}) x inner ({inner})")
    if residual is not None:
        if tuple(residual.shape) != (T, N):
            raise ValueError(f"residual must have shape {(T, N)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual must have dtype {x.dtype}, got {residual.dtype}")
        if residual.device != x.device:
            raise ValueError(f"residual must be on {x.device}, got {residual.device}")
        if not residual.is_contiguous():
            raise ValueError("residual must be contiguous")


def _fwd_fake(x, v0, m0, *rest):
    o = FusedOptions(*rest[:_N_OPT])
    own = dict(OP_DEFAULTS, **dict(zip(FWD_ARGS, rest[_N_OPT:])))
    check_fold(x, **fold_args(rest[_N_OPT + len(FWD_ARGS):]))
    T, N = x.shape
    n_state = N if own["store_state"] else 0
    return (torch.empty_like(x), x.new_empty((n_state,)),
            x.new_empty((n_state if o.is_clif else 0,)),
            x.new_empty((n_checkpoints(T) if own["save"] else 0, 2, N), dtype=_ckpt_dtype(x)))


def _bwd_fake(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, *rest):
    o = FusedOptions(*rest[:_N_OPT])
    N = x.shape[1]
    return (torch.empty_like(x), x.new_empty((N if v0 is not None else 0,)),
            x.new_empty((N if (m0 is not None and o.is_clif) else 0,)))


def _setup_context(ctx, inputs, output):
    """The formula's forward half: `inputs` are the fwd op's arguments, `output` its results."""
    x, v0, m0 = inputs[:3]
    fold = inputs[3 + _N_OPT + len(FWD_ARGS):]  # empty unless the call folds
    f = fold_args(fold)
    # residual is kept for the recompute; scale and shift are [C].
    ctx.save_for_backward(x, v0, m0, output[3], f["scale"], f["shift"], f["residual"])
    ctx.inner = f["inner"]
    ctx.folded = f["scale"] is not None or f["residual"] is not None
    ctx.options = FusedOptions(*inputs[3:3 + _N_OPT])
    ctx.n_inputs = len(inputs)
    ctx.has_v0, ctx.has_m0 = v0 is not None, m0 is not None
    # Unused outputs (vT, mT) then arrive as None and the kernel skips their loads.
    ctx.set_materialize_grads(False)


_SURROGATE_NAMES = {i: name for name, i in SURROGATES.items()}


def channel_view(t, N, inner):
    """A per-channel [C] tensor as the per-neuron [N] one of the flattened layout (neuron n
    takes channel (n // inner) % C), differentiably."""
    C = t.shape[0]
    return t.view(1, C, 1).expand(N // (C * inner), C, inner).reshape(N)


def _differentiable_backward(x, v0, m0, o, grad_spikes, grad_vT, grad_mT, scale=None,
                             shift=None, residual=None, inner=1):
    """The first-order gradients as a differentiable function of the inputs, for a double
    backward (create_graph=True): autograd through the reference's forward. The fused
    backward kernels compute first-order gradients only, so training keeps them, and a second
    order (gradient penalties, Hessian-vector products) gets the reference's exact answer.
    With the fold, the gradients of (x, v0, m0, scale, shift, residual); else of (x, v0, m0)."""
    values = {f.name: getattr(o, f.name) for f in OPTION_FIELDS}
    name = values["surrogate"] = _SURROGATE_NAMES[o.surrogate]
    if name not in DEFAULT_BETA:
        values["beta"] = None
    opts = make_options(**values)
    inputs = (x, v0, m0) + ((scale, shift, residual)
                            if scale is not None or residual is not None else ())
    leaves = [None if t is None or t.requires_grad else t.detach().requires_grad_()
              for t in inputs]
    xr, v0r, m0r, *fold = (t if leaf is None else leaf for t, leaf in zip(inputs, leaves))
    kw = {}
    if fold:
        N = x.shape[1]
        sc, sh, res = fold
        if sc is not None:
            kw.update(scale=channel_view(sc, N, inner), shift=channel_view(sh, N, inner))
        kw["residual"] = res
    spikes, vT, mT = neuron_reference(xr, opts, clif=o.is_clif, v0=v0r, m0=m0r, **kw)
    pairs = [(out, g) for out, g in ((spikes, grad_spikes), (vT, grad_vT),
                                     (mT, grad_mT if o.is_clif else None)) if g is not None]
    wrt = [t for t in (xr, v0r, m0r, *fold) if t is not None]
    if not pairs:
        return tuple(None if t is None else torch.zeros_like(t) for t in inputs)
    grads = torch.autograd.grad([p[0] for p in pairs], wrt, [p[1] for p in pairs],
                                create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    it = iter(grads)
    return tuple(None if t is None else next(it) for t in inputs)


def _fold_grads(grad_u, x, scale, residual, inner):
    """The gradients of (x, scale, shift, residual) from that of u = x * scale[c] + shift[c]
    (+ residual): torch ops on [T, N] viewed as [T, N / (C inner), C, inner]; the per-channel
    sums accumulate in the compute dtype (scale's)."""
    gx = gscale = gshift = None
    if scale is not None:
        T, N = x.shape
        C = scale.shape[0]
        shape = (T, N // (C * inner), C, inner)
        gu = grad_u.view(shape).to(scale.dtype)
        gx = (gu * scale.view(C, 1)).to(x.dtype).view(T, N)
        gscale = (gu * x.view(shape).to(scale.dtype)).sum((0, 1, 3))
        gshift = gu.sum((0, 1, 3))
    else:
        gx = grad_u
    return gx, gscale, gshift, grad_u if residual is not None else None


def _backward(ctx, bwd_op, grad_spikes, grad_vT, grad_mT):
    """Gradients of every fwd argument: (x, v0, m0) through `bwd_op`, None for the rest."""
    x, v0, m0, ckpt, scale, shift, residual = ctx.saved_tensors
    o = ctx.options
    fold = (scale, shift, residual, ctx.inner) if ctx.folded else ()
    # A state the forward did not store ([0]) gets no gradient (zeros of size 0 under AOT
    # autograd).
    if grad_vT is not None and grad_vT.numel() != x.shape[1]:
        grad_vT = None
    if grad_mT is not None and grad_mT.numel() != x.shape[1]:
        grad_mT = None
    fold_grads = ()
    if torch.is_grad_enabled():  # the engine runs backward in grad mode only for create_graph
        gx, gv0, gm0, *fold_grads = _differentiable_backward(
            x, v0, m0, o, grad_spikes, grad_vT, grad_mT, *fold)
    else:
        # LIF's mT is an empty placeholder; its gradient (zeros under AOT autograd) is dropped.
        gx, gv0, gm0 = bwd_op(x, v0, m0, ckpt, _contig(grad_spikes), _contig(grad_vT),
                              _contig(grad_mT) if o.is_clif else None, *o, *fold)
        if fold:  # gx is the gradient of u
            gx, gscale, gshift, gres = _fold_grads(gx, x, scale, residual, ctx.inner)
            fold_grads = (gscale, gshift, gres)
    grads = (gx, gv0 if ctx.has_v0 else None, gm0 if (ctx.has_m0 and o.is_clif) else None)
    if fold:  # scale, shift, residual, then inner's None
        grads = grads + (None,) * (_N_OPT + len(FWD_ARGS)) + tuple(fold_grads) + (None,)
    grads = grads[:ctx.n_inputs]
    return grads + (None,) * (ctx.n_inputs - len(grads))


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


class FusedNeuron(torch.autograd.Function):
    """Eager autograd around a backend's op pair (see the module docstring).

        spikes, vT, mT, ckpt = FusedNeuron.apply(pair, x, v0, m0, *options, save)
    """

    # forward takes ctx (no separate setup_context): with a setup_context, Function.apply binds
    # the arguments through inspect.signature on every call, which costs more than the op at
    # small sizes.
    @staticmethod
    def forward(ctx, pair, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = pair.fwd(*args)
        _setup_context(ctx, args, output)
        ctx.bwd_op = pair.bwd
        ctx.mark_non_differentiable(output[3])
        return output

    @staticmethod
    def backward(ctx, grad_spikes, grad_vT, grad_mT, _grad_ckpt):
        return (None,) + _backward(ctx, ctx.bwd_op, grad_spikes, grad_vT, grad_mT)


def register(namespace: str) -> OpPair:
    """Fake kernels and autograd for `<namespace>::fwd/bwd` (defined here, or by a compiled
    library: clif_ops.cpp); returns the op pair."""
    torch.library.register_fake(f"{namespace}::fwd")(_fwd_fake)
    torch.library.register_fake(f"{namespace}::bwd")(_bwd_fake)
    pair = OpPair(getattr(torch.ops, namespace).fwd.default,
                  getattr(torch.ops, namespace).bwd.default)

    def backward(ctx, grad_spikes, grad_vT, grad_mT, _grad_ckpt):
        return _backward(ctx, pair.bwd, grad_spikes, grad_vT, grad_mT)

    torch.library.register_autograd(pair.fwd, backward, setup_context=_setup_context)
    return pair


_libraries = []  # the Python-defined libraries must stay alive
_defined = set()


def define_schemas(namespace: str):
    """Declare `<namespace>::fwd/bwd` with the schemas above (once per namespace); returns the
    library, on which Python implementations may be registered."""
    if namespace not in _defined:
        lib = torch.library.Library(namespace, "FRAGMENT")
        lib.define("fwd" + FWD_SCHEMA)
        lib.define("bwd" + BWD_SCHEMA)
        _libraries.append(lib)
        _defined.add(namespace)
    return next(lib for lib in _libraries if lib.ns == namespace)


def define(namespace: str, fwd_impl: Callable, bwd_impl: Callable, devices) -> OpPair:
    """Define `<namespace>::fwd/bwd` with the schemas above, implemented in Python by
    `fwd_impl(x, v0, m0, FusedOptions, **forward's own arguments)` and `bwd_impl(x, v0, m0, ckpt,
    grad_spikes, grad_vT, grad_mT, FusedOptions)` on `devices` ("CPU", "CUDA"), with fake
    kernels and autograd."""
    lib = define_schemas(namespace)

    def fwd(x, v0, m0, *rest):
        return fwd_impl(x, v0, m0, FusedOptions(*rest[:_N_OPT]),
                        **dict(zip(FWD_ARGS, rest[_N_OPT:])),
                        **fold_args(rest[_N_OPT + len(FWD_ARGS):]))

    def bwd(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, *rest):
        return bwd_impl(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT,
                        FusedOptions(*rest[:_N_OPT]), **fold_args(rest[_N_OPT:]))

    for device in devices:
        lib.impl("fwd", fwd, device)
        lib.impl("bwd", bwd, device)
    return register(namespace)

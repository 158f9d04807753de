"""The fused op pair every compiled backend implements, defined once: arguments, schemas, fake
kernels and autograd.

A backend is a pair of ops on a dense `x: [T, *]`, T steps of N = prod(*) neurons:

    fwd(x, v0, m0, <options>, save, store_state=True, <fold>)
        -> (spikes [T, *], vT [*] or [0], mT [*] or [0], ckpt)
    bwd(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, <options>, <fold>)
        -> (grad_x [T, *], grad_v0 [*] or [0], grad_m0 [*] or [0])

`<fold>` are `options.FOLD_ARGS`, all optional: `scale`, `shift` ([C], compute dtype),
`residual` ([T, *] like x) and `inner`; the neuron then runs on u = x * scale[c] + shift[c]
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

Each op library has one autograd entrance, which eager calls and `torch.compile` share: the
C++ library's ops (`clif_fused`) carry their derivative in C++ (csrc/clif_autograd.cpp), the
Triton ones (Python) register `_setup_context` and `_backward` here. The formula is the same:
the fused backward for first-order gradients, and with create_graph a differentiable backward
through the reference (`_differentiable_backward`; the C++ side calls it as the op
`<namespace>::bwd_reference`). Why the C++ library's is in C++: a Python autograd layer costs a
Python backward node and its argument handling on every call, more than the kernels of a small
layer (benchmarks/NOTES.md, "Host cost per call").

Nothing here imports Triton or loads the compiled extension: `backends` does that on first use.
"""
import math
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
    return FusedOptions._make(opts.op_values(is_clif))


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
# For autograd written in C++ (csrc/clif_autograd.cpp), two parts of the formula as ops, so
# that they are written once, here: the differentiable backward (create_graph), with the
# backward's arguments but the checkpoints, returning the gradients of (x, v0, m0, scale,
# shift, residual), [0] where there is none; and the fold's gradients of (x, scale, shift) from
# that of the neuron's input u (`_fold_grads`).
BWD_REFERENCE_SCHEMA = (f"(Tensor x, Tensor? v0, Tensor? m0, Tensor? grad_spikes, "
                        f"Tensor? grad_vT, Tensor? grad_mT, {_schema_args('bwd')}, "
                        f"{_FOLD_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
FOLD_GRADS_SCHEMA = ("(Tensor grad_u, Tensor x, Tensor scale, int inner) "
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
    T, N = x.shape[0], math.prod(x.shape[1:])
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
        if residual.shape != x.shape:
            raise ValueError(f"residual must have shape {list(x.shape)} (x's), got "
                             f"{list(residual.shape)}")
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
    state = x.shape[1:] if own["store_state"] else (0,)
    return (torch.empty_like(x), x.new_empty(state), x.new_empty(state if o.is_clif else (0,)),
            x.new_empty((n_checkpoints(x.shape[0]) if own["save"] else 0, 2,
                         math.prod(x.shape[1:])), dtype=_ckpt_dtype(x)))


def _bwd_fake(x, v0, m0, ckpt, grad_spikes, grad_vT, grad_mT, *rest):
    o = FusedOptions(*rest[:_N_OPT])
    return (torch.empty_like(x), x.new_empty(x.shape[1:] if v0 is not None else (0,)),
            x.new_empty(x.shape[1:] if (m0 is not None and o.is_clif) else (0,)))


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
        N = math.prod(x.shape[1:])
        sc, sh, res = fold
        if sc is not None:
            kw.update(scale=channel_view(sc, N, inner).view(x.shape[1:]),
                      shift=channel_view(sh, N, inner).view(x.shape[1:]))
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


# `_fold_grads` sums its per-channel products over at most this many chunks of time steps, so
# that its temporaries (the product, and in 16-bit storage an fp32 copy of the gradient) are a
# fraction of a [T, N] tensor; below _FOLD_CHUNK_MIN elements it makes one pass.
_FOLD_CHUNKS = 8
_FOLD_CHUNK_MIN = 1 << 16


def _fold_grads(grad_u, x, scale, residual, inner):
    """The gradients of (x, scale, shift, residual) from that of u = x * scale[c] + shift[c]
    (+ residual): torch ops on [T, N] viewed as [T, N / (C inner), C, inner]; the per-channel
    sums accumulate in the compute dtype (scale's). Eagerly, all of it runs over chunks of time
    steps, each chunk's gx computed in the compute dtype and rounded once to x's dtype: no
    full-size temporary beside the output gx (a one-pass formula makes a full-size product, and
    in 16-bit storage fp32 copies of grad_u, x and gx besides, each twice x's size)."""
    if scale is None:
        return grad_u, None, None, grad_u if residual is not None else None
    T, N = x.shape[0], math.prod(x.shape[1:])
    C = scale.shape[0]
    shape = (T, N // (C * inner), C, inner)
    cdt = scale.dtype
    gu, xs, sc = grad_u.view(shape), x.view(shape), scale.view(C, 1)
    if torch.compiler.is_compiling():  # traced: the compiler fuses these itself
        gu = gu.to(cdt)
        gx = (gu * sc).to(x.dtype).view(x.shape)
        gscale = (gu * xs.to(cdt)).sum((0, 1, 3))
        gshift = gu.sum((0, 1, 3))
        return gx, gscale, gshift, grad_u if residual is not None else None
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gxs = gx.view(shape)
    chunks = min(T, _FOLD_CHUNKS) if x.numel() >= _FOLD_CHUNK_MIN else 1
    step = -(-T // chunks) if T else 1
    gscale = torch.zeros(C, dtype=cdt, device=x.device)
    gshift = torch.zeros(C, dtype=cdt, device=x.device)
    for t in range(0, T, step):
        g, xc = gu[t:t + step], xs[t:t + step]
        if g.dtype == cdt:
            torch.mul(g, sc, out=gxs[t:t + step])
            gshift += g.sum((0, 1, 3))
            p = g * xc
        else:  # an fp32 copy of the chunk: gx rounded once from it, then the products in place
            p = g.to(cdt)
            gshift += p.sum((0, 1, 3))
            gxs[t:t + step].copy_(p * sc)
            p.mul_(xc)
        gscale += p.sum((0, 1, 3))
        del p  # before the next chunk's
    return gx, gscale, gshift, grad_u if residual is not None else None


def _backward(ctx, bwd_op, grad_spikes, grad_vT, grad_mT):
    """Gradients of every fwd argument: (x, v0, m0) through `bwd_op`, None for the rest."""
    x, v0, m0, ckpt, scale, shift, residual = ctx.saved_tensors
    o = ctx.options
    fold = (scale, shift, residual, ctx.inner) if ctx.folded else ()
    # A state the forward did not store ([0]) gets no gradient (zeros of size 0 under AOT
    # autograd).
    if grad_vT is not None and grad_vT.shape != x.shape[1:]:
        grad_vT = None
    if grad_mT is not None and grad_mT.shape != x.shape[1:]:
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


def _bwd_reference(x, v0, m0, grad_spikes, grad_vT, grad_mT, *rest):
    """`<namespace>::bwd_reference`: `_differentiable_backward` with the op's conventions."""
    f = fold_args(rest[_N_OPT:])
    fold = (f["scale"], f["shift"], f["residual"], f["inner"]) \
        if f["scale"] is not None or f["residual"] is not None else ()
    grads = _differentiable_backward(x, v0, m0, FusedOptions(*rest[:_N_OPT]), grad_spikes,
                                     grad_vT, grad_mT, *fold)
    grads = tuple(grads) + (None,) * (6 - len(grads))
    return tuple(x.new_empty((0,)) if g is None else g for g in grads)


def _fold_grads_op(grad_u, x, scale, inner):
    """`<namespace>::fold_grads`: `_fold_grads` with a scale (the residual's is grad_u)."""
    return _fold_grads(grad_u, x, scale, None, inner)[:3]


def register(namespace: str, python_autograd: bool) -> OpPair:
    """Fake kernels for `<namespace>::fwd/bwd` (defined here, or by a compiled library:
    clif_ops.cpp), and the autograd formula when `python_autograd` (the C++ library registers
    its own); returns the op pair."""
    torch.library.register_fake(f"{namespace}::fwd")(_fwd_fake)
    torch.library.register_fake(f"{namespace}::bwd")(_bwd_fake)
    pair = OpPair(getattr(torch.ops, namespace).fwd.default,
                  getattr(torch.ops, namespace).bwd.default)
    if python_autograd:
        def backward(ctx, grad_spikes, grad_vT, grad_mT, _grad_ckpt):
            return _backward(ctx, pair.bwd, grad_spikes, grad_vT, grad_mT)

        torch.library.register_autograd(pair.fwd, backward, setup_context=_setup_context)
    return pair


_libraries = []  # the Python-defined libraries must stay alive
_defined = set()


def define_schemas(namespace: str, bwd_reference: bool = False):
    """Declare `<namespace>::fwd/bwd` with the schemas above (once per namespace), and with
    `bwd_reference` the two ops that C++ autograd calls (bwd_reference, fold_grads); returns
    the library, on which Python implementations may be registered."""
    if namespace not in _defined:
        lib = torch.library.Library(namespace, "FRAGMENT")
        lib.define("fwd" + FWD_SCHEMA)
        lib.define("bwd" + BWD_SCHEMA)
        if bwd_reference:
            lib.define("bwd_reference" + BWD_REFERENCE_SCHEMA)
            lib.impl("bwd_reference", _bwd_reference, "CompositeImplicitAutograd")
            lib.define("fold_grads" + FOLD_GRADS_SCHEMA)
            lib.impl("fold_grads", _fold_grads_op, "CompositeImplicitAutograd")
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
    return register(namespace, python_autograd=True)

"""What torch.compile and CUDA graphs see of a neuron call.

- Compiled graphs: the eager-only checks of the functional API (argument types, the torch.func
  guard, state shapes) run at trace time and leave nothing in the graph; what runs per call is
  the fused op and the views around it.
- CUDA graphs: a small conv-BN-CLIFNode model's forward and backward captured with
  torch.cuda.graph after warm-up, and under torch.compile(mode="reduce-overhead"), replay the
  eager results (GPU only; skipped here without one).
"""
import pytest
import torch
from torch import nn

import clif_kernels
from checks import DEVICE
from clif_kernels import CLIFNode, backends


def _dynamo_graphs(fn, *args):
    """The FX graphs dynamo hands to its backend for `fn(*args)` (fullgraph, compiled eagerly)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return graphs


def _aot_graphs(fn, *args):
    """The forward and backward graphs AOT autograd traces for `fn(*args)` (a scalar loss)."""
    from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=keep, bw_compiler=keep)

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args).backward()
    return graphs


def _calls(gm):
    return [n.target for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


# Tensor methods and functions that only move or view data (the permutes of a channels_last
# input, the contiguous of a state).
_VIEWS = {"contiguous", "permute", "view", "reshape", "getitem"}


def _name(target):
    return getattr(target, "__name__", str(target))


@pytest.mark.parametrize("is_clif", [True, False])
def test_compiled_graph_holds_only_the_op(backend, is_clif):
    """Dynamo's graph of a `clif`/`lif` call with a state: the fused op and views, nothing
    host-side (no functorch guard, no grad-mode query, no check)."""
    if backends.REGISTRY[backend].op_pair() is None:
        pytest.skip("the reference has no op")
    fn = clif_kernels.clif if is_clif else clif_kernels.lif
    dev = DEVICE[backend]
    x = torch.randn(5, 3, 4, device=dev, requires_grad=True)
    v0 = torch.randn(3, 4, device=dev)

    def step(x, v0):
        out = fn(x, v0=v0, tau=1.5, return_state=True, backend=backend)
        return out[0], out[1]

    (gm,) = _dynamo_graphs(step, x, v0)
    calls = _calls(gm)
    ops = [c for c in calls if isinstance(c, torch._ops.OpOverload)]
    assert len(ops) == 1 and ops[0].name().endswith("::fwd"), calls
    others = [_name(c) for c in calls if c not in ops and _name(c) not in _VIEWS]
    assert not others, others


def test_compiled_training_graphs_hold_only_the_ops(backend):
    """AOT autograd's forward and backward graphs of a training step through `clif`: the
    forward op, the backward op, and the loss's own ops; nothing of the package's Python."""
    if backends.REGISTRY[backend].op_pair() is None:
        pytest.skip("the reference has no op")
    x = torch.randn(6, 2, 5, device=DEVICE[backend], requires_grad=True)
    fwd_graph, bwd_graph = _aot_graphs(lambda x: clif_kernels.clif(x, backend=backend).sum(), x)
    names = [[_name(c) for c in _calls(g)] for g in (fwd_graph, bwd_graph)]
    assert sum(n.startswith("fwd") for n in names[0]) == 1, names[0]
    assert sum(n.startswith("bwd") for n in names[1]) == 1, names[1]
    allowed = {"fwd", "bwd", "sum", "expand", "getitem", "view", "clone", "detach"}
    for graph in names:
        extra = [n for n in graph if n.split(".")[0] not in allowed]
        assert not extra, extra


# -- CUDA graphs ----------------------------------------------------------------------------

def _cuda_backend():
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU")
    name = backends.resolve_backend("auto", torch.device("cuda"), torch.float32)
    if name == backends.REFERENCE:
        pytest.skip("no fused backend on this GPU")
    return name


def _model(backend):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(0, 1), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                         nn.Unflatten(0, (4, 2)), CLIFNode(step_mode="m", backend=backend),
                         ).cuda()


def _eager_step(model, x):
    model[4].reset()
    model.zero_grad(set_to_none=False)
    out = model(x)
    out.sum().backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


def test_cuda_graph_capture_replays_eager():
    backend = _cuda_backend()
    x = torch.randn(4, 2, 3, 8, 8, device="cuda")
    eager = _model(backend)
    want = [_eager_step(eager, x) for _ in range(2)][-1]  # after BN's statistics moved twice
    model = _model(backend)
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        _eager_step(model, static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    model[4].reset()
    model.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_out = model(static_x)
        static_out.sum().backward()
    # The capture ran no kernel; one replay is the second step.
    model[4].reset()
    model.zero_grad(set_to_none=False)
    graph.replay()
    torch.testing.assert_close(static_out, want[0], rtol=0, atol=0)
    for p, g in zip(model.parameters(), want[1]):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-6)


def test_reduce_overhead_compile_replays_eager():
    backend = _cuda_backend()
    x = torch.randn(4, 2, 3, 8, 8, device="cuda")
    eager, compiled_model = _model(backend), _model(backend)
    compiled = torch.compile(compiled_model, mode="reduce-overhead")
    for _ in range(4):  # the first calls record, later ones replay the CUDA graph
        want = _eager_step(eager, x)
        compiled_model[4].reset()
        compiled_model.zero_grad(set_to_none=False)
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, want[0], rtol=0, atol=0)
        for p, g in zip(compiled_model.parameters(), want[1]):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)

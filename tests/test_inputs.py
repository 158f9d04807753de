"""Bad input gets a clear error naming the argument."""
import pytest
import torch

import clif_kernels


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match="x_seq"):
        clif_kernels.clif([1.0, 2.0])


def test_rejects_zero_dim():
    with pytest.raises(ValueError, match="x_seq"):
        clif_kernels.clif(torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_rejects_non_float(dtype):
    with pytest.raises(TypeError, match="x_seq"):
        clif_kernels.clif(torch.zeros(3, 4, dtype=dtype))


@pytest.mark.parametrize("kw,exc,name", [
    (dict(tau=0.0), ValueError, "tau"),
    (dict(tau=-1.0), ValueError, "tau"),
    (dict(tau=float("nan")), ValueError, "tau"),
    (dict(tau=float("inf")), ValueError, "tau"),
    (dict(tau="2"), TypeError, "tau"),
    (dict(v_threshold=float("inf")), ValueError, "v_threshold"),
    (dict(v_threshold=float("nan")), ValueError, "v_threshold"),
    (dict(v_reset=float("nan")), ValueError, "v_reset"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=-2.0), ValueError, "alpha"),
    (dict(surrogate="relu"), ValueError, "surrogate"),
    (dict(surrogate=3), TypeError, "surrogate"),
    (dict(decay_input=1), TypeError, "decay_input"),
    (dict(detach_reset="no"), TypeError, "detach_reset"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(return_state=None), TypeError, "return_state"),
])
@pytest.mark.parametrize("fn", [clif_kernels.clif, clif_kernels.lif])
def test_bad_options(fn, kw, exc, name):
    with pytest.raises(exc, match=name):
        fn(torch.randn(3, 4), **kw)


@pytest.mark.parametrize("state", ["v0", "m0"])
def test_bad_initial_state(state):
    x = torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match=state):
        clif_kernels.clif(x, **{state: torch.randn(4, 6)})
    with pytest.raises(TypeError, match=state):
        clif_kernels.clif(x, **{state: torch.randn(4, 5, dtype=torch.float64)})
    with pytest.raises(TypeError, match=state):
        clif_kernels.clif(x, **{state: [0.0] * 20})


def test_lif_has_no_m0():
    with pytest.raises(TypeError):
        clif_kernels.lif(torch.randn(3, 4), m0=torch.randn(4))


def test_triton_on_float64_is_refused():
    with pytest.raises(RuntimeError, match="triton"):
        clif_kernels.clif(torch.randn(3, 4, dtype=torch.float64), backend="triton")


def test_named_backend_never_falls_back(monkeypatch):
    pytest.importorskip("triton")  # the message is about the interpreter
    from clif_kernels import backends
    monkeypatch.setattr(backends, "_TRITON_INTERPRET", False)
    monkeypatch.setattr(backends, "_RESOLVED", {})  # what earlier calls found
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        clif_kernels.clif(torch.randn(3, 4), backend="triton")


def test_auto_picks_a_backend_that_runs_on_cpu():
    from clif_kernels import backends
    name = backends.resolve_backend("auto", torch.device("cpu"), torch.float32)
    assert name in ("cpp", "reference")
    x = torch.randn(5, 7)
    assert torch.equal(clif_kernels.clif(x), clif_kernels.clif(x, backend=name))


def test_resolution_is_remembered_for_fused_backends_only(monkeypatch):
    """Each call resolves its backend; a fused backend found to run is remembered per (name,
    device, dtype), the reference never (a backend may be built later), and a name that is not
    a string still gets the error naming `backend`."""
    from clif_kernels import backends
    monkeypatch.setattr(backends, "_RESOLVED", {})
    cpu = torch.device("cpu")
    assert backends.resolve_backend("reference", cpu, torch.float32) == "reference"
    assert backends._RESOLVED == {}
    name = backends.resolve_backend("auto", cpu, torch.float64)
    expected = {("auto", cpu, torch.float64): name} if backends.REGISTRY[name].fused else {}
    assert backends._RESOLVED == expected
    assert backends.resolve_backend("auto", cpu, torch.float64) == name
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve_backend(["cpp"], cpu, torch.float32)


def test_backend_names_come_from_the_registry():
    """The names `backend=` takes, the message listing them, and auto's order are those of
    backends.REGISTRY; "torch" is an alias of the reference."""
    from clif_kernels import backends
    assert clif_kernels.BACKENDS == ("auto",) + tuple(backends.REGISTRY)
    assert "reference" in backends.REGISTRY and "torch" not in backends.REGISTRY
    x = torch.randn(5, 7, requires_grad=True)
    assert torch.equal(clif_kernels.clif(x, backend="torch"),
                       clif_kernels.clif(x, backend="reference"))
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cuda', 'triton', "
                                         r"'cpp', 'reference'\) \(or 'torch' for 'reference'\)"):
        clif_kernels.clif(x, backend="cupy")
    assert backends.auto_order("cpu") == ("cpp", "reference")
    assert backends.auto_order("cuda") == ("cuda", "triton", "reference")
    assert [n for n, b in backends.REGISTRY.items() if not b.fused] == ["reference"]


@pytest.mark.parametrize("cls", [clif_kernels.CLIFNode, clif_kernels.LIFNode])
def test_node_backend_is_checked_at_construction_and_assignment(cls):
    with pytest.raises(ValueError, match="backend must be one of"):
        cls(backend="cupy")
    node = cls(backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        node.backend = "gpu"
    assert node.backend == "torch"

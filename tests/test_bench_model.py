"""The model benchmark (`clif-kernels bench-model`) compares equal work: every provider's spiking
ResNet-18 computes the reference-neuron model's loss and gradients on the same weights and data;
and the benchmark runs end to end at a tiny size."""
import csv
import os

import pytest
import torch

from clif_kernels import backends, cli
from clif_kernels.tools import bench_model as bm
from clif_kernels.tools.models import NEURON_RANGE, Neuron

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine each parallel
    region can wait a time slice for it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Tiny: 17 neuron layers of width 4-32 on 2 x 2 images of 16 x 16 (every layer and path of the
# 32 x 32 model; the interpreted Triton kernels' time goes with the pixels).
TINY = dict(T=2, batch=2, width=4, side=16)
CPU = torch.device("cpu")


def _device_and_dtype(provider):
    """Where and in which dtype a provider's model is compared: float64 where its neuron takes
    it (no rounding to tell apart from a real difference), else float32 on its device."""
    neuron, _ = bm.parse_provider(provider)
    if neuron in ("triton", "cuda"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        why = backends.unavailable_reason(neuron, dev, torch.float32)
        return (None, why) if why else ((dev, torch.float32), None)
    why = bm.why_not(provider, CPU, torch.float64)
    return (None, why) if why else ((CPU, torch.float64), None)


def _firing_rates(provider, device, dtype):
    """Each neuron layer's firing rate in the reference model: the comparison has teeth only
    when the neurons fire, and not everywhere."""
    rates = []
    x, y = bm.make_data(TINY["T"], TINY["batch"], device, 0, dtype, side=TINY["side"])
    model, _ = bm.build("reference", device, TINY["width"], 0, dtype,
                        make_neuron=bm.reference_factory(provider))
    for m in model.modules():
        if isinstance(m, Neuron):
            m.register_forward_hook(lambda mod, i, out: rates.append(out.float().mean().item()))
    with torch.no_grad():
        model(x)
    return rates


def _assert_same(provider, loss, grads, ref_loss, ref_grads, dtype):
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    assert torch.isfinite(loss), provider
    assert abs(loss.item() - ref_loss.item()) <= rtol * abs(ref_loss.item()), \
        f"{provider}: loss {loss.item()!r} against the reference's {ref_loss.item()!r}"
    assert grads.keys() == ref_grads.keys(), provider
    for name, g in grads.items():
        r = ref_grads[name]
        assert g is not None and r is not None, (provider, name)
        scale = r.abs().max().item()
        err = (g.double() - r.double()).abs().max().item()
        assert err <= rtol * max(scale, 1e-12) + 1e-12, \
            f"{provider}: gradient of {name} differs by {err:.3g} (largest {scale:.3g})"


# Every listed provider, and compositions the list leaves out (the mechanism on other neurons).
PROVIDERS = [p for p in bm.PROVIDERS if p != "compiled"] + ["reference+bits", "lif+bits"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_computes_the_reference_loss_and_gradients(provider):
    where, why = _device_and_dtype(provider)
    if where is None:
        pytest.skip(why)
    device, dtype = where
    rates = _firing_rates(provider, device, dtype)
    assert len(rates) == 17
    assert all(0.005 < r < 0.9 for r in rates), rates
    ref_loss, ref_grads = bm.loss_and_grads("reference", device, dtype, **TINY,
                                            make_neuron=bm.reference_factory(provider))
    assert sum(g.abs().sum().item() for g in ref_grads.values()) > 0
    loss, grads = bm.loss_and_grads(provider, device, dtype, **TINY)
    _assert_same(provider, loss, grads, ref_loss, ref_grads, dtype)


def test_a_different_neuron_is_told_apart():
    """The comparison fails when a provider does other work: LIF's loss and gradients against
    CLIF's reference."""
    ref_loss, ref_grads = bm.loss_and_grads("reference", CPU, torch.float64, **TINY)
    loss, grads = bm.loss_and_grads("lif", CPU, torch.float64, **TINY)
    with pytest.raises(AssertionError):
        _assert_same("lif", loss, grads, ref_loss, ref_grads, torch.float64)


def test_compiled_model_computes_the_reference_loss_and_gradients(monkeypatch):
    """torch.compile of the whole model with the loop neuron: captured as the benchmark captures
    it (TorchDynamo, one graph, AOT autograd's backward), then run by the `aot_eager` backend.
    What inductor generates from that graph is torch's code, and building its C++ costs over a
    minute of CI's CPU; the benchmark's own runs compile with inductor. Deselected by
    -k "not compile" (the old-torch job)."""
    compile_ = torch.compile
    calls = []

    def compile_aot_eager(model, **kw):
        calls.append(kw)
        return compile_(model, **dict(kw, backend="aot_eager"))

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    ref_loss, ref_grads = bm.loss_and_grads("reference", CPU, torch.float64, **TINY)
    loss, grads = bm.loss_and_grads("compiled", CPU, torch.float64, **TINY)
    assert calls == [{}]  # the provider compiled the model once, with torch's defaults
    _assert_same("compiled", loss, grads, ref_loss, ref_grads, torch.float64)


def test_benchmark_runs_and_writes_its_files(tmp_path):
    """The benchmark end to end at a tiny size, in this process, then one case in a fresh
    process (how it measures a CPU case's peak memory)."""
    providers = ["naive", "reference", "cpp", "lif", "spikingjelly", "spikingjelly+memopt",
                 "cpp+bits"]
    runnable = [p for p in providers if bm.why_not(p, CPU) is None]
    argv = ["bench-model", "--model", "resnet18", "--providers", ",".join(providers), "--T", "2",
            "--batch", "2", "--width", "4", "--warmup", "1", "--steps", "1", "--dtypes",
            "float32,bfloat16", "--isolate", "no", "--out", str(tmp_path), "--tag", "t",
            "--device", "cpu"]
    assert cli.main(argv) == 0  # `clif-kernels bench-model --model resnet18 ...`
    with open(tmp_path / "bench_t.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["provider"], r["dtype"]) for r in rows) == sorted(
        (p, d) for p in runnable for d in ("float32", "bfloat16"))
    for r in rows:
        assert float(r["ms"]) > 0 and r["git"] and r["date"] and r["torch"], r
        assert 0 < float(r["neuron_share"]) < 1, r
    # Same weights and data: the first step's loss agrees across providers in float32.
    losses = [float(r["loss"]) for r in rows if r["dtype"] == "float32" and r["neuron"] == "clif"]
    assert max(losses) - min(losses) < 1e-3, losses
    summary = (tmp_path / "summary_t.md").read_text()
    assert "| float32 | 2 | 2 | cpp |" in summary
    if "spikingjelly" in runnable:
        assert "trains" in summary and "faster" in summary
    res = bm._run_isolated(dict(provider="cpp", dtype="float32", T=2, batch=2, width=4, warmup=1,
                                steps=1, device="cpu", budget_gib=None, profile=False), 120)
    assert float(res["ms"]) > 0 and float(res["peak_mb"]) > 0, res


@pytest.mark.parametrize("bits", ["cpp+bits", "lif+bits", "reference+bits"])
def test_bits_providers_save_bits_and_the_same_gradients(bits):
    """A `+bits` provider's forward runs inside spikes_as_bits(): its layers save the spikes as
    bits, and its loss and gradients are bitwise those of its neuron without it (fp32)."""
    from clif_kernels import spike_bits
    neuron = bm.parse_provider(bits)[0]
    packed = []
    pack = spike_bits._pack

    def counting(t):
        p = pack(t)
        packed.append(type(p) is spike_bits._Packed)
        return p
    spike_bits._pack = counting
    try:
        loss, grads = bm.loss_and_grads(bits, CPU, torch.float32, **TINY)
    finally:
        spike_bits._pack = pack
    assert sum(packed) >= 16, sum(packed)  # the 16 neurons whose spikes a convolution saves
    ref_loss, ref_grads = bm.loss_and_grads(neuron, CPU, torch.float32, **TINY)
    assert torch.equal(loss, ref_loss)
    for name, g in grads.items():
        assert torch.equal(g, ref_grads[name]), name


@pytest.mark.parametrize("name, why", [
    ("cpp+nothing", "no mechanism 'nothing'"),
    ("spikingjelly+bits", "applies to"),
    ("cpp+memopt", "applies to spikingjelly, not cpp"),
    ("cpp+bits+bits", "repeated"),
    ("fast+bits", "starts with no neuron"),
])
def test_provider_names_are_checked(name, why):
    with pytest.raises(ValueError, match=why):
        bm.parse_provider(name)
    assert why in bm.why_not(name, CPU)


def test_a_new_mechanism_composes():
    """A mechanism is one table entry: a model transform and a context around the forward,
    composed with another in the name's order."""
    calls = []

    class Around:
        def __enter__(self):
            calls.append("enter")

        def __exit__(self, *exc):
            calls.append("exit")

    def transform(model, example):
        calls.append("model")
        return model
    bm.MECHANISMS["probe"] = bm.Mechanism(bm.OURS, model=transform, around=Around)
    try:
        assert bm.parse_provider("cpp+bits+probe") == ("cpp", ["bits", "probe"])
        assert bm.why_not("cpp+bits+probe", CPU) is None
        loss, _ = bm.loss_and_grads("cpp+bits+probe", CPU, torch.float32, **TINY)
    finally:
        del bm.MECHANISMS["probe"]
    assert calls == ["model", "enter", "exit"] and torch.isfinite(loss)


@pytest.mark.parametrize("law, start, largest, most_probes", [
    (lambda b: 100 + 7 * b, 8, 128, 4),                  # linear: the prediction is exact
    (lambda b: 100 + 7 * b, 500, 128, 8),                # starting above the budget
    (lambda b: 100 + 7 * b + 0.01 * b * b, 8, 110, 10),  # convex
    (lambda b: None if b > 50 else 1, 8, 50, 12),        # out of memory above 50
    (lambda b: 2000, 8, 0, 5),                           # not even batch 1 fits
])
def test_largest_batch_search(law, start, largest, most_probes):
    """The search against known memory laws, budget 1000, exact (tolerance 0)."""
    found, probes = bm.largest_batch(law, 1000, start=start, tolerance=0)
    assert found == largest and len(probes) <= most_probes, (found, sorted(probes))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_benchmark_on_gpu_searches_the_largest_batch(tmp_path):
    """The GPU path end to end at a tiny size: max_memory_allocated, the profiler's kernel
    times, and the largest batch in a 64 MiB budget, which a step at that batch must meet."""
    argv = ["bench-model", "--model", "resnet18", "--providers", "naive,cuda,triton", "--T", "2", "--batch",
            "2", "--width", "4", "--warmup", "1", "--steps", "2", "--dtypes", "float32",
            "--mem-budget-gib", str(64 / 1024), "--out", str(tmp_path), "--tag", "g",
            "--device", "cuda"]
    assert bm.main(argv) == 0
    with open(tmp_path / "bench_g.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["provider"] for r in rows} >= {"naive", "cuda"}
    for r in rows:
        assert float(r["peak_mb"]) > 0 and 0 < float(r["neuron_share"]) < 1, r
        b = int(r["max_batch"])
        assert b > 2, r
        dev = torch.device("cuda")
        model, runner = bm.build(r["provider"], dev, 4)
        opt = bm.make_optimizer(model)
        probe = bm._peak_probe(model, runner, opt, 2, False, dev, torch.float32)
        probe(1)  # the optimizer's momentum, as in the benchmark's search
        assert probe(b) <= 64 * 2**20 < probe(int(b * 1.05) + 1), r


@pytest.mark.parametrize("provider", ["naive", "cpp", "spikingjelly+memopt"])
def test_neuron_attribution_of_the_profiled_step(provider):
    """The profiler attribution behind the neuron's share, by event (times on a shared machine
    say nothing): the neuron's forward ops and their backward nodes are the neuron's, the
    convolutions, batch norms, loss and optimizer are not, also when SpikingJelly's
    checkpointing recomputes a block inside the backward."""
    if bm.why_not(provider, CPU):
        pytest.skip(bm.why_not(provider, CPU))
    x, y = bm.make_data(2, 2, CPU)
    model, runner = bm.build(provider, CPU, 4, example=x)
    opt = bm.make_optimizer(model)
    bm.train_step(model, runner, opt, x, y, False)
    events = list(bm.profile_step(model, runner, opt, x, y, False, CPU))
    label = bm.neuron_labeller(events)
    evals = [e for e in events if e.name.startswith(bm._EVAL)]
    node = {"naive": "SpikeFnBackward", "cpp": "FusedNeuronBackward",
            "spikingjelly+memopt": "rectBackward"}[provider]
    spike_nodes = [e for e in evals if e.name.endswith(node)]
    # One per neuron and step for the loops (T = 2), one per neuron for the fused op.
    assert len(spike_nodes) == (17 if provider == "cpp" else 34), len(spike_nodes)
    assert all(label(e) for e in spike_nodes)
    for name in ("ConvolutionBackward0", "NativeBatchNormBackward0", "AddmmBackward0",
                 "NllLossBackward0"):
        found = [e for e in evals if e.name.endswith(name)]
        assert found and not any(label(e) for e in found), name
    convs = [e for e in events if e.name == "aten::convolution"]
    # 20 convolutions forward; with checkpointing all but the classifier's run again.
    assert len(convs) == (40 if provider.endswith("memopt") else 20), len(convs)
    assert not any(label(e) for e in convs)
    assert not any(label(e) for e in events if e.name.startswith("Optimizer.step"))
    ranges = [e for e in events if e.name == NEURON_RANGE]
    assert len(ranges) == (34 if provider.endswith("memopt") else 17)
    share = bm.neuron_share(events, False)
    assert 0 < share < 1, share

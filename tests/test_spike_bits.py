"""Spikes as bits (`clif_kernels.spikes_as_bits`, clif_kernels/spike_bits.py): the packing is
exact for every byte pattern, only our neurons' unchanged spikes are packed, the gradients are
bitwise those without it, and the float spikes are freed (bytes saved per element-step)."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clif_kernels
from clif_kernels import CLIFNode, LIFNode, spike_bits, spikes_as_bits
from clif_kernels.tools.models import SeqConvBN, SpikingResNet18

from checks import DEVICE

BACKENDS = ["cpp", "reference"]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


class Saved:
    """What `Counting` recorded of a saved tensor: a weak reference to it (a strong one would
    keep the spikes alive, and through the autograd graph this helper's own hooks), its layout
    and the bytes autograd holds for it."""

    def __init__(self, t, held):
        self.ref = weakref.ref(t)
        self.shape, self.stride, self.offset = t.shape, t.stride(), t.storage_offset()
        self.contiguous, self.dtype = t.is_contiguous(), t.dtype
        self.numel, self.mean = t.numel(), t.float().mean().item() if t.numel() else 0.0
        self.held = held  # the packed bits (kept: they are what autograd holds anyway)


class Counting:
    """Saved-tensor hooks around `spike_bits`' own (entered inside `spikes_as_bits()`, so that
    they are the innermost): record what each saved tensor became, and the bytes autograd holds
    (distinct storages, the packed bits counted once however many layers share them)."""

    def __init__(self):
        self.packed, self.kept, self._storages = [], [], {}

    def pack(self, t):
        p = spike_bits._pack(t)
        if type(p) is spike_bits._Packed:
            self.packed.append(Saved(t, p.bits))
            s = p.bits.untyped_storage()
        else:
            self.kept.append(Saved(t, None))
            s = t.untyped_storage()
        self._storages[s.data_ptr()] = s.nbytes()
        return p

    @property
    def bytes(self):
        return sum(self._storages.values())

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, spike_bits._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        del self._hooks


# ---------------------------------------------------------------------------------------------
# The packing


def _raw(t):
    """The bit patterns of a float tensor, as integers (+0.0 and -0.0 differ there)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _bits_by_hand(flags):
    """The packed bytes of a list of 0/1 flags, element i at bit i % 8 of byte i // 8."""
    out = [0] * ((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        out[i // 8] |= int(f) << (i % 8)
    return out


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_byte_pattern_packs_and_unpacks_exactly(dtype):
    """All 256 patterns of 8 flags (each byte's top bit included: the multiply that gathers
    them wraps past the int64 sign bit), then every tail length of a random sequence."""
    flags = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)
    x = flags.to(dtype)
    bits = spike_bits.pack_bits(x)
    assert bits.dtype == torch.uint8 and bits.tolist() == list(range(256))
    back = spike_bits.unpack_bits(bits, x.numel(), dtype)
    assert back.dtype == dtype and torch.equal(_raw(back), _raw(x))
    g = torch.Generator().manual_seed(1)
    r = (torch.rand(70, generator=g) < 0.4).to(dtype)
    for n in range(0, 70):
        b = spike_bits.pack_bits(r[:n])
        assert b.tolist() == _bits_by_hand(r[:n].tolist()), n
        assert torch.equal(spike_bits.unpack_bits(b, n, dtype), r[:n]), n


def test_pack_bits_takes_any_layout():
    """The flags in `reshape(-1)` order, whatever the strides (a transposed view here)."""
    x = (torch.rand(5, 9) < 0.5).float().t()
    assert spike_bits.pack_bits(x).tolist() == _bits_by_hand(x.reshape(-1).tolist())


def test_bad_input_is_refused_by_name():
    with pytest.raises(TypeError, match="enabled must be a bool"):
        spikes_as_bits(enabled="yes")
    with pytest.raises(TypeError, match="t must be a tensor"):
        spike_bits.pack_bits([0, 1])
    bits = spike_bits.pack_bits(torch.ones(16))
    with pytest.raises(TypeError, match="bits must be a 1-D uint8 tensor"):
        spike_bits.unpack_bits(bits.float(), 16, torch.float32)
    with pytest.raises(ValueError, match=r"numel must be an int in \[0, 16\]"):
        spike_bits.unpack_bits(bits, 17, torch.float32)
    with pytest.raises(ValueError, match="numel must be"):
        spike_bits.unpack_bits(bits, 3.0, torch.float32)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        spike_bits.unpack_bits(bits, 16, "float32")
    with pytest.raises(ValueError, match="out must be a contiguous 1-D"):
        spike_bits.unpack_bits(bits, 16, torch.float32, out=torch.empty(8))


def test_spikes_are_exactly_zero_or_one(backend):
    """What packing without looking at the values rests on: every backend's spikes are +0.0 or
    1.0, bit for bit, also for infinite and NaN inputs."""
    x = torch.randn(6, 300) * 3
    x[0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    x[3, 3:6] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    for name in (backend, "reference"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            s = clif_kernels.clif(x.to(dtype=dtype, device=DEVICE.get(name, "cpu")),
                                  backend=name).cpu()
            raw = _raw(s)
            one = _raw(torch.ones(1, dtype=dtype))
            assert bool(((raw == 0) | (raw == one)).all()), (name, dtype)
            assert 0 < s.float().mean() < 1


# ---------------------------------------------------------------------------------------------
# Only spikes, exactly


class SmallNet(nn.Module):
    """conv-BN-neuron, a residual add, average and max pooling, a linear layer, and matmuls on
    a transposed view and on a sliced view with a storage offset: layers that save spikes for
    their backward. Input [3, 2, 2, 8, 8]."""

    def __init__(self, backend, neuron=CLIFNode):
        super().__init__()
        self.conv1 = SeqConvBN(2, 6, 3, 1)
        self.sn1 = neuron(step_mode="m", backend=backend)
        self.conv2 = SeqConvBN(6, 6, 3, 1)
        self.sn2 = neuron(step_mode="m", backend=backend)
        self.fc = nn.Linear(8, 5)
        self.w1 = nn.Parameter(torch.randn(6, 5))
        self.w2 = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        s1 = self.sn1(self.conv1(x))                          # [T, B, 6, 8, 8]
        s2 = self.sn2(self.conv2(s1) + s1)                    # a residual add
        flat = s2.flatten(0, 1)
        pooled = F.avg_pool2d(flat, 2).mean() + F.max_pool2d(flat, 2).float().mean()
        lin = self.fc(s1).float().mean()
        mt = (s1.flatten(0, 1).flatten(1).t() @ self.w1).float().mean()
        ms = (s2.flatten(0, 2)[1:, 3, :5] @ self.w2).float().mean()
        return pooled + lin + mt + ms


def _grads(model, x, bits, amp, counting=None):
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if hasattr(m, "reset"):
            m.reset()
    with spikes_as_bits(enabled=bits):
        with counting if counting is not None else _nothing():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = model(x)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("neuron", [CLIFNode, LIFNode])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_are_bitwise_those_without_bits(backend, neuron, amp):
    torch.manual_seed(0)
    model = SmallNet(backend, neuron)
    x = torch.randn(3, 2, 2, 8, 8) * 2
    loss0, g0 = _grads(model, x, False, amp)
    counting = Counting()
    loss1, g1 = _grads(model, x, True, amp, counting)
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    # It did pack, strided views too; and the spikes fire, not everywhere.
    packed = counting.packed
    assert len(packed) >= (3 if amp else 6), [tuple(t.shape) for t in packed]
    if not amp:  # under autocast the matmuls save bf16 copies of fp32 spikes, not the spikes
        assert any(not t.contiguous for t in packed)
        assert any(t.offset > 0 for t in packed)
    for t in packed:
        assert 0 < t.mean < 1
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_the_comparison_tells_a_changed_spike():
    """The bitwise comparison has teeth: one spike flipped in a packed copy changes a
    gradient."""
    torch.manual_seed(0)
    model = SmallNet("cpp")
    x = torch.randn(3, 2, 2, 8, 8) * 2
    _, g0 = _grads(model, x, False, False)
    flip = spike_bits._pack_spikes

    def flipped(t, entry):
        p = flip(t, entry)
        if p is not None:
            p.bits = p.bits.clone()
            p.bits[0] ^= 1
        return p
    spike_bits._pack_spikes = flipped
    try:
        _, g1 = _grads(model, x, True, False)
    finally:
        spike_bits._pack_spikes = flip
    assert any(not torch.equal(g0[n], g1[n]) for n in g0)


def test_a_tensor_saved_next_to_spikes_is_untouched():
    """A 0/1 tensor that is not a neuron's output, and a float tensor, are kept as the very
    objects autograd would hold; only the spikes are packed."""
    x = torch.randn(4, 64, requires_grad=True)
    not_spikes = (torch.rand(4, 64) < 0.5).float().requires_grad_()
    weights = torch.randn(4, 64, requires_grad=True)
    with spikes_as_bits(), Counting() as c:
        s = clif_kernels.clif(x, backend="cpp")
        y = (s * not_spikes).sum() + (not_spikes * weights).sum()
    assert [t.ref() is s for t in c.packed] == [True]
    assert any(t.ref() is not_spikes for t in c.kept) and any(t.ref() is weights for t in c.kept)
    y.backward()
    # And the kept ones come back as themselves: the same memory, not a copy.
    with spikes_as_bits():
        z = not_spikes * weights
    assert z.grad_fn._saved_self.data_ptr() == not_spikes.data_ptr()
    assert z.grad_fn._saved_other.data_ptr() == weights.data_ptr()


def test_shared_spikes_are_packed_once():
    """Two layers saving the same spikes (a block's convolution and its shortcut) share one
    packed copy."""
    torch.manual_seed(0)
    a, b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 2, 3, 5, 5, requires_grad=True)
    with spikes_as_bits(), Counting() as c:
        s = clif_kernels.clif(x, backend="cpp").flatten(0, 1)
        (a(s).sum() + b(s).sum()).backward()
    assert len(c.packed) == 2 and c.packed[0].held is c.packed[1].held


def test_spikes_changed_in_place_before_saving_are_not_packed():
    x = torch.randn(3, 50, requires_grad=True)
    w = torch.randn(3, 50, requires_grad=True)  # so that the product saves the spikes
    for change in (lambda s: s.mul_(2), lambda s: s[0].zero_()):
        with spikes_as_bits(), Counting() as c:
            s = clif_kernels.clif(x, backend="cpp")
            change(s)
            y = (s * w).sum()
        assert not c.packed and any(t.ref() is s for t in c.kept)
        g_bits = torch.autograd.grad(y, (x, w))
        s = clif_kernels.clif(x, backend="cpp")
        change(s)
        g = torch.autograd.grad((s * w).sum(), (x, w))
        assert torch.equal(g_bits[0], g[0]) and torch.equal(g_bits[1], g[1])


def test_spikes_changed_in_place_after_saving():
    """Autograd refuses a saved tensor changed in place: so does the context while the spikes
    live; once they are freed, the backward uses the spikes as the forward used them (autograd,
    holding them, would have refused)."""
    x = torch.randn(3, 50, requires_grad=True)
    w = torch.randn(3, 50, requires_grad=True)
    s = clif_kernels.clif(x, backend="cpp")
    y = (s * w).sum()
    s.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    with spikes_as_bits():
        s = clif_kernels.clif(x, backend="cpp")
        y = (s * w).sum()
    s.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    with spikes_as_bits():
        s = clif_kernels.clif(x, backend="cpp")
        y = (s * w).sum()
    expected = s.detach().clone()
    s.add_(1)
    del s
    y.backward()
    assert torch.equal(w.grad, expected)


def test_a_kept_tensor_changed_in_place_still_raises():
    """Saved-tensor hooks switch autograd's in-place check off; the context does it instead."""
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5)
    with spikes_as_bits():
        y = (a * b).sum()
    b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("shape", [(0, 4, 3), (3, 0, 5), (2, 3, 0)])
def test_empty_spikes(shape):
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape)
    with spikes_as_bits(), Counting() as c:
        s = clif_kernels.clif(x, backend="cpp")
        y = (s * w).sum() + x.sum()
    assert not c.packed and not spike_bits._registry
    y.backward()
    assert x.grad.shape == x.shape and torch.equal(x.grad, torch.ones(shape))
    assert spike_bits.pack_bits(torch.empty(0)).numel() == 0
    assert spike_bits.unpack_bits(torch.empty(0, dtype=torch.uint8), 0, torch.float32).numel() == 0


@pytest.mark.parametrize("view", ["transpose", "slice", "step", "channels_last", "select"])
def test_strided_views_come_back_with_their_layout(view):
    """The unpacked tensor has the saved view's shape, strides and storage offset, and its
    values."""
    x = torch.randn(4, 2, 6, 5, 5)
    if view == "channels_last":  # the neuron's output keeps the input's layout
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 2))
    take = {"transpose": lambda s: s.transpose(0, -1),
            "slice": lambda s: s[1:3, :, 2:],
            "step": lambda s: s[::2, :, ::3],
            "channels_last": lambda s: s.flatten(0, 1),
            "select": lambda s: s[2, 1]}[view]
    w = torch.randn(take(torch.empty(x.shape)).shape, requires_grad=True)
    with spikes_as_bits(), Counting() as c:
        s = clif_kernels.clif(x, backend="cpp")
        v = take(s)
        y = v * w
    assert len(c.packed) == 1 and c.packed[0].ref() is v
    back = y.grad_fn._saved_self  # autograd's unpacking of what it saved: our unpack hook
    assert back.data_ptr() != v.data_ptr()  # rebuilt from the bits
    assert back.shape == v.shape and back.stride() == v.stride()
    assert back.storage_offset() == v.storage_offset() and back.dtype == v.dtype
    assert torch.equal(back, v)


def test_nested_with_other_saved_tensor_hooks():
    """PyTorch applies the innermost hooks: other hooks inside the context see the float spikes
    and ours do nothing there; ours inside other hooks pack as usual; the context nested in
    itself and around checkpointing; the gradients always exact."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 2, 3, 6, 6, requires_grad=True)

    def run(outer, inner):
        conv.zero_grad()
        with outer, inner:
            s = clif_kernels.clif(x, backend="cpp").flatten(0, 1)
            y = conv(s).square().sum()
        y.backward()
        return conv.weight.grad.clone()

    g = run(_nothing(), _nothing())
    seen = []

    def theirs():
        return torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t,
                                                        lambda t: t)

    assert torch.equal(run(spikes_as_bits(), theirs()), g)
    assert any(t.dtype == torch.float32 and t.dim() == 4 and
                                bool(((t == 0) | (t == 1)).all()) for t in seen)
    ctx = spikes_as_bits()
    for outer in (theirs(), torch.autograd.graph.save_on_cpu(), ctx):
        counting = Counting()

        class Inner:
            def __enter__(self):
                ctx.__enter__()
                counting.__enter__()

            def __exit__(self, *exc):
                counting.__exit__(*exc)
                ctx.__exit__(*exc)
        assert torch.equal(run(outer, Inner()), g)
        assert len(counting.packed) == 1
    assert not spike_bits._ACTIVE

    def block(s):
        return conv(s).square().sum()
    conv.zero_grad()
    with spikes_as_bits():
        s = clif_kernels.clif(x, backend="cpp").flatten(0, 1)
        y = torch.utils.checkpoint.checkpoint(block, s, use_reentrant=False)
    y.backward()
    assert torch.equal(conv.weight.grad, g)


def test_context_state_and_zero_cost_outside():
    """Outside any context `mark` registers nothing; the flag follows nesting, exceptions and
    `enabled=False`; the decorator form works."""
    gc.collect()
    t = torch.zeros(3)
    assert spike_bits.mark(t) is t and not spike_bits._registry
    assert not spike_bits._ACTIVE
    ctx = spikes_as_bits()
    with ctx:
        with ctx:
            assert spike_bits._ACTIVE
        assert spike_bits._ACTIVE
    assert not spike_bits._ACTIVE
    with pytest.raises(ZeroDivisionError):
        with spikes_as_bits():
            1 / 0
    assert not spike_bits._ACTIVE
    with spikes_as_bits(enabled=False):
        assert not spike_bits._ACTIVE
        s = clif_kernels.clif(torch.randn(2, 8), backend="cpp")
        assert not spike_bits._registry

    @spikes_as_bits()
    def forward(x):
        assert spike_bits._ACTIVE
        return clif_kernels.clif(x, backend="cpp")
    s = forward(torch.randn(2, 8))
    assert len(spike_bits._registry) == 1 and not spike_bits._ACTIVE
    del s
    gc.collect()
    assert not spike_bits._registry


# ---------------------------------------------------------------------------------------------
# Memory


def _block(neuron, dtype):
    """conv-BN-neuron-conv on [T, B, C, H, W]: the second convolution saves the spikes."""
    torch.manual_seed(0)
    conv1, conv2 = SeqConvBN(3, 8, 3, 1), SeqConvBN(8, 8, 3, 1)
    conv1.to(dtype), conv2.to(dtype)
    return lambda x: conv2(neuron(conv1(x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_saved_per_element_step(backend, step_mode, dtype):
    """What a layer after the neuron saves for the spikes: the dtype's size per element-step
    without the context, 1/8 byte with it; everything else the same."""
    T, B = 4, 2
    node = CLIFNode(step_mode=step_mode, backend=backend)
    block = _block(node, dtype)
    x = torch.randn(T, B, 3, 8, 8, dtype=dtype)
    n = T * B * 8 * 8 * 8  # the neuron's element-steps

    def measure(bits):
        node.reset()
        with spikes_as_bits(enabled=bits), Counting() as c:
            if step_mode == "m":
                y = block(x)
            else:  # one step at a time: each step's spikes are their own tensor
                y = [block(x[t:t + 1])[0] for t in range(T)]
        return c, y

    plain, y0 = measure(False)
    bits, y1 = measure(True)
    assert not plain.packed
    assert len(bits.packed) == (1 if step_mode == "m" else T)
    assert sum(t.numel for t in bits.packed) == n
    per_element_step = (plain.bytes - bits.bytes) / n
    assert per_element_step == dtype.itemsize - 1 / 8


def _neuron_factories():
    out = {"CLIFNode-cpp": lambda: CLIFNode(step_mode="m", backend="cpp"),
           "LIFNode-reference": lambda: LIFNode(step_mode="m", backend="reference")}
    try:
        from clif_kernels import spikingjelly as sj
        out["spikingjelly.ComplementaryLIFNode"] = lambda: sj.ComplementaryLIFNode(
            step_mode="m", backend="cpp")
        out["spikingjelly.LIFNode"] = lambda: sj.LIFNode(step_mode="m", backend="cpp")
    except Exception:  # SpikingJelly not installed: its nodes are not ours to test then
        pass
    return out


@pytest.mark.parametrize("name", sorted(_neuron_factories()))
def test_the_float_spikes_are_freed(name):
    """After the forward, with the graph alive, no float spike tensor is left: every registered
    spike tensor is gone (an entry leaves the registry when its tensor dies), so nothing in the
    graph (the neurons' own saved tensors included) holds one. The spiking ResNet-18 of the
    model benchmark, whose 16 neurons before a convolution are all packed."""
    torch.manual_seed(0)
    model = SpikingResNet18(_neuron_factories()[name], width=4)
    x = torch.randn(2, 2, 3, 16, 16)
    alive = []
    for m in model.neurons():
        m.register_forward_hook(lambda mod, i, out: alive.append(len(spike_bits._registry)))
    model.reset_neurons()
    with spikes_as_bits(), Counting() as c:
        loss = model(x).square().sum()
    assert max(alive) > 0  # registered while the forward ran
    gc.collect()
    assert not spike_bits._registry, "a float spike tensor outlived the forward"
    assert len({id(t.held) for t in c.packed}) >= 16
    loss.backward()


def test_the_neuron_itself_saves_no_spikes():
    """Our neuron's own graph node holds its input and checkpoints, not its spikes."""
    x = torch.randn(4, 100, requires_grad=True)
    for backend in BACKENDS:
        with spikes_as_bits(), Counting() as c:
            s = clif_kernels.clif(x, backend=backend)
        assert not c.packed
        ref = weakref.ref(s._base if s._base is not None else s)
        del s
        gc.collect()
        assert ref() is None, backend


# ---------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("fullgraph", [True, False])
def test_compiled_model_is_exact_and_packs_nothing_inside(fullgraph):
    """torch.compile'd code inside the context: the same gradients as the compiled model
    without it, bit for bit; nothing registered or packed inside the compiled graph (its
    backward saves what AOTAutograd chooses). aot_eager: dynamo and AOTAutograd as inductor
    sees them, without inductor's compile time."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SmallNet("cpp")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=fullgraph, dynamic=False)
    x = torch.randn(3, 2, 2, 8, 8) * 2

    def grads(bits):
        model.zero_grad(set_to_none=True)
        model.sn1.reset(), model.sn2.reset()
        with spikes_as_bits(enabled=bits), Counting() as c:
            loss = compiled(x)
            registered = len(spike_bits._registry)
        loss.backward()
        return c, registered, {n: p.grad.clone() for n, p in model.named_parameters()}

    _, _, g0 = grads(False)
    c, registered, g1 = grads(True)
    if fullgraph:  # one graph: no neuron ran outside it
        assert not c.packed and registered == 0
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n
    torch._dynamo.reset()

"""Spikes kept as bits for the layers that consume them.

The layer after a spiking neuron (a convolution, a linear layer, pooling, a matmul) saves the
neuron's spikes for its backward in the spikes' dtype: 4 bytes (fp32) or 2 (bf16, fp16) for a
value that is 0 or 1. Inside `spikes_as_bits()`, a spike tensor that this package's neurons
output is saved at 1 bit per spike instead, and unpacked, exactly, when the backward needs it:

    with clif_kernels.spikes_as_bits():
        loss = loss_fn(model(x), y)
    loss.backward()

How it knows what is a spike tensor: `functional.run` hands every spike tensor it returns to
`mark`, which, only while a context is active, registers the tensor's root (the tensor owning
its memory: the `_base` of a view) by a weak reference, with the root's version counter at
creation and the spikes' element range in its storage. The context's `saved_tensors_hooks`
pack a saved tensor as bits only when it is that root or a view of it, of the same dtype, within
that range, and at that version (no in-place change since). The range is packed once per root,
so two layers saving the same spikes (a block's first convolution and its shortcut) share one
packed copy, and the unpacked tensor is rebuilt with the saved tensor's shape, strides and
storage offset. Every other saved tensor is kept as it is, with autograd's in-place check (which
saved-tensor hooks otherwise switch off) done by the hooks instead.

Packing and unpacking are torch ops (any device): a comparison to bytes, one 64-bit multiply
that gathers 8 bytes into one, and a 256-entry table gather to unpack; benchmarks/NOTES.md
("Spikes as bits") has their cost against a training step's.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

__all__ = ["spikes_as_bits", "mark", "pack_bits", "unpack_bits"]

# The one check `mark` makes on every neuron call: whether any context is entered (in any
# thread). A bool, not the depth, so that torch.compile guards on two values at most.
_ACTIVE = False
_depth = 0
_depth_lock = threading.Lock()

# id(root) -> _Spikes, for every live spike tensor registered while a context was active. An
# entry leaves when its root dies (the weak reference's callback), so the registry never keeps
# spikes alive and never outlives them.
_registry: dict = {}

# byte i of a little-endian int64 holding 8 bytes of 0/1, times this, lands in bit 56 + i, with
# no carries (each product bit 8i + 7k + 7 is distinct for i + k <= 7): the top byte is the 8
# flags packed, bit i = element i. Integer products wrap in torch's kernels (two's complement);
# tests check every byte pattern.
_GATHER = 0x0102040810204080
_tables: dict = {}  # (dtype, device) -> [256, 8] table: bit i of the row index, as 0/1


class _Spikes:
    """A registered spike tensor: the weak reference to its root, the root's version at
    creation, the spikes' element range [start, start + numel) in the root's storage, and the
    packed bits once a layer saved them."""

    __slots__ = ("ref", "version", "dtype", "start", "numel", "packed")


class _Packed:
    """What autograd holds for a saved spike tensor: the shared packed bits and how to rebuild
    the saved view from them."""

    __slots__ = ("bits", "start", "numel", "dtype", "size", "stride", "offset", "ref",
                 "version")


class _Kept:
    """A saved tensor kept as it is, with its version at saving (see `_unpack`)."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor, version):
        self.tensor = tensor
        self.version = version


def _forget(key, ref):
    entry = _registry.get(key)
    if entry is not None and entry.ref is ref:  # not a newer entry under a reused id
        _registry.pop(key, None)


def _is_dense(t):
    """Whether `t` covers exactly `t.numel()` consecutive elements of its storage (any order of
    dimensions: a contiguous or a channels_last tensor, a permutation of one)."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def mark(spikes):
    """Register `spikes`, a tensor of 0/1 values that a neuron of this package just returned, so
    that a layer saving it inside `spikes_as_bits()` saves bits; returns `spikes`. Costs one
    global check when no context is active. For the neurons' own use: a tensor registered here
    is packed without looking at its values, so marking anything else than fresh spikes gives
    wrong gradients."""
    if not _ACTIVE:
        return spikes
    return _register(spikes)


def _register(spikes):
    # Under torch.compile the neuron's outputs are values inside a graph, not the tensors the
    # compiled backward saves (AOTAutograd chooses those): nothing to register there.
    if torch.compiler.is_compiling():
        return spikes
    if (type(spikes) is not torch.Tensor or spikes.layout != torch.strided
            or spikes.numel() == 0 or not _is_dense(spikes)):
        return spikes
    root = spikes._base if spikes._base is not None else spikes
    entry = _Spikes()
    entry.version = root._version
    entry.dtype = spikes.dtype
    entry.start = spikes.storage_offset()
    entry.numel = spikes.numel()
    entry.packed = None
    key = id(root)
    entry.ref = weakref.ref(root, lambda ref, key=key: _forget(key, ref))
    _registry[key] = entry
    return spikes


# ---------------------------------------------------------------------------------------------
# Bits


def pack_bits(t: torch.Tensor) -> torch.Tensor:
    """The flags `t != 0` of a tensor's elements (in `t.reshape(-1)` order), 8 per byte: a
    uint8 tensor of ceil(numel / 8) bytes, bit i of byte j for element 8j + i (the last byte
    padded with zeros)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a tensor, got {type(t).__name__}")
    n = t.numel()
    flags = torch.empty((n + 7) // 8 * 8, dtype=torch.bool, device=t.device)
    torch.ne(t.reshape(-1), 0, out=flags[:n])
    flags[n:].zero_()
    words = flags.view(torch.uint8).view(torch.int64)
    return ((words * _GATHER) >> 56).to(torch.uint8)


def _table(dtype, device):
    key = (dtype, device)
    table = _tables.get(key)
    if table is None:
        rows = torch.arange(256, device=device).unsqueeze(1)
        table = ((rows >> torch.arange(8, device=device)) & 1).to(dtype)
        _tables[key] = table
    return table


def unpack_bits(bits: torch.Tensor, numel: int, dtype: torch.dtype, *,
                out: torch.Tensor = None) -> torch.Tensor:
    """`pack_bits`'s inverse: the first `numel` flags of `bits` as 0/1 values of `dtype`, a 1-D
    tensor (`out`, when given: a contiguous 1-D tensor of at least ceil(numel / 8) * 8
    elements of that dtype on that device, whose first `numel` it returns)."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
        got = (f"{bits.dtype} tensor of {bits.dim()} dimensions"
               if isinstance(bits, torch.Tensor) else type(bits).__name__)
        raise TypeError(f"bits must be a 1-D uint8 tensor (from pack_bits), got {got}")
    if not isinstance(numel, int) or isinstance(numel, bool) or not 0 <= numel <= 8 * len(bits):
        raise ValueError(f"numel must be an int in [0, {8 * len(bits)}] for {len(bits)} bytes, "
                         f"got {numel!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    n8 = (numel + 7) // 8 * 8
    if out is None:
        out = torch.empty(n8, dtype=dtype, device=bits.device)
    elif (out.dtype != dtype or out.device != bits.device or out.dim() != 1
          or not out.is_contiguous() or out.numel() < n8):
        raise ValueError(f"out must be a contiguous 1-D {dtype} tensor on {bits.device} of at "
                         f"least {n8} elements, got {out.dtype} {tuple(out.shape)} on "
                         f"{out.device}")
    torch.index_select(_table(dtype, bits.device), 0, bits[:n8 // 8].int(),
                       out=out[:n8].view(-1, 8))
    return out[:numel]


# ---------------------------------------------------------------------------------------------
# The hooks


def _pack(t):
    if type(t) is not torch.Tensor:
        if type(t) is torch.nn.Parameter:  # never spikes
            return _Kept(t, t._version)
        # A tensor subclass (a FakeTensor while tracing, a DTensor, ...): saved as saved-tensor
        # hooks always save it.
        return t
    if _registry:
        entry = _registry.get(id(t._base if t._base is not None else t))
        if entry is not None:
            packed = _pack_spikes(t, entry)
            if packed is not None:
                return packed
    return _Kept(t, t._version)


def _pack_spikes(t, entry):
    """A `_Packed` for `t`, or None when `t` is not (a view of) `entry`'s spikes as created."""
    root = entry.ref()
    if (root is None or root is not (t._base if t._base is not None else t)
            or t.dtype != entry.dtype or t._version != entry.version or t.numel() == 0):
        return None
    offset = t.storage_offset()
    last = offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    if offset < entry.start or last >= entry.start + entry.numel:
        return None
    if entry.packed is None:
        with torch.no_grad():
            entry.packed = pack_bits(root.detach().as_strided((entry.numel,), (1,),
                                                              entry.start))
    p = _Packed()
    p.bits, p.start, p.numel, p.dtype = entry.packed, entry.start, entry.numel, entry.dtype
    p.size, p.stride, p.offset = t.shape, t.stride(), offset
    p.ref, p.version = entry.ref, entry.version
    return p


def _modified(shape, dtype, saved, now):
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: a {dtype} tensor of shape {list(shape)} saved inside "
        f"clif_kernels.spikes_as_bits() is at version {now}; expected version {saved} instead")


def _unpack(p):
    if type(p) is _Kept:
        t = p.tensor
        if t._version != p.version:  # what autograd checks when no hooks are set
            raise _modified(t.shape, t.dtype, p.version, t._version)
        return t
    if type(p) is not _Packed:
        return p
    root = p.ref()
    if root is not None and root._version != p.version:
        # The spikes were changed in place after they were saved: autograd, holding them,
        # would refuse; so do we (once they are freed, no change can happen).
        raise _modified(p.size, p.dtype, p.version, root._version)
    n8 = (p.numel + 7) // 8 * 8
    buf = torch.empty(p.start + n8, dtype=p.dtype, device=p.bits.device)
    # The saved view's exact layout: the same storage offset in a buffer laid out like the
    # spikes' storage (start is 0 for the neurons' outputs).
    unpack_bits(p.bits, p.numel, p.dtype, out=buf[p.start:])
    return buf.as_strided(p.size, p.stride, p.offset)


class spikes_as_bits(contextlib.ContextDecorator):
    """Inside this context (or a function decorated with it), the spikes that this package's
    neurons output are saved for the backward at 1 bit per spike by whatever layer saves them
    (docs/memory.md, "Spikes as bits"). Wrap the forward; the backward may run outside:

        with clif_kernels.spikes_as_bits():
            loss = criterion(model(x), y)
        loss.backward()

    The gradients are bitwise those without it. `enabled=False` makes it do nothing (to switch
    it from a flag). Saved-tensor hooks entered inside it apply instead of it, as PyTorch's
    innermost hooks do; inside torch.compile'd code it saves nothing (docs/memory.md says why).
    """

    def __init__(self, enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        self.enabled = enabled
        self._hooks = []  # one per entry: the object may be entered again, nested

    def __enter__(self):
        global _ACTIVE, _depth
        if not self.enabled:
            self._hooks.append(None)
            return self
        hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
        hooks.__enter__()
        self._hooks.append(hooks)
        with _depth_lock:
            _depth += 1
            _ACTIVE = True
        return self

    def __exit__(self, *exc):
        global _ACTIVE, _depth
        hooks = self._hooks.pop()
        if hooks is None:
            return False
        with _depth_lock:
            _depth -= 1
            _ACTIVE = _depth > 0
        hooks.__exit__(*exc)
        return False

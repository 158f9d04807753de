"""A spiking ResNet-18 for 3x32x32 inputs, multi-step, in plain torch.nn; the model of
`clif-kernels bench-model`.

Input `[T, B, 3, H, W]`, output logits `[B, classes]` (the readout averaged over time). Every
convolution and batch norm runs on the time steps folded into the batch (`[T * B, C, H, W]`), as
SpikingJelly's multi-step containers do; every neuron takes the whole sequence `[T, B, C, H, W]`
in one call. The layout is the CIFAR ResNet-18: a 3x3 stem (no max-pool), four stages of two basic
blocks (conv-BN-neuron-conv-BN, plus the shortcut, then a neuron) at widths w, 2w, 4w, 8w with
strides 1, 2, 2, 2, global average pooling and a linear classifier. The neuron is whatever module
`make_neuron()` returns, so the same weights run with any neuron (17 neurons in all).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# The profiler range around every neuron call: the model benchmark attributes to the neuron
# what runs inside it and the backward of what was recorded inside it.
NEURON_RANGE = "clif_kernels.neuron"


class SeqConvBN(nn.Module):
    """Conv2d (no bias) + BatchNorm2d applied to `[T, B, C, H, W]` with T folded into the
    batch, so that batch statistics span all time steps."""

    def __init__(self, cin, cout, kernel, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        T, B = x.shape[:2]
        return self.bn(self.conv(x.flatten(0, 1))).unflatten(0, (T, B))


class Neuron(nn.Module):
    """Holds one neuron module (`node`), called on `[T, B, C, H, W]`. With `label`, each call
    runs inside the profiler range NEURON_RANGE (torch.compile'd models are built without it:
    the range is what the compiler would have to trace)."""

    def __init__(self, node: nn.Module, label: bool = True):
        super().__init__()
        self.node = node
        self.label = label

    def forward(self, x):
        if not self.label:
            return self.node(x)
        with torch.profiler.record_function(NEURON_RANGE):
            return self.node(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, make_neuron: Callable[[], nn.Module], label=True):
        super().__init__()
        self.conv1 = SeqConvBN(cin, cout, 3, stride)
        self.sn1 = Neuron(make_neuron(), label)
        self.conv2 = SeqConvBN(cout, cout, 3, 1)
        self.shortcut = SeqConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.sn2 = Neuron(make_neuron(), label)

    def forward(self, x):
        out = self.conv2(self.sn1(self.conv1(x)))
        return self.sn2(out + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nn.Module):
    def __init__(self, cin, cout, make_neuron, label=True):
        super().__init__()
        self.conv = SeqConvBN(cin, cout, 3, 1)
        self.sn = Neuron(make_neuron(), label)

    def forward(self, x):
        return self.sn(self.conv(x))


class SpikingResNet18(nn.Module):
    """See the module docstring. `width` is the first stage's channel count (64 in ResNet-18;
    smaller for quick runs on a CPU)."""

    def __init__(self, make_neuron: Callable[[], nn.Module], num_classes=10, width=64,
                 in_channels=3, label=True):
        super().__init__()
        self.stem = Stem(in_channels, width, make_neuron, label)
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            blocks += [BasicBlock(cin, cout, stride, make_neuron, label),
                       BasicBlock(cout, cout, 1, make_neuron, label)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """`x: [T, B, C, H, W]` -> logits `[B, num_classes]`."""
        feats = self.blocks(self.stem(x)).mean(dim=(3, 4))      # [T, B, C]
        return self.fc(feats).mean(dim=0)

    def neurons(self):
        return [m.node for m in self.modules() if isinstance(m, Neuron)]

    def reset_neurons(self):
        """Forget every neuron's carried state (each training step starts from rest)."""
        for node in self.neurons():
            if hasattr(node, "reset"):
                node.reset()

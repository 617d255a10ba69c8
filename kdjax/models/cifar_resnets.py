"""The CIFAR ResNets of RepDistiller (Tian et al., ICLR 2020) as Flax Linen modules,
with BatchNorm: ``resnet8``, ``resnet14``, ``resnet20``, ``resnet32``, ``resnet44``,
``resnet56`` and ``resnet110`` (He et al. 2016, §4.2, with projection shortcuts).

Layer for layer RepDistiller's ``models/resnet.py``: a 3×3 convolution to 16 channels,
BatchNorm, ReLU; three stages of ``n = (depth − 2) / 6`` basic blocks with 16, 32 and
64 channels (the second and third stages start with stride 2); global average
pooling; a dense classifier. A basic block is conv 3×3 → BN → ReLU → conv 3×3 → BN,
plus the shortcut, then ReLU; where the shape changes the shortcut is a 1×1 strided
convolution and BN. Convolutions have no bias and start from Kaiming-normal weights
(``fan_out``, as RepDistiller initialises them); BatchNorm starts at scale 1, offset 0;
the classifier is initialised as PyTorch's ``nn.Linear``.

Every model maps ``[B, 32, 32, 3]`` images to ``"logits"``, ``"features"`` (the
pooled 64-vector: RepDistiller's ``feat[-1]``, what CRD, PKT, RKD and CC read) and
``"feature_map"`` (the last stage's output after its ReLU, ``[B, 8, 8, 64]``:
RepDistiller's ``feat[-2]``, what SP reads). The stages are sown under stable names
(:mod:`kdjax.models.taps`): ``stem``, ``stage1``, ``stage2``, ``stage3`` (each stage's
output after its ReLU: RepDistiller's ``feat[0]`` … ``feat[3]``, what AT, NST, VID and
FSP read, FitNets ``stage2``) and ``stage1_preact`` … ``stage3_preact`` (before that
ReLU: RepDistiller's ``preact=True`` features, what AB reads).

Convolutions run through :func:`kdjax.models.layers.strided_conv2d`: on the CPU their
gradients stay fast when the students of a population are trained one after another
inside one program (``lax.map``), where XLA's own convolution gradient measured
30–80× slower per layer (a population of two resnet20s, batch 64: 1.46 s per step
against 0.68 s for one). On GPU/TPU they are XLA's convolutions.

BatchNorm uses PyTorch's settings (momentum 0.1 — Flax's ``momentum=0.9`` — and
epsilon 1e-5); training steps normalise with the batch's statistics and update the
running averages (collection ``"batch_stats"``), evaluation uses the running
averages. One difference: Flax updates the running variance with the biased batch
variance, PyTorch with the unbiased one (a factor ``m / (m − 1)``, ``m`` the number
of values per channel: at least 64·8·8 = 4,096 at batch 64, so below 0.03%).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from kdjax.models.layers import Dense, strided_conv2d
from kdjax.models.taps import INTERMEDIATES

Outputs = dict[str, jax.Array]
# The widths of RepDistiller's resnet8 … resnet110: the stem, then the three stages.
CIFAR_RESNET_WIDTHS = (16, 16, 32, 64)
CIFAR_RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNetConv(nn.Module):
    """A square convolution without bias, padded by ``(kernel_size − 1) / 2`` on every
    side (PyTorch's ``padding=1`` for 3×3, 0 for 1×1; not TensorFlow's "SAME", which
    pads a strided convolution on one side only); parameters as ``nn.Conv``'s."""

    features: int
    kernel_size: int = 3
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = self.kernel_size
        kernel = self.param("kernel", _KAIMING_FAN_OUT, (size, size, x.shape[-1], self.features))
        pad = (size - 1) // 2
        return strided_conv2d(x, kernel.astype(x.dtype), ((pad, pad), (pad, pad)), self.strides)


def _conv(features: int, kernel_size: int, strides: int, name: str) -> ResNetConv:
    return ResNetConv(features, kernel_size, strides, name=name)


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """conv 3×3 (stride) → BN → ReLU → conv 3×3 → BN, plus the shortcut (a 1×1
    strided conv and BN where the shape changes), then ReLU."""

    channels: int
    strides: int = 1

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return nn.relu(self.preact(x, train=train))

    @nn.compact
    def preact(self, x: jax.Array, *, train: bool) -> jax.Array:
        """The block's output before its last ReLU (RepDistiller's ``preact``)."""
        y = _conv(self.channels, 3, self.strides, "conv1")(x)
        y = nn.relu(_batch_norm(train, "bn1")(y))
        y = _conv(self.channels, 3, 1, "conv2")(y)
        y = _batch_norm(train, "bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.channels:
            x = _conv(self.channels, 1, self.strides, "shortcut_conv")(x)
            x = _batch_norm(train, "shortcut_bn")(x)
        return y + x


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet of ``depth = 6n + 2`` layers (module docstring).

    Parameters are named ``stem_conv``, ``stem_bn``, ``stage<s>_block<b>/...`` (``s``
    in 1–3, ``b`` from 0) and ``fc``.
    """

    depth: int = 20
    widths: tuple[int, int, int, int] = CIFAR_RESNET_WIDTHS
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        if (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2 with n >= 1, got {self.depth}.")
        blocks = (self.depth - 2) // 6
        x = _conv(self.widths[0], 3, 1, "stem_conv")(images)
        x = nn.relu(_batch_norm(train, "stem_bn")(x))
        self.sow(INTERMEDIATES, "stem", x)
        for stage, channels in enumerate(self.widths[1:], start=1):
            for index in range(blocks):
                strides = 2 if stage > 1 and index == 0 else 1
                block = BasicBlock(channels, strides, name=f"stage{stage}_block{index}")
                if index < blocks - 1:
                    x = block(x, train=train)
                    continue
                preact = block.preact(x, train=train)
                x = nn.relu(preact)
                self.sow(INTERMEDIATES, f"stage{stage}_preact", preact)
                self.sow(INTERMEDIATES, f"stage{stage}", x)
        features = x.mean(axis=(1, 2))
        logits = Dense(self.num_classes, name="fc")(features)
        return {"logits": logits, "features": features, "feature_map": x}


# resnet8 … resnet110 by name (the registry's entries; kdjax.models.MODELS).
CIFAR_RESNETS = {
    f"resnet{depth}": functools.partial(CifarResNet, depth=depth) for depth in CIFAR_RESNET_DEPTHS
}

"""1-D convolutional networks for physiological signals, as Flax Linen modules.

Input ``[B, length, channels]`` floats (what :func:`kdjax.data.signals.load_biovid`
returns); output a dict with ``"logits"`` and ``"features"`` (the input of the
classifier head) and, for the convolutional trunk, ``"feature_map"``, like
:mod:`kdjax.models`. Dropout is active only with ``train=True`` and draws from
the ``"dropout"`` RNG stream.

* :class:`Conv1DNet` — the BioVid pipeline's network, by default exactly: conv 1→32 (k5,
  stride 2), ReLU, max-pool 2, conv 32→64 (k5), ReLU, max-pool 2, flatten
  (22,336 for 2,816 samples), dense 512, dense 5 — **no ReLU between the two
  dense layers**: the pipeline defines ``relu3`` but never calls it, so its head is
  one linear map of rank ≤ 512. ``dense_relu=True`` adds it.
* :class:`SignalCNN` — a small recipe that learns on a CPU: a strided first
  convolution, three conv/ReLU/max-pool blocks, global mean and max pooling
  over time (so it does not care where in the window a response falls;
  47,301 parameters, about 240× fewer than the pipeline's network), dropout, a
  small dense head.

Convolutions are :func:`kdjax.models.layers.conv1d` (XLA's 1-D convolution, gradients
written out on the CPU) with PyTorch's initialisation; an unpadded convolution
of stride ``s`` has PyTorch's output length ``floor((L − k) / s) + 1``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import Dense, conv1d, torch_bias_init, torch_kernel_init

Outputs = dict[str, jax.Array]


class _Conv1DParameters(nn.Module):
    """The kernel and bias of a :class:`Conv1D`, shaped and initialised as
    :class:`kdjax.models.layers.Conv`'s with a ``(kernel_size, 1)`` kernel, so checkpoints of
    either layout load in the other."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
        shape = (self.kernel_size, 1, in_channels, self.features)
        kernel = self.param("kernel", torch_kernel_init(), shape)
        bias = self.param("bias", torch_bias_init(in_channels * self.kernel_size), (self.features,))
        return kernel[:, 0], bias


class Conv1D(nn.Module):
    """A 1-D convolution with bias over ``[B, length, channels]``; ``padding`` is
    ``"VALID"`` (PyTorch's default, no padding) or ``"SAME"`` (``(k − 1) // 2`` zeros
    before, the rest after, whatever the stride: output length ``ceil(L / stride)``)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: str = "VALID"

    @nn.compact
    def __call__(self, signals: jax.Array) -> jax.Array:
        kernel, bias = _Conv1DParameters(self.features, self.kernel_size, name="conv")(
            signals.shape[-1]
        )
        if self.padding == "VALID":
            pads = (0, 0)
        elif self.padding == "SAME":
            pads = ((self.kernel_size - 1) // 2, self.kernel_size // 2)
        else:
            raise ValueError(f"padding must be 'SAME' or 'VALID', got {self.padding!r}.")
        dtype = signals.dtype
        return conv1d(signals, kernel.astype(dtype), pads, self.stride) + bias.astype(dtype)


def max_pool_1d(signals: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping max-pooling over time (stride = window); a trailing
    remainder is dropped, as PyTorch's ``MaxPool1d`` does.

    Written as an elementwise maximum of the ``window`` interleaved slices, whose
    gradient is a select instead of a reshape and a max (which counts the maxima
    of every window): the same values, and for a window of 2 ties split the
    gradient evenly in both; on the CPU 10 % cheaper with a ReLU before it
    (``benchmarks.conv1d_paths``).
    """
    length = signals.shape[1] // window * window
    return functools.reduce(
        jnp.maximum, [signals[:, offset:length:window] for offset in range(window)]
    )


def _flatten_channels_first(feature_map: jax.Array) -> jax.Array:
    """Flatten ``[B, L, C]`` in PyTorch's ``[B, C, L]`` order, so the pipeline's
    dense weights line up element for element."""
    return feature_map.transpose(0, 2, 1).reshape(feature_map.shape[0], -1)


class Conv1DNet(nn.Module):
    """Convolutions (ReLU, max-pool 2 after each), flatten, dense ``hidden``, dense
    ``num_classes``. The defaults are the BioVid pipeline's network (11,449,605 parameters
    for 2,816 samples and one channel), its missing ReLU included.

    Example:
      >>> model = Conv1DNet()
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 2816, 1)))
      >>> model.apply(params, jnp.zeros((2, 2816, 1)))["features"].shape
      (2, 22336)
    """

    num_classes: int = 5
    conv_channels: Sequence[int] = (32, 64)
    kernel_size: int = 5
    first_stride: int = 2
    hidden: int = 512
    dense_relu: bool = False

    @nn.compact
    def __call__(self, signals: jax.Array, *, train: bool = False) -> Outputs:
        x = signals
        for index, channels in enumerate(self.conv_channels):
            stride = self.first_stride if index == 0 else 1
            x = Conv1D(channels, self.kernel_size, stride, name=f"conv{index + 1}")(x)
            x = max_pool_1d(nn.relu(x))
        feature_map = x
        features = _flatten_channels_first(feature_map)
        x = Dense(self.hidden, name="fc1")(features)
        if self.dense_relu:
            x = nn.relu(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class SignalCNN(nn.Module):
    """Strided conv (k9, stride 4), then conv/ReLU/max-pool blocks, global mean and
    max over time, dense ``hidden`` with ReLU and dropout, dense ``num_classes``.

    Example:
      >>> model = SignalCNN()
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 2816, 1)))
      >>> model.apply(params, jnp.zeros((2, 2816, 1)))["logits"].shape
      (2, 5)
    """

    num_classes: int = 5
    stem_channels: int = 16
    block_channels: Sequence[int] = (32, 64, 64)
    block_kernels: Sequence[int] = (7, 7, 5)
    hidden: int = 64
    dropout: float = 0.3

    @nn.compact
    def __call__(self, signals: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv1D(self.stem_channels, 9, 4, "SAME", name="stem")(signals))
        blocks = zip(self.block_channels, self.block_kernels, strict=True)
        for index, (channels, kernel) in enumerate(blocks):
            x = nn.relu(Conv1D(channels, kernel, 1, "SAME", name=f"conv{index + 1}")(x))
            x = max_pool_1d(x)
        feature_map = x
        features = jnp.concatenate([x.mean(axis=1), x.max(axis=1)], axis=-1)
        x = nn.relu(Dense(self.hidden, name="fc1")(features))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


# The 1-D networks by name, as entries of the one model registry (kdjax.models.MODELS):
# their settings (widths, dropout, classes) are keyword arguments.
SIGNAL_MODELS = {
    "conv1d_net": Conv1DNet,
    "conv1d_net_relu": functools.partial(Conv1DNet, dense_relu=True),
    "signal_cnn": SignalCNN,
}


def get_signal_model(name: str, num_classes: int = 5) -> nn.Module:
    """A signal model by registry name, with ``num_classes`` outputs (BioVid's five
    pain levels by default): :func:`kdjax.models.get_model` for the names of
    :data:`SIGNAL_MODELS`."""
    from kdjax.models import get_model

    if name not in SIGNAL_MODELS:
        known = ", ".join(sorted(SIGNAL_MODELS))
        raise ValueError(f"unknown signal model {name!r}; known: {known}.")
    return get_model(name, num_classes=num_classes)

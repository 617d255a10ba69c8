"""Teacher and student networks as Flax Linen modules.

Every model maps ``[B, H, W, C]`` float images to a dict of outputs:
``"logits"`` always, plus named intermediate features that hint and cosine
objectives read (``"features"``: the flattened input of the classifier head;
``"feature_map"``: the last convolutional map, for convolutional models). Models
take ``train`` as a keyword so dropout is active only while training, and draw
dropout randomness from the ``"dropout"`` RNG stream.

Layouts are NHWC (JAX's native layout). Flattening NHWC instead of PyTorch's
NCHW permutes the inputs of the first dense layer; it changes no parameter
count and no function the network can express.

:data:`MODELS` is the one registry of every network by name, the 1-D networks of
:mod:`kdjax.models.signal_models` (``[B, length, channels]`` signals in, the same
outputs) among them: :func:`get_model` builds any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from kdjax.models.backbones import MobileNetV2, ResNet50V2
from kdjax.models.cifar_resnets import CIFAR_RESNETS
from kdjax.models.layers import Conv, Dense, max_pool, strided_conv2d
from kdjax.models.signal_models import SIGNAL_MODELS
from kdjax.models.taps import INTERMEDIATES

Outputs = dict[str, jax.Array]


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class SmallConvNet(nn.Module):
    """Two 3×3 convolutions (8 and 16 channels, pad 1), max-pool 2, channel dropout
    (PyTorch ``Dropout2d``), dense 32, dense ``num_classes``: the R MNIST
    notebook's student ("StudentNet", 101,962 parameters on MNIST)."""

    num_classes: int = 10
    channel_dropout: float = 0.25

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv(8, (3, 3), padding=1, name="conv1")(images))
        x = nn.relu(Conv(16, (3, 3), padding=1, name="conv2")(x))
        feature_map = max_pool(x)
        # Dropout2d zeroes whole channels: share the mask across height and width.
        x = nn.Dropout(self.channel_dropout, broadcast_dims=(1, 2), deterministic=not train)(
            feature_map
        )
        features = _flatten(x)
        x = nn.relu(Dense(32, name="fc1")(features))
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class ConvNet(nn.Module):
    """Conv 32 (3×3 same), max-pool 2, conv 64 (3×3 same),
    max-pool 2, dropout 0.25, dense 3136→128, dropout 0.5, dense 10 (421,642
    parameters, about 99% test accuracy; the R MNIST notebook's own teacher reached
    98.75%).

    Pooling after the first convolution, as in the TensorFlow MNIST tutorials,
    runs the 32→64 convolution on 14×14 maps: a quarter of the FLOPs of the
    conv-conv-pool variant, for the same accuracy class on MNIST.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv(32, (3, 3), padding="SAME", name="conv1")(images))
        x = max_pool(x)
        x = nn.relu(Conv(64, (3, 3), padding="SAME", name="conv2")(x))
        feature_map = max_pool(x)
        x = nn.Dropout(0.25, deterministic=not train)(feature_map)
        features = _flatten(x)
        x = nn.relu(Dense(128, name="fc1")(features))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class MLP(nn.Module):
    """A ReLU multilayer perceptron on flattened images.

    ``hidden_sizes=(800, 800), dropout=0.5`` is the MLP notebook's teacher; ``(200,
    200)`` with no dropout its student; ``(784, 784)`` the TensorFlow notebook's student;
    ``(1200, 1200)`` with input dropout 0.2 and hidden dropout 0.5 Hinton et al.'s
    2015 MNIST teacher (the dropout net of Srivastava et al. 2014).
    """

    hidden_sizes: Sequence[int]
    num_classes: int = 10
    dropout: float = 0.0
    input_dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = _flatten(images)
        if self.input_dropout > 0:
            x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for index, width in enumerate(self.hidden_sizes):
            x = nn.relu(Dense(width, name=f"hidden{index}")(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="head")(x)
        return {"logits": logits, "features": x}


class OverlapPoolConvNet(nn.Module):
    """Conv 32 (3×3 same), an overlapping max-pool (2×2, stride 1, same), conv 64
    (3×3 same), max-pool 2×2 stride 2, dropout 0.5, dense 128, dropout 0.5, dense
    ``num_classes``: the TensorFlow notebook's MNIST teacher."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv(32, (3, 3), padding="SAME", name="conv1")(images))
        x = nn.max_pool(x, (2, 2), strides=(1, 1), padding="SAME")
        x = nn.relu(Conv(64, (3, 3), padding="SAME", name="conv2")(x))
        feature_map = max_pool(x)
        features = _flatten(feature_map)
        x = nn.Dropout(0.5, deterministic=not train)(features)
        x = nn.relu(Dense(128, name="fc1")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class ConvMLP(nn.Module):
    """One convolution feeding an MLP: conv 32 (3×3 same), max-pool 2×2 stride 1
    (same), dense 784, dense 784, dropout 0.5, dense ``num_classes``: the
    TensorFlow notebook's teacher assistant (TAKD)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv(32, (3, 3), padding="SAME", name="conv1")(images))
        feature_map = nn.max_pool(x, (2, 2), strides=(1, 1), padding="SAME")
        features = _flatten(feature_map)
        x = nn.relu(Dense(784, name="fc1")(features))
        x = nn.relu(Dense(784, name="fc2")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc3")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


def _flatten_channels_first(x: jax.Array) -> jax.Array:
    """Flatten an NHWC map in PyTorch's NCHW order (channel, row, column)."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def _pooled_stage(module: nn.Module, preact: jax.Array, name: str) -> jax.Array:
    """``max_pool(relu(preact))``, sown as ``name`` and, before the ReLU (max-pooling
    commutes with it), as ``name_preact``."""
    pooled = max_pool(preact)
    module.sow(INTERMEDIATES, f"{name}_preact", pooled)
    stage = nn.relu(pooled)
    module.sow(INTERMEDIATES, name, stage)
    return stage


class FourConvNet(nn.Module):
    """Four 3×3 convolutions in two pooled stages (the CIFAR-10 teacher "DeepNN" of the
    CIFAR-10 CNN notebook and the PyTorch KD tutorial): conv 3→128, conv 128→64, max-pool,
    conv 64→64, conv 64→32, max-pool (all 3×3, pad 1, ReLU), flatten 2048, dense 512,
    ReLU, [dropout], dense 10 — 1,186,986 parameters. The notebook has no dropout,
    the tutorial 0.1.

    ``features`` is the flattened last conv map in PyTorch's channel-first order, so
    the tutorial's ``avg_pool1d`` over it (the cosine run) pairs the same elements.
    Its pooled stages are sown as ``stage1`` ([16, 16, 64]) and ``stage2`` (the
    ``feature_map``, [8, 8, 32]), and before their ReLU as ``stage1_preact`` and
    ``stage2_preact`` (:mod:`kdjax.models.taps`).
    """

    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = nn.relu(Conv(128, (3, 3), padding=1, name="conv1")(images))
        x = _pooled_stage(self, Conv(64, (3, 3), padding=1, name="conv2")(x), "stage1")
        x = nn.relu(Conv(64, (3, 3), padding=1, name="conv3")(x))
        feature_map = _pooled_stage(self, Conv(32, (3, 3), padding=1, name="conv4")(x), "stage2")
        features = _flatten_channels_first(feature_map)
        x = nn.relu(Dense(512, name="fc1")(features))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class TwoConvNet(nn.Module):
    """Two 3×3 convolutions, each pooled (the CIFAR-10 student "LightNN" of the CIFAR-10
    CNN notebook and the PyTorch KD tutorial):
    conv 3→16, max-pool, conv 16→16,
    max-pool (3×3, pad 1, ReLU), flatten 1024, dense 256, ReLU, [dropout], dense 10 —
    267,738 parameters. The tutorial's hint regressor (conv 16→32, 3×3) is the ``hint``
    method's head beside the student (:class:`kdjax.models.heads.HintHead`), not part of it.
    Its pooled stages are sown as ``stage1`` ([16, 16, 16]) and ``stage2`` (the
    ``feature_map``, [8, 8, 16]), and before their ReLU as ``stage1_preact`` and
    ``stage2_preact`` (:mod:`kdjax.models.taps`).
    """

    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        x = _pooled_stage(self, Conv(16, (3, 3), padding=1, name="conv1")(images), "stage1")
        feature_map = _pooled_stage(self, Conv(16, (3, 3), padding=1, name="conv2")(x), "stage2")
        features = _flatten_channels_first(feature_map)
        x = nn.relu(Dense(256, name="fc1")(features))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = Dense(self.num_classes, name="fc2")(x)
        return {"logits": logits, "features": features, "feature_map": feature_map}


class StridedConv(nn.Module):
    """A strided convolution with bias and TensorFlow's "SAME" padding (Keras'
    ``Conv2D(features, kernel_size, strides, padding="same")``): glorot-uniform kernel,
    zero bias, Keras' defaults; parameters named as ``nn.Conv``'s."""

    features: int
    kernel_size: int = 3
    strides: int = 2

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        size, channels = self.kernel_size, images.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.glorot_uniform(), (size, size, channels, self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        padding = jax.lax.padtype_to_pads(
            images.shape[1:3], (size, size), (self.strides, self.strides), "SAME"
        )
        kernel = kernel.astype(images.dtype)
        outputs = strided_conv2d(images, kernel, tuple(map(tuple, padding)), self.strides)
        return outputs + bias.astype(images.dtype)


class StridedConvNet(nn.Module):
    """Conv 3×3 stride 2 (same), LeakyReLU 0.2, max-pool 2×2 stride 1 (same), conv 3×3
    stride 2 (same), flatten, dense ``num_classes``: the networks of the Keras example
    "Knowledge distillation" — ``channels=(256, 512)`` its teacher (1,433,610
    parameters on MNIST), ``(16, 32)`` its student (20,490). As in the example, no
    activation follows the second convolution; weights start as Keras' (glorot-uniform
    kernels, zero biases)."""

    channels: tuple[int, int] = (256, 512)
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        del train  # no dropout
        x = StridedConv(self.channels[0], name="conv1")(images)
        x = nn.leaky_relu(x, negative_slope=0.2)
        x = nn.max_pool(x, (2, 2), strides=(1, 1), padding="SAME")
        feature_map = StridedConv(self.channels[1], name="conv2")(x)
        features = _flatten(feature_map)
        dense = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.glorot_uniform(), name="dense"
        )
        logits = dense(features)
        return {"logits": logits, "features": features, "feature_map": feature_map}


# Architectures by name; their settings (widths, dropout) are keyword arguments, given
# by each experiment's config and recorded with every run (RunSpec.model_settings).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_conv_net": SmallConvNet,
    "conv_net": ConvNet,
    "overlap_pool_conv_net": OverlapPoolConvNet,
    "conv_mlp": ConvMLP,
    "four_conv_net": FourConvNet,
    "two_conv_net": TwoConvNet,
    "strided_conv_net": StridedConvNet,
    # Keras' ImageNet applications, layer for layer (kdjax.models.backbones).
    "resnet50v2": ResNet50V2,
    "mobilenetv2": MobileNetV2,
    # RepDistiller's CIFAR ResNets with BatchNorm, resnet8 … resnet110 (kdjax.models.cifar_resnets).
    **CIFAR_RESNETS,
    # 1-D networks for physiological signals, [B, length, channels] in (kdjax.models.signal_models).
    **SIGNAL_MODELS,
}


def get_model(name: str, **settings) -> nn.Module:
    """A model by its registry name and settings (both stored with every run), e.g.
    ``get_model("mlp", hidden_sizes=(800, 800), dropout=0.5)``."""
    try:
        architecture = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    try:
        return architecture(**settings)
    except TypeError as error:
        raise ValueError(f"model {name!r} does not take the settings {settings}: {error}") from None


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (arrays or shape structs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))

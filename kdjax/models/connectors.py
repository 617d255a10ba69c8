"""Trainable connectors that some distillation losses need beside the student.

These small Flax Linen modules map student features into the space a loss compares
with the teacher. They are trained with the student (their parameters live next to
the student's in the training state) and are dropped from the deployed student:

* :class:`ConvConnector` — FitNets' regressor: a 1×1 or 3×3 convolution from the
  student's channels to the teacher's (``kdjax.losses.hint_loss``). The CIFAR hint
  student's 16→32 regressor is ``ConvConnector(32, kernel_size=3)``.
* :class:`LinearConnector` — the same for flat features (``[batch, ...]`` → ``[batch, F]``).
* :class:`EmbedHead` — CRD's embedding head: flatten, linear, L2-normalise
  (``kdjax.losses.crd_loss``; one head for the student, one for the teacher's features).
* :class:`VIDRegressor` — VID's per-channel regressor (three 1×1 convolutions) and its
  learnable log-variance (``kdjax.losses.vid_loss``).

RepDistiller's (Tian et al., ICLR 2020) trainable parts, layer for layer and initialised
as there (PyTorch's defaults unless the method sets its own); NHWC maps, and
BatchNorm with PyTorch's momentum 0.1 (Flax's ``momentum=0.9``) and epsilon 1e-5:

* :class:`ConvReg` — FitNets' regressor of RepDistiller's ``hint`` (conv, BN, ReLU).
* :class:`LinearEmbed` — the linear embedding of its ``correlation`` (CC).
* :class:`TorchConv2d`, :class:`TorchConvTranspose2d` and :func:`torch_batch_norm` —
  PyTorch's layers they are built from.

Factor transfer's ``Paraphraser`` and ``Translator`` and activation boundaries'
``ABConnectors`` are in :mod:`kdjax.models.repdistiller_connectors`.

Flax updates BatchNorm's running variance with the batch's biased variance, PyTorch
with the unbiased one (a factor ``m / (m − 1)``, ``m`` values per channel); outputs
agree in training and evaluation mode alike.

Example::

    connector = ConvConnector(teacher_channels, kernel_size=1)
    params = connector.init(key, student_map)
    loss = jnp.mean(hint_loss(connector.apply(params, student_map), teacher_map))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kdjax.models.layers import (
    Conv,
    Dense,
    general_conv2d,
    torch_bias_init,
    torch_kernel_init,
)

# RepDistiller's Embed divides by the plain norm; this floor only keeps a zero row finite.
_NORM_FLOOR = 1e-12


class ConvConnector(nn.Module):
    """A stride-1 ``kernel_size × kernel_size`` convolution with bias, 'SAME' padding,
    no activation (FitNets' regressor), NHWC in and out; initialised as PyTorch's
    ``nn.Conv2d``.

    Attributes:
      features: output channels (the teacher's).
      kernel_size: 1 or 3 (any odd size works).
    """

    features: int
    kernel_size: int = 1

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        if feature_map.ndim != 4:
            raise ValueError(
                f"ConvConnector input must be NHWC (4 axes), got shape {feature_map.shape}."
            )
        size = (self.kernel_size, self.kernel_size)
        return Conv(self.features, size, padding="SAME", name="conv")(feature_map)


class LinearConnector(nn.Module):
    """A linear map of the flattened features to ``features`` outputs (with bias)."""

    features: int

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        flat = features.reshape(features.shape[0], -1)
        return Dense(self.features, name="linear")(flat)


class EmbedHead(nn.Module):
    """CRD's embedding head: ``normalize(W · flatten(x) + b)``, unit-norm rows.

    Equals RepDistiller's ``Embed`` (``nn.Linear`` then ``x / ‖x‖``); a zero row stays
    zero instead of NaN.

    Attributes:
      features: embedding width (CRD: 128).
    """

    features: int = 128

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        embedding = LinearConnector(self.features, name="projection")(features)
        norm = jnp.linalg.norm(embedding, axis=-1, keepdims=True)
        return embedding / jnp.maximum(norm, _NORM_FLOOR)


class VIDRegressor(nn.Module):
    """VID's regressor: 1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv (no biases), and
    the per-channel ``log_scale`` whose softplus (+ eps) is the predicted variance.

    Returns ``(mean, log_scale)`` to pass to ``kdjax.losses.vid_loss(mean, t_feat,
    log_scale, eps=eps)``. ``log_scale`` starts at ``log(exp(init_variance − eps) − 1)``,
    so the initial variance is ``init_variance``; this matches RepDistiller's
    ``VIDLoss``. Works on NHWC maps and on ``[batch, C]`` vectors (a 1×1 convolution
    acts on the last axis only).

    Attributes:
      features: teacher channels (output width).
      hidden: width of the two hidden layers (RepDistiller uses the teacher's width);
        None means ``features``.
      init_variance: initial variance (RepDistiller: 5.0).
      eps: the variance floor used by ``vid_loss`` (RepDistiller: 1e-5).
    """

    features: int
    hidden: int | None = None
    init_variance: float = 5.0
    eps: float = 1e-5

    @nn.compact
    def __call__(self, student_features: jax.Array) -> tuple[jax.Array, jax.Array]:
        hidden = self.hidden or self.features
        x = student_features
        for index, width in enumerate((hidden, hidden, self.features)):
            kernel = self.param(f"conv{index}", torch_kernel_init(), (x.shape[-1], width))
            x = x @ kernel.astype(x.dtype)
            if index < 2:
                x = nn.relu(x)
        initial = math.log(math.expm1(self.init_variance - self.eps))
        log_scale = self.param(
            "log_scale", nn.initializers.constant(initial), (self.features,), jnp.float32
        )
        return x, log_scale


def torch_batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """PyTorch's ``nn.BatchNorm2d`` defaults: momentum 0.1, epsilon 1e-5, scale 1, offset 0."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class TorchConv2d(nn.Module):
    """PyTorch's ``nn.Conv2d(in, features, kernel_size, stride, padding, bias=use_bias)``
    on NHWC maps. The kernel is ``[kh, kw, in, out]`` (PyTorch's weight permuted
    ``(2, 3, 1, 0)``), initialised as PyTorch's ``U(±1/sqrt(in·kh·kw))`` unless
    ``kernel_init`` is given; the bias too."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        height, width = self.kernel_size
        kernel = self.param(
            "kernel",
            self.kernel_init or torch_kernel_init(),
            (height, width, x.shape[-1], self.features),
        )
        pad = (self.padding, self.padding)
        y = general_conv2d(x, kernel.astype(x.dtype), (pad, pad), self.stride)
        if self.use_bias:
            fan_in = x.shape[-1] * height * width
            y = y + self.param("bias", torch_bias_init(fan_in), (self.features,)).astype(x.dtype)
        return y


class TorchConvTranspose2d(nn.Module):
    """PyTorch's ``nn.ConvTranspose2d(in, features, kernel_size, stride, padding)`` on
    NHWC maps (output size ``(H − 1)·stride − 2·padding + kernel_size``), written as a
    convolution of the ``stride``-dilated input, padded by ``kernel_size − 1 − padding``,
    with the spatially flipped kernel.

    The kernel is ``[kh, kw, in, out]``: PyTorch's weight ``[in, out, kh, kw]`` permuted
    ``(2, 3, 0, 1)``. PyTorch reads the fan-in off its weight's second axis, the
    *output* channels, so weight and bias start at ``U(±1/sqrt(out·kh·kw))``.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = self.kernel_size
        fan_in = self.features * size * size
        kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
        kernel = self.param("kernel", kernel_init, (size, size, x.shape[-1], self.features))
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        edge = (size - 1 - self.padding,) * 2
        y = lax.conv_general_dilated(
            x,
            jnp.flip(kernel, (0, 1)).astype(x.dtype),
            (1, 1),
            (edge, edge),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(x.dtype)


def _regressor_layer(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """RepDistiller's choice of ``ConvReg``'s layer from the heights (module ``conv``)."""
    _, height, width, _ = student_shape
    t_height, t_width, t_channels = teacher_shape
    if height == 2 * t_height:
        return TorchConv2d(t_channels, (3, 3), stride=2, padding=1, name="conv")
    if height * 2 == t_height:
        return TorchConvTranspose2d(t_channels, 4, stride=2, padding=1, name="conv")
    if height >= t_height and width >= t_width:
        size = (1 + height - t_height, 1 + width - t_width)
        return TorchConv2d(t_channels, size, name="conv")
    raise ValueError(
        f"ConvReg maps a student map of height H to a teacher map of height H/2 (3×3 "
        f"stride-2 conv), 2H (4×4 stride-2 transposed conv) or at most H and width at "
        f"most W (valid conv); got student H×W = {height}×{width}, teacher "
        f"{t_height}×{t_width}."
    )


class ConvReg(nn.Module):
    """FitNets' regressor as RepDistiller's ``models/util.py::ConvReg`` (Romero et al.,
    "FitNets: Hints for Thin Deep Nets", ICLR 2015): a convolution from the student's map
    ``[N, H, W, C]`` to the teacher's ``(H_t, W_t, C_t)``, BatchNorm, ReLU.

    The convolution, chosen as there from the heights: ``H = 2·H_t``: 3×3, stride 2,
    padding 1; ``2·H = H_t``: 4×4 transposed, stride 2, padding 1; ``H >= H_t``: an
    unpadded ``(1 + H − H_t) × (1 + W − W_t)`` kernel (1×1 for equal sizes). All have
    a bias and PyTorch's default initialisation. Other sizes raise ``ValueError``
    (where RepDistiller's ``raise NotImplemented(...)`` fails with a ``TypeError``), as
    does a width the layer does not carry to ``W_t`` (which RepDistiller leaves to fail
    in the loss).
    ``use_relu=False`` is RepDistiller's AB connector (``models/util.py::Connector``).

    Attributes:
      teacher_shape: ``(H_t, W_t, C_t)``; a leading batch axis is ignored.
      use_relu: end with ReLU (RepDistiller's default, True).

    ``__call__(student_map, *, train)``: ``train`` normalises with the batch's statistics
    and updates the running averages (collection ``"batch_stats"``).
    """

    teacher_shape: tuple[int, ...]
    use_relu: bool = True

    @nn.compact
    def __call__(self, student_map: jax.Array, *, train: bool) -> jax.Array:
        if student_map.ndim != 4:
            raise ValueError(f"ConvReg input must be NHWC (4 axes), got {student_map.shape}.")
        teacher_shape = tuple(self.teacher_shape)[-3:]
        x = _regressor_layer(student_map.shape, teacher_shape)(student_map)
        if x.shape[1:3] != teacher_shape[:2]:
            raise ValueError(
                f"ConvReg carries the student map {student_map.shape[1:3]} to "
                f"{x.shape[1:3]}, not to the teacher's {teacher_shape[:2]}."
            )
        x = torch_batch_norm(train, "bn")(x)
        return nn.relu(x) if self.use_relu else x


class LinearEmbed(nn.Module):
    """RepDistiller's ``models/util.py::LinearEmbed``, the embedding its CC
    (``correlation``; Peng et al., "Correlation Congruence for Knowledge Distillation",
    ICCV 2019) applies to teacher and student features: flatten, ``nn.Linear(in, dim)``
    (PyTorch's initialisation), no normalisation. RepDistiller feeds the pooled vector
    ``[N, C]``; a map is flattened in NHWC order (PyTorch's NCHW order up to a
    permutation of the weight's rows)."""

    dim: int = 128

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return Dense(self.dim, name="linear")(features.reshape(features.shape[0], -1))

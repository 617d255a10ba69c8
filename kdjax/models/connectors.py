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

Example::

    connector = ConvConnector(teacher_channels, kernel_size=1)
    params = connector.init(key, student_map)
    loss = jnp.mean(hint_loss(connector.apply(params, student_map), teacher_map))
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import Conv, Dense, torch_kernel_init

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

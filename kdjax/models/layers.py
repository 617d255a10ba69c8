"""Layers whose XLA default is slow on some backend, rewritten where it matters.

:class:`Conv` is a drop-in for ``flax.linen.Conv`` (stride 1; same parameter
names, shapes and initialisers, so checkpoints are interchangeable). On the CPU
it computes the gradient with respect to the kernel as a sum of one matrix
product per kernel offset instead of XLA's generic convolution, which on this
path runs several times slower than the forward pass (see BUILD_NOTES.md,
"Performance"). The forward pass and the input gradient stay XLA convolutions.
On GPU/TPU, where cuDNN and the TPU compiler handle the kernel gradient well,
the plain XLA convolution is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _with_backward(forward, backward, static_args: int):
    """``forward(inputs, kernel, *static)`` whose gradient is ``backward(*static,
    (inputs, kernel), output_grad) -> (inputs_grad, kernel_grad)`` instead of XLA's
    (the ``static`` arguments are hashable settings: padding, stride)."""
    wrapped = jax.custom_vjp(forward, nondiff_argnums=tuple(range(2, 2 + static_args)))
    wrapped.defvjp(lambda x, k, *static: (forward(x, k, *static), (x, k)), backward)
    return wrapped


def xla_conv(images: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """XLA's own stride-1 NHWC convolution (the reference :func:`conv2d` is timed against)."""
    return lax.conv_general_dilated(images, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)


def _conv_backward(padding, residuals, output_grad):
    images, kernel = residuals
    kernel_h, kernel_w = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    # Input gradient: a stride-1 convolution of the output gradient with the
    # spatially flipped kernel, its in/out channels swapped.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    images_grad = lax.conv_general_dilated(
        output_grad,
        flipped,
        (1, 1),
        ((kernel_h - 1 - top, kernel_h - 1 - bottom), (kernel_w - 1 - left, kernel_w - 1 - right)),
        dimension_numbers=_DIMENSIONS,
    )
    # Kernel gradient: a forward convolution of the padded input with the output
    # gradient as its kernel, channels in the batch's place and examples as the
    # contracted features; out come [in channels, kh, kw, out channels].
    padded = jnp.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kernel_grad = lax.conv_general_dilated(
        padded.transpose(3, 1, 2, 0),
        output_grad.transpose(1, 2, 0, 3),
        (1, 1),
        "VALID",
        dimension_numbers=_DIMENSIONS,
    ).transpose(1, 2, 0, 3)
    return images_grad.astype(images.dtype), kernel_grad.astype(kernel.dtype)


_conv_cpu_grad = _with_backward(xla_conv, _conv_backward, 1)


def conv2d(images: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 2-D convolution, NHWC images and HWIO kernel, explicit padding.

    The backend is read at trace time: on the CPU the gradients are written out as
    forward convolutions (XLA's own kernel gradient runs 13–16× slower inside a
    training loop there; docs/performance.md, "Convolutions on the CPU").
    """
    if jax.default_backend() == "cpu":
        return _conv_cpu_grad(images, kernel, padding)
    return xla_conv(images, kernel, padding)


def strided_conv2d(
    images: jax.Array, kernel: jax.Array, padding: Padding, stride: int
) -> jax.Array:
    """2-D convolution with a ``stride`` (NHWC images, HWIO kernel, explicit padding as
    a tuple of pairs): PyTorch's ``Conv2d(stride=stride, padding=...)``, or
    TensorFlow's with its "SAME" padding written out (``lax.padtype_to_pads``).

    The forward pass is XLA's strided convolution. On the CPU the gradients are those
    of an equal stride-1 :func:`conv2d` (which stay fast inside ``lax.map``, where
    XLA's own convolution gradient measured 30–80× slower per layer): a 1×1 kernel
    without padding reads every ``stride``-th row and column; a larger kernel runs on
    the space-to-depth rearranged input (``stride × stride`` blocks as channels) with
    the kernel rearranged to match and zero-padded to a multiple of the stride (for a
    3×3 kernel at stride 2, 16/9 of the strided arithmetic).
    """
    if stride == 1:
        return conv2d(images, kernel, padding)
    if jax.default_backend() != "cpu":
        return xla_strided_conv(images, kernel, padding, stride)
    if kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
        return conv2d(images[:, ::stride, ::stride], kernel, padding)
    return _strided_conv_matmul_grad(images, kernel, padding, stride)


def xla_strided_conv(images, kernel, padding, stride) -> jax.Array:
    return lax.conv_general_dilated(
        images, kernel, (stride, stride), padding, dimension_numbers=_DIMENSIONS
    )


def _strided_backward(padding, stride, residuals, output_grad):
    images, kernel = residuals
    _, pullback = jax.vjp(lambda x, k: _space_to_depth_conv(x, k, padding, stride), images, kernel)
    return pullback(output_grad)


_strided_conv_matmul_grad = _with_backward(xla_strided_conv, _strided_backward, 2)


def _space_to_depth_conv(images, kernel, padding, stride):
    """The strided convolution as a stride-1 one: output ``[i, j]`` reads padded rows
    ``stride·i + a`` (``a < k``); writing ``a = stride·b + r`` makes it a ``⌈k/s⌉``-tap
    convolution over blocks ``b`` whose channels are the offsets ``r`` in the block."""
    (top, bottom), (left, right) = padding
    kernel_h, kernel_w, in_channels, out_channels = kernel.shape
    padded = jnp.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (padded.shape[1] - kernel_h) // stride + 1
    out_w = (padded.shape[2] - kernel_w) // stride + 1
    blocks_h, blocks_w = -(-kernel_h // stride), -(-kernel_w // stride)
    rows, cols = (out_h + blocks_h - 1) * stride, (out_w + blocks_w - 1) * stride
    # Exactly the rows and columns the output reads, zeros where the padding ran out.
    padded = padded[:, :rows, :cols]
    padded = jnp.pad(
        padded, ((0, 0), (0, rows - padded.shape[1]), (0, cols - padded.shape[2]), (0, 0))
    )
    batch = padded.shape[0]
    blocks = padded.reshape(batch, rows // stride, stride, cols // stride, stride, in_channels)
    blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, rows // stride, cols // stride, stride * stride * in_channels
    )
    kernel = jnp.pad(
        kernel,
        ((0, blocks_h * stride - kernel_h), (0, blocks_w * stride - kernel_w), (0, 0), (0, 0)),
    )
    kernel = kernel.reshape(blocks_h, stride, blocks_w, stride, in_channels, out_channels)
    kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(
        blocks_h, blocks_w, stride * stride * in_channels, out_channels
    )
    return conv2d(blocks, kernel, ((0, 0), (0, 0)))


# Output maps of at most this many positions use the patch matrix (below) on the CPU.
SMALL_MAP_POSITIONS = 64


def general_conv2d(
    images: jax.Array, kernel: jax.Array, padding: Padding, stride: int = 1
) -> jax.Array:
    """2-D convolution of any kernel size and stride (NHWC images, HWIO kernel,
    explicit padding), each case on the CPU in the form that runs fastest there:

    - a 1×1 kernel: a matrix product over the pixels (every ``stride``-th row and
      column) — XLA's CPU convolution ran 1.8–5× slower than the product on
      ResNet50V2's 1×1 layers;
    - an output map of at most :data:`SMALL_MAP_POSITIONS` positions: one matrix
      product of the patch matrix (each output position's window, the taps side by
      side) with the kernel, leaving out the taps that read padding only — on the
      2×2 and 1×1 maps of a 32×32 ResNet50V2 XLA's forward convolution ran 9–20×
      slower than the product (``benchmarks.backbone_convs``);
    - otherwise :func:`strided_conv2d` (XLA's forward, gradients written out as
      convolutions).

    JAX differentiates the first two itself (matrix products and slices). On GPU/TPU
    it is XLA's convolution throughout.
    """
    if jax.default_backend() != "cpu":
        return xla_strided_conv(images, kernel, padding, stride)
    kernel_h, kernel_w, in_channels, out_channels = kernel.shape
    (top, bottom), (left, right) = padding
    out_h = (images.shape[1] + top + bottom - kernel_h) // stride + 1
    out_w = (images.shape[2] + left + right - kernel_w) // stride + 1
    if (kernel_h, kernel_w) == (1, 1) and padding == ((0, 0), (0, 0)):
        pixels = images[:, ::stride, ::stride]
        return (pixels.reshape(-1, in_channels) @ kernel[0, 0]).reshape(
            *pixels.shape[:3], out_channels
        )
    if out_h * out_w > SMALL_MAP_POSITIONS:
        return strided_conv2d(images, kernel, padding, stride)
    padded = jnp.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))

    def reads_data(offset, before, size, count):
        # Does the tap at this offset read any row (column) that is not padding?
        return any(before <= offset + stride * i < before + size for i in range(count))

    taps = [
        (i, j)
        for i in range(kernel_h)
        if reads_data(i, top, images.shape[1], out_h)
        for j in range(kernel_w)
        if reads_data(j, left, images.shape[2], out_w)
    ]
    patches = jnp.concatenate(
        [
            padded[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            for i, j in taps
        ],
        axis=-1,
    )
    weights = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
    return patches @ weights


def _explicit_padding(padding: int | str, kernel_size: Sequence[int]) -> Padding:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for size in kernel_size:
            total = size - 1
            pads.append((total // 2, total - total // 2))
        return (pads[0], pads[1])
    raise ValueError(f"padding must be an int, 'SAME' or 'VALID', got {padding!r}.")


def torch_kernel_init() -> nn.initializers.Initializer:
    """PyTorch's default weight init for ``nn.Linear``/``nn.Conv2d``
    (``kaiming_uniform_(a=sqrt(5))``): ``U(−1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init: ``U(−1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


_DIMENSIONS_1D = ("NWC", "WIO", "NWC")


def xla_conv1d(signals: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """XLA's own unpadded 1-D convolution, ``[B, L, C]`` signals, ``[K, C, D]`` kernel."""
    return lax.conv_general_dilated(
        signals, kernel, (stride,), "VALID", dimension_numbers=_DIMENSIONS_1D
    )


def _conv1d_backward(stride, residuals, output_grad):
    signals, kernel = residuals
    taps, in_channels, out_channels = kernel.shape
    length, out_length = signals.shape[1], output_grad.shape[1]
    # Input gradient: the output gradient, dilated by the stride, correlated with the
    # flipped kernel (channels swapped); the tail the strided forward never read
    # gets zeros.
    unread = length - (stride * (out_length - 1) + taps)
    signals_grad = lax.conv_general_dilated(
        output_grad,
        jnp.flip(kernel, 0).transpose(0, 2, 1),
        (1,),
        [(taps - 1, taps - 1 + unread)],
        lhs_dilation=(stride,),
        dimension_numbers=_DIMENSIONS_1D,
    )
    # Kernel gradient: the input windows each output reads, side by side (im2col),
    # times the output gradient: one matrix product contracted over batch and time.
    span = stride * (out_length - 1) + 1
    windows = jnp.concatenate(
        [signals[:, tap : tap + span : stride] for tap in range(taps)], axis=2
    ).reshape(-1, taps * in_channels)
    kernel_grad = windows.T @ output_grad.reshape(-1, out_channels)
    return (
        signals_grad.astype(signals.dtype),
        kernel_grad.reshape(taps, in_channels, out_channels).astype(kernel.dtype),
    )


_conv1d_matmul_grad = _with_backward(xla_conv1d, _conv1d_backward, 1)


def conv1d(
    signals: jax.Array, kernel: jax.Array, padding: tuple[int, int] = (0, 0), stride: int = 1
) -> jax.Array:
    """1-D convolution: ``[B, L, C]`` signals, ``[K, C, D]`` kernel, explicit
    ``(left, right)`` zero padding, a ``stride`` (PyTorch's ``Conv1d``; output length
    ``floor((L + left + right − K) / stride) + 1``).

    XLA's own 1-D convolution forward. On the CPU the gradients are written out: the
    input gradient a (dilated) convolution, the kernel gradient one matrix product
    over the input windows. XLA's own kernel gradient, as fast alone, took about
    100× longer inside ``lax.map`` (how fold populations train on the CPU), and the
    former path (a 2-D convolution over a width-1 view) 1.5–2× longer than this
    one (``benchmarks.conv1d_paths``; BUILD_NOTES, "1-D convolutions").
    """
    if padding != (0, 0):
        signals = jnp.pad(signals, ((0, 0), tuple(padding), (0, 0)))
    if jax.default_backend() == "cpu":
        return _conv1d_matmul_grad(signals, kernel, stride)
    return xla_conv1d(signals, kernel, stride)


class Dense(nn.Module):
    """A dense layer, parameters named as ``nn.Dense``'s, initialised as PyTorch's
    ``nn.Linear`` (the networks of the PyTorch notebooks and tutorial are PyTorch
    models; their reported accuracies were reached from that initialisation)."""

    features: int

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        fan_in = inputs.shape[-1]
        kernel = self.param("kernel", torch_kernel_init(), (fan_in, self.features))
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        return inputs @ kernel.astype(inputs.dtype) + bias.astype(inputs.dtype)


class Conv(nn.Module):
    """Stride-1 2-D convolution with bias; parameters named and shaped as ``nn.Conv``'s,
    initialised as PyTorch's ``nn.Conv2d``."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: int | str = "SAME"

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        in_channels = images.shape[-1]
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        kernel = self.param(
            "kernel", torch_kernel_init(), (*self.kernel_size, in_channels, self.features)
        )
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        padding = _explicit_padding(self.padding, self.kernel_size)
        return conv2d(images, kernel.astype(images.dtype), padding) + bias.astype(images.dtype)


def max_pool(images: jax.Array, window: int = 2) -> jax.Array:
    """Non-overlapping ``window×window`` max-pooling (stride = window), NHWC.

    Written as a reshape and a max so its gradient is a cheap mask: XLA's
    ``reduce_window`` gradient (select-and-scatter) costs about 7× more on the
    CPU. Where an input size is not a multiple of ``window`` the trailing
    rows/columns are dropped, as PyTorch's ``max_pool2d`` (floor mode) does.
    Gradients differ from PyTorch's only for ties inside a window, which it
    breaks by position and JAX splits evenly.
    """
    batch, height, width, channels = images.shape
    height, width = height // window * window, width // window * window
    images = images[:, :height, :width, :]
    blocks = images.reshape(batch, height // window, window, width // window, window, channels)
    return blocks.max(axis=(2, 4))

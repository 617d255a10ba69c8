"""ImageNet backbones as Flax Linen modules, layer for layer the Keras applications.

:class:`ResNet50V2` and :class:`MobileNetV2` reproduce ``keras.applications.ResNet50V2``
and ``keras.applications.MobileNetV2(alpha=1.0)`` with ``include_top=False``, then add
global average pooling and a fresh dense head of ``num_classes`` (the TensorFlow
notebook's MHIST models). Every Flax submodule carries the Keras layer's name
(``conv4_block6_2_conv``, ``block_13_depthwise_BN``), all at the top level of the
parameter tree, so importing Keras weights (:mod:`kdjax.models.pretrained`) is a rename,
and layer-name patterns select layers to freeze (:mod:`kdjax.models.freezing`). The head
is ``head``.

Like every kdjax model, a backbone maps ``[B, H, W, 3]`` float images to
``{"logits", "features", "feature_map"}``: ``features`` is the pooled vector,
``feature_map`` the last convolutional map. Inputs are expected already scaled as
Keras scales them for both networks, ``x / 127.5 − 1`` (:func:`keras_preprocess`).
Any input size ≥ 32 works.

BatchNorm layers use Keras' epsilon and momentum per network. A BatchNorm layer
whose name the ``trainable`` selection (a :class:`~kdjax.models.freezing.LayerSelection` or
its tuple of patterns) excludes runs on its running averages even
with ``train=True`` and never updates them — what Keras does for a layer with
``trainable=False``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.freezing import ALL_LAYERS, LayerSelection, as_selection
from kdjax.models.layers import general_conv2d
from kdjax.models.taps import INTERMEDIATES

Outputs = dict[str, jax.Array]
# Keras' default initialisers: glorot-uniform kernels, zero biases.
_KERNEL_INIT = nn.initializers.glorot_uniform()

RESNET50V2_STAGES = (("conv2", 3), ("conv3", 4), ("conv4", 6), ("conv5", 3))
RESNET50V2_PARAMS_NOTOP = 23_564_800  # keras.applications.ResNet50V2(include_top=False)
MOBILENETV2_PARAMS_NOTOP = 2_257_984  # keras.applications.MobileNetV2(include_top=False)
# MobileNetV2 inverted residual blocks: (output channels, stride, expansion); block 0
# is Keras' "expanded_conv".
MOBILENETV2_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6),
    (24, 1, 6),
    (32, 2, 6),
    (32, 1, 6),
    (32, 1, 6),
    (64, 2, 6),
    (64, 1, 6),
    (64, 1, 6),
    (64, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (96, 1, 6),
    (160, 2, 6),
    (160, 1, 6),
    (160, 1, 6),
    (320, 1, 6),
)
# The last block at each resolution (before a stride-2 block, and the last), sown as
# stage1…stage5: {block index: stage number}.
MOBILENETV2_STAGE_ENDS = {
    block: number
    for number, block in enumerate(
        (b for b in range(len(MOBILENETV2_BLOCKS))
         if b + 1 == len(MOBILENETV2_BLOCKS) or MOBILENETV2_BLOCKS[b + 1][1] == 2),
        start=1,
    )
}  # fmt: skip


def keras_preprocess(images: jax.Array) -> jax.Array:
    """Keras' input scaling for ResNet50V2 and MobileNetV2: ``x / 127.5 − 1``.

    ``images`` are raw pixel values in ``[0, 255]`` (``uint8`` or float); the result
    is float32 in ``[−1, 1]``.

    Example:
      >>> keras_preprocess(jnp.array([0, 255], jnp.uint8))
      Array([-1.,  1.], dtype=float32)
    """
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _pad(x: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Keras' ``ZeroPadding2D``: zeros, also before a max-pool (not −inf)."""
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def relu6(x: jax.Array) -> jax.Array:
    """Keras' ``ReLU(6.0)``: ``min(max(x, 0), 6)``."""
    return jnp.clip(x, 0.0, 6.0)


class KerasConv(nn.Module):
    """Keras' ``Conv2D`` (square kernel and stride; ``padding`` an int on every side,
    ``"SAME"`` as TensorFlow pads, or ``"VALID"``), parameters named, shaped and
    initialised as ``nn.Conv``'s (``kernel`` glorot-uniform, ``bias`` zeros), computed
    by :func:`kdjax.models.layers.general_conv2d`: on the CPU, matrix products for 1×1
    kernels and small maps, where XLA's convolution is slow."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: int | str = 0
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    def explicit_padding(self, spatial: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        """``((top, bottom), (left, right))`` for an input of ``spatial`` (H, W)."""
        if isinstance(self.padding, int):
            return ((self.padding, self.padding), (self.padding, self.padding))
        size, stride = (self.kernel_size,) * 2, (self.strides,) * 2
        return tuple(map(tuple, jax.lax.padtype_to_pads(spatial, size, stride, self.padding)))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = self.kernel_size
        kernel = self.param("kernel", _KERNEL_INIT, (size, size, x.shape[-1], self.features))
        pads = self.explicit_padding(x.shape[1:3])
        x = x.astype(self.dtype)
        y = general_conv2d(x, kernel.astype(self.dtype), pads, self.strides)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


class DepthwiseConv3x3(nn.Module):
    """Keras' ``DepthwiseConv2D(3, use_bias=False)``: ``y[h, w, c] = Σ_{i,j}
    x[s·h + i, s·w + j, c] · kernel[i, j, 0, c]`` over the (already padded, for
    ``padding="VALID"``) input, or with one pixel of zeros around it (``"SAME"``,
    stride 1 only). The kernel is ``[3, 3, 1, C]``, as ``nn.Conv`` with
    ``feature_group_count=C`` holds it (same initialiser, same values).

    On the CPU the nine taps are nine shifted multiply-adds: XLA's CPU grouped
    convolution is far slower (measured on 32×16×16×192: forward 0.082 s against
    0.005 s, forward + backward 0.30 s against 0.08 s). Elsewhere it is the grouped
    convolution, which cuDNN implements well.
    """

    stride: int = 1
    padding: str = "SAME"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", _KERNEL_INIT, (3, 3, 1, channels)).astype(self.dtype)
        x = x.astype(self.dtype)
        if self.padding == "SAME":
            if self.stride != 1:
                raise ValueError("DepthwiseConv3x3 pads itself only for stride 1.")
            x = _pad(x, ((1, 1), (1, 1)))
        if jax.default_backend() != "cpu":
            return jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
            )  # fmt: skip
        stride = self.stride
        rows = (x.shape[1] - 3) // stride + 1
        cols = (x.shape[2] - 3) // stride + 1
        taps = [
            x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
            * kernel[i, j, 0]
            for i in range(3)
            for j in range(3)
        ]
        return sum(taps[1:], taps[0])


def _head(features: jax.Array, num_classes: int, dtype) -> jax.Array:
    return nn.Dense(num_classes, kernel_init=_KERNEL_INIT, dtype=dtype, name="head")(features)


class ResNet50V2(nn.Module):
    """Keras' ResNet50V2 (pre-activation ResNet, He et al. 2016) without its top,
    plus global average pooling and a dense head.

    Stem: 7×7/2 conv (``conv1_conv``, with bias), 3×3/2 max-pool on zero padding.
    Stages ``conv2``…``conv5`` (sown as ``stage1``…``stage4``, :mod:`kdjax.models.taps`)
    of 3, 4, 6, 3 bottleneck blocks (64, 128, 256, 512
    filters, ×4 out); each block is BN-ReLU (``_preact_bn``), 1×1 conv, BN-ReLU,
    3×3 conv, BN-ReLU, 1×1 conv with bias, plus the shortcut (a 1×1 conv with bias
    in each stage's first block, else the identity). The last block of stages 2–4
    has stride 2 (in its 3×3 conv and a 1×1 max-pool shortcut). ``post_bn`` and a
    ReLU end the backbone: 2048 features. BN epsilon 1.001e-5, momentum 0.99.

    Parameters (``params`` + ``batch_stats``): 23,564,800 without the head, the
    count of ``keras.applications.ResNet50V2(include_top=False)``; the head adds
    ``2048·num_classes + num_classes``.
    """

    num_classes: int = 2
    # A LayerSelection or its patterns (a tuple: JSON-friendly, for RunSpec.model_settings).
    trainable: LayerSelection | tuple[str, ...] = ALL_LAYERS.patterns
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        def conv(x, features, kernel, name, *, stride=1, bias=True, padding=0):
            return KerasConv(features, kernel, stride, padding, bias, self.dtype, name=name)(x)

        trainable = as_selection(self.trainable)

        def batch_norm(x, name):
            frozen = not train or not trainable.contains(name)
            return nn.BatchNorm(
                use_running_average=frozen,
                momentum=0.99,
                epsilon=1.001e-5,
                dtype=self.dtype,
                name=name,
            )(x)

        def block(x, filters, name, *, stride, conv_shortcut):
            preact = nn.relu(batch_norm(x, f"{name}_preact_bn"))
            y = conv(preact, filters, 1, f"{name}_1_conv", bias=False)
            y = nn.relu(batch_norm(y, f"{name}_1_bn"))
            y = conv(y, filters, 3, f"{name}_2_conv", stride=stride, bias=False, padding=1)
            y = nn.relu(batch_norm(y, f"{name}_2_bn"))
            # The shortcut is called here, not first, because Keras lists its layers
            # in this order, and legacy h5 files are loaded by Keras in layer order.
            if conv_shortcut:
                shortcut = conv(preact, 4 * filters, 1, f"{name}_0_conv", stride=stride)
            else:
                shortcut = x[:, ::stride, ::stride, :]  # Keras' MaxPooling2D(1, stride)
            return shortcut + conv(y, 4 * filters, 1, f"{name}_3_conv")

        x = conv(images.astype(self.dtype), 64, 7, "conv1_conv", stride=2, padding=3)
        x = nn.max_pool(_pad(x, ((1, 1), (1, 1))), (3, 3), strides=(2, 2))
        stages = zip(RESNET50V2_STAGES, (64, 128, 256, 512), strict=True)
        for number, ((stage, count), filters) in enumerate(stages, start=1):
            for index in range(1, count + 1):
                last_of_strided_stage = index == count and stage != "conv5"
                x = block(
                    x,
                    filters,
                    f"{stage}_block{index}",
                    stride=2 if last_of_strided_stage else 1,
                    conv_shortcut=index == 1,
                )
            self.sow(INTERMEDIATES, f"stage{number}", x)  # Keras' conv<number + 1> stage
        feature_map = nn.relu(batch_norm(x, "post_bn"))
        features = feature_map.mean(axis=(1, 2))
        logits = _head(features, self.num_classes, self.dtype)
        return {"logits": logits, "features": features, "feature_map": feature_map}


def _correct_pad(size: int) -> tuple[int, int]:
    """Keras' ``correct_pad`` for a 3×3 stride-2 conv: (0, 1) on even sizes, (1, 1) on odd."""
    return (size % 2, 1)


class MobileNetV2(nn.Module):
    """Keras' MobileNetV2 (Sandler et al. 2018), ``alpha=1.0``, without its top, plus
    global average pooling and a dense head.

    Stem: 3×3/2 conv to 32 channels (``Conv1``, SAME padding), BN, ReLU6. Then 17
    inverted residual blocks (``expanded_conv``, ``block_1``…``block_16``): 1×1
    expansion (×6, none in block 0), BN, ReLU6; 3×3 depthwise conv (stride 2 in blocks
    1, 3, 6, 13 on Keras' asymmetric zero padding), BN, ReLU6; linear 1×1 projection,
    BN; an identity shortcut where stride is 1 and channels match (the last block at
    each resolution is sown as ``stage1``…``stage5``, :mod:`kdjax.models.taps`). ``Conv_1``: 1×1
    conv to 1280, BN, ReLU6. No conv has a bias. BN epsilon 1e-3, momentum 0.999.

    Parameters (``params`` + ``batch_stats``): 2,257,984 without the head, the count
    of ``keras.applications.MobileNetV2(alpha=1.0, include_top=False)``; the head
    adds ``1280·num_classes + num_classes``.
    """

    num_classes: int = 2
    # A LayerSelection or its patterns (a tuple: JSON-friendly, for RunSpec.model_settings).
    trainable: LayerSelection | tuple[str, ...] = ALL_LAYERS.patterns
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> Outputs:
        def conv(x, features, kernel, name, *, stride=1, padding="SAME"):
            return KerasConv(features, kernel, stride, padding, False, self.dtype, name=name)(x)

        trainable = as_selection(self.trainable)

        def batch_norm(x, name):
            frozen = not train or not trainable.contains(name)
            return nn.BatchNorm(
                use_running_average=frozen,
                momentum=0.999,
                epsilon=1e-3,
                dtype=self.dtype,
                name=name,
            )(x)

        x = conv(images.astype(self.dtype), 32, 3, "Conv1", stride=2)
        x = relu6(batch_norm(x, "bn_Conv1"))
        for block_id, (filters, stride, expansion) in enumerate(MOBILENETV2_BLOCKS):
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            inputs, channels = x, x.shape[-1]
            if block_id:
                x = conv(x, expansion * channels, 1, f"{prefix}expand")
                x = relu6(batch_norm(x, f"{prefix}expand_BN"))
            if stride == 2:
                pads = (_correct_pad(x.shape[1]), _correct_pad(x.shape[2]))
                depthwise = DepthwiseConv3x3(2, "VALID", self.dtype, name=f"{prefix}depthwise")
                x = depthwise(_pad(x, pads))
            else:
                x = DepthwiseConv3x3(1, "SAME", self.dtype, name=f"{prefix}depthwise")(x)
            x = relu6(batch_norm(x, f"{prefix}depthwise_BN"))
            x = batch_norm(conv(x, filters, 1, f"{prefix}project"), f"{prefix}project_BN")
            if stride == 1 and channels == filters:
                x = inputs + x
            if block_id in MOBILENETV2_STAGE_ENDS:
                self.sow(INTERMEDIATES, f"stage{MOBILENETV2_STAGE_ENDS[block_id]}", x)
        x = conv(x, 1280, 1, "Conv_1")
        feature_map = relu6(batch_norm(x, "Conv_1_bn"))
        features = feature_map.mean(axis=(1, 2))
        logits = _head(features, self.num_classes, self.dtype)
        return {"logits": logits, "features": features, "feature_map": feature_map}


# Blocks, first to last, as layer-name patterns (for freezing "all but the last N").
# ResNet50V2: the stem, the 16 bottleneck blocks, then post_bn. MobileNetV2: the stem,
# the 17 inverted residual blocks, then Conv_1.
BLOCKS: dict[str, tuple[tuple[str, ...], ...]] = {
    "resnet50v2": (
        ("conv1_*",),
        *(
            (f"{stage}_block{index}_*",)
            for stage, count in RESNET50V2_STAGES
            for index in range(1, count + 1)
        ),
        ("post_bn",),
    ),
    "mobilenetv2": (
        ("Conv1", "bn_Conv1"),
        ("expanded_conv_*",),
        *((f"block_{index}_*",) for index in range(1, len(MOBILENETV2_BLOCKS))),
        ("Conv_1", "Conv_1_bn"),
    ),
}
BACKBONES: dict[str, type[nn.Module]] = {"resnet50v2": ResNet50V2, "mobilenetv2": MobileNetV2}


def backbone(name: str, **kwargs) -> nn.Module:
    """The backbone called ``name`` (``"resnet50v2"`` or ``"mobilenetv2"``).

    Example:
      >>> model = backbone("mobilenetv2", num_classes=2)
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    return BACKBONES[name](**kwargs)


def trainable_last_blocks(name: str, count: int) -> LayerSelection:
    """The head plus the last ``count`` blocks of backbone ``name`` (see ``BLOCKS``).

    ``count=0`` trains the head alone (feature extraction); ``count=len(BLOCKS[name])``
    trains everything. E.g. ``trainable_last_blocks("resnet50v2", 2)`` trains
    ``conv5_block3_*``, ``post_bn`` and ``head``.
    """
    if name not in BLOCKS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BLOCKS)}.")
    blocks = BLOCKS[name]
    if not 0 <= count <= len(blocks):
        raise ValueError(f"count must be in [0, {len(blocks)}] for {name}, got {count}.")
    patterns = [pattern for block in blocks[len(blocks) - count :] for pattern in block]
    return LayerSelection(("head", *patterns))

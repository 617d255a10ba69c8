"""ResNet50V2 and MobileNetV2 (alpha 1.0) in plain ``torch.nn``, layer for layer
:mod:`kdjax.models.backbones` (Keras' applications), for the speed benchmark
(``benchmarks.backbone_speed``): torchvision cannot be installed beside this torch.

Same layers, shapes and parameter counts as the Flax modules (the benchmark asserts
the counts), same padding arithmetic (Keras' zero padding, TF-style SAME for the
stride-2 stem of MobileNetV2), NCHW layout. Modules carry the Keras layer names
(``conv5_block3_3_conv``), so the benchmark freezes the same layers by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from kdjax.models.backbones import MOBILENETV2_BLOCKS, RESNET50V2_STAGES


def _bn(channels: int, *, epsilon: float, momentum: float) -> nn.BatchNorm2d:
    # Keras' momentum m keeps m of the running average; torch's keeps 1 − momentum.
    return nn.BatchNorm2d(channels, eps=epsilon, momentum=1.0 - momentum)


class ResNet50V2(nn.Module):
    """Pre-activation ResNet-50 (Keras' ResNet50V2 without top) + GAP + linear head."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        bn = {"epsilon": 1.001e-5, "momentum": 0.99}
        self.layers = nn.ModuleDict()
        self.layers["conv1_conv"] = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.blocks: list[tuple[str, int, bool]] = []
        channels = 64
        for (stage, count), filters in zip(RESNET50V2_STAGES, (64, 128, 256, 512), strict=True):
            for index in range(1, count + 1):
                name = f"{stage}_block{index}"
                stride = 2 if index == count and stage != "conv5" else 1
                self.layers[f"{name}_preact_bn"] = _bn(channels, **bn)
                if index == 1:
                    self.layers[f"{name}_0_conv"] = nn.Conv2d(channels, 4 * filters, 1)
                self.layers[f"{name}_1_conv"] = nn.Conv2d(channels, filters, 1, bias=False)
                self.layers[f"{name}_1_bn"] = _bn(filters, **bn)
                self.layers[f"{name}_2_conv"] = nn.Conv2d(
                    filters, filters, 3, stride=stride, padding=1, bias=False
                )
                self.layers[f"{name}_2_bn"] = _bn(filters, **bn)
                self.layers[f"{name}_3_conv"] = nn.Conv2d(filters, 4 * filters, 1)
                self.blocks.append((name, stride, index == 1))
                channels = 4 * filters
        self.layers["post_bn"] = _bn(channels, **bn)
        self.layers["head"] = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers
        x = layer["conv1_conv"](x)
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # Keras: zero padding
        for name, stride, conv_shortcut in self.blocks:
            preact = F.relu(layer[f"{name}_preact_bn"](x))
            if conv_shortcut:
                shortcut = layer[f"{name}_0_conv"](preact)
            else:
                shortcut = x[:, :, ::stride, ::stride]
            y = F.relu(layer[f"{name}_1_bn"](layer[f"{name}_1_conv"](preact)))
            y = F.relu(layer[f"{name}_2_bn"](layer[f"{name}_2_conv"](y)))
            x = shortcut + layer[f"{name}_3_conv"](y)
        x = F.relu(layer["post_bn"](x))
        return layer["head"](x.mean(dim=(2, 3)))


def _same_stride2_pad(size: int) -> tuple[int, int]:
    """TF-style SAME padding of a 3×3 stride-2 conv: (0, 1) on even sizes, (1, 1) on odd."""
    return (size % 2, 1)


class MobileNetV2(nn.Module):
    """Keras' MobileNetV2 (alpha 1.0) without top + GAP + linear head."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        bn = {"epsilon": 1e-3, "momentum": 0.999}
        self.layers = nn.ModuleDict()
        self.layers["Conv1"] = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self.layers["bn_Conv1"] = _bn(32, **bn)
        self.blocks: list[tuple[str, int, int, int, bool]] = []
        channels = 32
        for block_id, (filters, stride, expansion) in enumerate(MOBILENETV2_BLOCKS):
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            hidden = expansion * channels
            if block_id:
                self.layers[f"{prefix}expand"] = nn.Conv2d(channels, hidden, 1, bias=False)
                self.layers[f"{prefix}expand_BN"] = _bn(hidden, **bn)
            self.layers[f"{prefix}depthwise"] = nn.Conv2d(
                hidden, hidden, 3, stride=stride, padding=0, groups=hidden, bias=False
            )
            self.layers[f"{prefix}depthwise_BN"] = _bn(hidden, **bn)
            self.layers[f"{prefix}project"] = nn.Conv2d(hidden, filters, 1, bias=False)
            self.layers[f"{prefix}project_BN"] = _bn(filters, **bn)
            residual = stride == 1 and channels == filters
            self.blocks.append((prefix, stride, block_id, filters, residual))
            channels = filters
        self.layers["Conv_1"] = nn.Conv2d(channels, 1280, 1, bias=False)
        self.layers["Conv_1_bn"] = _bn(1280, **bn)
        self.layers["head"] = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers
        # The stem's TF-style SAME and the blocks' correct_pad agree for 3×3 stride 2.
        pad_rows, pad_cols = _same_stride2_pad(x.shape[2]), _same_stride2_pad(x.shape[3])
        x = layer["Conv1"](F.pad(x, (*pad_cols, *pad_rows)))
        x = torch.clamp(layer["bn_Conv1"](x), 0, 6)
        for prefix, stride, block_id, _, residual in self.blocks:
            inputs = x
            if block_id:
                x = torch.clamp(layer[f"{prefix}expand_BN"](layer[f"{prefix}expand"](x)), 0, 6)
            if stride == 2:
                pad_rows, pad_cols = _same_stride2_pad(x.shape[2]), _same_stride2_pad(x.shape[3])
                x = F.pad(x, (*pad_cols, *pad_rows))
            else:
                x = F.pad(x, (1, 1, 1, 1))
            x = torch.clamp(layer[f"{prefix}depthwise_BN"](layer[f"{prefix}depthwise"](x)), 0, 6)
            x = layer[f"{prefix}project_BN"](layer[f"{prefix}project"](x))
            if residual:
                x = inputs + x
        x = torch.clamp(layer["Conv_1_bn"](layer["Conv_1"](x)), 0, 6)
        return layer["head"](x.mean(dim=(2, 3)))


NETWORKS = {"resnet50v2": ResNet50V2, "mobilenetv2": MobileNetV2}


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters plus BatchNorm running statistics (Keras' ``count_params``)."""
    stats = sum(
        module.running_mean.numel() + module.running_var.numel()
        for module in model.modules()
        if isinstance(module, nn.BatchNorm2d)
    )
    return sum(p.numel() for p in model.parameters()) + stats

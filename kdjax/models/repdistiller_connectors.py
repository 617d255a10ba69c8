"""The trainable parts of factor transfer and activation boundaries as RepDistiller
(Tian et al., ICLR 2020) and the AB authors build them, as Flax Linen modules on NHWC
maps, initialised as there; BatchNorm has PyTorch's momentum 0.1 and epsilon 1e-5
(:func:`kdjax.models.connectors.torch_batch_norm`).

* :class:`Paraphraser` and :class:`Translator` — factor transfer's teacher- and
  student-side encoders (Kim, Park & Kwak, "Paraphrasing Complex Network: Network
  Compression via Factor Transfer", NeurIPS 2018; RepDistiller's
  ``models/util.py::Paraphraser`` and ``Translator``; the loss is
  ``kdjax.losses.factor_transfer_loss``).
* :class:`ABConnectors` — activation boundaries' per-stage 1×1 convolution and
  BatchNorm (Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation
  Boundaries Formed by Hidden Neurons", AAAI 2019; the loss is
  ``kdjax.losses.activation_boundary_loss``).

Every module takes ``train`` as a keyword: True normalises with the batch's statistics
and updates the running averages (collection ``"batch_stats"``), False uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from kdjax.models.connectors import TorchConv2d, TorchConvTranspose2d, torch_batch_norm

# LeakyReLU's negative slope in RepDistiller's factor-transfer encoders.
_LEAKY_SLOPE = 0.1
# The AB authors' connector init: N(0, 2 / n), n = k·k·out_channels.
_AB_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _factor_channels(channels: int, k: float) -> int:
    width = int(channels * k)
    if width < 1:
        raise ValueError(f"int({channels} · k) must be >= 1 channel, got k = {k}.")
    return width


def _leaky_stack(x, widths, transpose: bool, use_bn: bool, train: bool, prefix: str):
    """3×3 (transposed) convolutions, padding 1, each followed by BatchNorm where
    ``use_bn``, then LeakyReLU(0.1); modules ``<prefix>_conv<i>``, ``<prefix>_bn<i>``."""
    for index, width in enumerate(widths):
        name = f"{prefix}_conv{index}"
        if transpose:
            x = TorchConvTranspose2d(width, 3, stride=1, padding=1, name=name)(x)
        else:
            x = TorchConv2d(width, (3, 3), stride=1, padding=1, name=name)(x)
        if use_bn:
            x = torch_batch_norm(train, f"{prefix}_bn{index}")(x)
        x = nn.leaky_relu(x, _LEAKY_SLOPE)
    return x


class Paraphraser(nn.Module):
    """Factor transfer's paraphraser, RepDistiller's ``models/util.py::Paraphraser``:
    an auto-encoder of the teacher's map ``[N, H, W, C_t]``, trained before distillation
    to reconstruct it (RepDistiller: MSE, 30 epochs) and then frozen.

    Encoder: 3×3 convolutions ``C_t → C_t → F → F`` (``F = int(C_t · k)``), decoder:
    3×3 transposed convolutions ``F → F → C_t → C_t``; all stride 1, padding 1, with
    bias and PyTorch's default initialisation, each followed by BatchNorm where
    ``use_bn`` and LeakyReLU(0.1). RepDistiller builds it with its defaults ``k = 0.5``
    and ``use_bn=False``.

    ``__call__(teacher_map, *, train)`` returns ``(factor, reconstruction)``:
    ``[N, H, W, F]`` and ``[N, H, W, C_t]``. RepDistiller's ``is_factor=True`` is the
    factor alone; under ``jax.jit`` an unused reconstruction is not computed.

    Attributes:
      k: the factor's share of the teacher's channels (RepDistiller: 0.5).
      use_bn: BatchNorm after each convolution (RepDistiller: False).
    """

    k: float = 0.5
    use_bn: bool = False

    @nn.compact
    def __call__(self, teacher_map: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        channels = teacher_map.shape[-1]
        width = _factor_channels(channels, self.k)
        factor = _leaky_stack(
            teacher_map, (channels, width, width), False, self.use_bn, train, "encoder"
        )
        reconstruction = _leaky_stack(
            factor, (width, channels, channels), True, self.use_bn, train, "decoder"
        )
        return factor, reconstruction


class Translator(nn.Module):
    """Factor transfer's translator, RepDistiller's ``models/util.py::Translator``: the
    paraphraser's encoder on the student's map ``[N, H, W, C_s]``, trained with the
    student. 3×3 convolutions ``C_s → C_s → F → F`` (``F = int(teacher_channels · k)``,
    the paraphraser's factor width), stride 1, padding 1, with bias and PyTorch's
    default initialisation, each followed by BatchNorm where ``use_bn`` and
    LeakyReLU(0.1). RepDistiller builds it with its defaults ``k = 0.5`` and
    ``use_bn=True`` (unlike the paraphraser's False).

    ``__call__(student_map, *, train)`` returns the factor ``[N, H, W, F]``.

    Attributes:
      teacher_channels: ``C_t``, the channels of the teacher's map.
      k: as the paraphraser's (RepDistiller: 0.5).
      use_bn: BatchNorm after each convolution (RepDistiller: True).
    """

    teacher_channels: int
    k: float = 0.5
    use_bn: bool = True

    @nn.compact
    def __call__(self, student_map: jax.Array, *, train: bool) -> jax.Array:
        channels = student_map.shape[-1]
        width = _factor_channels(self.teacher_channels, self.k)
        return _leaky_stack(
            student_map, (channels, width, width), False, self.use_bn, train, "encoder"
        )


class ABConnectors(nn.Module):
    """Activation boundaries' connectors, one per stage: a 1×1 convolution without
    bias from the student's channels to the teacher's, then BatchNorm. This is the AB
    authors' connector (``bhheo/AB_distillation``, ``models/distillation_module.py``;
    RepDistiller's ``models/util.py::ConnectorV2._build_feature_connector``), with its
    initialisation: kernel ``N(0, 2 / n)``, ``n = 1·1·C_t`` (PyTorch's Kaiming normal,
    ``fan_out``), BatchNorm scale 1, offset 0.

    RepDistiller's ``train_student.py`` (``--distill abound``) uses ``Connector``
    instead: per stage the identity where channels and height already match, else
    ``ConvReg(use_relu=False)`` (:class:`kdjax.models.connectors.ConvReg`).

    ``__call__(student_maps, *, train)`` maps a sequence of ``[N, H_i, W_i, C_s,i]``
    maps to a list of ``[N, H_i, W_i, C_t,i]`` (modules ``conv<i>``, ``bn<i>``).

    Attributes:
      teacher_channels: ``C_t,i`` for each stage, earliest first.
    """

    teacher_channels: tuple[int, ...]

    @nn.compact
    def __call__(self, student_maps: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
        if len(student_maps) != len(self.teacher_channels):
            raise ValueError(
                f"ABConnectors has {len(self.teacher_channels)} stages, got "
                f"{len(student_maps)} student maps."
            )
        outputs = []
        for index, (student_map, channels) in enumerate(
            zip(student_maps, self.teacher_channels, strict=True)
        ):
            x = TorchConv2d(
                channels,
                (1, 1),
                use_bias=False,
                kernel_init=_AB_KERNEL_INIT,
                name=f"conv{index}",
            )(student_map)
            outputs.append(torch_batch_norm(train, f"bn{index}")(x))
        return outputs

"""Trainable parts some distillation methods add beside the student (FitNets
regressors, VID's variational regressor, CRD's embedding heads and memory), trained
with it and left out of the deployed student.

A head is a Flax module ``head(student_outputs, teacher_outputs, rows, *, train) ->
dict`` whose outputs the method's soft term reads. :class:`StudentWithHead` runs the
student, then the head, so one ``model.apply`` trains both; its parameters are
``{"student": ..., "head": ...}``. Without teacher outputs (evaluation, prediction)
it is the student alone. ``rows`` are the examples' positions in the training split
(CRD's memory is indexed by them); a head's mutable state (CRD's memory bank) is a
variable collection, so it lives in the training state and its checkpoints like
BatchNorm statistics do.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.models import connectors, taps
from kdjax.models.connectors import ConvConnector, EmbedHead, LinearConnector, VIDRegressor
from kdjax.models.repdistiller_connectors import Paraphraser, Translator

HEAD_OUTPUTS = (
    "hint", "vid_mean", "vid_log_scale", "crd_loss", "cc_student", "cc_teacher",
    "ab_connected", "ft_student", "ft_teacher", "ft_reconstruction",
)  # fmt: skip


class StudentWithHead(nn.Module):
    """``student`` plus a method's ``head`` (see the module docstring). ``taps`` are the
    student's intermediates the head and the objective read (:mod:`kdjax.models.taps`):
    they join its outputs when a teacher is given."""

    student: nn.Module
    head: nn.Module
    taps: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, images, *, train: bool = False, teacher=None, rows=None):
        outputs = self.student(images, train=train)
        if teacher is None:
            return outputs
        if self.taps:
            intermediates = self.student.variables.get(taps.INTERMEDIATES, {})
            outputs = {**outputs, **taps.select(outputs, intermediates, self.taps)}
        return {**outputs, **self.head(outputs, teacher, rows, train=train)}


class Heads(nn.Module):
    """The heads of an objective combining several methods, each under its method's
    name; their outputs joined (each method's outputs have names of their own)."""

    heads: tuple[tuple[str, nn.Module], ...]

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        joined = {}
        for name, head in self.heads:
            joined.update(head.clone(parent=self, name=name)(outputs, teacher, rows, train=train))
        return joined


def deployed_variables(variables: dict) -> dict:
    """The student's own variables out of a :class:`StudentWithHead`'s."""
    return {
        collection: tree["student"]
        for collection, tree in variables.items()
        if isinstance(tree, dict) and "student" in tree
    }


def _layers(settings) -> dict:
    return {"student_layer": settings["student_layer"], "teacher_layer": settings["teacher_layer"]}


class HintHead(nn.Module):
    """FitNets' regressor from the student's ``student_layer`` map to the teacher's
    ``teacher_layer`` channels; output ``"hint"``. ``regressor="linear"``: a linear
    ``kernel_size`` convolution (the PyTorch KD tutorial's 16→32 3×3 regressor);
    ``"conv_bn_relu"``: RepDistiller's ``ConvReg`` (convolution, BatchNorm, ReLU,
    resizing the map to the teacher's where the two differ)."""

    kernel_size: int = 3
    regressor: str = "linear"
    student_layer: str = "feature_map"
    teacher_layer: str = "feature_map"

    @classmethod
    def of(cls, settings) -> HintHead:
        if settings["regressor"] not in ("linear", "conv_bn_relu"):
            raise ValueError(
                f"hint's regressor is 'linear' or 'conv_bn_relu', got {settings['regressor']!r}."
            )
        return cls(int(settings["kernel_size"]), settings["regressor"], **_layers(settings))

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows
        target = teacher[self.teacher_layer]
        student = outputs[self.student_layer]
        if self.regressor == "conv_bn_relu":
            return {
                "hint": connectors.ConvReg(tuple(target.shape[1:]), name="regressor")(
                    student, train=train
                )
            }
        regressor = ConvConnector(target.shape[-1], self.kernel_size, name="regressor")
        return {"hint": regressor(student)}


class VIDHead(nn.Module):
    """VID: per stage, a 1×1-conv regressor predicts the mean of the teacher's map and a
    learnt per-channel variance (outputs ``"vid_mean"`` and ``"vid_log_scale"``, a tuple
    of them for a sequence of stages). RepDistiller pools the larger of two maps of
    different sizes to the smaller one's; so does this head."""

    student_layer: str = "stage?"
    teacher_layer: str = "stage?"

    @classmethod
    def of(cls, settings) -> VIDHead:
        return cls(**_layers(settings))

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows, train
        single = not isinstance(outputs[self.student_layer], (tuple, list))
        means, scales = [], []
        pairs = _stage_pairs("VID", outputs[self.student_layer], teacher[self.teacher_layer])
        for index, (student, target) in enumerate(pairs):
            if student.ndim == 4 and student.shape[1] > target.shape[1]:
                student = _pool_to(student, target.shape[1:3])
            mean, log_scale = VIDRegressor(target.shape[-1], name=f"regressor{index or ''}")(
                student
            )
            means.append(mean)
            scales.append(log_scale)
        if single:
            return {"vid_mean": means[0], "vid_log_scale": scales[0]}
        return {"vid_mean": tuple(means), "vid_log_scale": tuple(scales)}


def _stage_pairs(method: str, students, targets) -> list[tuple]:
    """The student's and the teacher's maps stage by stage (one map is one stage)."""
    students, targets = (
        tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for value in (students, targets)
    )
    if len(students) != len(targets):
        raise ValueError(
            f"{method} pairs stages one to one: the student has {len(students)}, the teacher "
            f"{len(targets)}."
        )
    return list(zip(students, targets, strict=True))


def _pool_to(feature_map: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Average pooling of an NHWC map to ``size`` (an integer factor; PyTorch's
    ``adaptive_avg_pool2d`` for such sizes)."""
    factor = (feature_map.shape[1] // size[0], feature_map.shape[2] // size[1])
    return nn.avg_pool(feature_map, factor, strides=factor)


class CCHead(nn.Module):
    """RepDistiller's CC: linear embeddings (``LinearEmbed``, no normalisation) of the
    student's and the teacher's features, both trained; outputs ``"cc_student"`` and
    ``"cc_teacher"``."""

    dim: int = 128
    student_layer: str = "features"
    teacher_layer: str = "features"

    @classmethod
    def of(cls, settings) -> CCHead:
        return cls(int(settings["dim"]), **_layers(settings))

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows, train
        student = LinearConnector(self.dim, name="student_embed")(outputs[self.student_layer])
        target = LinearConnector(self.dim, name="teacher_embed")(teacher[self.teacher_layer])
        return {"cc_student": student, "cc_teacher": target}


class CRDHead(nn.Module):
    """CRD: embedding heads for the student's and the teacher's features (both trained)
    and the memory bank of past embeddings (collection ``"crd_memory"``), updated in
    training only; outputs the scalar ``"crd_loss"``. With ``class_index`` (the
    training labels' :func:`kdjax.losses.init_class_index`) the negatives of an example
    are drawn from the other classes' examples, RepDistiller's default; without, from
    every example."""

    num_examples: int
    dim: int = 128
    num_negatives: int = 16384
    temperature: float = 0.07
    momentum: float = 0.5
    student_layer: str = "features"
    teacher_layer: str = "features"
    class_index: Any = None
    train_labels: Any = None

    @classmethod
    def of(cls, settings, train_examples: int, train_labels=None) -> CRDHead:
        index = labels = None
        if settings["class_aware"]:
            if train_labels is None:
                raise ValueError(
                    "CRD's class-aware negatives need the training labels (train_labels); "
                    "class_aware=False draws them from every example."
                )
            labels = np.asarray(train_labels)
            index = losses.init_class_index(labels, int(labels.max()) + 1)
        return cls(
            train_examples, int(settings["dim"]), int(settings["negatives"]),
            float(settings["nce_temperature"]), float(settings["momentum"]),
            class_index=index, train_labels=labels, **_layers(settings),
        )  # fmt: skip

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        student = EmbedHead(self.dim, name="student_embed")(outputs[self.student_layer])
        teacher_embedding = EmbedHead(self.dim, name="teacher_embed")(teacher[self.teacher_layer])
        # Kept as a plain dict (a checkpointable pytree), a CRDBank for the loss.
        bank = self.variable(
            "crd_memory",
            "bank",
            lambda: losses.init_crd_bank(
                self.num_examples, self.dim, self.make_rng("params")
            )._asdict(),
        )
        key = self.make_rng("dropout") if train else jax.random.PRNGKey(0)
        negatives = min(self.num_negatives, self.num_examples)
        negative_ids = None
        if self.class_index is not None:
            sample_key, key = jax.random.split(key)
            labels = jnp.asarray(self.train_labels)[rows]
            negative_ids = losses.sample_negative_ids(
                sample_key, labels, self.class_index, num_negatives=negatives
            )
        loss, new_bank = losses.crd_loss(
            student,
            teacher_embedding,
            rows,
            losses.CRDBank(**bank.value),
            key,
            temperature=self.temperature,
            num_negatives=negatives,
            momentum=self.momentum,
            negative_ids=negative_ids,
        )
        if train:
            bank.value = new_bank._asdict()
        return {"crd_loss": loss}


class ABHead(nn.Module):
    """Activation boundaries: per stage, RepDistiller's ``Connector`` carries the
    student's pre-activation map to the teacher's shape (the identity where the shapes
    already agree, else ``ConvReg`` without its ReLU); output ``"ab_connected"``."""

    student_layer: str = "stage*_preact"
    teacher_layer: str = "stage*_preact"

    @classmethod
    def of(cls, settings) -> ABHead:
        return cls(**_layers(settings))

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows
        connected = []
        pairs = _stage_pairs("AB", outputs[self.student_layer], teacher[self.teacher_layer])
        for index, (student, target) in enumerate(pairs):
            if student.shape[1:] == target.shape[1:]:
                connected.append(student)
                continue
            regressor = connectors.ConvReg(tuple(target.shape[1:]), use_relu=False,
                                           name=f"connector{index}")  # fmt: skip
            connected.append(regressor(student, train=train))
        return {"ab_connected": tuple(connected)}


class FTHead(nn.Module):
    """Factor transfer: the teacher-side ``Paraphraser`` (trained to reconstruct the
    teacher's map in the initialisation stage, frozen after it) and the student-side
    ``Translator``; outputs ``"ft_student"``, ``"ft_teacher"`` (the two factors) and
    ``"ft_reconstruction"`` (the paraphraser's reconstruction of the teacher's map)."""

    k: float = 0.5
    student_layer: str = "feature_map"
    teacher_layer: str = "feature_map"

    @classmethod
    def of(cls, settings) -> FTHead:
        return cls(float(settings["k"]), **_layers(settings))

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows
        target = teacher[self.teacher_layer]
        factor, reconstruction = Paraphraser(self.k, name="paraphraser")(target, train=train)
        student = Translator(target.shape[-1], self.k, name="translator")(
            outputs[self.student_layer], train=train
        )
        return {"ft_student": student, "ft_teacher": factor, "ft_reconstruction": reconstruction}

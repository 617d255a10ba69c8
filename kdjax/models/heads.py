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

import flax.linen as nn
import jax

from kdjax import losses
from kdjax.models.connectors import ConvConnector, EmbedHead, VIDRegressor

HEAD_OUTPUTS = ("hint", "vid_mean", "vid_log_scale", "crd_loss")


class StudentWithHead(nn.Module):
    """``student`` plus a method's ``head`` (see the module docstring)."""

    student: nn.Module
    head: nn.Module

    @nn.compact
    def __call__(self, images, *, train: bool = False, teacher=None, rows=None):
        outputs = self.student(images, train=train)
        if teacher is None:
            return outputs
        return {**outputs, **self.head(outputs, teacher, rows, train=train)}


def deployed_variables(variables: dict) -> dict:
    """The student's own variables out of a :class:`StudentWithHead`'s."""
    return {
        collection: tree["student"]
        for collection, tree in variables.items()
        if isinstance(tree, dict) and "student" in tree
    }


class HintHead(nn.Module):
    """FitNets: a linear ``kernel_size`` convolution maps the student's last conv map to
    the teacher's channels (the PyTorch KD tutorial's 16→32 3×3 regressor); output ``"hint"``."""

    kernel_size: int = 3

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows, train
        channels = teacher["feature_map"].shape[-1]
        regressor = ConvConnector(channels, self.kernel_size, name="regressor")
        return {"hint": regressor(outputs["feature_map"])}


class VIDHead(nn.Module):
    """VID: a 1×1-conv regressor predicts the mean of the teacher's map and a learnt
    per-channel variance (outputs ``"vid_mean"`` and ``"vid_log_scale"``)."""

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        del rows, train
        channels = teacher["feature_map"].shape[-1]
        mean, log_scale = VIDRegressor(channels, name="regressor")(outputs["feature_map"])
        return {"vid_mean": mean, "vid_log_scale": log_scale}


class CRDHead(nn.Module):
    """CRD: embedding heads for the student's and the teacher's features (both trained)
    and the memory bank of past embeddings (collection ``"crd_memory"``), updated in
    training only; outputs the scalar ``"crd_loss"``."""

    num_examples: int
    dim: int = 128
    num_negatives: int = 4096
    temperature: float = 0.07
    momentum: float = 0.5

    @nn.compact
    def __call__(self, outputs, teacher, rows, *, train: bool):
        student = EmbedHead(self.dim, name="student_embed")(outputs["features"])
        teacher_embedding = EmbedHead(self.dim, name="teacher_embed")(teacher["features"])
        # Kept as a plain dict (a checkpointable pytree), a CRDBank for the loss.
        bank = self.variable(
            "crd_memory",
            "bank",
            lambda: losses.init_crd_bank(
                self.num_examples, self.dim, self.make_rng("params")
            )._asdict(),
        )
        key = self.make_rng("dropout") if train else jax.random.PRNGKey(0)
        loss, new_bank = losses.crd_loss(
            student,
            teacher_embedding,
            rows,
            losses.CRDBank(**bank.value),
            key,
            temperature=self.temperature,
            num_negatives=min(self.num_negatives, self.num_examples),
            momentum=self.momentum,
        )
        if train:
            bank.value = new_bank._asdict()
        return {"crd_loss": loss}

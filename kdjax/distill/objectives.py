"""What a student minimises: one registry of objectives, each ``hard_weight · CE +
soft_weight · (a distillation term)``, declaring which teacher outputs it reads.

An objective maps ``(outputs, batch, hyperparams)`` to ``(per_example_loss, parts)``:
``outputs`` is the student's dict (``"logits"`` and named features), ``batch`` holds
the labels and the teacher's outputs under ``"teacher_<name>"`` (stored rows, or
computed in the step by an online teacher), ``hyperparams`` the traced scalars
``temperature``, ``hard_weight`` and ``soft_weight``. The weights are the loss
convention of the CIFAR-10 CNN notebook and the PyTorch KD tutorial; the R MNIST
notebook's ``alpha`` is ``hard_weight = alpha, soft_weight = 1 − alpha``
(:func:`alpha_weights`).

Registered: ``ce``; logit methods ``kd``, ``kd_standardized``, ``dkd``, ``dist``;
feature-map methods ``hint`` (FitNets), ``vid``, ``at``, ``nst``, ``sp``; feature
methods ``cosine``, ``pkt``, ``rkd``, ``cc``, ``crd`` (see :mod:`kdjax.losses` for
each loss and its reference). ``hint``, ``vid`` and ``crd`` train a head beside
the student (:mod:`kdjax.models.heads`). Adding a method is one
:class:`Objective` in :data:`OBJECTIVES`::

    OBJECTIVES["my_kd"] = Objective("my_kd", ("logits",), my_soft_term)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from kdjax import losses
from kdjax.models import heads
from kdjax.types import Batch, Hyperparams, Outputs

# ``soft_term(outputs, teacher, hyperparams, batch) -> per_example`` (or a scalar, for
# losses defined over the batch); ``teacher`` maps the declared output names to the
# teacher's rows for this batch.
SoftTerm = Callable[[Outputs, dict, Hyperparams, Batch], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """``hard_weight · CE(labels) + soft_weight · soft_term`` (CE alone without a term).

    ``teacher_outputs`` names the teacher outputs the soft term reads; the batch
    carries them as ``"teacher_<name>"``. ``head(num_training_examples)`` builds the
    trainable parts the method adds beside the student (:mod:`kdjax.models.heads`); their
    outputs join the student's.
    """

    name: str
    teacher_outputs: tuple[str, ...] = ()
    soft_term: SoftTerm | None = None
    head: Callable[[int], Any] | None = None

    def __call__(self, outputs: Outputs, batch: Batch, hyperparams: Hyperparams):
        hard = losses.cross_entropy(outputs["logits"], batch["labels"])
        if self.soft_term is None:
            return hard, {}
        teacher = {name: batch[f"teacher_{name}"] for name in self.teacher_outputs}
        soft = self.soft_term(outputs, teacher, hyperparams, batch)
        loss = hyperparams["hard_weight"] * hard + hyperparams["soft_weight"] * soft
        return loss, {"hard_loss": hard, "soft_loss": soft}


def _kd_term(outputs, teacher, hyperparams, batch):
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` on logits (Hinton et al. 2015)."""
    return losses.distillation_kl(
        outputs["logits"], teacher["logits"], temperature=hyperparams["temperature"]
    )


def _cosine_term(outputs, teacher, hyperparams, batch):
    """``1 − cos`` between the student's flattened features and the teacher's,
    average-pooled to the student's width (the PyTorch KD tutorial's cosine run:
    2048 → 1024)."""
    del hyperparams, batch
    student = outputs["features"]
    return losses.cosine_embedding_loss(
        student, losses.pool_features(teacher["features"], student.shape[-1])
    )


def _hint_term(outputs, teacher, hyperparams, batch):
    """MSE between the student's regressed map and the teacher's map (FitNets)."""
    del hyperparams, batch
    return losses.hint_loss(outputs["hint"], teacher["feature_map"])


def _vid_term(outputs, teacher, hyperparams, batch):
    """VID: negative log-likelihood of the teacher's map under the head's Gaussian."""
    del hyperparams, batch
    return losses.vid_loss(outputs["vid_mean"], teacher["feature_map"], outputs["vid_log_scale"])


def _crd_term(outputs, teacher, hyperparams, batch):
    """CRD: the head's NCE loss against its memory bank (a scalar over the batch)."""
    del teacher, hyperparams, batch
    return outputs["crd_loss"]


def _between(output: str, loss: Callable) -> SoftTerm:
    """A term comparing the student's and the teacher's ``output`` with ``loss``."""

    def term(outputs, teacher, hyperparams, batch):
        del hyperparams, batch
        return loss(outputs[output], teacher[output])

    term.__doc__ = f"``{loss.__name__}`` between the student's and teacher's {output}."
    return term


def _kd_standardized_term(outputs, teacher, hyperparams, batch):
    """KD on z-score standardised logits (Sun et al., CVPR 2024)."""
    del batch
    return losses.distillation_kl(
        outputs["logits"],
        teacher["logits"],
        temperature=hyperparams["temperature"],
        standardize=True,
    )


def _dkd_term(outputs, teacher, hyperparams, batch):
    """Decoupled KD: target-class and non-target-class terms (Zhao et al., CVPR 2022),
    with the paper's CIFAR weights alpha 1, beta 8."""
    return losses.dkd_loss(
        outputs["logits"], teacher["logits"], batch["labels"],
        temperature=hyperparams["temperature"],
    )  # fmt: skip


def _dist_term(outputs, teacher, hyperparams, batch):
    """DIST: inter- and intra-class Pearson correlation of the softened predictions."""
    del batch
    return losses.dist_loss(
        outputs["logits"], teacher["logits"], temperature=hyperparams["temperature"]
    )


OBJECTIVES: dict[str, Objective] = {
    objective.name: objective
    for objective in (
        Objective("ce"),
        Objective("kd", ("logits",), _kd_term),
        Objective("cosine", ("features",), _cosine_term),
        Objective("hint", ("feature_map",), _hint_term, head=lambda count: heads.HintHead()),
        Objective("vid", ("feature_map",), _vid_term, head=lambda count: heads.VIDHead()),
        Objective("crd", ("features",), _crd_term, head=lambda count: heads.CRDHead(count)),
        Objective("kd_standardized", ("logits",), _kd_standardized_term),
        Objective("dkd", ("logits",), _dkd_term),
        Objective("dist", ("logits",), _dist_term),
        Objective("at", ("feature_map",), _between("feature_map", losses.attention_transfer_loss)),
        Objective("nst", ("feature_map",), _between("feature_map", losses.nst_loss)),
        # SP relates the last conv maps (RepDistiller's feat[-2]); the other relational
        # methods the classifier's input (feat[-1]), as RepDistiller pairs them.
        Objective(
            "sp", ("feature_map",), _between("feature_map", losses.similarity_preserving_loss)
        ),
        Objective("pkt", ("features",), _between("features", losses.pkt_loss)),
        Objective("rkd", ("features",), _between("features", losses.rkd_loss)),
        Objective("cc", ("features",), _between("features", losses.correlation_congruence_loss)),
    )
}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}") from None


def alpha_weights(alpha: float) -> dict[str, float]:
    """The R MNIST notebook's convention ``alpha·CE + (1 − alpha)·soft`` as the two weights
    (``1 − alpha`` rounded to 12 digits, so 0.7 gives 0.3, not 0.30000000000000004)."""
    return {"hard_weight": alpha, "soft_weight": round(1.0 - alpha, 12)}


def make_hyperparams(
    *,
    learning_rate,
    temperature=1.0,
    hard_weight=1.0,
    soft_weight=0.0,
) -> dict[str, jax.Array]:
    """The traced hyperparameters of a step, as float32 scalars (or vectors, one value
    per student of a population)."""
    import jax.numpy as jnp

    values = {
        "learning_rate": learning_rate,
        "temperature": temperature,
        "hard_weight": hard_weight,
        "soft_weight": soft_weight,
    }
    return {name: jnp.asarray(value, jnp.float32) for name, value in values.items()}

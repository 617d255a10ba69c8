"""What a student minimises: one registry of objectives, each ``hard_weight · CE +
soft_weight · (a distillation term)``, declaring which teacher outputs it reads.

An objective maps ``(outputs, batch, hyperparams)`` to ``(per_example_loss, parts)``:
``outputs`` is the student's dict (``"logits"`` and named features), ``batch`` holds
the labels and the teacher's outputs under ``"teacher_<name>"`` (stored rows, or
computed in the step by an online teacher), ``hyperparams`` the traced scalars
``temperature``, ``hard_weight`` and ``soft_weight``. The weights are the loss
convention of seeds 001/002; seed 000's ``alpha`` is ``hard_weight = alpha,
soft_weight = 1 − alpha`` (:func:`alpha_weights`).

Adding a method is one :class:`Objective` in :data:`OBJECTIVES`::

    OBJECTIVES["my_kd"] = Objective("my_kd", ("logits",), my_soft_term)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from kdjax import losses
from kdjax.types import Batch, Hyperparams, Outputs

# ``soft_term(outputs, teacher, hyperparams) -> per_example``; ``teacher`` maps the
# declared output names to the teacher's rows for this batch.
SoftTerm = Callable[[Outputs, dict, Hyperparams], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """``hard_weight · CE(labels) + soft_weight · soft_term`` (CE alone without a term).

    ``teacher_outputs`` names the teacher outputs the soft term reads; the batch
    carries them as ``"teacher_<name>"``. ``student_outputs`` names student outputs
    it needs beyond the logits, so a model without them is refused with a message.
    """

    name: str
    teacher_outputs: tuple[str, ...] = ()
    soft_term: SoftTerm | None = None
    student_outputs: tuple[str, ...] = ()

    def __call__(self, outputs: Outputs, batch: Batch, hyperparams: Hyperparams):
        hard = losses.cross_entropy(outputs["logits"], batch["labels"])
        if self.soft_term is None:
            return hard, {}
        for name in self.student_outputs:
            if name not in outputs:
                raise ValueError(
                    f"objective {self.name!r} needs a student with a {name!r} output "
                    f"(e.g. a hint regressor); this model returns {sorted(outputs)}."
                )
        teacher = {name: batch[f"teacher_{name}"] for name in self.teacher_outputs}
        soft = self.soft_term(outputs, teacher, hyperparams)
        loss = hyperparams["hard_weight"] * hard + hyperparams["soft_weight"] * soft
        return loss, {"hard_loss": hard, "soft_loss": soft}


def _kd_term(outputs, teacher, hyperparams):
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` on logits (Hinton et al. 2015)."""
    return losses.distillation_kl(
        outputs["logits"], teacher["logits"], temperature=hyperparams["temperature"]
    )


def _cosine_term(outputs, teacher, hyperparams):
    """``1 − cos`` between the student's flattened features and the teacher's,
    average-pooled to the student's width (seed 002's cosine run: 2048 → 1024)."""
    del hyperparams
    student = outputs["features"]
    return losses.cosine_embedding_loss(
        student, losses.pool_features(teacher["features"], student.shape[-1])
    )


def _hint_term(outputs, teacher, hyperparams):
    """MSE between the student's regressed map and the teacher's map (FitNets)."""
    del hyperparams
    return losses.hint_loss(outputs["hint"], teacher["feature_map"])


OBJECTIVES: dict[str, Objective] = {
    objective.name: objective
    for objective in (
        Objective("ce"),
        Objective("kd", ("logits",), _kd_term),
        Objective("cosine", ("features",), _cosine_term),
        Objective("hint", ("feature_map",), _hint_term, student_outputs=("hint",)),
    )
}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}") from None


def alpha_weights(alpha: float) -> dict[str, float]:
    """Seed 000's convention ``alpha·CE + (1 − alpha)·soft`` as the two weights."""
    return {"hard_weight": alpha, "soft_weight": 1.0 - alpha}


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

"""What a run's settings build: the one place that turns a
:class:`kdjax.runs.spec.RunSpec` (settings only) into the model, preprocessing,
augmentation, constraint, learning-rate schedule and optimizer of a
:class:`~kdjax.training.records.Training`, and that checks the names the settings
give against the registries that resolve them.

    training = training_of(spec, len(dataset.train), teacher=online_teacher)
    logits = predict(model_of(spec), variables, images, preprocess=preprocess_of(spec))
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import flax.linen as nn

from kdjax.data import image_augment, normalize
from kdjax.data.augment import shift_count, translate_batch
from kdjax.distill.objectives import Objective, get_objective, make_hyperparams
from kdjax.models import get_model, taps
from kdjax.models.heads import StudentWithHead, deployed_variables
from kdjax.models.signal_models import SIGNAL_MODELS, get_signal_model
from kdjax.training.precision import COMPUTE_DTYPES, with_compute_dtype
from kdjax.training.records import Training
from kdjax.training.state import cosine_decay, make_optimizer, max_norm_constraint, step_decay
from kdjax.training.step import OnlineTeacher
from kdjax.types import Augment, Constraint, Preprocess, Schedule

if TYPE_CHECKING:  # the run layer sits above this one; the spec is only a type here
    from kdjax.runs.spec import RunSpec


def check_settings(spec: RunSpec) -> None:
    """Refuses names no registry knows (objective, image augmentation, compute dtype)
    and settings that do not fit the objective they go with."""
    objective = objective_of(spec)  # raises for an unknown objective or setting
    problems = []
    if spec.consistent_jitter and not objective.teacher_outputs:
        problems.append(
            "consistent_jitter needs an objective that reads teacher outputs "
            f"(objective {spec.objective!r} reads none)"
        )
    if spec.image_augment and spec.image_augment not in image_augment.PRESETS:
        problems.append(
            f"image_augment must be one of {sorted(image_augment.PRESETS)}, "
            f"got {spec.image_augment!r}"
        )
    if spec.image_augment and objective.teacher_outputs and spec.teacher_mode != "online":
        problems.append(
            "an augmented student needs teacher_mode='online' (stored teacher outputs "
            "belong to the unaugmented images)"
        )
    if len(objective.terms) > 1 and (spec.soft_weight != 0.0 or spec.temperature != 1.0):
        problems.append(
            f"objective {spec.objective!r} combines methods: give each one's weight and "
            "temperature in method_settings, not soft_weight or temperature"
        )
    sequences = [tap for tap in objective.teacher_outputs if taps.is_sequence_tap(tap)]
    if sequences and spec.teacher_mode != "online":
        problems.append(
            f"the teacher's {', '.join(sequences)} (one map per stage) are read online: "
            "set teacher_mode='online'"
        )
    if spec.compute_dtype not in COMPUTE_DTYPES:
        problems.append(
            f"compute_dtype must be one of {COMPUTE_DTYPES}, got {spec.compute_dtype!r}"
        )
    if problems:
        raise ValueError(f"run {spec.role!r}: " + "; ".join(problems) + ".")


def objective_of(spec: RunSpec, train_examples: int | None = None) -> Objective:
    """The spec's objective with its methods' settings (``spec.method_settings``);
    with ``train_examples``, its warm-ups placed in steps."""
    objective = get_objective(spec.objective, _static_settings(spec), spec.phase)
    if train_examples is not None:
        objective = objective.with_steps_per_epoch(max(1, train_examples // spec.batch_size))
    return objective


def _static_settings(spec: RunSpec) -> dict:
    """``spec.method_settings`` with one value per setting (a per-student tuple of a
    traced setting is passed to the step as hyperparameters: its first value stands
    in for the static default, which the step never reads)."""
    return {
        method: {
            key: value[0] if isinstance(value, (tuple, list)) else value
            for key, value in settings.items()
        }
        for method, settings in spec.method_settings.items()
    }


def model_of(spec: RunSpec) -> nn.Module:
    """The spec's network (in float32): an image model of :data:`kdjax.models.MODELS`
    or a signal model of :data:`kdjax.models.signal_models.SIGNAL_MODELS`."""
    if spec.model in SIGNAL_MODELS:
        return get_signal_model(spec.model, **spec.model_settings)
    return get_model(spec.model, **spec.model_settings)


def preprocess_of(spec: RunSpec) -> Preprocess:
    """Raw inputs (as stored: MNIST's uint8 pixels, say) to model inputs: the channels
    the spec reads (``input_channels``), then scale and mean/std normalisation."""
    scaled = partial(normalize, mean=spec.input_mean, std=spec.input_std, scale=spec.input_scale)
    if not spec.input_channels:
        return scaled
    return partial(_read_channels, columns=tuple(spec.input_channels), then=scaled)


def _read_channels(inputs, *, columns: tuple[int, ...], then: Preprocess):
    """The channels at ``columns`` of the last axis, preprocessed: a student's view
    of inputs it shares with a teacher that reads them all."""
    return then(inputs[..., list(columns)])


def per_shift_extras(spec: RunSpec) -> tuple[str, ...]:
    """The batch entries stored once per shift (empty unless ``consistent_jitter``)."""
    if not spec.consistent_jitter:
        return ()
    return tuple(f"teacher_{name}" for name in objective_of(spec).teacher_outputs)


def shift_count_of(spec: RunSpec) -> int:
    """The number of translations a stored per-shift output covers."""
    return shift_count(spec.translate_pixels)


def augment_of(spec: RunSpec) -> Augment | None:
    """The step's augmentation: translations and/or a named image augmentation."""
    augments = []
    if spec.translate_pixels:
        per_shift = per_shift_extras(spec)
        augments.append(
            partial(translate_batch, max_shift=spec.translate_pixels, per_shift=per_shift)
        )
    if spec.image_augment:
        augments.append(image_augment.preset(spec.image_augment))
    if len(augments) > 1:
        return image_augment.compose(*augments)
    return augments[0] if augments else None


def constraint_of(spec: RunSpec) -> Constraint | None:
    if spec.max_norm is None:
        return None
    return partial(max_norm_constraint, max_norm=spec.max_norm)


def schedule_of(spec: RunSpec, train_examples: int) -> Schedule | None:
    """The learning-rate factor per step, for a training set of this size (None for
    a constant rate)."""
    steps_per_epoch = train_examples // spec.batch_size
    if spec.lr_schedule == "step":
        boundaries = [epoch * steps_per_epoch for epoch in spec.lr_decay_epochs]
        return step_decay(boundaries, spec.lr_decay_rate)
    if spec.lr_schedule == "cosine":
        return cosine_decay(spec.epochs * steps_per_epoch)
    return None


def hyperparams_of(spec: RunSpec) -> dict:
    """The step's traced hyperparameters (vectors for per-student values): the
    learning rate, the loss weights and temperature, and every traced setting
    ``spec.method_settings`` gives (``"<method>.<setting>"``)."""
    objective = objective_of(spec)
    traced = {
        f"{method.name}.{key}": spec.method_settings[method.name][key]
        for method, _ in objective.terms
        for key in method.traced
        if key in spec.method_settings.get(method.name, {})
    }
    return make_hyperparams(
        learning_rate=spec.learning_rate,
        temperature=spec.temperature,
        hard_weight=spec.hard_weight,
        soft_weight=spec.soft_weight,
        **traced,
    )


def training_of(
    spec: RunSpec,
    train_examples: int,
    *,
    teacher: OnlineTeacher | None = None,
    initial_variables: Any = None,
    train_labels: Any = None,
    initial_per_member: bool = False,
) -> Training:
    """Everything ``spec`` trains, for a training set of ``train_examples``: its model
    (with a method's head beside the student, whose frozen patterns and initial
    variables then sit under ``student/``), objective, optimizer, preprocessing,
    augmentation, constraint and schedule; ``teacher`` runs inside the step;
    ``train_labels`` are the training split's labels (CRD's class-aware negatives);
    ``initial_per_member``: ``initial_variables`` carry a leading student axis (a
    population's initialisation stage), student *i* starting from entry *i*."""
    check_settings(spec)
    objective = objective_of(spec, train_examples)
    model, frozen = model_of(spec), tuple(spec.frozen)
    if objective.head is not None:  # the method's trainable parts beside the student
        head = objective.head(train_examples, train_labels)
        model = StudentWithHead(model, head, objective.student_taps)
        frozen = (*(f"student/{pattern}" for pattern in frozen), *objective.frozen)
        if initial_variables is not None and not _with_head(initial_variables):
            initial_variables = {key: {"student": tree} for key, tree in initial_variables.items()}
    elif initial_variables is not None and _with_head(initial_variables):
        initial_variables = deployed_variables(initial_variables)  # the heads stay behind
    return Training(
        model=with_compute_dtype(model, spec.compute_dtype),
        objective=objective,
        optimizer=make_optimizer(spec.optimizer, weight_decay=spec.weight_decay, frozen=frozen),
        preprocess=preprocess_of(spec),
        augment=augment_of(spec),
        constraint=constraint_of(spec),
        schedule=schedule_of(spec, train_examples),
        teacher=teacher,
        frozen=frozen,
        initial_variables=initial_variables,
        initial_per_member=initial_per_member,
    )


def _with_head(variables: Any) -> bool:
    """Variables of a student with a method's head (an initialisation stage's)."""
    return isinstance(variables.get("params"), dict) and "student" in variables["params"]

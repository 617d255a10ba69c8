"""Experiment building blocks: a run described by a :class:`RunSpec`, trained (or
reused) in a run directory named after its settings, and a teacher's soft targets.

Run directories are ``<workdir>/<role>-<hash>`` where the hash covers every
setting that changes the result except the epoch count: changing the
temperature starts a new run, asking for more epochs continues the old one, and
re-running the same command resumes after a crash or reuses a finished run.
A student's settings include its teacher's parameter fingerprint, so a retrained
teacher never silently pairs with students distilled from the old one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from kdjax import soft_targets
from kdjax.data import Dataset, normalize
from kdjax.models import count_params, get_model
from kdjax.train import (
    OBJECTIVES,
    TEACHER_OUTPUTS,
    FitResult,
    config_hash,
    cosine_decay,
    every_shift,
    fit,
    make_hyperparams,
    make_optimizer,
    max_norm_constraint,
    predict,
    shift_count,
    translate,
    translate_batch,
)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run."""

    role: str
    model: str
    objective: str = "ce"
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    seed: int | tuple[int, ...] = 0
    temperature: float | tuple[float, ...] = 1.0
    hard_weight: float | tuple[float, ...] = 1.0
    soft_weight: float | tuple[float, ...] = 0.0
    input_mean: float | tuple[float, ...] = 0.0
    input_std: float | tuple[float, ...] = 1.0
    # Random translations of up to this many pixels (0: none), and a max-norm
    # constraint on dense kernels (None: none) — Hinton et al. 2015's teacher.
    translate_pixels: int = 0
    max_norm: float | None = None
    # With translate_pixels, a distilled student's stored teacher outputs cover every
    # shift ([N, (2m+1)², ...], see kdjax.distill.teacher_outputs) and the student learns
    # the teacher's output for the shifted image it sees: a jittered transfer set.
    consistent_jitter: bool = False
    # "constant", or "cosine": the learning rate decays to 0 over ``epochs``.
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {sorted(OBJECTIVES)}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1.")
        if self.translate_pixels < 0 or (self.max_norm is not None and self.max_norm <= 0):
            raise ValueError("translate_pixels must be >= 0 and max_norm > 0.")
        if self.consistent_jitter and not (
            self.translate_pixels and TEACHER_OUTPUTS[self.objective]
        ):
            raise ValueError(
                "consistent_jitter needs translate_pixels > 0 and an objective that reads "
                f"teacher outputs (got translate_pixels={self.translate_pixels}, "
                f"objective {self.objective!r})."
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}."
            )
        if not np.all(np.asarray(self.temperature) > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.population is not None:
            for name in ("temperature", "hard_weight", "soft_weight"):
                value = getattr(self, name)
                if isinstance(value, tuple) and len(value) != self.population:
                    raise ValueError(
                        f"{name} has {len(value)} values for {self.population} students."
                    )

    @property
    def population(self) -> int | None:
        """The number of students trained together (None for a single run).

        A tuple of seeds makes a population; temperature and the loss weights may
        then be tuples too, one value per student (see :func:`kdjax.train.fit`).
        """
        return len(self.seed) if isinstance(self.seed, tuple) else None

    def preprocess(self):
        return partial(normalize, mean=self.input_mean, std=self.input_std)

    def augment(self):
        if not self.translate_pixels:
            return None
        return partial(
            translate_batch, max_shift=self.translate_pixels, per_shift=self.per_shift_extras()
        )

    def per_shift_extras(self) -> tuple[str, ...]:
        """The batch entries stored once per shift (empty unless ``consistent_jitter``)."""
        if not self.consistent_jitter:
            return ()
        return tuple(f"teacher_{name}" for name in TEACHER_OUTPUTS[self.objective])

    def constraint(self):
        return (
            None if self.max_norm is None else partial(max_norm_constraint, max_norm=self.max_norm)
        )

    def schedule(self, train_examples: int):
        if self.lr_schedule == "constant":
            return None
        return cosine_decay(self.epochs * (train_examples // self.batch_size))

    def identity(self) -> dict:
        """The settings that name the run directory: all but the epoch count, and the
        regularisers only when used (so runs made before they existed keep their names).
        With a decaying learning rate the epoch count shapes the schedule, so it is
        part of the name: more epochs then start a new run instead of continuing."""
        identity = dataclasses.asdict(self)
        if self.lr_schedule == "constant":
            del identity["epochs"]
        for name, unused in (
            ("translate_pixels", 0),
            ("max_norm", None),
            ("consistent_jitter", False),
            ("lr_schedule", "constant"),
        ):
            if identity[name] == unused:
                del identity[name]
        return identity


def _check_per_shift(spec: RunSpec, extras: dict[str, Any]) -> None:
    """Stored teacher logits must be ``[N, C]``, or ``[N, shifts, C]`` with
    ``consistent_jitter``; other per-shift outputs need their shift axis."""
    shifts = shift_count(spec.translate_pixels)
    per_shift = spec.per_shift_extras()
    where = f"train_shifts={spec.translate_pixels}"
    for key, rows in extras.items():
        shape = np.shape(rows)
        name = key[len("teacher_") :]
        if key in per_shift and (len(shape) < 3 or shape[1] != shifts):
            raise ValueError(
                f"consistent_jitter needs the teacher's {name} for every one of the "
                f"{shifts} shifts ([N, {shifts}, ...], from teacher_outputs({where})); "
                f"got shape {shape}."
            )
        if key == "teacher_logits" and len(shape) != (3 if key in per_shift else 2):
            raise ValueError(
                f"teacher logits of shape {shape}: per-shift logits [N, shifts, C] go with "
                "RunSpec(consistent_jitter=True), plain logits [N, C] without it."
            )


def run_directory(workdir: str | Path, spec: RunSpec, identity: dict) -> Path:
    return Path(workdir) / f"{spec.role}-{config_hash(identity)}"


def train_run(
    spec: RunSpec,
    dataset: Dataset,
    workdir: str | Path,
    *,
    teacher_logits: np.ndarray | None = None,
    teacher_outputs: dict[str, np.ndarray] | None = None,
    teacher_fingerprint: str | None = None,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
    **fit_options: Any,
) -> FitResult:
    """Trains (or resumes, or reuses) the run ``spec`` describes (one student or a
    population trained together, see :attr:`RunSpec.population`).

    ``fit_options`` go to :func:`kdjax.train.fit` and change how, not what, it trains
    (``feed``, ``steps_per_call``, ``checkpoint_every``): they are not part of the
    run's identity, so a run may be resumed with other values.

    ``teacher_outputs`` maps output names (``"logits"``, ``"features"``,
    ``"feature_map"``) to stored teacher rows aligned with the training split;
    ``teacher_logits`` is shorthand for ``{"logits": ...}``. The objective says
    which it needs (:data:`kdjax.train.TEACHER_OUTPUTS`).
    """
    teacher_outputs = dict(teacher_outputs or {})
    if teacher_logits is not None:
        teacher_outputs["logits"] = teacher_logits
    missing = [name for name in TEACHER_OUTPUTS[spec.objective] if name not in teacher_outputs]
    if missing:
        raise ValueError(f"objective {spec.objective!r} needs the teacher's {', '.join(missing)}.")
    if TEACHER_OUTPUTS[spec.objective] and teacher_fingerprint is None:
        raise ValueError(f"objective {spec.objective!r} needs the teacher's fingerprint.")
    identity = {
        **spec.identity(),
        "data": dataset.train.fingerprint(),
        "teacher": teacher_fingerprint,
    }
    model = get_model(spec.model)
    extras = {f"teacher_{name}": teacher_outputs[name] for name in TEACHER_OUTPUTS[spec.objective]}
    _check_per_shift(spec, extras)
    return fit(
        name=spec.role,
        run_dir=run_directory(workdir, spec, identity),
        run_config=identity,
        model=model,
        objective=OBJECTIVES[spec.objective],
        optimizer=make_optimizer(spec.optimizer),
        hyperparams=make_hyperparams(
            learning_rate=spec.learning_rate,
            temperature=spec.temperature,
            hard_weight=spec.hard_weight,
            soft_weight=spec.soft_weight,
        ),
        train_split=dataset.train,
        test_split=dataset.test,
        preprocess=spec.preprocess(),
        augment=spec.augment(),
        constraint=spec.constraint(),
        schedule=spec.schedule(len(dataset.train)),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=list(spec.seed) if spec.population else spec.seed,
        train_extras=extras,
        log=log,
        on_epoch_end=on_epoch_end,
        **fit_options,
    )


def teacher_outputs(
    spec: RunSpec,
    result: FitResult,
    dataset: Dataset,
    names: tuple[str, ...] = ("logits",),
    *,
    splits: tuple[str, ...] = ("train", "test"),
    train_shifts: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """The frozen teacher's named outputs for each split, from its store (computed once,
    all missing outputs of a split in one pass).

    Returns ``({name: {split: rows}}, teacher_fingerprint)``, rows aligned with the
    split's examples by id. Logits live in ``soft_targets/<split>.npz``, other outputs
    in ``soft_targets/<split>-<name>.npz`` of the teacher's run directory.

    ``train_shifts=m > 0`` gives the training split's outputs for every translation by
    up to ``m`` pixels instead, ``[N, (2m+1)², ...]`` in the order of
    :func:`kdjax.train.every_shift` (stored with a ``-shift<m>`` suffix): what a
    student with ``consistent_jitter`` reads.
    """
    model = get_model(spec.model)
    fingerprint = soft_targets.params_fingerprint(result.params)
    preprocess = spec.preprocess()

    def compute(images: np.ndarray, wanted: tuple[str, ...], max_shift: int = 0):
        if not max_shift:
            log(f"Computing the teacher's {', '.join(wanted)} for {len(images)} examples ...")
            return predict(model, result.params, images, preprocess=preprocess, output_names=wanted)
        offsets = every_shift(max_shift)
        log(
            f"Computing the teacher's {', '.join(wanted)} for {len(images)} examples "
            f"× {len(offsets)} shifts of up to {max_shift} pixel(s) ({len(offsets)} passes; "
            f"the store grows {len(offsets)}× over unshifted outputs) ..."
        )
        per_shift = []
        for offset in offsets:

            def shifted(raw, offset=offset):
                fixed = jnp.broadcast_to(jnp.asarray(offset), (raw.shape[0], 2))
                return preprocess(translate(raw, fixed, max_shift))

            per_shift.append(
                predict(model, result.params, images, preprocess=shifted, output_names=wanted)
            )
        return {name: np.stack([rows[name] for rows in per_shift], 1) for name in wanted}

    def store_path(split_name: str, name: str, max_shift: int) -> Path:
        stem = split_name if name == "logits" else f"{split_name}-{name}"
        suffix = f"-shift{max_shift}" if max_shift else ""
        return result.run_dir / "soft_targets" / f"{stem}{suffix}.npz"

    def load(split_name: str) -> dict[str, np.ndarray]:
        max_shift = train_shifts if split_name == "train" else 0
        return soft_targets.load_or_compute_outputs(
            {name: store_path(split_name, name, max_shift) for name in names},
            getattr(dataset, split_name),
            teacher_fingerprint=fingerprint,
            compute=partial(compute, max_shift=max_shift),
            log=log,
        )

    by_split = {split_name: load(split_name) for split_name in splits}
    return {name: {s: by_split[s][name] for s in splits} for name in names}, fingerprint


def teacher_soft_targets(
    spec: RunSpec,
    result: FitResult,
    dataset: Dataset,
    *,
    train_shifts: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, np.ndarray], str]:
    """The frozen teacher's logits for both splits, from its store (computed once).

    Returns ``({"train": logits, "test": logits}, teacher_fingerprint)``, each
    array aligned with the split's examples by id; with ``train_shifts`` the training
    logits cover every shift (see :func:`teacher_outputs`).
    """
    outputs, fingerprint = teacher_outputs(
        spec, result, dataset, ("logits",), train_shifts=train_shifts, log=log
    )
    return outputs["logits"], fingerprint


def parameter_count(model_name: str, dataset: Dataset) -> int:
    """Parameters of a registry model for this data set's image shape."""
    import jax

    model = get_model(model_name)
    sample = np.zeros((1,) + dataset.train.images.shape[1:], np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    return count_params(shapes)

"""What defines one training run: :class:`RunSpec`, settings only, and the hash
that names its directory. What the settings build (model, preprocessing,
augmentation, schedule, the whole :class:`kdjax.training.Training`) comes from
:mod:`kdjax.training.recipe`, which also checks the names they give.

A run's identity is its role, its model and every field that differs from the
default (so adding a field with a default never renames existing runs), minus the
epoch count: asking for more epochs continues a run instead of starting a new one —
except with a cosine learning rate, where the epoch count shapes the schedule (a
step schedule's boundaries are epochs of their own, named in the identity).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from kdjax.losses import MAX_TEMPERATURE

TEACHER_MODES = ("stored", "online")
LR_SCHEDULES = ("constant", "cosine", "step")


def config_hash(config: Mapping[str, Any]) -> str:
    """Eight hex digits naming a configuration (JSON form, keys sorted)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run.

    A tuple of seeds makes a population trained together; ``temperature``,
    ``hard_weight`` and ``soft_weight`` may then be tuples too, one value per student.
    The objective is ``hard_weight·CE + soft_weight·(its distillation term)``
    (:mod:`kdjax.distill.objectives`); the R MNIST notebook's ``alpha`` is ``hard_weight=alpha,
    soft_weight=1−alpha``. An objective combining several methods (``"crd+kd"``)
    takes each term's weight from ``method_settings`` (its ``soft_weight`` and
    ``temperature`` stay at their defaults).

    A spec checks its own values when made; the names it gives (objective, image
    augmentation, compute dtype) are checked against their registries by
    :func:`kdjax.training.recipe.check_settings`, which :func:`kdjax.runs.train_run`
    calls before any work.
    """

    role: str
    model: str
    model_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    objective: str = "ce"
    epochs: int = 3
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    # L2 regularisation added to the gradient (PyTorch's weight_decay; see make_optimizer).
    weight_decay: float = 0.0
    seed: int | tuple[int, ...] = 0
    temperature: float | tuple[float, ...] = 1.0
    hard_weight: float | tuple[float, ...] = 1.0
    soft_weight: float | tuple[float, ...] = 0.0
    input_mean: float | tuple[float, ...] = 0.0
    input_std: float | tuple[float, ...] = 1.0
    # Raw inputs are divided by this before the mean/std normalisation: 255 for uint8
    # pixels, 1 for signals already in [0, 1].
    input_scale: float = 255.0
    # The channels (positions on the inputs' last axis) the model reads; () reads them
    # all. A student reading part of a teacher's inputs (BioVid's GSR among five
    # signals) trains on the inputs the teacher reads.
    input_channels: tuple[int, ...] = ()
    # Random translations of up to this many pixels (0: none), and a max-norm
    # constraint on dense kernels (None: none) — Hinton et al. 2015's teacher.
    translate_pixels: int = 0
    max_norm: float | None = None
    # With translate_pixels and a stored teacher, the stored outputs cover every shift
    # and the student learns the teacher's output for the shifted image it sees.
    consistent_jitter: bool = False
    # "constant"; "cosine": the learning rate decays to 0 over ``epochs``; "step": it
    # is multiplied by ``lr_decay_rate`` at the start of each epoch in
    # ``lr_decay_epochs`` (0-based: 150 is the 151st epoch, as in RepDistiller).
    lr_schedule: str = "constant"
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.1
    # "stored": teacher outputs computed once and read by example id; "online": the
    # frozen teacher runs inside the step on the (augmented) batch.
    teacher_mode: str = "stored"
    # A named image augmentation (kdjax.data.image_augment.PRESETS) run in the step on
    # training batches; "" for none. Stored teacher outputs would not match the
    # augmented image, so it needs teacher_mode="online" when a teacher is read
    # (checked with the names, by kdjax.training.recipe.check_settings).
    image_augment: str = ""
    # Parameter-path patterns that are not trained (see kdjax.training.trainable_mask).
    frozen: tuple[str, ...] = ()
    # "bfloat16": activations and matmuls in bfloat16, parameters, optimizer state and
    # losses in float32 (kdjax.training.precision).
    compute_dtype: str = "float32"
    # The objective's methods' settings over their defaults, by method:
    # {"crd": {"negatives": 4096}, "kd": {"weight": 0.9, "temperature": 4.0}}
    # (kdjax.distill.methods). A traced setting may hold one value per student.
    method_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # "main", or "init": the initialisation stage of the objective's methods that have
    # one (AB, FSP, FT, FitNets' two-stage option), trained before the main run.
    phase: str = "main"

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 0 or self.batch_size < 1:
            problems.append("epochs must be >= 0 and batch_size >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.translate_pixels < 0 or (self.max_norm is not None and not self.max_norm > 0):
            problems.append("translate_pixels must be >= 0 and max_norm > 0")
        for name in ("temperature", "hard_weight", "soft_weight"):
            values = np.asarray(getattr(self, name), np.float64)
            low_ok = values > 0 if name == "temperature" else values >= 0
            if not (np.all(np.isfinite(values)) and np.all(low_ok)):
                bound = "> 0" if name == "temperature" else ">= 0"
                problems.append(f"{name} must be finite and {bound}, got {getattr(self, name)}")
            elif name == "temperature" and np.any(values > MAX_TEMPERATURE):
                problems.append(
                    f"temperature must be <= {MAX_TEMPERATURE:g} (kdjax.losses.MAX_TEMPERATURE: "
                    f"the float32 losses are tested up to it), got {self.temperature}"
                )
        if np.any(np.asarray(self.seed) < 0):
            problems.append(f"seeds must be >= 0, got {self.seed}")
        if any(channel < 0 for channel in self.input_channels):
            problems.append(f"input_channels must be >= 0, got {self.input_channels}")
        if self.consistent_jitter and not self.translate_pixels:
            problems.append("consistent_jitter needs translate_pixels > 0")
        if self.consistent_jitter and self.teacher_mode == "online":
            problems.append(
                "consistent_jitter is for stored teachers; an online one sees the shift"
            )
        if self.phase not in ("main", "init"):
            problems.append(f"phase must be 'main' or 'init', got {self.phase!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        problems += self._step_schedule_problems()
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if self.teacher_mode not in TEACHER_MODES:
            problems.append(
                f"teacher_mode must be one of {TEACHER_MODES}, got {self.teacher_mode!r}"
            )
        values = {
            name: getattr(self, name) for name in ("temperature", "hard_weight", "soft_weight")
        }
        for method, settings in self.method_settings.items():
            values.update({f"{method}.{key}": value for key, value in settings.items()})
        for name, value in values.items():
            if isinstance(value, (tuple, list)) and len(value) != (self.population or 1):
                problems.append(
                    f"{name} has {len(value)} values for {self.population or 1} student(s)"
                )
        if problems:
            raise ValueError(f"run {self.role!r}: " + "; ".join(problems) + ".")

    def _step_schedule_problems(self) -> list[str]:
        epochs, rate = tuple(self.lr_decay_epochs), self.lr_decay_rate
        if self.lr_schedule != "step":
            if epochs:
                return [f"lr_decay_epochs {epochs} need lr_schedule='step'"]
            return []
        problems = []
        if not epochs or list(epochs) != sorted(set(epochs)) or epochs[0] < 1:
            problems.append(f"lr_decay_epochs must be increasing epochs >= 1, got {epochs}")
        if not (math.isfinite(rate) and 0 < rate <= 1):
            problems.append(f"lr_decay_rate must be in (0, 1], got {rate}")
        return problems

    @property
    def population(self) -> int | None:
        """The number of students trained together (None for a single run)."""
        return len(self.seed) if isinstance(self.seed, tuple) else None

    def identity(self) -> dict:
        """The settings that name the run directory: role, model and every field that
        differs from its default, in JSON form; the epoch count only when the
        learning rate decays over it (cosine)."""
        defaults = {
            field.name: field.default_factory()
            if callable(field.default_factory)
            else field.default
            for field in dataclasses.fields(self)
            if field.name not in ("role", "model")
        }
        identity = {"role": self.role, "model": self.model}
        for name, default in defaults.items():
            value = getattr(self, name)
            if name == "epochs":
                if self.lr_schedule == "cosine":
                    identity[name] = value
            elif _json(value) != _json(default):
                identity[name] = _json(value)
        return identity

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any]) -> RunSpec:
        """The spec a run directory's ``config.json`` describes (other keys ignored)."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for name, value in identity.items():
            if name == "model_settings":
                values[name] = {key: _tuples(item) for key, item in value.items()}
            elif name == "method_settings":
                values[name] = {
                    method: {key: _tuples(item) for key, item in settings.items()}
                    for method, settings in value.items()
                }
            elif name in names:
                values[name] = _tuples(value)
        return cls(**values)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a spec holds."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))

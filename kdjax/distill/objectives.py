"""What a student minimises: ``hard_weight · CE + Σᵢ wᵢ(step) · termᵢ``, one term per
distillation method it combines (:mod:`kdjax.distill.methods`).

    objective = get_objective("crd+kd", {"crd": {"negatives": 4096}, "kd": {"weight": 0.9}})
    per_example, parts = objective(outputs, batch, hyperparams, step=step)

An objective is named by its methods joined with ``+`` (``"ce"`` alone is the label
CE). Each method's settings are its published defaults with the overrides given;
``wᵢ(step)`` is the method's ``weight`` times its linear warm-up (``warmup_epochs``,
0 at step 0, the full weight from the end of the warm-up on).

Traced values come from ``hyperparams`` (so one compiled program serves a sweep or
a population): ``"<method>.<setting>"`` for every setting a method traces (weights,
temperatures, DKD's α and β, DIST's β and γ); in an objective of one method, the
step's ``soft_weight`` and ``temperature`` are its weight and temperature (the
R MNIST notebook's ``alpha`` is ``hard_weight = alpha, soft_weight = 1 − alpha``:
:func:`alpha_weights`). A traced value missing from ``hyperparams`` is the
setting's static value.

``batch`` holds the labels and the teacher's taps under ``"teacher_<tap>"`` (stored
rows, or computed in the step by an online teacher). Adding a method is one
:class:`kdjax.distill.methods.Method` in :data:`kdjax.distill.methods.METHODS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.distill.methods import METHODS, Method, get_method, warmup_factor
from kdjax.distill.methods import student_taps as _student_tap
from kdjax.distill.methods import teacher_taps as _teacher_tap
from kdjax.types import Batch, Hyperparams, Outputs

# What an objective of one method reads as its weight and temperature.
SINGLE_METHOD_ALIASES = {"weight": "soft_weight", "temperature": "temperature"}


@dataclasses.dataclass(frozen=True)
class Objective:
    """``hard_weight · CE + Σ wᵢ(step) · termᵢ`` over ``terms`` (module docstring):
    each a method with its resolved settings. ``steps_per_epoch`` places warm-ups.

    ``phase="init"`` is the initialisation stage of the methods that have one (AB,
    FSP, FT, FitNets' two-stage option: their ``init_epochs``): the sum of their
    initialisation terms alone, without the labels' CE. In the main phase a method
    without a main term (AB, FSP) adds nothing: its student trains on the labels."""

    name: str
    terms: tuple[tuple[Method, Mapping[str, Any]], ...] = ()
    steps_per_epoch: int = 0
    phase: str = "main"

    @property
    def active(self) -> tuple[tuple[Method, Mapping[str, Any]], ...]:
        """The terms this phase computes."""
        if self.phase == "init":
            return tuple(
                (m, s) for m, s in self.terms if m.init_term is not None and self.init_epochs_of(s)
            )
        return tuple((m, s) for m, s in self.terms if m.term is not None)

    @staticmethod
    def init_epochs_of(settings: Mapping) -> float:
        return float(settings.get("init_epochs", 0.0) or 0.0)

    @property
    def init_epochs(self) -> float:
        """The length of the initialisation stage (0: none)."""
        lengths = [self.init_epochs_of(s) for m, s in self.terms if m.init_term is not None]
        return max(lengths, default=0.0)

    def in_phase(self, phase: str) -> Objective:
        if phase not in ("init", "main"):
            raise ValueError(f"an objective's phase is 'init' or 'main', got {phase!r}.")
        return dataclasses.replace(self, phase=phase)

    @property
    def teacher_outputs(self) -> tuple[str, ...]:
        """The teacher taps the terms read (batch entries ``"teacher_<tap>"``)."""
        return tuple(dict.fromkeys(_teacher_tap(settings) for _, settings in self.active))

    @property
    def student_taps(self) -> tuple[str, ...]:
        """The student taps the terms and heads read besides its logits."""
        names = (_student_tap(settings) for _, settings in self.active)
        return tuple(name for name in dict.fromkeys(names) if name != "logits")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(method.name for method, _ in self.terms)

    @property
    def frozen(self) -> tuple[str, ...]:
        """Parameter-path patterns the methods keep untrained in this phase."""
        return tuple(p for m, _ in self.active for p in m.frozen.get(self.phase, ()))

    @property
    def head(self):
        """``head(train_examples, train_labels=None)`` building the trainable parts the
        methods add beside the student (one method's head itself, several under their
        methods' names), or None."""
        with_heads = [(m, s) for m, s in self.active if m.head is not None]
        if not with_heads:
            return None
        from kdjax.models import heads

        def build(train_examples, train_labels=None):
            built = {m.name: m.head(s, train_examples, train_labels) for m, s in with_heads}
            if len(built) == 1:
                return next(iter(built.values()))
            return heads.Heads(tuple(built.items()))

        return build

    def teacher_batch(self, teacher_outputs: Outputs) -> dict:
        """The teacher's taps as the batch entries the objective reads."""
        return {f"teacher_{name}": teacher_outputs[name] for name in self.teacher_outputs}

    def with_steps_per_epoch(self, steps_per_epoch: int) -> Objective:
        return dataclasses.replace(self, steps_per_epoch=int(steps_per_epoch))

    def values(self, method: Method, settings: Mapping, hyperparams: Hyperparams) -> dict:
        """The method's settings with its traced ones taken from ``hyperparams``."""
        values = dict(settings)
        for key in method.traced:
            alias = SINGLE_METHOD_ALIASES.get(key) if len(self.terms) == 1 else None
            if f"{method.name}.{key}" in hyperparams:
                values[key] = hyperparams[f"{method.name}.{key}"]
            elif alias is not None and alias in hyperparams:
                values[key] = hyperparams[alias]
        return values

    def __call__(self, outputs: Outputs, batch: Batch, hyperparams: Hyperparams, step=None):
        teacher = {name: batch[f"teacher_{name}"] for name in self.teacher_outputs}
        if self.phase == "init":
            parts = {
                f"{method.name}_init_loss": method.init_term(outputs, teacher, settings, batch)
                for method, settings in self.active
            }
            return sum(parts.values()), parts
        hard = losses.cross_entropy(outputs["logits"], batch["labels"])
        if not self.active:
            return hard, {}
        total = jnp.asarray(hyperparams.get("hard_weight", 1.0), jnp.float32) * hard
        parts = {"hard_loss": hard}
        for method, settings in self.active:
            values = self.values(method, settings, hyperparams)
            term = method.term(outputs, teacher, values, batch)
            weight = values["weight"] * warmup_factor(settings, step, self.steps_per_epoch)
            total = total + weight * term
            parts["soft_loss" if len(self.terms) == 1 else f"{method.name}_loss"] = term
        return total, parts


def parse(name: str) -> tuple[str, ...]:
    """The methods an objective's name joins with ``+`` (``"ce"``: none)."""
    if name == "ce":
        return ()
    methods = tuple(part.strip() for part in name.split("+"))
    if not all(methods) or len(set(methods)) != len(methods) or "ce" in methods:
        raise ValueError(
            f"an objective is 'ce' or methods joined with '+' (each once), got {name!r}."
        )
    for method in methods:
        get_method(method)
    return methods


def get_objective(
    name: str, settings: Mapping[str, Mapping[str, Any]] | None = None, phase: str = "main"
) -> Objective:
    """The objective ``name`` (``"kd"``, ``"crd+kd"``, ``"ce"``) with each method's
    ``settings`` over its defaults; a setting of a method the objective lacks is refused."""
    try:
        methods = parse(name)
    except ValueError as error:
        raise ValueError(f"unknown objective {name!r}: {error}") from None
    settings = dict(settings or {})
    stray = sorted(set(settings) - set(methods))
    if stray:
        raise ValueError(
            f"settings for {', '.join(map(repr, stray))}, which objective {name!r} does not use."
        )
    terms = tuple((METHODS[m], METHODS[m].settings(settings.get(m))) for m in methods)
    return Objective(name, terms).in_phase(phase)


OBJECTIVES: dict[str, Objective] = {
    "ce": Objective("ce"),
    **{name: get_objective(name) for name in METHODS},
}


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
    **method_values,
) -> dict[str, jax.Array]:
    """The traced hyperparameters of a step, as float32 scalars (or vectors, one value
    per student of a population); ``method_values`` are ``{"<method>.<setting>": value}``."""
    values = {
        "learning_rate": learning_rate,
        "temperature": temperature,
        "hard_weight": hard_weight,
        "soft_weight": soft_weight,
        **method_values,
    }
    return {name: jnp.asarray(np.asarray(value), jnp.float32) for name, value in values.items()}

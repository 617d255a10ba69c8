"""One student or a population: the only place that knows the difference.

A population of students trains together in one compiled program: ``jax.vmap``
(or ``lax.map``) over a leading student axis of the state and of the hyperparameters
(each a scalar, shared, or a vector with one value per student); every student sees
the same batches. Student ``i`` ends exactly where a single run with ``seeds[i]``
and its own hyperparameters ends. Everything the loop reports is per student
(``[members]`` arrays), whether there is one student or many.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.training.evaluation import make_correct_counter
from kdjax.training.state import TrainState, create_state
from kdjax.training.step import Step, population_step, resolve_strategy
from kdjax.types import Hyperparams, Preprocess


@dataclasses.dataclass(frozen=True)
class Members:
    """``seeds`` of the students; ``stacked`` False for a single student (no leading
    axis anywhere), True for a population (of any size, one included)."""

    seeds: tuple[int, ...]
    stacked: bool
    strategy: str = "auto"
    own_batches: bool = False

    @classmethod
    def of(
        cls, seed: int | Sequence[int], strategy: str = "auto", *, own_batches: bool = False
    ) -> Members:
        if isinstance(seed, (int, np.integer)):
            if own_batches:
                raise ValueError("students with their own training rows need a list of seeds.")
            return cls((int(seed),), stacked=False, strategy=strategy)
        seeds = tuple(int(s) for s in seed)
        if not seeds:
            raise ValueError("a population needs at least one seed.")
        return cls(seeds, stacked=True, strategy=strategy, own_batches=own_batches)

    @property
    def count(self) -> int:
        return len(self.seeds)

    def init(
        self,
        model: nn.Module,
        optimizer: optax.GradientTransformation,
        sample: jax.Array,
        initial_variables: Any = None,
        init_inputs: dict | None = None,
        initial_per_member: bool = False,
    ) -> TrainState:
        def one(seed, initial=initial_variables):
            return create_state(
                model, optimizer, sample, seed, initial_variables=initial, init_inputs=init_inputs
            )

        if not self.stacked:
            if initial_per_member:
                return one(self.seeds[0], jax.tree.map(lambda leaf: leaf[0], initial_variables))
            return one(self.seeds[0])
        if initial_per_member:  # student i starts from entry i
            return jax.vmap(one)(jnp.asarray(self.seeds), initial_variables)
        return jax.vmap(one)(jnp.asarray(self.seeds))

    def for_network(self, params: Any) -> Members:
        """``"auto"`` resolved for the network whose stacked ``params`` are given
        (:func:`kdjax.training.step.resolve_strategy`)."""
        if self.strategy != "auto" or not self.stacked:
            return self
        return dataclasses.replace(self, strategy=resolve_strategy("auto", params))

    def lift(self, step: Step, *, member_context: bool = False) -> Step:
        if not self.stacked:
            return step
        return population_step(
            step, self.strategy, own_batches=self.own_batches, member_context=member_context
        )

    def hyperparams(self, hyperparams: Hyperparams) -> dict[str, jax.Array]:
        if not self.stacked:
            return dict(hyperparams)
        stacked = {}
        for key, value in hyperparams.items():
            value = jnp.asarray(value, jnp.float32)
            if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != self.count):
                raise ValueError(
                    f"hyperparams[{key!r}] has shape {value.shape}; a population of "
                    f"{self.count} students takes a scalar or a vector of {self.count} values."
                )
            stacked[key] = jnp.broadcast_to(value, (self.count,))
        return stacked

    def correct_counter(self, model: nn.Module, preprocess: Preprocess):
        return make_correct_counter(model, preprocess, self.strategy if self.stacked else None)

    def per_member(self, values: Any) -> np.ndarray:
        """``[..., members]``: a single student's values gain a trailing member axis."""
        values = np.asarray(values, np.float64)
        return values[..., None] if not self.stacked else values

    def unstack(self, tree: Any, index: int) -> Any:
        return tree if not self.stacked else jax.tree.map(lambda leaf: leaf[index], tree)

"""What :func:`kdjax.training.fit` builds before its first epoch: the students'
initial state, the step lifted over them, their hyperparameters, the step's context,
the epoch orders and the per-student test scorer, as one :class:`Program`.

Students sharing the batch (no augmentation, no rows of their own) share the online
teacher's pass over it: one per step, not one per student.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from kdjax.training import parallel
from kdjax.training.evaluation import split_accuracy
from kdjax.training.feeds import epoch_orders, make_feed
from kdjax.training.members import Members
from kdjax.training.monitor import rounded
from kdjax.training.records import Execution, Plan, Training, TrainingData
from kdjax.training.state import TrainState, trainable_mask
from kdjax.training.step import Step, head_inputs_of, make_train_step, with_teacher_outputs


@dataclasses.dataclass
class Program:
    """The pieces of one run's training program, built once.

    ``order(epoch)`` gives the rows of an epoch (:func:`kdjax.training.feeds.epoch_orders`);
    ``counter`` counts correct test predictions per student; ``test_masks`` picks
    each student's own test rows when the plan has folds.
    """

    training: Training
    data: TrainingData
    plan: Plan
    execution: Execution
    members: Members
    state: TrainState
    step: Step
    hyperparams: dict
    context: dict
    order: Callable[[int], np.ndarray]
    counter: Callable
    test_masks: np.ndarray | None

    def score(self, state) -> list[float]:
        """The test accuracy per student, each on its own test rows under folds."""
        accuracy = split_accuracy(
            self.counter,
            self.variables(state),
            self.data.test,
            self.execution.eval_batch_size,
            member_masks=self.test_masks,
        )
        return rounded(self.members.per_member(accuracy))

    @property
    def steps_per_epoch(self) -> int:
        return self.order(0).shape[-1] // self.plan.batch_size

    def feed(self, state: TrainState, name: str, log: Callable[[str], None]):
        """The feed (:func:`kdjax.training.feeds.make_feed`) and the step's arguments
        (``state``, fresh or resumed, the hyperparameters and the context) placed where
        it runs them: only a run with epochs left puts data on the device."""
        execution = self.execution
        feed = make_feed(
            execution.feed,
            self.step,
            self.data.arrays(),
            batch_size=self.plan.batch_size,
            mesh=execution.mesh,
            steps_per_call=execution.steps_per_call,
            log=log,
            name=name,
        )
        return feed, feed.place((state, self.hyperparams, self.context))

    def learning_rate(self, hyperparams, state) -> np.ndarray:
        """The learning rate the last step used (per student), schedule included."""
        rate = np.asarray(parallel.to_host(hyperparams["learning_rate"]), np.float64)
        schedule = self.training.schedule
        if schedule is not None:
            step = np.asarray(parallel.to_host(state.step)) - 1
            rate = rate * np.asarray(jax.vmap(schedule)(np.atleast_1d(step)))
        return rate

    def variables(self, state) -> Any:
        """The trained variables, on the host when they were sharded over a mesh."""
        variables = {"params": state.params, **state.model_state}
        if self.execution.mesh is not None:  # every process scores the full test set
            variables = jax.tree.map(parallel.to_host, variables)
        return variables


def build_program(
    training: Training, data: TrainingData, plan: Plan, execution: Execution
) -> Program:
    """Checks the inputs, then builds the initial state, the lifted step and the
    scorer (nothing is compiled for training until the first epoch)."""
    data.check(plan.batch_size)
    members = plan.members(execution.population_strategy)
    masks = plan.folds.test_masks(members, data) if plan.folds is not None else None
    arrays = data.arrays()
    state = members.init(
        training.model,
        training.optimizer,
        training.preprocess(data.train.images[:1]),
        training.initial_variables,
        init_inputs=_head_sample(training, arrays),
        initial_per_member=training.initial_per_member,
    )
    members = members.for_network(state.params)
    per_member_teacher = training.teacher is not None and training.teacher.per_member
    if per_member_teacher:
        _check_member_teachers(training.teacher, members)
    shared_teacher = (
        training.teacher is not None
        and training.augment is None
        and not members.own_batches
        and not per_member_teacher
    )
    step = members.lift(
        _make_step(training, state, with_teacher=not shared_teacher),
        member_context=per_member_teacher,
    )
    if shared_teacher:
        step = with_teacher_outputs(step, training.teacher, training.objective.teacher_outputs)
    data_seed = members.seeds[0] if plan.data_seed is None else plan.data_seed
    return Program(
        training=training,
        data=data,
        plan=plan,
        execution=execution,
        members=members,
        state=state,
        step=step,
        hyperparams=members.hyperparams(plan.hyperparams),
        context=training.teacher.context() if training.teacher else {},
        order=epoch_orders(data_seed, len(data.train), plan.folds.train if plan.folds else None),
        counter=members.correct_counter(training.model, training.preprocess),
        test_masks=masks,
    )


def _head_sample(training: Training, arrays: Mapping[str, np.ndarray]) -> dict:
    """One example's head inputs, for initialising a method's head."""
    if training.objective.head is None:
        return {}
    first = {key: array[:1] for key, array in arrays.items()}
    if training.teacher is not None:
        names = training.objective.teacher_outputs
        variables = training.teacher.variables
        if training.teacher.per_member:  # the heads' shapes: any one teacher will do
            variables = jax.tree.map(lambda leaf: leaf[0], variables)
        first.update(training.teacher.outputs(variables, first["images"], names))
    return head_inputs_of(training.objective, first)


def _check_member_teachers(teacher, members: Members) -> None:
    """A teacher per student needs a population with that many students."""
    leading = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(teacher.variables)}
    if not members.stacked or leading != {members.count}:
        raise ValueError(
            f"an online teacher with per_member=True needs a population (a list of seeds) and "
            f"teacher variables with a leading axis of one teacher per student; got "
            f"{members.count if members.stacked else 'a single'} student(s) and leading axes "
            f"{sorted(leading, key=str)}."
        )


def _make_step(training: Training, state, *, with_teacher: bool):
    trainable = trainable_mask(state.params, training.frozen) if training.frozen else None
    return make_train_step(
        training.model,
        training.objective,
        training.optimizer,
        training.preprocess,
        augment=training.augment,
        constraint=training.constraint,
        schedule=training.schedule,
        teacher=training.teacher if with_teacher else None,
        trainable=trainable,
    )

"""The pure training step, lifted to populations of students and to compiled blocks
of steps.

``step(state, batch, hyperparams, context) -> (state, metrics)``:

* ``batch`` — raw images, labels, ids and any stored teacher outputs;
* ``hyperparams`` — traced scalars (learning rate, temperature, loss weights), so one
  compiled step serves a whole sweep;
* ``context`` — arrays every student shares and nobody trains, passed as arguments
  rather than baked into the program as constants: an online teacher's variables.

An :class:`OnlineTeacher` runs inside the step on the batch the student sees (after
augmentation), frozen (``stop_gradient``, inference mode); the objective reads its
outputs exactly as it reads stored ones, so both modes give the same loss when
nothing is augmented. Students of a population that see the same batch (nothing
augmented) share one teacher pass per step (:func:`with_teacher_outputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kdjax.data.augment import AUGMENT_STREAM
from kdjax.distill.objectives import Objective
from kdjax.models import taps
from kdjax.training import parallel
from kdjax.training.state import TrainState
from kdjax.types import Augment, Batch, Constraint, Hyperparams, Preprocess, Schedule

Step = Callable[[TrainState, Batch, Hyperparams, Any], tuple[TrainState, dict]]


@dataclasses.dataclass(frozen=True)
class OnlineTeacher:
    """A frozen teacher evaluated inside the training step. Its variables travel in
    the step's ``context["teacher"]`` (see :meth:`context`).

    ``per_member``: ``variables`` carry a leading student axis, and student *i* of a
    population distils from teacher *i* (e.g. fold *i*'s teacher, which never saw
    fold *i*'s test rows). ``preprocess`` is the teacher's own: it may read inputs the
    student's preprocess drops (a five-channel teacher beside a one-channel student).
    """

    model: nn.Module
    variables: Any
    preprocess: Preprocess
    per_member: bool = False

    def context(self) -> dict:
        return {"teacher": self.variables}

    def outputs(self, variables: Any, images: jax.Array, names: tuple[str, ...]) -> dict:
        """The teacher's taps ``names`` (outputs or intermediates, :mod:`kdjax.models.taps`)
        as batch entries ``"teacher_<name>"``."""
        extra = taps.extra_taps(names, ("logits",))
        outputs = taps.apply(
            self.model, variables, self.preprocess(images), taps=extra, train=False
        )
        return {f"teacher_{name}": jax.lax.stop_gradient(outputs[name]) for name in names}


def make_train_step(
    model: nn.Module,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    preprocess: Preprocess,
    *,
    augment: Augment | None = None,
    constraint: Constraint | None = None,
    schedule: Schedule | None = None,
    teacher: OnlineTeacher | None = None,
    trainable: Any = None,
) -> Step:
    """The pure training step; jit it (or lift it with :func:`population_step`).

    ``augment(key, batch)`` runs on the device before ``preprocess``;
    ``constraint(params)`` projects the parameters after every update; parameters
    whose ``trainable`` mask entry is False are returned unchanged; ``schedule(step)``
    multiplies the traced learning rate; ``teacher`` computes the teacher outputs
    the objective reads from the (augmented) batch.
    """

    def train_step(state: TrainState, batch: Batch, hyperparams: Hyperparams, context):
        dropout_key = jax.random.fold_in(state.dropout_key, state.step)
        if augment is not None:
            batch = augment(jax.random.fold_in(dropout_key, AUGMENT_STREAM), batch)
            if not isinstance(batch, Mapping) or "images" not in batch:
                raise TypeError(
                    "augment(key, batch) must return the batch (a mapping with 'images'), "
                    f"got {type(batch).__name__}; for images alone use translate_batch."
                )
        if teacher is not None:
            names = objective.teacher_outputs
            batch = dict(batch, **teacher.outputs(context["teacher"], batch["images"], names))
        images = preprocess(batch["images"])
        mutable = list(state.model_state)
        head_inputs = head_inputs_of(objective, batch)
        student_taps = objective.student_taps

        def loss_fn(params):
            variables = {"params": params, **state.model_state}
            rngs = {"dropout": dropout_key}
            kwargs = dict(train=True, rngs=rngs, taps=student_taps, **head_inputs)
            if mutable:
                outputs, model_state = taps.apply(
                    model, variables, images, mutable=mutable, **kwargs
                )
            else:
                outputs, model_state = taps.apply(model, variables, images, **kwargs), {}
            per_example, parts = objective(outputs, batch, hyperparams, step=state.step)
            return jnp.mean(per_example), (outputs["logits"], parts, model_state)

        (loss, (logits, parts, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
        learning_rate = hyperparams["learning_rate"]
        if schedule is not None:
            learning_rate = learning_rate * schedule(state.step)
        updates = jax.tree.map(lambda u: -learning_rate * u, direction)
        params = optax.apply_updates(state.params, updates)
        if constraint is not None:
            params = constraint(params)
        if trainable is not None:
            # Frozen parameters leave the step as they came in, not as p + (−lr · 0):
            # on a mostly frozen backbone that sum over every frozen weight, and the
            # fresh buffers it fills, cost about as much as the forward pass.
            params = jax.tree.map(
                lambda keep, new, old: new if keep else old, trainable, params, state.params
            )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
            **{name: jnp.mean(value) for name, value in parts.items()},
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state=dict(model_state),
            opt_state=opt_state,
        )
        return new_state, metrics

    return train_step


def with_teacher_outputs(step: Step, teacher: OnlineTeacher, names: tuple[str, ...]) -> Step:
    """``step`` (built without a teacher, reading ``teacher_<name>`` from the batch)
    after the online teacher's ``names`` outputs are added to the batch: once per
    batch for a whole population that shares it (no augmentation), instead of once
    per student inside the lifted step."""

    def run(state, batch, hyperparams, context):
        outputs = teacher.outputs(context["teacher"], batch["images"], names)
        return step(state, dict(batch, **outputs), hyperparams, context)

    return run


def head_inputs_of(objective: Objective, batch: Batch) -> dict:
    """What a method's head reads besides the images (:mod:`kdjax.models.heads`): the
    teacher's outputs and the examples' rows in the training split."""
    if objective.head is None:
        return {}
    teacher = {name: batch[f"teacher_{name}"] for name in objective.teacher_outputs}
    return {"teacher": teacher, "rows": batch["rows"]}


STRATEGIES = ("vmap", "map", "unroll")


def resolve_strategy(strategy: str, params: Any = None) -> str:
    """``"auto"`` → ``"vmap"`` off the CPU; on the CPU ``"map"``, unless the students'
    stacked ``params`` are given and none is a convolution kernel (each at most 2-D per
    student): then ``"vmap"``, whose wider matrix products pay on the CPU too, while a
    vmapped convolution is a grouped one, slow on XLA's CPU (docs/performance.md)."""
    if strategy == "auto":
        if jax.default_backend() != "cpu":
            return "vmap"
        return "map" if params is None or _convolutional(params) else "vmap"
    if strategy not in STRATEGIES:
        *most, last = ("auto", *STRATEGIES)
        names = ", ".join(map(repr, most))
        raise ValueError(f"population strategy must be {names} or {last!r}, got {strategy!r}.")
    return strategy


def _convolutional(params: Any) -> bool:
    """Whether the students' stacked ``params`` hold a convolution kernel (a leaf of more
    than 2 dimensions per student)."""
    return any(leaf.ndim > 3 for leaf in jax.tree.leaves(params))


def over_members(function: Callable, members: Any, strategy: str = "auto") -> Any:
    """``function`` applied to each member of ``members`` (a pytree whose arrays carry a
    leading member axis; ``None`` passes through), the results stacked the same way.

    ``"vmap"`` batches the members' arithmetic; ``"map"`` is a ``lax.map`` (one loop
    body, members one after another); ``"unroll"`` writes every member out in the one
    program, so XLA may overlap them (the program, and its compile time, grow with the
    members)."""
    strategy = resolve_strategy(strategy)
    if strategy == "vmap":
        return jax.vmap(function)(members)
    if strategy == "map":
        return jax.lax.map(function, members)
    count = jax.tree.leaves(members)[0].shape[0]
    outputs = [function(jax.tree.map(lambda leaf, i=i: leaf[i], members)) for i in range(count)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)


def population_step(
    train_step: Step,
    strategy: str = "auto",
    *,
    own_batches: bool = False,
    member_context: bool = False,
) -> Step:
    """Lifts a one-student step to ``(states, batch, hyperparams, context)`` with a
    leading student axis on ``states`` and ``hyperparams``; batch and context are shared.

    ``"vmap"`` batches the students' arithmetic (wide matmuls: best on GPU/TPU);
    ``"map"`` runs them one after another inside the same compiled program
    (``lax.map``), which on the CPU is faster for convolutional students, since
    XLA's CPU grouped convolutions (what a vmapped convolution becomes) are slow;
    ``"unroll"`` writes the students out one after another in the program, which
    keeps a CPU's cores busier than ``lax.map`` for a few large students (11–27 %
    faster for the BioVid pipeline's five folds in three runs) at a compile time that
    grows with the students (:func:`over_members`). All give the same numbers;
    docs/performance.md records the measurements.
    ``own_batches``: every student has its own batch (a leading student axis on the
    batch too), e.g. the folds of a cross-validation trained together;
    ``member_context``: likewise for the context (a teacher per student).
    """

    # A batch shared by vmapped dense students on the CPU goes in once per student:
    # shared, XLA's CPU multiplies it by all students' first-layer weights as one wide
    # matrix, at the price of a transposed copy of those weights and a transposed kernel
    # gradient every step (docs/performance.md, "Populations on the CPU").
    vmapped_on_cpu = resolve_strategy(strategy) == "vmap" and jax.default_backend() == "cpu"

    def lifted(states, batch, hyperparams, context):
        per_student = own_batches or (vmapped_on_cpu and not _convolutional(states.params))

        def one(member):
            state, hyper, own, own_context = member
            return train_step(
                state,
                own if per_student else batch,
                hyper,
                own_context if member_context else context,
            )

        if per_student and not own_batches:
            count = jax.tree.leaves(states)[0].shape[0]
            batch = jax.tree.map(lambda a: jnp.broadcast_to(a, (count, *a.shape)), batch)
        members = (
            states,
            hyperparams,
            batch if per_student else None,
            context if member_context else None,
        )
        return over_members(one, members, strategy)

    return lifted


def scan_steps(step: Step, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """Lifts ``step`` to ``(state, data, indices, hyperparams, context)``: a
    ``lax.scan`` over the rows of ``indices`` (steps × batch size), each batch gathered
    on the device from the arrays in ``data``. Metrics gain a leading step axis.
    Step ``i`` sees exactly the batch the host feed would send. With a ``mesh``, each
    gathered batch stays split over it along its batch (last index) axis."""

    def run(state, data, indices, hyperparams, context):
        def body(carry, rows):
            batch = jax.tree.map(lambda array: array[rows], data)
            if mesh is not None:
                batch = jax.lax.with_sharding_constraint(
                    batch, parallel.batch_sharding(mesh, rows.ndim - 1)
                )
            return step(carry, batch, hyperparams, context)

        return jax.lax.scan(body, state, indices)

    return run


def compile_once(step: Callable) -> Callable:
    """Makes a second trace (a recompilation, which on CPU costs as much as many
    steps) an error instead of a silent slowdown: every batch must keep its shape."""
    traces = 0

    def traced_once(*args):
        nonlocal traces
        traces += 1
        if traces > 1:
            raise RuntimeError("the train step was traced twice: a batch changed shape or dtype.")
        return step(*args)

    return traced_once

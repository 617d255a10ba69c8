"""The training state and what updates it: optimizers (with frozen parameters),
learning-rate schedules and weight constraints.

:class:`TrainState` is a plain pytree — step, parameters, the model's other
variable collections (``model_state``: BatchNorm's ``batch_stats``, empty for
models without), optimizer state and a dropout key — so a population of students
is the same pytree with a leading student axis.

Freezing parameters (a pretrained backbone, say) is an optimizer choice::

    optimizer = make_optimizer("adam", frozen=("backbone/",))

Frozen parameters get ``optax.set_to_zero`` (no update, **no optimizer state**:
Adam's moments are allocated for the trainable leaves only), and the step keeps
them out of weight constraints too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from kdjax.models import taps


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    dropout_key: jax.Array


def parameter_path(path) -> str:
    """``"backbone/conv1/kernel"`` for a pytree key path."""
    return "/".join(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def trainable_mask(params: Any, frozen: Sequence[str] = ()) -> Any:
    """A pytree of bools like ``params``: False for every parameter whose path
    (``"module/submodule/kernel"``) matches one of the ``frozen`` regular
    expressions at its start (``"backbone/"`` freezes everything under ``backbone``)."""
    patterns = [re.compile(pattern) for pattern in frozen]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(p.match(parameter_path(path)) for p in patterns), params
    )


def make_optimizer(
    name: str = "adam",
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    frozen: Sequence[str] = (),
) -> optax.GradientTransformation:
    """The optimizer's update direction, without the learning rate (the step applies
    it, so that it is a traced argument). ``frozen`` lists parameter-path patterns
    (see :func:`trainable_mask`) that receive no update and no optimizer state.

    ``weight_decay`` adds ``weight_decay · p`` to every trainable parameter's gradient
    before momentum or Adam's moments, as PyTorch's ``SGD(weight_decay=...)`` and
    ``Adam(weight_decay=...)`` do (L2 regularisation, not AdamW's decoupled decay):
    ``sgd`` with momentum then updates ``p -= lr · b`` with
    ``b = momentum · b + g + weight_decay · p``, PyTorch's SGD (no dampening).
    """
    if name == "adam":
        base = optax.scale_by_adam()
    elif name == "sgd":
        base = optax.trace(decay=momentum) if momentum else optax.identity()
    else:
        raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'sgd'.")
    if weight_decay:
        base = optax.chain(optax.add_decayed_weights(weight_decay), base)
    if not frozen:
        return base
    frozen = tuple(frozen)

    def labels(params):
        mask = trainable_mask(params, frozen)
        return jax.tree.map(lambda trainable: "train" if trainable else "frozen", mask)

    return optax.multi_transform({"train": base, "frozen": optax.set_to_zero()}, labels)


def _compiled_init(model: nn.Module) -> Callable:
    # A student with a method's head records the taps the head reads at init too.
    student_taps = getattr(model, "taps", ())
    capture = taps.capture_filter(student_taps) if student_taps else False

    def initialise(key, images, inputs):
        variables = model.init(key, images, train=False, capture_intermediates=capture, **inputs)
        # Sown and captured intermediates are outputs of this call, not model state.
        return {name: tree for name, tree in variables.items() if name != taps.INTERMEDIATES}

    return jax.jit(initialise)


def create_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_images: jax.Array,
    seed: int,
    *,
    initial_variables: Any = None,
    init_inputs: dict | None = None,
) -> TrainState:
    """Fresh parameters and optimizer state; ``sample_images`` fixes the input shape.

    ``initial_variables`` (e.g. pretrained weights, ``{"params": ..., "batch_stats":
    ...}``) replace the freshly initialised top-level modules they name (a new head
    keeps its fresh initialisation); the dropout key still comes from ``seed``.
    ``init_inputs`` are further keyword inputs of the model's first call (a method's
    head needs the teacher's outputs, see kdjax.models.heads).
    """
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    # One compiled program: run eagerly, every initializer is compiled op by op
    # (measured: 7 s of silence before a small CNN's first step on the CPU).
    variables = dict(_compiled_init(model)(init_key, sample_images, dict(init_inputs or {})))
    for collection, tree in (initial_variables or {}).items():  # replace what is given
        variables[collection] = {**variables.get(collection, {}), **tree}
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=optimizer.init(params),
        dropout_key=dropout_key,
    )


def cosine_decay(total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate factor ``½(1 + cos(π·step/total))``: 1 at the first step, 0 at the
    end of training (held at 0 afterwards)."""
    total = max(1, int(total_steps))

    def factor(step: jax.Array) -> jax.Array:
        progress = jnp.minimum(step.astype(jnp.float32) / total, 1.0)
        return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return factor


def step_decay(boundaries: Sequence[int], rate: float) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate factor ``rate ** k``, ``k`` the number of ``boundaries`` (step
    counts) the step has reached: 1 before the first, ``rate`` from it on, ``rate²``
    from the second, ... (PyTorch's ``MultiStepLR``; RepDistiller's
    ``adjust_learning_rate`` with boundaries at epochs 150, 180, 210 of 240 and rate
    0.1, counted in steps)."""
    edges = jnp.asarray(sorted(int(edge) for edge in boundaries), jnp.int32)

    def factor(step: jax.Array) -> jax.Array:
        reached = jnp.sum(jnp.asarray(step, jnp.int32) >= edges)
        return jnp.asarray(rate, jnp.float32) ** reached.astype(jnp.float32)

    return factor


def max_norm_constraint(params: Any, max_norm: float) -> Any:
    """Rescales every dense kernel's incoming weight vector (one per output unit) to an
    L2 norm of at most ``max_norm`` (Srivastava et al. 2014); other parameters pass."""

    def project(path, leaf):
        if getattr(path[-1], "key", None) != "kernel" or leaf.ndim != 2:
            return leaf
        norms = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=0, keepdims=True))
        return leaf * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))

    return jax.tree_util.tree_map_with_path(project, params)

"""The one training loop every experiment shares: teachers, students, any objective.

Pieces, each small and pure where it can be:

* :class:`TrainState` — a pytree (step, params, optimizer state, dropout key).
* objectives — ``objective(outputs, batch, hyperparams) -> (per_example_loss, parts)``,
  where ``outputs`` is the model's dict (logits and named features), ``batch`` holds
  the images, labels, ids and any stored teacher outputs, and ``hyperparams`` is a
  dict of traced scalars. Logit KD, hint and cosine objectives all fit this shape.
* :func:`make_train_step` — the pure ``(state, batch, hyperparams) -> (state, metrics)``
  step. The learning rate is applied outside the optax transformation so that it,
  too, is a traced argument: one compiled step serves a whole sweep.
* :func:`predict` / :func:`evaluate` / :func:`make_correct_counter` — batched,
  jitted inference with a padded last batch (so it compiles once); the loop builds
  its counter once per run, not once per epoch.
* :func:`fit` — the epoch loop: deterministic per-epoch shuffling, orbax checkpoints
  every epoch, resume from the latest one, a non-finite loss stops the run naming
  the step, one log line per epoch and a progress bar on a terminal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from kdjax import losses, parallel
from kdjax.checkpoints import RunCheckpoints, write_config
from kdjax.data import Split

Batch = Mapping[str, jax.Array]
Hyperparams = Mapping[str, jax.Array]
Objective = Callable[[Mapping[str, jax.Array], Batch, Hyperparams], tuple[jax.Array, dict]]
Preprocess = Callable[[jax.Array], jax.Array]

# How often (in steps) the loop pulls losses to the host to check them and to
# redraw the progress bar: rare enough not to stall the device, often enough to
# stop a diverged run quickly.
_CHECK_EVERY_STEPS = 50


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the step."""


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    dropout_key: jax.Array


# --- Objectives ------------------------------------------------------------------------


def cross_entropy_objective(outputs, batch, hyperparams):
    """Plain supervised training on the hard labels."""
    del hyperparams
    return losses.cross_entropy(outputs["logits"], batch["labels"]), {}


def kd_objective(outputs, batch, hyperparams):
    """``hard_weight · CE + soft_weight · T²·KL`` against stored teacher logits.

    ``alpha`` maps to ``hard_weight = alpha, soft_weight = 1 − alpha``; seeds 001/002
    set the two weights independently.
    """
    hard = losses.cross_entropy(outputs["logits"], batch["labels"])
    soft = losses.distillation_kl(
        outputs["logits"], batch["teacher_logits"], temperature=hyperparams["temperature"]
    )
    loss = hyperparams["hard_weight"] * hard + hyperparams["soft_weight"] * soft
    return loss, {"hard_loss": hard, "soft_loss": soft}


def cosine_objective(outputs, batch, hyperparams):
    """``hard_weight · CE + soft_weight · (1 − cos)`` between the student's flattened
    features and the stored teacher features, average-pooled to the student's width
    (seed 002's cosine run: 2048 → 1024)."""
    hard = losses.cross_entropy(outputs["logits"], batch["labels"])
    student = outputs["features"]
    teacher = losses.pool_features(batch["teacher_features"], student.shape[-1])
    soft = losses.cosine_embedding_loss(student, teacher)
    loss = hyperparams["hard_weight"] * hard + hyperparams["soft_weight"] * soft
    return loss, {"hard_loss": hard, "soft_loss": soft}


def hint_objective(outputs, batch, hyperparams):
    """``hard_weight · CE + soft_weight · MSE`` between the student's regressed map
    (``outputs["hint"]``, from its trainable regressor) and the stored teacher map
    (seed 002's regressor run, FitNets-style)."""
    if "hint" not in outputs:
        raise ValueError(
            "the hint objective needs a student with a hint regressor "
            "(e.g. model 'light_nn_hint'); this model returns no 'hint' output."
        )
    hard = losses.cross_entropy(outputs["logits"], batch["labels"])
    soft = losses.hint_loss(outputs["hint"], batch["teacher_feature_map"])
    loss = hyperparams["hard_weight"] * hard + hyperparams["soft_weight"] * soft
    return loss, {"hard_loss": hard, "soft_loss": soft}


OBJECTIVES: dict[str, Objective] = {
    "ce": cross_entropy_objective,
    "kd": kd_objective,
    "cosine": cosine_objective,
    "hint": hint_objective,
}
# The stored teacher outputs each objective reads (batch key = "teacher_" + name).
TEACHER_OUTPUTS: dict[str, tuple[str, ...]] = {
    "ce": (),
    "kd": ("logits",),
    "cosine": ("features",),
    "hint": ("feature_map",),
}


def make_hyperparams(
    *,
    learning_rate: float,
    temperature: float = 1.0,
    hard_weight: float = 1.0,
    soft_weight: float = 0.0,
) -> dict[str, jax.Array]:
    """The traced hyperparameters of a step, as float32 scalars (or vectors, for sweeps)."""
    values = {
        "learning_rate": learning_rate,
        "temperature": temperature,
        "hard_weight": hard_weight,
        "soft_weight": soft_weight,
    }
    return {name: jnp.asarray(value, jnp.float32) for name, value in values.items()}


# --- Optimizers, state, steps ------------------------------------------------------------


def make_optimizer(name: str = "adam", *, momentum: float = 0.9) -> optax.GradientTransformation:
    """The optimizer's update direction, without the learning rate (applied in the step)."""
    if name == "adam":
        return optax.scale_by_adam()
    if name == "sgd":
        return optax.trace(decay=momentum) if momentum else optax.identity()
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'sgd'.")


def create_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_images: jax.Array,
    seed: int,
) -> TrainState:
    """Fresh parameters and optimizer state; ``sample_images`` fixes the input shape."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_key, sample_images, train=False)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        dropout_key=dropout_key,
    )


# --- Augmentation and weight constraints (run inside the compiled step) -------------------


def shift_count(max_shift: int) -> int:
    """How many distinct translations :func:`random_translate` draws from: ``(2m + 1)²``."""
    return (2 * max_shift + 1) ** 2


def translate(images: jax.Array, offsets: jax.Array, max_shift: int) -> jax.Array:
    """Shifts image ``i`` by ``offsets[i] - max_shift`` pixels (``offsets`` ``[B, 2]``,
    integers in ``[0, 2·max_shift]`` for rows and columns), filling with zeros.

    ``images`` are ``[B, H, W, C]`` raw pixel values; returns float32 of the same shape.
    """
    batch, height, width, channels = images.shape
    padded = jnp.pad(
        images.astype(jnp.float32),
        ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
    )

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def _draw_offsets(key: jax.Array, batch: int, max_shift: int) -> jax.Array:
    return jax.random.randint(key, (batch, 2), 0, 2 * max_shift + 1)


def random_translate(key: jax.Array, images: jax.Array, max_shift: int = 2) -> jax.Array:
    """Shifts each image by its own random (dy, dx) in ``[-max_shift, max_shift]`` pixels,
    filling with zeros (Hinton et al. 2015's jitter of up to two pixels on MNIST).

    ``images`` are ``[B, H, W, C]`` raw pixel values; returns float32 of the same shape.
    This transforms images; the step's :data:`Augment` (of a whole batch) is
    :func:`translate_batch`, which makes the same draws.
    """
    if isinstance(images, Mapping):
        raise TypeError(
            "random_translate takes an image array; an augment takes and returns the "
            "whole batch (augment(key, batch) -> batch): use translate_batch."
        )
    return translate(images, _draw_offsets(key, images.shape[0], max_shift), max_shift)


def translate_batch(
    key: jax.Array, batch: Batch, *, max_shift: int = 2, per_shift: tuple[str, ...] = ()
) -> Batch:
    """A batch :data:`Augment`: :func:`random_translate` of ``batch["images"]`` (the same
    draws), keeping the entries named in ``per_shift`` consistent with it.

    Each ``per_shift`` entry holds, per example, one row for every possible shift
    (``[B, shift_count(max_shift), ...]``, in the order of :func:`every_shift`), e.g. a
    teacher's logits for every translation of the image; the row of the shift drawn
    for that example is kept (``[B, ...]``). The student then learns the teacher's
    answer for exactly the image it sees (a jittered transfer set).
    """
    offsets = _draw_offsets(key, batch["images"].shape[0], max_shift)
    out = dict(batch, images=translate(batch["images"], offsets, max_shift))
    index = offsets[:, 0] * (2 * max_shift + 1) + offsets[:, 1]
    for name in per_shift:
        rows = batch[name]
        if rows.ndim < 2 or rows.shape[1] != shift_count(max_shift):
            raise ValueError(
                f"batch[{name!r}] of shape {rows.shape} does not hold "
                f"{shift_count(max_shift)} shifts per example (max_shift={max_shift})."
            )
        out[name] = jnp.take_along_axis(
            rows, index.reshape((-1, 1) + (1,) * (rows.ndim - 2)), axis=1
        )[:, 0]
    return out


def every_shift(max_shift: int) -> np.ndarray:
    """All ``[shift_count, 2]`` offsets of :func:`translate`, in the row order that
    :func:`translate_batch` indexes ``per_shift`` entries with."""
    side = np.arange(2 * max_shift + 1)
    return np.stack(np.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2).astype(np.int32)


def max_norm_constraint(params: Any, max_norm: float) -> Any:
    """Rescales every dense kernel's incoming weight vector (one per output unit) to an
    L2 norm of at most ``max_norm`` (Srivastava et al. 2014); other parameters pass."""

    def project(path, leaf):
        if getattr(path[-1], "key", None) != "kernel" or leaf.ndim != 2:
            return leaf
        norms = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=0, keepdims=True))
        return leaf * jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-12))

    return jax.tree_util.tree_map_with_path(project, params)


def cosine_decay(total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Learning-rate factor ``½(1 + cos(π·step/total))``: 1 at the first step, 0 at the
    end of training (held at 0 afterwards)."""
    total = max(1, int(total_steps))

    def factor(step: jax.Array) -> jax.Array:
        progress = jnp.minimum(step.astype(jnp.float32) / total, 1.0)
        return 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return factor


# ``augment(key, batch) -> batch`` sees the raw images and every stored extra (e.g.
# :func:`translate_batch`), so it can keep teacher outputs consistent with the images.
Augment = Callable[[jax.Array, Batch], Batch]
Constraint = Callable[[Any], Any]
Schedule = Callable[[jax.Array], jax.Array]
# A fixed constant folded into the step key gives augmentation its own random stream,
# leaving dropout's stream (and every run without augmentation) unchanged.
_AUGMENT_STREAM = 0x5EED


def make_train_step(
    model: nn.Module,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    preprocess: Preprocess,
    *,
    augment: Augment | None = None,
    constraint: Constraint | None = None,
    schedule: Schedule | None = None,
) -> Callable[[TrainState, Batch, Hyperparams], tuple[TrainState, dict]]:
    """The pure training step; jit it (or vmap it over students, then jit).

    ``augment(key, batch)`` (e.g. :func:`translate_batch`) runs on the device before
    ``preprocess`` and returns the batch with its raw images transformed;
    ``constraint(params)`` (e.g. :func:`max_norm_constraint`) projects the parameters
    after every update; ``schedule(step)`` (e.g.
    :func:`cosine_decay`) multiplies the traced learning rate.
    """

    def train_step(state: TrainState, batch: Batch, hyperparams: Hyperparams):
        dropout_key = jax.random.fold_in(state.dropout_key, state.step)
        if augment is not None:
            batch = augment(jax.random.fold_in(dropout_key, _AUGMENT_STREAM), batch)
            if not isinstance(batch, Mapping) or "images" not in batch:
                raise TypeError(
                    "augment(key, batch) must return the batch (a mapping with 'images'), "
                    f"got {type(batch).__name__}; for images alone use translate_batch."
                )
        images = preprocess(batch["images"])

        def loss_fn(params):
            outputs = model.apply(
                {"params": params}, images, train=True, rngs={"dropout": dropout_key}
            )
            per_example, parts = objective(outputs, batch, hyperparams)
            return jnp.mean(per_example), (outputs["logits"], parts)

        (loss, (logits, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
        learning_rate = hyperparams["learning_rate"]
        if schedule is not None:
            learning_rate = learning_rate * schedule(state.step)
        updates = jax.tree.map(lambda u: -learning_rate * u, direction)
        params = optax.apply_updates(state.params, updates)
        if constraint is not None:
            params = constraint(params)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
            **{name: jnp.mean(value) for name, value in parts.items()},
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _padded_batches(count: int, batch_size: int, *arrays: np.ndarray):
    """Yields ``(real, batch_0, batch_1, ...)``: consecutive batches of every array,
    the last one zero-padded to ``batch_size`` so a jitted function compiles once."""
    for start in range(0, count, batch_size):
        batches = [array[start : start + batch_size] for array in arrays]
        real = len(batches[0])
        if real < batch_size:
            batches = [
                np.concatenate([b, np.zeros((batch_size - real,) + b.shape[1:], b.dtype)])
                for b in batches
            ]
        yield (real, *batches)


def predict(
    model: nn.Module,
    params: Any,
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    batch_size: int = 1000,
    output_names: tuple[str, ...] = ("logits",),
) -> dict[str, np.ndarray]:
    """Model outputs for every image, in order, as numpy arrays (inference mode)."""
    batch_size = max(1, min(batch_size, len(images)))

    @jax.jit
    def forward(params, batch_images):
        outputs = model.apply({"params": params}, preprocess(batch_images), train=False)
        return {name: outputs[name] for name in output_names}

    chunks: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for real, batch_images in _padded_batches(len(images), batch_size, images):
        outputs = forward(params, batch_images)
        for name in output_names:
            chunks[name].append(np.asarray(outputs[name])[:real])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def make_correct_counter(
    model: nn.Module, preprocess: Preprocess, population_strategy: str | None = None
) -> Callable:
    """A jitted ``(params, images, labels, mask) -> correct answers`` for one model, or
    for each member of a population (``population_strategy`` as in
    :func:`population_step`). Build it once per run: it compiles on first use."""

    def count(params, images, labels, mask):
        logits = model.apply({"params": params}, preprocess(images), train=False)["logits"]
        return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)

    if population_strategy is None:
        return jax.jit(count)

    def count_each(params, images, labels, mask):
        def one(member_params):
            return count(member_params, images, labels, mask)

        if _resolve_strategy(population_strategy) == "vmap":
            return jax.vmap(one)(params)
        return jax.lax.map(one, params)

    return jax.jit(count_each)


def split_accuracy(counter: Callable, params: Any, split: Split, batch_size: int = 1000):
    """Accuracy on ``split`` with a :func:`make_correct_counter` counter: a float, or a
    list of floats for a population."""
    batch_size = max(1, min(batch_size, len(split)))
    total = 0
    for real, images, labels in _padded_batches(len(split), batch_size, split.images, split.labels):
        total = total + counter(params, images, labels, np.arange(batch_size) < real)
    result = np.asarray(total) / len(split)
    return float(result) if result.ndim == 0 else [float(value) for value in result]


def evaluate(model, params, split: Split, *, preprocess: Preprocess, batch_size: int = 1000):
    """Test accuracy of ``params`` on ``split`` (a fraction in [0, 1])."""
    return split_accuracy(make_correct_counter(model, preprocess), params, split, batch_size)


# --- The loop ----------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    """The example order of one epoch: a function of (seed, epoch) only, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def config_hash(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


@dataclasses.dataclass
class FitResult:
    """What one training run produced.

    For a population (``fit(seed=[...])``) ``params`` has a leading student axis and
    ``test_accuracy`` and the per-epoch metrics are lists, one value per student.

    ``compile_seconds``: with the host feed, the first step's wall time (compile
    plus one step); with the device feed, the ahead-of-time compiles of the
    block programs alone (one or two block lengths). Either way it is inside the
    first epoch's ``seconds``.
    """

    run_dir: Path
    params: Any
    history: list[dict]
    test_accuracy: float | list[float]
    epochs_trained_now: int
    resumed_from_epoch: int
    train_seconds: float
    compile_seconds: float | None

    def summary(self) -> dict:
        rates = [entry["examples_per_second"] for entry in self.history]
        return {
            "run_dir": str(self.run_dir),
            "test_accuracy": self.test_accuracy,
            "epochs": len(self.history),
            "resumed_from_epoch": self.resumed_from_epoch,
            "train_seconds_this_invocation": round(self.train_seconds, 3),
            "compile_seconds": None
            if self.compile_seconds is None
            else round(self.compile_seconds, 3),
            "mean_epoch_seconds": round(float(np.mean([e["seconds"] for e in self.history])), 3)
            if self.history
            else None,
            "examples_per_second": round(float(np.median(rates)), 1) if rates else None,
            "history": self.history,
        }


class _Progress:
    """A one-line progress bar, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int):
        self.label, self.total = label, total
        self.enabled = sys.stderr.isatty()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} loss {loss:.4f}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (len(self.label) + 70) + "\r")
            sys.stderr.flush()


def _resolve_strategy(strategy: str) -> str:
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def population_step(train_step: Callable, strategy: str = "auto") -> Callable:
    """Lifts a one-student step to ``(states, batch, hyperparams)`` with a leading
    student axis on ``states`` and ``hyperparams``; the batch is shared.

    ``"vmap"`` batches the students' arithmetic (wide matmuls: best on GPU/TPU);
    ``"map"`` runs them one after another inside the same compiled program
    (``lax.map``), which on the CPU is faster for convolutional students, since
    XLA's CPU grouped convolutions (what a vmapped convolution becomes) are slow.
    ``"auto"`` picks ``"map"`` on the CPU and ``"vmap"`` elsewhere. Both give
    the same numbers; BUILD_NOTES.md records the measurements.
    """
    strategy = _resolve_strategy(strategy)
    if strategy == "vmap":
        return jax.vmap(train_step, in_axes=(0, None, 0))
    if strategy == "map":

        def mapped(states, batch, hyperparams):
            return jax.lax.map(
                lambda member: train_step(member[0], batch, member[1]), (states, hyperparams)
            )

        return mapped
    raise ValueError(f"population strategy must be 'auto', 'vmap' or 'map', got {strategy!r}.")


def _population_hyperparams(hyperparams: Hyperparams, size: int) -> dict[str, jax.Array]:
    stacked = {}
    for key, value in hyperparams.items():
        value = jnp.asarray(value, jnp.float32)
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != size):
            raise ValueError(
                f"hyperparams[{key!r}] has shape {value.shape}; a population of {size} "
                f"students takes a scalar or a vector of {size} values."
            )
        stacked[key] = jnp.broadcast_to(value, (size,))
    return stacked


FEEDS = ("auto", "host", "device")


def resolve_feed(feed: str, mesh: jax.sharding.Mesh | None = None) -> str:
    """How :func:`fit` feeds the training step.

    ``"device"``: the training set (and any ``train_extras``) is put on the device
    once and each call runs a block of steps as one compiled ``lax.scan`` that
    gathers its own batches, so the device never waits for Python. ``"host"``:
    every batch is gathered from host arrays and sent with its own step, one
    dispatch per step; the only feed for data-parallel runs, where each process
    holds only its rows. ``"auto"``: ``"device"``, or ``"host"`` with a mesh (and,
    in :func:`fit`, when the training arrays would take more than half of an
    accelerator's memory).
    For single students the device feed measured faster on every backend tried
    (BUILD_NOTES.md): on a 2-core CPU 0.43–0.56× the host feed's epoch time, on an
    H200 GPU 0.08–0.17×. On that CPU a population's epoch took 0.91–1.16× its
    host-feed time (the 1.16 for six small MLPs).
    """
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}.")
    if feed == "device" and mesh is not None:
        raise ValueError(
            "feed='device' holds the whole training set on one device; "
            "data-parallel runs (mesh=...) use feed='host'."
        )
    if feed == "auto":
        return "host" if mesh is not None else "device"
    return feed


# The device feed keeps the training set resident only if it takes at most this
# share of the device's memory; the rest is for the model, optimizer and activations.
_DEVICE_DATA_FRACTION = 0.5


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The memory an accelerator offers (``None`` on the CPU, where the arrays are
    in host memory already, or when the backend does not say)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except (NotImplementedError, RuntimeError):
        return None
    return stats.get("bytes_limit")


def _fits_on_device(
    arrays: Mapping[str, np.ndarray], explicit: bool, name: str, log: Callable[[str], None]
) -> bool:
    """Whether the device feed may hold ``arrays``; an explicit ``feed="device"``
    that does not fit is an error, ``"auto"`` falls back to the host and says so."""
    nbytes = sum(np.asarray(array).nbytes for array in arrays.values())
    room = device_memory_bytes()
    if room is None or nbytes <= _DEVICE_DATA_FRACTION * room:
        return True
    if explicit:
        raise ValueError(
            f"feed='device': the training arrays ({nbytes / 2**30:.1f} GiB) do not fit in "
            f"{_DEVICE_DATA_FRACTION:.0%} of the device's {room / 2**30:.1f} GiB; "
            "use feed='host'."
        )
    log(
        f"{name}: the training arrays ({nbytes / 2**30:.1f} GiB) would take more than "
        f"{_DEVICE_DATA_FRACTION:.0%} of the device's memory; feeding from the host."
    )
    return False


def scan_steps(step: Callable) -> Callable:
    """Lifts ``step(state, batch, hyperparams)`` to ``(state, data, indices, hyperparams)``:
    a ``lax.scan`` over the rows of ``indices`` (steps × batch size), each batch
    gathered on the device from the arrays in ``data``. Metrics gain a leading step
    axis. Step ``i`` sees exactly the batch the host feed would send."""

    def run(state, data, indices, hyperparams):
        def body(carry, rows):
            return step(carry, jax.tree.map(lambda array: array[rows], data), hyperparams)

        return jax.lax.scan(body, state, indices)

    return run


# Steps per compiled call of the device feed on the CPU: short enough that the
# progress line and the loss check stay as frequent as with the host feed.
_CPU_STEPS_PER_CALL = _CHECK_EVERY_STEPS


def _step_blocks(steps: int, block: int) -> list[tuple[int, int]]:
    """``(first, last)`` step ranges of ``block`` steps, the last one shorter if
    ``block`` does not divide ``steps``: at most two programs to compile."""
    return [(first, min(first + block, steps)) for first in range(0, steps, block)]


def _summarise(values: np.ndarray) -> float | list[float]:
    """A float for one student, a list of floats for a population."""
    values = np.asarray(values, np.float64)
    return round(float(values), 6) if values.ndim == 0 else [round(float(v), 6) for v in values]


def fit(
    *,
    name: str,
    run_dir: str | Path,
    run_config: Mapping[str, Any],
    model: nn.Module,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    hyperparams: Hyperparams,
    train_split: Split,
    test_split: Split,
    preprocess: Preprocess,
    epochs: int,
    batch_size: int,
    seed: int | Sequence[int],
    data_seed: int | None = None,
    train_extras: Mapping[str, np.ndarray] | None = None,
    eval_batch_size: int = 1000,
    population_strategy: str = "auto",
    augment: Augment | None = None,
    constraint: Constraint | None = None,
    schedule: Schedule | None = None,
    mesh: jax.sharding.Mesh | None = None,
    feed: str = "auto",
    steps_per_call: int | None = None,
    checkpoint_every: int = 1,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
) -> FitResult:
    """Trains ``model`` for ``epochs`` epochs, resuming from ``run_dir`` if it has checkpoints.

    ``seed`` initialises parameters and dropout. A **list** of seeds trains a
    population of students together: ``jax.vmap`` over a leading student axis of
    the state and of ``hyperparams`` (each a scalar, shared, or a vector with one
    value per student), one compiled program, every student on the same batches.
    Student ``i`` ends exactly where a single run with ``seed=seeds[i]``, the same
    ``data_seed`` and student ``i``'s hyperparameters ends.

    ``population_strategy`` picks how the compiled step walks the students (see
    :func:`population_step`). ``augment``, ``constraint`` and ``schedule`` are passed
    to :func:`make_train_step`.

    ``mesh`` (see :func:`kdjax.parallel.data_mesh`) trains data-parallel: the state is
    replicated over the mesh's ``"data"`` axis and every batch split over it; with
    several processes each one reads only its own rows of each batch. The result
    equals the single-device run up to floating-point reassociation.

    ``feed`` (see :func:`resolve_feed`) picks per-step host batches or a
    device-resident training set stepped through in compiled blocks of
    ``steps_per_call`` steps (default: the whole epoch on GPU/TPU, 50 steps on the
    CPU, where a block is long enough to remove the per-step overhead and short
    enough to keep the progress line and the loss checks frequent; a shorter last
    block compiles a second program). Both feeds give the same batches in the
    same order.
    ``checkpoint_every`` saves every that many epochs (and always the last one).

    ``data_seed`` fixes the example order (default: the seed, or the first seed).
    ``train_extras`` are arrays aligned with ``train_split`` (row ``i`` belongs to
    example ``train_split.ids[i]``), e.g. stored teacher logits; they are gathered
    with the same indices as the images, so shuffling cannot misalign them.
    ``run_config`` is written to ``run_dir/config.json``; a directory that trained
    something else is refused. Re-running with more epochs continues the run.
    """
    if batch_size > len(train_split):
        raise ValueError(
            f"batch size {batch_size} is larger than the training set ({len(train_split)})."
        )
    train_extras = dict(train_extras or {})
    for key, array in train_extras.items():
        if len(array) != len(train_split):
            raise ValueError(
                f"train_extras[{key!r}] has {len(array)} rows for "
                f"{len(train_split)} training examples."
            )
    population = None if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if population is not None and not population:
        raise ValueError("a population needs at least one seed.")
    if data_seed is None:
        data_seed = int(seed) if population is None else population[0]
    run_dir = Path(run_dir)
    write_config(run_dir, dict(run_config))

    explicit_device = feed == "device"
    feed = resolve_feed(feed, mesh)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}.")
    if steps_per_call is not None and steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}.")

    sample = preprocess(train_split.images[:1])
    train_step = make_train_step(
        model,
        objective,
        optimizer,
        preprocess,
        augment=augment,
        constraint=constraint,
        schedule=schedule,
    )
    if population is None:
        state = create_state(model, optimizer, sample, int(seed))
        step = train_step
    else:
        state = jax.vmap(lambda member_seed: create_state(model, optimizer, sample, member_seed))(
            jnp.asarray(population)
        )
        hyperparams = _population_hyperparams(hyperparams, len(population))
        step = population_step(train_step, population_strategy)
    step_fn = jax.jit(_compile_once(step))  # the host feed's per-step program
    if mesh is not None:
        rows = parallel.local_rows(batch_size, mesh)
        state = parallel.replicate(state, mesh)
        hyperparams = parallel.replicate(hyperparams, mesh)
        step_fn = jax.jit(step_fn, out_shardings=parallel.replicated(mesh))

    counter = make_correct_counter(
        model, preprocess, None if population is None else population_strategy
    )

    def test_accuracy_of(params) -> float | list[float]:
        if mesh is not None:  # evaluate a host copy: every process scores the full test set
            params = jax.tree.map(parallel.to_host, params)
        return split_accuracy(counter, params, test_split, eval_batch_size)

    checkpoints = RunCheckpoints(run_dir)
    history: list[dict] = []
    start_epoch = checkpoints.latest_epoch() or 0
    if start_epoch > epochs:
        checkpoints.close()
        raise ValueError(
            f"{run_dir} already holds {start_epoch} epochs, more than the {epochs} requested; "
            "ask for at least that many or use another --workdir."
        )
    if start_epoch:
        state, meta = checkpoints.restore(start_epoch, state)
        history = list(meta["history"])
        verb = "Reusing finished" if start_epoch == epochs else "Resuming"
        log(f"{verb} {name} from {run_dir} (epoch {start_epoch}/{epochs}).")

    steps_per_epoch = len(train_split) // batch_size
    # Every array a step reads, row i belonging to example train_split.ids[i].
    training_arrays = {
        "images": train_split.images,
        "labels": train_split.labels,
        "ids": train_split.ids,
        **train_extras,
    }
    if feed == "device" and start_epoch < epochs:
        if _fits_on_device(training_arrays, explicit_device, name, log):
            if steps_per_call is None:
                cpu = jax.default_backend() == "cpu"
                steps_per_call = _CPU_STEPS_PER_CALL if cpu else steps_per_epoch
            blocks_of_epoch = _step_blocks(steps_per_epoch, steps_per_call)
            device_data = jax.device_put(training_arrays)
            scanned = jax.jit(scan_steps(step))
            compiled_blocks: dict[int, Callable] = {}  # block length -> compiled program
        else:
            feed = "host"
    compile_seconds = None
    train_seconds = 0.0
    try:
        for epoch in range(start_epoch, epochs):
            order = epoch_permutation(data_seed, epoch, len(train_split))
            progress = _Progress(f"{name} epoch {epoch + 1}/{epochs}", steps_per_epoch)
            blocks: list[dict] = []  # metrics with a leading step axis, in step order

            def record(
                done: int, block: dict, epoch=epoch, progress=progress, blocks=blocks
            ) -> None:
                """Checks a block of steps' losses (host copies), ending at step ``done``."""
                losses_ = parallel.to_host(block["loss"])
                _check_finite(
                    losses_,
                    first_step=epoch * steps_per_epoch + done - len(losses_) + 1,
                    name=name,
                    epoch=epoch,
                    last_saved=checkpoints.latest_epoch(),
                )
                blocks.append(block)
                progress.update(done, float(np.mean(losses_[-1])))

            epoch_start = time.perf_counter()
            if feed == "host":
                pending: list[dict] = []
                for batch_index in range(steps_per_epoch):
                    indices = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                    if mesh is not None:
                        indices = indices[rows]  # this process's rows only
                    batch = {key: array[indices] for key, array in training_arrays.items()}
                    if mesh is not None:
                        batch = parallel.global_batch(batch, batch_size, mesh)
                    if compile_seconds is None:
                        compile_start = time.perf_counter()
                        state, metrics = step_fn(state, batch, hyperparams)
                        jax.block_until_ready(metrics)
                        compile_seconds = time.perf_counter() - compile_start
                    else:
                        state, metrics = step_fn(state, batch, hyperparams)
                    pending.append(metrics)
                    done = batch_index + 1
                    if done % _CHECK_EVERY_STEPS == 0 or done == steps_per_epoch:
                        record(done, {k: jnp.stack([m[k] for m in pending]) for k in metrics})
                        pending = []
            else:
                rows_of_epoch = order[: steps_per_epoch * batch_size].astype(np.int32)
                rows_of_epoch = rows_of_epoch.reshape(steps_per_epoch, batch_size)
                previous = None
                for first, last in blocks_of_epoch:
                    rows_block = rows_of_epoch[first:last]
                    program = compiled_blocks.get(last - first)
                    if program is None:
                        compile_start = time.perf_counter()
                        program = scanned.lower(
                            state, device_data, rows_block, hyperparams
                        ).compile()
                        compiled_blocks[last - first] = program
                        # Both block lengths' compiles count, so the epoch minus
                        # compile_seconds is pure training.
                        compile_seconds = (compile_seconds or 0.0) + (
                            time.perf_counter() - compile_start
                        )
                    state, metrics = program(state, device_data, rows_block, hyperparams)
                    if previous is not None:  # check the last block while this one runs
                        record(*previous)
                    previous = (last, metrics)
                record(*previous)
            epoch_metrics = {
                key: _summarise(
                    np.mean(np.concatenate([parallel.to_host(b[key]) for b in blocks]), 0)
                )
                for key in blocks[0]
            }
            seconds = time.perf_counter() - epoch_start
            train_seconds += seconds
            progress.close()
            test_accuracy = test_accuracy_of(state.params)
            entry = {
                "epoch": epoch + 1,
                **{f"train_{key}": value for key, value in epoch_metrics.items()},
                "test_accuracy": test_accuracy,
                "seconds": round(seconds, 3),
                "examples_per_second": round(steps_per_epoch * batch_size / seconds, 1),
            }
            history.append(entry)
            if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
                checkpoints.save(epoch + 1, state, {"history": history})
            log(
                f"{name} epoch {epoch + 1}/{epochs}: loss {_describe(entry['train_loss'])} "
                f"train acc {_describe(entry['train_accuracy'])} "
                f"test acc {_describe(test_accuracy)} | "
                f"{entry['examples_per_second']:,.0f} examples/s, {seconds:.1f} s"
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        checkpoints.close()

    final_accuracy = history[-1]["test_accuracy"] if history else test_accuracy_of(state.params)
    params = state.params if mesh is None else jax.tree.map(parallel.to_host, state.params)
    return FitResult(
        run_dir=run_dir,
        params=params,
        history=history,
        test_accuracy=final_accuracy,
        epochs_trained_now=epochs - start_epoch,
        resumed_from_epoch=start_epoch,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
    )


def _describe(value: float | list[float]) -> str:
    if isinstance(value, list):
        return f"{np.mean(value):.4f}±{np.std(value):.4f} (n={len(value)})"
    return f"{value:.4f}"


def _compile_once(step: Callable) -> Callable:
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


def _check_finite(
    losses_: np.ndarray, *, first_step: int, name: str, epoch: int, last_saved: int | None
) -> None:
    finite = np.isfinite(losses_)
    if not finite.all():
        row = int(np.flatnonzero(~finite.reshape(len(losses_), -1).all(axis=1))[0])
        step = first_step + row
        values = losses_[row]
        which = ""
        if np.ndim(values):
            bad_members = np.flatnonzero(~np.isfinite(values)).tolist()
            which = f" for student(s) {bad_members}"
            values = values[bad_members[0]]
        saved = f"epoch {last_saved}" if last_saved else "none"
        raise NonFiniteLossError(
            f"{name}: loss became {values} at step {step} (epoch {epoch + 1}){which}; "
            f"stopped. Last checkpoint: {saved}. Lower the learning rate or check the inputs."
        )

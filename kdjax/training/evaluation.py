"""Batched, jitted inference: model outputs, correct-answer counts and accuracies.

Every function pads the last batch to the batch size, so each compiles once.
``variables`` are a model's Flax variables: ``{"params": ..., "batch_stats": ...}``
(only ``params`` for models without BatchNorm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data import Split
from kdjax.models import taps
from kdjax.training import compiler
from kdjax.training.step import over_members
from kdjax.types import Preprocess


def padded_batches(count: int, batch_size: int, *arrays: np.ndarray) -> Iterator[tuple]:
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
    variables: Any,
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    batch_size: int = 1000,
    output_names: tuple[str, ...] = ("logits",),
) -> dict[str, np.ndarray]:
    """Model outputs for every image, in order, as numpy arrays (inference mode);
    ``output_names`` may name any tap (:mod:`kdjax.models.taps`) that is one array."""
    batch_size = max(1, min(batch_size, len(images)))
    extra = taps.extra_taps(output_names, ("logits",))

    @compiler.jit
    def forward(variables, batch_images):
        outputs = taps.apply(model, variables, preprocess(batch_images), taps=extra, train=False)
        return {name: outputs[name] for name in output_names}

    chunks: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for real, batch_images in padded_batches(len(images), batch_size, images):
        outputs = forward(variables, batch_images)
        for name in output_names:
            chunks[name].append(np.asarray(outputs[name])[:real])
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def make_correct_counter(
    model: nn.Module, preprocess: Preprocess, population_strategy: str | None = None
) -> Callable:
    """A jitted ``(variables, images, labels, mask) -> correct answers`` for one model
    (a scalar), or for each member of a population (``[members]``, variables with a
    leading member axis; ``population_strategy`` as in
    :func:`kdjax.training.step.population_step`). Build it once per run."""

    def count(variables, images, labels, mask):
        logits = model.apply(variables, preprocess(images), train=False)["logits"]
        return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)

    if population_strategy is None:
        return compiler.jit(count)

    def count_each(variables, images, labels, mask):
        """``mask`` is ``[batch]``, or ``[students, batch]``: each its own test rows."""
        own = mask.ndim == 2

        def one(member):
            member_variables, member_mask = member
            return count(member_variables, images, labels, member_mask if own else mask)

        return over_members(one, (variables, mask if own else None), population_strategy)

    return compiler.jit(count_each)


def split_accuracy(
    counter: Callable,
    variables: Any,
    split: Split,
    batch_size: int = 1000,
    *,
    member_masks: np.ndarray | None = None,
) -> np.ndarray:
    """Accuracy on ``split`` with a :func:`make_correct_counter` counter: a 0-d array
    for one model, ``[members]`` for a population. ``member_masks`` (``[members, N]``
    bools) scores each student on its own rows of the split (its held-out fold)."""
    batch_size = max(1, min(batch_size, len(split)))
    total = 0
    arrays = [split.images, split.labels]
    if member_masks is not None:
        arrays.append(np.asarray(member_masks, bool).T)  # [N, members], batched by row
    for real, images, labels, *masks in padded_batches(len(split), batch_size, *arrays):
        valid = np.arange(batch_size) < real
        mask = valid if member_masks is None else (masks[0] & valid[:, None]).T
        total = total + counter(variables, images, labels, mask)
    denominator = len(split) if member_masks is None else np.sum(member_masks, axis=1)
    return np.asarray(total, np.float64) / denominator


def evaluate(
    model: nn.Module, variables: Any, split: Split, *, preprocess: Preprocess, batch_size=1000
) -> float:
    """Test accuracy of one model's ``variables`` on ``split`` (a fraction in [0, 1])."""
    counter = make_correct_counter(model, preprocess)
    return float(split_accuracy(counter, variables, split, batch_size))


def recompute_batch_stats(
    model: nn.Module,
    variables: Any,
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    batch_size: int = 256,
) -> dict:
    """``variables`` with every BatchNorm layer's running mean and variance recomputed
    over ``images`` ("precise BN"): the exact mean and (biased) variance of each
    layer's input over all the images, each layer fed by the layers before it in
    training mode, as during training.

    Running averages lag the weights: with Keras' momentum 0.999 (MobileNetV2) a short
    training run leaves them far from the statistics the final weights produce, and
    inference, which reads them, collapses (seen: the CIFAR stand-in's MobileNetV2 at
    chance on its test set while its training accuracy was 54 %). Layers that run on
    their running averages even in training mode (frozen ones) are left as they are.
    """
    if "batch_stats" not in variables:
        return dict(variables)
    batch_size = max(1, min(batch_size, len(images)))

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
            running = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
            running = module.use_running_average if running is None else running
            if not running:
                x = jnp.asarray(args[0], jnp.float32)
                axes = tuple(range(x.ndim - 1))
                for name, value in (("mean", x), ("square", jnp.square(x))):
                    # Stored as the array itself (not sow's tuple of calls).
                    module.sow("moments", name, jnp.mean(value, axes),
                               init_fn=lambda: None, reduce_fn=lambda _, new: new)  # fmt: skip
        return next_fun(*args, **kwargs)

    @compiler.jit
    def moments(variables, batch_images):
        with nn.intercept_methods(record):
            _, collections = model.apply(
                variables, preprocess(batch_images), train=True, mutable=["batch_stats", "moments"]
            )
        return collections.get("moments", {})

    totals, count = None, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]  # a shorter last batch: one more compile
        weight = len(batch)
        batch_moments = moments(variables, batch)
        sums = jax.tree.map(lambda m, w=weight: np.asarray(m, np.float64) * w, batch_moments)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        count += weight

    def replace(tree, recorded):
        for name, value in recorded.items():
            if "mean" in value and "square" in value and not isinstance(value["mean"], dict):
                mean = value["mean"] / count
                variance = np.maximum(value["square"] / count - mean**2, 0.0)
                old = tree[name]
                tree[name] = {
                    **old,
                    "mean": jnp.asarray(mean, old["mean"].dtype),
                    "var": jnp.asarray(variance, old["var"].dtype),
                }
            else:
                tree[name] = replace(dict(tree[name]), value)
        return tree

    return {**variables, "batch_stats": replace(dict(variables["batch_stats"]), totals)}

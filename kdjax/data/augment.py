"""Translations inside the compiled step, and the one place that fixes the order of
shifts shared by the jittered transfer set's reader and writer.

A shift of up to ``m`` pixels has ``(2m + 1)²`` possible values. :func:`every_shift`
lists them in a fixed order; :meth:`kdjax.distill.teachers.Teacher.outputs` (``train_shifts``)
stores a teacher's outputs for every shift in that order, and :func:`translate_batch`
keeps, per example, the row of the shift it drew. The student then learns the
teacher's answer for exactly the image it sees (Hinton et al. 2015's jitter).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.types import Batch

# A fixed constant folded into the step key gives augmentation its own random stream,
# leaving dropout's stream (and every run without augmentation) unchanged.
AUGMENT_STREAM = 0x5EED


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


def draw_offsets(key: jax.Array, batch: int, max_shift: int) -> jax.Array:
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
    return translate(images, draw_offsets(key, images.shape[0], max_shift), max_shift)


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
    offsets = draw_offsets(key, batch["images"].shape[0], max_shift)
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

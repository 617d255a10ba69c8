"""Random image augmentations in pure JAX, drawn from a key inside the compiled step.

Every augmentation has the form ``augment(key, batch) -> batch``: ``batch`` is a dict
whose ``"images"`` are ``[B, H, W, C]`` raw pixel values (``uint8``, or floats in
``[0, 255]``); other entries pass through untouched, and the images keep their shape
and dtype (``uint8`` results are rounded and clipped). Draws are per image, so a batch
sees many transformations, and fresh each step — unlike the TensorFlow notebook, which
drew one random transformation per image once, before training, and applied it to the
test images too. Apply augmentations to training batches only.

Factories (each returns an augmentation):

- :func:`flip` — horizontal and/or vertical flips, each with probability ½;
- :func:`pad_crop` — a random crop of the zero-padded image (a shift, zeros filled in);
- :func:`rotate90` — a random multiple of 90° (square images);
- :func:`random_affine` — rotation by a uniform angle and Keras-style zoom in one
  bilinear resampling (:func:`rotate` and :func:`zoom` are its special cases);
- :func:`brightness` — multiply by a uniform factor, clip to ``[0, 255]``;
- :func:`compose` — chain augmentations, each with its own sub-key.

The TensorFlow notebook's ``ImageDataGenerator(rotation_range=180, zoom_range=[0.5, 1.0],
brightness_range=[0.2, 1.0])`` is::

    augment = compose(random_affine(max_degrees=180, zoom_range=(0.5, 1.0)),
                      brightness(0.2, 1.0))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from kdjax.data.augment import draw_offsets, translate

Batch = dict[str, jax.Array]
Augment = Callable[[jax.Array, Batch], Batch]
FILL_MODES = ("nearest", "reflect", "constant", "wrap", "mirror")


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(f"batch['images'] must be [B, H, W, C], got shape {images.shape}.")


def _like(values: jax.Array, images: jax.Array) -> jax.Array:
    """``values`` in the dtype of ``images``; integer pixels rounded and clipped."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        info = jnp.iinfo(images.dtype)
        return jnp.clip(jnp.round(values), info.min, info.max).astype(images.dtype)
    return values.astype(images.dtype)


def _with_images(batch: Batch, images: jax.Array) -> Batch:
    return {**batch, "images": images}


# --- Deterministic transforms -----------------------------------------------------------------


def flip_images(images: jax.Array, horizontal: jax.Array, vertical: jax.Array) -> jax.Array:
    """Flips image ``i`` left-right where ``horizontal[i]`` and upside-down where
    ``vertical[i]`` (boolean ``[B]`` arrays)."""
    _check_images(images)
    images = jnp.where(horizontal[:, None, None, None], images[:, :, ::-1], images)
    return jnp.where(vertical[:, None, None, None], images[:, ::-1], images)


def rotation_matrices(degrees: jax.Array) -> jax.Array:
    """``[B, 2, 2]`` maps from output to input pixel offsets (row, column) that rotate
    images by ``degrees`` counter-clockwise: ``[[cos θ, sin θ], [−sin θ, cos θ]]``.
    At 90° this is ``jnp.rot90(image)``."""
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)


def affine_images(
    images: jax.Array, matrices: jax.Array, *, fill_mode: str = "nearest"
) -> jax.Array:
    """Resamples each image bilinearly: output pixel ``p`` takes the input value at
    ``c + M (p − c)``, with ``c`` the image centre and ``M = matrices[i]`` (``[B, 2, 2]``,
    acting on (row, column)). Points outside the image follow ``fill_mode`` (as
    ``scipy.ndimage``; Keras' default is ``"nearest"``; ``"constant"`` fills 0)."""
    _check_images(images)
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}.")
    height, width = images.shape[1:3]
    center = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    offsets = jnp.stack([rows, cols]).astype(jnp.float32) - center[:, None, None]

    def resample(image: jax.Array, matrix: jax.Array) -> jax.Array:
        source = jnp.einsum("ij,jhw->ihw", matrix, offsets) + center[:, None, None]

        def channel(values: jax.Array) -> jax.Array:
            return ndimage.map_coordinates(values, list(source), order=1, mode=fill_mode)

        return jax.vmap(channel, in_axes=2, out_axes=2)(image.astype(jnp.float32))

    return _like(jax.vmap(resample)(images, matrices.astype(jnp.float32)), images)


def rotate_images(
    images: jax.Array, degrees: jax.Array, *, fill_mode: str = "nearest"
) -> jax.Array:
    """Rotates image ``i`` by ``degrees[i]`` counter-clockwise (bilinear)."""
    degrees = jnp.broadcast_to(jnp.asarray(degrees, jnp.float32), images.shape[:1])
    return affine_images(images, rotation_matrices(degrees), fill_mode=fill_mode)


def zoom_images(
    images: jax.Array, row_factors: jax.Array, col_factors: jax.Array, *, fill_mode: str = "nearest"
) -> jax.Array:
    """Keras-style zoom: output offset ``d`` from the centre samples the input at
    ``factor · d``, so factors below 1 zoom in (0.5 shows the central half, enlarged
    twice) and above 1 zoom out."""
    count = images.shape[:1]
    row_factors = jnp.broadcast_to(jnp.asarray(row_factors, jnp.float32), count)
    col_factors = jnp.broadcast_to(jnp.asarray(col_factors, jnp.float32), count)
    zeros = jnp.zeros_like(row_factors)
    matrices = jnp.stack(
        [jnp.stack([row_factors, zeros], -1), jnp.stack([zeros, col_factors], -1)], -2
    )
    return affine_images(images, matrices, fill_mode=fill_mode)


# --- Random augmentations ---------------------------------------------------------------------


def flip(*, horizontal: bool = True, vertical: bool = False, probability: float = 0.5) -> Augment:
    """Flips each image left-right (and/or upside-down) with ``probability``.

    Example:
      >>> images = jnp.zeros((4, 8, 8, 3), jnp.uint8)
      >>> flip(vertical=True)(jax.random.key(0), {"images": images})["images"].shape
      (4, 8, 8, 3)
    """

    def augment(key: jax.Array, batch: Batch) -> Batch:
        images = batch["images"]
        _check_images(images)
        draws = jax.random.uniform(key, (2, images.shape[0])) < probability
        return _with_images(batch, flip_images(images, draws[0] & horizontal, draws[1] & vertical))

    return augment


def pad_crop(padding: int = 4) -> Augment:
    """A random crop of each image, at its own size, out of the image padded with
    ``padding`` zeros on every side: torchvision's ``RandomCrop(size, padding=padding)``,
    i.e. a shift by up to ``padding`` pixels each way, uncovered pixels black.

    Example:
      >>> images = jnp.ones((2, 8, 8, 3), jnp.uint8)
      >>> pad_crop(2)(jax.random.key(0), {"images": images})["images"].dtype
      dtype('uint8')
    """

    def augment(key: jax.Array, batch: Batch) -> Batch:
        images = batch["images"]
        _check_images(images)
        offsets = draw_offsets(key, images.shape[0], padding)
        return _with_images(batch, _like(translate(images, offsets, padding), images))

    return augment


def rotate90() -> Augment:
    """Rotates each (square) image by 0°, 90°, 180° or 270°, each with probability ¼.

    Exact (no resampling); with :func:`flip` it draws from all 8 symmetries of the square.
    """

    def augment(key: jax.Array, batch: Batch) -> Batch:
        images = batch["images"]
        _check_images(images)
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"rotate90 needs square images, got {images.shape[1:3]}.")
        turns = jax.random.randint(key, images.shape[:1], 0, 4)
        branches = [lambda image, k=k: jnp.rot90(image, k) for k in range(4)]
        rotated = jax.vmap(lambda image, k: jax.lax.switch(k, branches, image))(images, turns)
        return _with_images(batch, rotated)

    return augment


def random_affine(
    *,
    max_degrees: float = 0.0,
    zoom_range: tuple[float, float] = (1.0, 1.0),
    fill_mode: str = "nearest",
) -> Augment:
    """Rotation by an angle uniform in ``[−max_degrees, max_degrees]`` and a zoom with
    row and column factors drawn independently, uniform in ``zoom_range`` (as Keras'
    ``ImageDataGenerator``), in one bilinear resampling: ``M = R(θ) · diag(z_r, z_c)``.

    Example:
      >>> augment = random_affine(max_degrees=180, zoom_range=(0.5, 1.0))
    """
    low, high = zoom_range
    if not 0 < low <= high:
        raise ValueError(f"zoom_range must be 0 < low <= high, got {zoom_range}.")
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}.")

    def augment(key: jax.Array, batch: Batch) -> Batch:
        images = batch["images"]
        _check_images(images)
        count = images.shape[0]
        angle_key, zoom_key = jax.random.split(key)
        degrees = jax.random.uniform(angle_key, (count,), minval=-max_degrees, maxval=max_degrees)
        factors = jax.random.uniform(zoom_key, (2, count), minval=low, maxval=high)
        matrices = rotation_matrices(degrees) * factors.T[:, None, :]  # R · diag(z_r, z_c)
        return _with_images(batch, affine_images(images, matrices, fill_mode=fill_mode))

    return augment


def rotate(max_degrees: float, *, fill_mode: str = "nearest") -> Augment:
    """:func:`random_affine` with rotation only."""
    return random_affine(max_degrees=max_degrees, fill_mode=fill_mode)


def zoom(low: float = 0.5, high: float = 1.0, *, fill_mode: str = "nearest") -> Augment:
    """:func:`random_affine` with zoom only (factors in ``[low, high]``; Keras' 0.5–1.0
    zooms in by up to 2×)."""
    return random_affine(zoom_range=(low, high), fill_mode=fill_mode)


def brightness(low: float = 0.2, high: float = 1.0) -> Augment:
    """Multiplies each image by a factor uniform in ``[low, high]`` and clips to
    ``[0, 255]`` — what Keras' ``brightness_range`` does through PIL's
    ``ImageEnhance.Brightness``."""
    if not 0 <= low <= high:
        raise ValueError(f"brightness needs 0 <= low <= high, got ({low}, {high}).")

    def augment(key: jax.Array, batch: Batch) -> Batch:
        images = batch["images"]
        _check_images(images)
        factors = jax.random.uniform(key, (images.shape[0], 1, 1, 1), minval=low, maxval=high)
        scaled = jnp.clip(images.astype(jnp.float32) * factors, 0.0, 255.0)
        return _with_images(batch, _like(scaled, images))

    return augment


def compose(*augments: Augment) -> Augment:
    """Applies ``augments`` in order, each with its own sub-key of ``key``.

    Example:
      >>> augment = compose(flip(vertical=True), rotate90(), brightness(0.8, 1.2))
      >>> batch = {"images": jnp.zeros((4, 8, 8, 3), jnp.uint8), "labels": jnp.arange(4)}
      >>> jax.jit(augment)(jax.random.key(0), batch)["labels"].tolist()
      [0, 1, 2, 3]
    """

    def augment(key: jax.Array, batch: Batch) -> Batch:
        for sub_key, step in zip(jax.random.split(key, len(augments)), augments, strict=True):
            batch = step(sub_key, batch)
        return batch

    return augment


# Named augmentations (the name a run records, RunSpec.image_augment), built lazily.
PRESETS = {
    # The TensorFlow notebook's ImageDataGenerator (rotation 180°, zoom 0.5–1, brightness 0.2–1),
    # plus flips; drawn per image and per step, training batches only.
    "tf_notebook": lambda: compose(
        flip(horizontal=True, vertical=True),
        random_affine(max_degrees=180.0, zoom_range=(0.5, 1.0)),
        brightness(0.2, 1.0),
    ),
    # CIFAR's standard augmentation (RepDistiller's, and most CIFAR ResNet papers'):
    # RandomCrop(32, padding=4) and RandomHorizontalFlip.
    "crop_flip": lambda: compose(pad_crop(4), flip(horizontal=True)),
    # The 8 exact symmetries of the square: no interpolation.
    "symmetries": lambda: compose(flip(horizontal=True, vertical=True), rotate90()),
}


def preset(name: str) -> Augment:
    """The augmentation registered as ``name`` in :data:`PRESETS`."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown image augmentation {name!r}; known: {sorted(PRESETS)}") from None

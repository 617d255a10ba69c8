"""Image augmentations: identities, inverses, exact geometry on ramps, determinism, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import image_augment as aug

SIZE = 16


def _batch(dtype=jnp.uint8, count=4):
    images = jax.random.randint(jax.random.key(0), (count, SIZE, SIZE, 3), 0, 256)
    return {"images": images.astype(dtype), "labels": jnp.arange(count)}


def _ramps(count=1):
    """Image whose channel 0 is the row index and channel 1 the column index (float)."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)
    return jnp.asarray(np.repeat(image[None], count, 0))


ALL = {
    "flip": aug.flip(horizontal=True, vertical=True),
    "rotate90": aug.rotate90(),
    "affine": aug.random_affine(max_degrees=180, zoom_range=(0.5, 1.0)),
    "brightness": aug.brightness(0.2, 1.0),
    "pad_crop": aug.pad_crop(4),
    "crop_flip": aug.preset("crop_flip"),
    "affine_brightness": aug.compose(
        aug.random_affine(max_degrees=180, zoom_range=(0.5, 1.0)), aug.brightness(0.2, 1.0)
    ),
}


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
@pytest.mark.parametrize("name", sorted(ALL))
def test_shape_dtype_passthrough_determinism_and_jit(name, dtype):
    augment, batch = ALL[name], _batch(dtype)
    out = augment(jax.random.key(1), batch)
    assert out["images"].shape == batch["images"].shape and out["images"].dtype == dtype
    assert out["labels"] is batch["labels"]
    again = jax.jit(augment)(jax.random.key(1), batch)
    np.testing.assert_allclose(np.asarray(again["images"], np.float32),
                               np.asarray(out["images"], np.float32), atol=1)  # fmt: skip
    other = augment(jax.random.key(2), batch)
    assert not np.array_equal(other["images"], out["images"])
    values = np.asarray(out["images"], np.float32)
    assert values.min() >= 0 and values.max() <= 255


def test_zero_strength_is_the_identity():
    batch = _batch()
    for augment in (
        aug.random_affine(max_degrees=0.0, zoom_range=(1.0, 1.0)),
        aug.brightness(1.0, 1.0),
        aug.flip(horizontal=True, vertical=True, probability=0.0),
    ):
        np.testing.assert_array_equal(augment(jax.random.key(3), batch)["images"], batch["images"])


def test_a_flip_is_its_own_inverse():
    batch, augment, key = _batch(), aug.flip(horizontal=True, vertical=True), jax.random.key(4)
    once = augment(key, batch)
    assert not np.array_equal(once["images"], batch["images"])
    np.testing.assert_array_equal(augment(key, once)["images"], batch["images"])
    images = batch["images"]
    flipped = aug.flip_images(images, jnp.array([True, False, True, False]),
                              jnp.array([False, False, True, True]))  # fmt: skip
    np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
    np.testing.assert_array_equal(flipped[1], images[1])
    np.testing.assert_array_equal(flipped[2], images[2, ::-1, ::-1])
    np.testing.assert_array_equal(flipped[3], images[3, ::-1])


def test_crop_flip_shifts_by_up_to_four_pixels_fills_zeros_and_flips_half():
    batch = _batch(count=64)
    out = np.asarray(aug.preset("crop_flip")(jax.random.key(5), batch)["images"])
    images = np.asarray(batch["images"])
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flipped = 0
    for index in range(len(images)):
        crops = [
            padded[index, dy : dy + SIZE, dx : dx + SIZE] for dy in range(9) for dx in range(9)
        ]
        plain = any(np.array_equal(out[index], crop) for crop in crops)
        mirrored = any(np.array_equal(out[index], crop[:, ::-1]) for crop in crops)
        assert plain or mirrored  # a crop of the zero-padded image, maybe mirrored
        flipped += mirrored and not plain
    assert 16 < flipped < 48
    np.testing.assert_array_equal(aug.pad_crop(0)(jax.random.key(5), batch)["images"], images)


def test_rotations_by_multiples_of_90_degrees_are_exact():
    images = _batch(jnp.float32)["images"]
    np.testing.assert_allclose(aug.rotate_images(images, 360.0), images, atol=1e-3)
    np.testing.assert_allclose(aug.rotate_images(images, 90.0), jnp.rot90(images, 1, (1, 2)),
                               atol=1e-3)  # fmt: skip
    turned = aug.rotate90()(jax.random.key(5), {"images": images})["images"]
    for image, result in zip(images, turned, strict=True):
        assert any(np.array_equal(np.rot90(image, k), result) for k in range(4))


def test_rotation_and_zoom_move_a_ramp_as_the_formula_says():
    ramps = _ramps(2)
    center = (SIZE - 1) / 2
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    zoomed = aug.zoom_images(ramps, jnp.array([0.5, 0.75]), jnp.array([0.5, 1.0]))
    # Bilinear sampling reproduces a linear function exactly inside the image.
    np.testing.assert_allclose(zoomed[0, ..., 0], center + 0.5 * (rows - center), atol=1e-4)
    np.testing.assert_allclose(zoomed[1, ..., 1], cols, atol=1e-4)
    np.testing.assert_allclose(zoomed[1, ..., 0], center + 0.75 * (rows - center), atol=1e-4)
    theta = np.deg2rad(30.0)
    rotated = aug.rotate_images(ramps[:1], 30.0, fill_mode="constant")[0]
    source_row = center + np.cos(theta) * (rows - center) + np.sin(theta) * (cols - center)
    source_col = center - np.sin(theta) * (rows - center) + np.cos(theta) * (cols - center)
    inside = (
        (source_row >= 0) & (source_row <= SIZE - 1) & (source_col >= 0) & (source_col <= SIZE - 1)
    )
    np.testing.assert_allclose(rotated[..., 0][inside], source_row[inside], atol=1e-3)
    np.testing.assert_allclose(rotated[..., 1][inside], source_col[inside], atol=1e-3)


def test_random_affine_draws_within_its_ranges():
    # A zoom of z maps the ramp's row offsets from the centre by exactly z.
    ramps = _ramps(64)
    out = aug.zoom(0.5, 1.0)(jax.random.key(6), {"images": ramps})["images"]
    center = (SIZE - 1) / 2
    factors = (out[:, -1, 0, 0] - center) / (SIZE - 1 - center)
    assert 0.5 <= float(factors.min()) and float(factors.max()) <= 1.0
    assert float(factors.max() - factors.min()) > 0.3  # per-image draws


def test_brightness_scales_each_image_by_one_factor_in_range_and_clips():
    images = jnp.full((32, 4, 4, 3), 200.0)
    out = aug.brightness(0.2, 1.0)(jax.random.key(7), {"images": images})["images"]
    factors = out[:, 0, 0, 0] / 200.0
    np.testing.assert_allclose(out, factors[:, None, None, None] * images, rtol=1e-6)
    assert 0.2 <= float(factors.min()) and float(factors.max()) <= 1.0
    bright = aug.brightness(2.0, 2.0)(jax.random.key(7), {"images": images})["images"]
    assert float(bright.max()) == 255.0


def test_compose_applies_each_step_with_its_own_key():
    batch = _batch()
    first, second = aug.flip(), aug.brightness(0.5, 0.9)
    key = jax.random.key(8)
    keys = jax.random.split(key, 2)
    expected = second(keys[1], first(keys[0], batch))
    np.testing.assert_array_equal(
        aug.compose(first, second)(key, batch)["images"], expected["images"]
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="zoom_range"):
        aug.random_affine(zoom_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="fill_mode"):
        aug.random_affine(fill_mode="edge")
    with pytest.raises(ValueError, match="square"):
        aug.rotate90()(jax.random.key(0), {"images": jnp.zeros((1, 4, 5, 3))})
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        aug.flip()(jax.random.key(0), {"images": jnp.zeros((4, 5, 3))})

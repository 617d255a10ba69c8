"""Keras weight files into the Flax backbones and back: parity with Keras itself,
round trips, and one-line errors for files of the wrong architecture."""

import functools
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models import backbones, pretrained
from kdjax.models.pretrained import WeightFileError

KERAS_APPLICATIONS = {"resnet50v2": "ResNet50V2", "mobilenetv2": "MobileNetV2"}
SIZE = 64
NAMES = sorted(KERAS_APPLICATIONS)


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def _assert_close_to_magnitude(actual, expected, rtol=1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_array_less(np.abs(actual - expected).max(), rtol * scale)


@functools.cache
def _features_function(name):
    return jax.jit(lambda variables, images: backbones.backbone(name).apply(variables, images))


def _flax_features(name, variables, images):
    return _features_function(name)(variables, images)["features"]


@functools.cache
def _perturbed_flax_variables(name, seed=1):
    """Random variables of the backbone's shapes, with non-trivial BatchNorm statistics
    and biases; drawn in numpy (eager Flax init of these networks takes many seconds).
    Shared between tests: do not modify."""
    shapes = jax.eval_shape(
        backbones.backbone(name).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        key = path[-1].key
        if key in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if key in ("mean", "bias"):
            return rng.normal(0, 0.1, leaf.shape).astype(np.float32)
        fan_in = np.prod(leaf.shape[:-1])
        return (rng.normal(0, 1, leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Per backbone: Keras' random-init no-top model with perturbed BN statistics, its
    features on two images, and its weights in the legacy h5 and .weights.h5 layouts."""
    os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported earlier with another backend")
    from keras.src.legacy.saving import legacy_h5_format

    directory = tmp_path_factory.mktemp("keras")
    rng = np.random.default_rng(0)
    found = {}
    for name, application in KERAS_APPLICATIONS.items():
        model = getattr(keras.applications, application)(
            include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg"
        )
        for weight in model.weights:
            kind = weight.path.rsplit("/", 1)[-1]
            if kind in ("gamma", "moving_variance"):
                weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
            elif kind in ("beta", "moving_mean", "bias"):
                weight.assign(rng.normal(0, 0.1, weight.shape).astype(np.float32))
        legacy = directory / f"{name}_notop.h5"
        with h5py.File(legacy, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, model)
        keras3 = directory / f"{name}.weights.h5"
        model.save_weights(keras3)
        found[name] = {
            "model": model,
            "features": model.predict(_images(), verbose=0),
            "legacy": legacy,
            "keras3": keras3,
            "load_legacy": legacy_h5_format.load_weights_from_hdf5_group,
        }
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_layer_order_is_keras_order(name, keras_files):
    keras_layers = [layer.name for layer in keras_files[name]["model"].layers if layer.weights]
    assert [layer for layer in pretrained.layer_order(name) if layer != "head"] == keras_layers


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_keras(name, keras_files):
    model = backbones.backbone(name, num_classes=2)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    backbone_count = sum(
        leaf.size
        for collection in variables.values()
        for layer, weights in collection.items()
        if layer != "head"
        for leaf in jax.tree_util.tree_leaves(weights)
    )
    assert backbone_count == keras_files[name]["model"].count_params()
    expected = {"resnet50v2": 23_564_800, "mobilenetv2": 2_257_984}[name]
    assert backbone_count == expected
    head = variables["params"]["head"]
    features = {"resnet50v2": 2048, "mobilenetv2": 1280}[name]
    assert head["kernel"].shape == (features, 2) and head["bias"].shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["legacy", "keras3"])
@pytest.mark.parametrize("name", NAMES)
def test_imported_weights_give_keras_features(name, layout, keras_files):
    found = keras_files[name]
    loaded = pretrained.load_keras_weights(found[layout], name)
    variables = pretrained.merge_pretrained(_perturbed_flax_variables(name, seed=3), loaded)
    _assert_close_to_magnitude(_flax_features(name, variables, _images()), found["features"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_exported_weights_load_into_keras(name, keras_files, tmp_path):
    variables = _perturbed_flax_variables(name)
    path = tmp_path / "exported.h5"
    pretrained.save_keras_weights(path, variables, name)
    found = keras_files[name]
    with h5py.File(path, "r") as handle:
        found["load_legacy"](handle, found["model"])
    keras_features = found["model"].predict(_images(1), verbose=0)
    _assert_close_to_magnitude(_flax_features(name, variables, _images(1)), keras_features)


@pytest.mark.parametrize("name", NAMES)
def test_export_then_import_is_the_identity(name, tmp_path):
    variables = _perturbed_flax_variables(name)
    path = tmp_path / "weights.h5"
    pretrained.save_keras_weights(path, variables, name)
    loaded = pretrained.load_keras_weights(path, name)
    fresh = _perturbed_flax_variables(name, seed=9)
    merged = pretrained.merge_pretrained(fresh, loaded)
    backbone_only = {
        collection: {layer: w for layer, w in layers.items() if layer != "head"}
        for collection, layers in variables.items()
    }
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, loaded, jax.device_get(backbone_only))
    )
    np.testing.assert_array_equal(
        merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"]
    )


def test_a_file_of_the_other_architecture_names_file_and_layer(tmp_path):
    path = tmp_path / "mobile.h5"
    pretrained.save_keras_weights(path, _perturbed_flax_variables("mobilenetv2"), "mobilenetv2")
    with pytest.raises(WeightFileError, match=r"mobile\.h5: layer 'conv1_conv' of resnet50v2"):
        pretrained.load_keras_weights(path, "resnet50v2")


def test_a_wrong_shape_names_the_layer(tmp_path):
    path = tmp_path / "bad.h5"
    pretrained.save_keras_weights(path, _perturbed_flax_variables("mobilenetv2"), "mobilenetv2")
    with h5py.File(path, "r+") as handle:
        del handle["block_3_project"]["block_3_project/kernel:0"]
        handle["block_3_project"].create_dataset(
            "block_3_project/kernel:0", data=np.zeros((1, 1, 144, 33), np.float32)
        )
    with pytest.raises(
        WeightFileError, match=r"bad\.h5: layer 'block_3_project' .*\(1, 1, 144, 33\)"
    ):
        pretrained.load_keras_weights(path, "mobilenetv2")


def test_an_extra_layer_is_refused(tmp_path):
    path = tmp_path / "extra.h5"
    pretrained.save_keras_weights(path, _perturbed_flax_variables("mobilenetv2"), "mobilenetv2")
    with h5py.File(path, "r+") as handle:
        names = [name.encode() for name in handle.attrs["layer_names"]] + [b"block_17_project"]
        handle.attrs["layer_names"] = names
        group = handle.create_group("block_17_project")
        group.attrs["weight_names"] = [b"block_17_project/kernel:0"]
        group.create_dataset("block_17_project/kernel:0", data=np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(WeightFileError, match=r"extra\.h5: layer 'block_17_project' is not part"):
        pretrained.load_keras_weights(path, "mobilenetv2")


def test_a_missing_or_non_hdf5_file_is_one_line(tmp_path):
    with pytest.raises(WeightFileError, match="no such weight file"):
        pretrained.load_keras_weights(tmp_path / "absent.h5", "resnet50v2")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(WeightFileError, match=r"junk\.h5: not a readable HDF5 file"):
        pretrained.load_keras_weights(junk, "resnet50v2")

"""Keras ImageNet weights into the Flax backbones, and Flax weights back out, with h5py only.

Two Keras file layouts are read (no TensorFlow or Keras is needed at run time):

- the legacy HDF5 layout of the published application files
  (``resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5``,
  ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``) and of
  ``model.save_weights("x.h5")`` in Keras 2: a ``layer_names`` attribute at the root
  (or under ``model_weights`` in a whole-model file), one group per layer with a
  ``weight_names`` attribute (``conv1_conv/kernel:0``) naming its datasets;
- the Keras 3 ``.weights.h5`` layout: ``layers/<class-based key>/vars/0, 1, …`` with the
  Keras layer name in the ``vars`` group's ``name`` attribute and the weights in the
  layer's creation order (conv: kernel, bias; BatchNorm: gamma, beta, moving mean,
  moving variance).

Keras → Flax, per layer (Flax module names are the Keras layer names):
``Conv2D kernel, bias`` → ``params/<layer>/kernel, bias`` (both HWIO);
``DepthwiseConv2D kernel [h, w, C, 1]`` → ``params/<layer>/kernel [h, w, 1, C]``;
``BatchNormalization gamma, beta`` → ``params/<layer>/scale, bias`` and
``moving_mean, moving_variance`` → ``batch_stats/<layer>/mean, var``.

The head is not in a no-top file: initialise the model, then overwrite its backbone::

    variables = model.init(key, images)
    variables = merge_pretrained(variables, load_keras_weights(path, "resnet50v2"))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models.backbones import BACKBONES, backbone

BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
CONV_WEIGHTS = ("kernel", "bias")
# The Keras names of the ImageNet classifier layers in the with-top files: ignored.
_KERAS_TOP_LAYERS = frozenset({"predictions", "probs", "avg_pool"})
HEAD = "head"
# Flax BatchNorm variable → Keras BatchNormalization weight.
_KERAS_NAMES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


class WeightFileError(Exception):
    """A weight file does not fit the architecture; the message names file and layer."""


def layer_order(model_name: str) -> list[str]:
    """The named layers of backbone ``model_name`` in the order the network calls them
    (Keras' layer order), head last. Flax sorts variable dicts by name; this does not."""
    import flax.linen as nn

    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        name = context.module.name
        if context.method_name == "__call__" and name is not None and name not in order:
            order.append(name)
        return next_fun(*args, **kwargs)

    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(backbone(model_name).init, jax.random.key(0), images)
    return order


def expected_shapes(model_name: str) -> dict[str, dict[str, dict[str, tuple[int, ...]]]]:
    """``{collection: {layer: {weight: shape}}}`` of backbone ``model_name`` in layer
    order (:func:`layer_order`), head excluded."""
    if model_name not in BACKBONES:
        raise ValueError(f"unknown backbone {model_name!r}; choose one of {sorted(BACKBONES)}.")
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(backbone(model_name).init, jax.random.key(0), images)
    order = [layer for layer in layer_order(model_name) if layer != HEAD]
    return {
        collection: {
            layer: {weight: tuple(value.shape) for weight, value in layers[layer].items()}
            for layer in order
            if layer in layers
        }
        for collection, layers in variables.items()
    }


# --- Reading -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _chunked_attribute(group, name: str) -> list[str]:
    """Keras splits attributes over 64 KiB into ``name0``, ``name1``, …"""
    if name in group.attrs:
        return [_text(value) for value in group.attrs[name]]
    values, index = [], 0
    while f"{name}{index}" in group.attrs:
        values.extend(_text(value) for value in group.attrs[f"{name}{index}"])
        index += 1
    return values


def _short_name(weight_name: str) -> str:
    """``conv1_conv/kernel:0`` → ``kernel``; ``…/depthwise_kernel:0`` → ``kernel``."""
    name = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    return "kernel" if name == "depthwise_kernel" else name


_INCOMPLETE = "the file is incomplete or damaged: download or export it again"


def _read_legacy(path: Path, root, layer_names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    layers = {}
    for layer in layer_names:
        if layer not in root:
            raise WeightFileError(
                f"{path}: layer {layer!r} is listed in layer_names but has no group; {_INCOMPLETE}."
            )
        group = root[layer]
        names = _chunked_attribute(group, "weight_names")
        for name in names:
            if name not in group:
                raise WeightFileError(
                    f"{path}: layer {layer!r} lists the weight {name!r} but holds no such "
                    f"dataset; {_INCOMPLETE}."
                )
        if names:
            layers[layer] = {_short_name(name): np.asarray(group[name]) for name in names}
    return layers


def _read_keras3(path: Path, root) -> dict[str, list[np.ndarray]]:
    """Layer name → its weights in creation order, from every ``vars`` group."""
    layers: dict[str, list[np.ndarray]] = {}

    def visit(name, item):
        if name.rsplit("/", 1)[-1] == "vars" and "name" in item.attrs and len(item):
            count = len(item)
            missing = [str(i) for i in range(count) if str(i) not in item]
            if missing:
                raise WeightFileError(
                    f"{path}: {name} holds {count} weights but no {missing[0]!r} "
                    f"(weights are numbered 0 to {count - 1}); {_INCOMPLETE}."
                )
            layers[_text(item.attrs["name"])] = [np.asarray(item[str(i)]) for i in range(count)]

    root.visititems(visit)
    return layers


def _name_keras3(
    layers: dict[str, list[np.ndarray]], shapes: Mapping[str, Mapping[str, Mapping]]
) -> dict[str, dict[str, np.ndarray]]:
    """Names the ordered weights by the kind of the Flax layer of the same name."""
    named = {}
    for layer, values in layers.items():
        kind = BN_WEIGHTS if layer in shapes.get("batch_stats", {}) else CONV_WEIGHTS
        named[layer] = dict(zip(kind, values, strict=False))
    return named


def read_keras_h5(path: str | os.PathLike) -> tuple[str, Any]:
    """The layout of a Keras weight file and its raw layers (see the module docstring)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: no such weight file.")
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            layer_names = _chunked_attribute(root, "layer_names")
            if layer_names:
                return "legacy", _read_legacy(path, root, layer_names)
            if "layers" in root:
                return "keras3", _read_keras3(path, root["layers"])
    except OSError as error:
        raise WeightFileError(f"{path}: not a readable HDF5 file ({error}).") from None
    raise WeightFileError(f"{path}: neither a legacy Keras h5 nor a Keras 3 .weights.h5 file.")


def load_keras_weights(path: str | os.PathLike, model_name: str) -> dict[str, dict]:
    """The backbone weights in a Keras weight file, as Flax variables (no head).

    Returns ``{"params": {layer: {...}}, "batch_stats": {layer: {"mean", "var"}}}`` as
    numpy float32 arrays; merge them into initialised variables with
    :func:`merge_pretrained`. Layers of the file that the backbone lacks are an error
    (a ResNet101V2 file shares every layer name of ResNet50V2), except the ImageNet
    classifier of a with-top file.

    Raises:
      WeightFileError: one line naming the file and the first layer that is missing,
        has a missing weight (also one its ``weight_names`` list but the file lacks),
        a wrong shape, or does not belong to ``model_name``.

    Example::

        loaded = load_keras_weights(
            "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet50v2")
    """
    shapes = expected_shapes(model_name)
    layout, raw = read_keras_h5(path)
    layers = _name_keras3(raw, shapes) if layout == "keras3" else raw
    batch_norms = shapes.get("batch_stats", {})
    variables: dict[str, dict] = {collection: {} for collection in shapes}
    for layer in shapes["params"]:  # in network order, so the first mismatch is reported
        if layer not in layers:
            raise WeightFileError(
                f"{path}: layer {layer!r} of {model_name} is not in the file "
                f"(is it a {model_name} weight file?)."
            )
        for collection, collection_shapes in shapes.items():
            if layer not in collection_shapes:
                continue
            values = {}
            for weight, shape in collection_shapes[layer].items():
                keras_name = _KERAS_NAMES[weight] if layer in batch_norms else weight
                if keras_name not in layers[layer]:
                    raise WeightFileError(
                        f"{path}: layer {layer!r} has no weight {keras_name!r} "
                        f"(found {sorted(layers[layer])})."
                    )
                value = layers[layer][keras_name]
                if layer.endswith("depthwise") and value.ndim == 4:
                    value = value.transpose(0, 1, 3, 2)  # [h, w, C, 1] → [h, w, 1, C]
                if value.shape != shape:
                    raise WeightFileError(
                        f"{path}: layer {layer!r} weight {keras_name!r} has shape "
                        f"{value.shape}, {model_name} expects {shape}."
                    )
                values[weight] = value.astype(np.float32)
            variables[collection][layer] = values
    known = set(shapes["params"]) | _KERAS_TOP_LAYERS
    extra = [layer for layer in layers if layer not in known]
    if extra:
        raise WeightFileError(
            f"{path}: layer {extra[0]!r} is not part of {model_name} "
            f"({len(extra)} such layers; is it a {model_name} weight file?)."
        )
    return variables


def merge_pretrained(variables: Mapping, loaded: Mapping) -> dict:
    """``variables`` with every layer present in ``loaded`` replaced by the loaded one.

    Typically ``variables = model.init(...)`` (which holds the fresh head) and
    ``loaded = load_keras_weights(...)``. Every loaded weight must exist in
    ``variables`` with the same shape.

    Example::

        variables = merge_pretrained(model.init(key, images), loaded)
    """
    merged = {collection: dict(layers) for collection, layers in variables.items()}
    for collection, layers in loaded.items():
        if collection not in merged:
            raise ValueError(f"loaded collection {collection!r} is not in the model variables.")
        for layer, weights in layers.items():
            target = merged[collection].get(layer)
            if target is None or set(target) != set(weights):
                raise ValueError(f"loaded layer {collection}/{layer} does not fit the model.")
            for weight, value in weights.items():
                if tuple(value.shape) != tuple(target[weight].shape):
                    raise ValueError(
                        f"loaded {collection}/{layer}/{weight} has shape {value.shape}, "
                        f"the model {target[weight].shape}."
                    )
            merged[collection][layer] = {
                weight: jnp.asarray(value, target[weight].dtype)
                for weight, value in weights.items()
            }
    return merged


# --- Writing -------------------------------------------------------------------------------


def save_keras_weights(
    path: str | os.PathLike, variables: Mapping, model_name: str, *, include_head: bool = False
) -> None:
    """Writes a backbone's Flax variables in the legacy Keras h5 layout of the published
    no-top files, so :func:`load_keras_weights` (and Keras' ``load_weights`` of the
    matching application) read it back.

    Layers are written in the backbone's order, weights as Keras 2 names them
    (``conv1_conv/kernel:0``, ``…/depthwise_kernel:0``, BatchNorm ``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``). The head is left out unless
    ``include_head`` (it is then the layer ``head``, which Keras' no-top model lacks).
    The file is written to a temporary name and renamed into place.

    Example::

        save_keras_weights("cifar_resnet50v2_notop.h5", state_variables, "resnet50v2")
    """
    import h5py

    shapes = expected_shapes(model_name)
    params, stats = variables["params"], variables.get("batch_stats", {})
    layers = list(shapes["params"]) + ([HEAD] if include_head else [])
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with h5py.File(temporary, "w") as handle:
        handle.attrs["layer_names"] = [layer.encode("utf8") for layer in layers]
        handle.attrs["backend"] = b"jax"
        for layer in layers:
            if layer not in params:
                raise ValueError(f"variables have no layer {layer!r} of {model_name}.")
            if layer in shapes.get("batch_stats", {}):
                values = (params[layer]["scale"], params[layer]["bias"])
                values += (stats[layer]["mean"], stats[layer]["var"])
                weights = dict(zip(BN_WEIGHTS, values, strict=True))
            elif layer.endswith("depthwise"):  # [h, w, 1, C] → Keras' [h, w, C, 1]
                kernel = np.asarray(params[layer]["kernel"])
                weights = {"depthwise_kernel": kernel.transpose(0, 1, 3, 2)}
            else:
                weights = {
                    name: params[layer][name] for name in CONV_WEIGHTS if name in params[layer]
                }
            group = handle.create_group(layer)
            names = [f"{layer}/{name}:0" for name in weights]
            group.attrs["weight_names"] = [name.encode("utf8") for name in names]
            for name, value in zip(names, weights.values(), strict=True):
                group.create_dataset(name, data=np.asarray(value, np.float32))
    temporary.replace(path)

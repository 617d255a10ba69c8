"""Which layers of a network train: layer selections, optax masks and a frozen optimizer.

A :class:`LayerSelection` is a set of layer-name patterns (shell-style, ``fnmatch``
case-sensitive). The same selection serves two places, so they cannot disagree:

- the optimizer: :func:`trainable_mask` / :func:`trainable_labels` turn it into a
  tree over the parameters, and :func:`freeze_optimizer` zeroes the updates of every
  parameter outside it (``optax.partition`` with ``optax.set_to_zero``; note that
  ``optax.masked`` would not do: it passes the raw gradient through as the update of
  masked-out leaves);
- the model: the backbones (:mod:`kdjax.backbones`) take it as their ``trainable``
  attribute and run every BatchNorm layer outside it on its running averages, even
  with ``train=True`` — Keras' behaviour for a layer with ``trainable=False`` — so
  frozen layers' ``batch_stats`` never change.

A parameter belongs to the layer whose name is the key just above the leaf
(``params["conv5_block3_2_conv"]["kernel"]`` → ``conv5_block3_2_conv``), so the
selection also works when a backbone sits inside a larger model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import jax
import optax

TRAINABLE = "trainable"
FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class LayerSelection:
    """Layers whose name matches any of ``patterns`` (``fnmatch`` syntax).

    Hashable, so it can be a Flax module attribute.

    Example:
      >>> seed_teacher = LayerSelection(("conv5_block3_3_conv", "post_bn", "head"))
      >>> seed_teacher.contains("post_bn"), seed_teacher.contains("conv1_conv")
      (True, False)
    """

    patterns: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.patterns, str) or not all(isinstance(p, str) for p in self.patterns):
            raise TypeError(f"patterns must be a tuple of strings, got {self.patterns!r}.")
        object.__setattr__(self, "patterns", tuple(self.patterns))

    def contains(self, layer_name: str) -> bool:
        """Whether ``layer_name`` matches one of the patterns."""
        return any(fnmatch.fnmatchcase(layer_name, pattern) for pattern in self.patterns)


ALL_LAYERS = LayerSelection(("*",))


def _layer_name(path: tuple[Any, ...]) -> str:
    if len(path) < 2:
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} is not inside a named layer.")
    return str(getattr(path[-2], "key", path[-2]))


def trainable_mask(params: Any, trainable: LayerSelection) -> Any:
    """A tree like ``params`` with ``True`` where the parameter's layer is in ``trainable``.

    Example:
      >>> params = {"conv1_conv": {"kernel": 0.0}, "head": {"kernel": 0.0}}
      >>> trainable_mask(params, LayerSelection(("head",)))
      {'conv1_conv': {'kernel': False}, 'head': {'kernel': True}}
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: trainable.contains(_layer_name(path)), params
    )


def trainable_labels(params: Any, trainable: LayerSelection) -> Any:
    """:func:`trainable_mask` as ``"trainable"``/``"frozen"`` labels for ``optax.partition``."""
    return jax.tree_util.tree_map(
        lambda keep: TRAINABLE if keep else FROZEN, trainable_mask(params, trainable)
    )


def freeze_optimizer(
    optimizer: optax.GradientTransformation, trainable: LayerSelection
) -> optax.GradientTransformation:
    """``optimizer`` on the layers in ``trainable``; zero updates everywhere else.

    The frozen layers get no optimizer state (no Adam moments), and their parameters
    stay bit-identical however long training runs.

    Example:
      >>> tx = freeze_optimizer(optax.adam(1e-4), LayerSelection(("head",)))
    """
    return optax.partition(
        {TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
        lambda params: trainable_labels(params, trainable),
    )


def count_trainable(params: Any, trainable: LayerSelection) -> int:
    """The number of parameters (scalars) in the layers ``trainable`` selects."""
    mask = trainable_mask(params, trainable)
    sizes = jax.tree_util.tree_map(lambda leaf, keep: leaf.size if keep else 0, params, mask)
    return int(sum(jax.tree_util.tree_leaves(sizes)))

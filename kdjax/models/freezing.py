"""Which layers of a network train: one layer selection for the model and the optimizer.

A :class:`LayerSelection` is a set of layer-name patterns (shell-style, ``fnmatch``,
case-sensitive). One selection drives both sides of freezing, so they cannot disagree:

- the model: the backbones (:mod:`kdjax.models.backbones`) take its patterns as their
  ``trainable`` setting and run every BatchNorm layer outside it on its running
  averages, even with ``train=True`` — Keras' behaviour for a layer with
  ``trainable=False`` — so frozen layers' ``batch_stats`` never change;
- the optimizer: :func:`frozen_patterns` turns it into the training core's
  ``frozen`` parameter-path patterns (:func:`kdjax.training.make_optimizer`,
  ``RunSpec.frozen``), which give every parameter outside the selection no update
  and no optimizer state.

Both are plain tuples of strings, so a run's identity (JSON) records them::

    selection = trainable_last_blocks("resnet50v2", 2)
    spec = RunSpec(..., model="resnet50v2",
                   model_settings={"trainable": selection.patterns},
                   frozen=frozen_patterns(selection))

A parameter belongs to the layer whose name is the key just above the leaf
(``params["conv5_block3_2_conv"]["kernel"]`` → ``conv5_block3_2_conv``), so a
selection also works when a backbone sits inside a larger model.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import jax

# fnmatch.translate wraps a pattern as "(?s:...)\Z"; the end anchor is added back
# after the parameter's leaf name.
_END = r"\Z"


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


def as_selection(value: LayerSelection | tuple[str, ...] | list[str]) -> LayerSelection:
    """A :class:`LayerSelection` from itself or from its patterns (a model setting read
    back from JSON is a list).

    Example:
      >>> as_selection(["head"]).contains("head")
      True
    """
    return value if isinstance(value, LayerSelection) else LayerSelection(tuple(value))


def frozen_patterns(selection: LayerSelection | tuple[str, ...]) -> tuple[str, ...]:
    """The training core's ``frozen`` patterns for "every layer outside ``selection``".

    The core freezes a parameter when a pattern ``re.match``-es its path
    (``"layer/kernel"``, or ``"outer/layer/kernel"`` when nested). This returns one
    regular expression, a negative lookahead that matches every path whose layer
    (the key just above the leaf) is *not* selected::

        ^(?!(?:[^/]*/)*(?=[^/]+/[^/]+\\Z)(?:P₁|P₂|…)/[^/]+\\Z)

    with ``Pᵢ = fnmatch.translate(patternᵢ)``. The lookahead pins the pattern to the
    layer's own path segment. An empty tuple for :data:`ALL_LAYERS`.

    Example:
      >>> import re
      >>> (pattern,) = frozen_patterns(LayerSelection(("head", "conv5_*")))
      >>> [bool(re.match(pattern, path)) for path in ("head/kernel", "conv1_conv/kernel")]
      [False, True]
    """
    selection = as_selection(selection)
    if "*" in selection.patterns:
        return ()
    alternatives = []
    for pattern in selection.patterns:
        translated = fnmatch.translate(pattern)
        alternatives.append(translated.removesuffix(_END))
    layer = "(?:" + "|".join(alternatives) + ")"
    return (rf"^(?!(?:[^/]*/)*(?=[^/]+/[^/]+\Z){layer}/[^/]+\Z)",)


def count_trainable(params: Any, selection: LayerSelection | tuple[str, ...]) -> int:
    """The number of parameters (scalars) in the layers ``selection`` selects, by the
    core's own mask (:func:`kdjax.training.trainable_mask` of :func:`frozen_patterns`).

    Example:
      >>> import numpy as np
      >>> count_trainable({"body": {"kernel": np.ones(3)}, "head": {"bias": np.ones(2)}},
      ...                 ("head",))
      2
    """
    from kdjax.training import trainable_mask

    mask = trainable_mask(params, frozen_patterns(selection))
    sizes = jax.tree_util.tree_map(lambda leaf, keep: leaf.size if keep else 0, params, mask)
    return int(sum(jax.tree_util.tree_leaves(sizes)))

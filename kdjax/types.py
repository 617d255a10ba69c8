"""The function shapes the training pieces exchange (type aliases only, no logic).

A training step reads a :data:`Batch` (raw images, labels, example ids and any
stored teacher outputs, each ``[B, ...]``), turns the images into model inputs with
a :data:`Preprocess`, may first transform the batch with an :data:`Augment`, scores
the model's outputs with an :data:`Objective` under traced :data:`Hyperparams`,
projects the updated parameters with a :data:`Constraint` and scales the learning
rate by a :data:`Schedule`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

Batch = Mapping[str, jax.Array]
Hyperparams = Mapping[str, jax.Array]
Outputs = Mapping[str, jax.Array]
Preprocess = Callable[[jax.Array], jax.Array]
# ``objective(outputs, batch, hyperparams) -> (per_example_loss, named_parts)``
ObjectiveFn = Callable[[Outputs, Batch, Hyperparams], tuple[jax.Array, dict]]
# ``augment(key, batch) -> batch``: sees the raw images and every stored extra, so it
# can keep stored teacher outputs consistent with the images it transforms.
Augment = Callable[[jax.Array, Batch], Batch]
Constraint = Callable[[Any], Any]
Schedule = Callable[[jax.Array], jax.Array]

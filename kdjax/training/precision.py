"""Mixed precision: parameters and optimizer state stay float32, the forward and
backward passes run in a lower compute dtype (bfloat16), losses are float32.

:func:`with_compute_dtype` wraps a Flax module so its ``apply`` casts the
floating-point ``params`` and the inputs to the compute dtype and casts the
floating-point outputs back to float32. Other variable collections (BatchNorm's
``batch_stats``) stay float32: Flax computes batch statistics in float32
(``force_float32_reductions``), so running averages keep their precision. The
gradient flows back through the casts, so the optimizer updates float32
parameters. ``init`` is the wrapped module's own (float32 parameters)::

    model = with_compute_dtype(SmallConvNet(), "bfloat16")
    state = create_state(model, optimizer, sample, seed=0)   # float32 params
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")


def _cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree,
    )


@dataclasses.dataclass(frozen=True)
class MixedPrecisionModel:
    """A module whose ``apply`` computes in ``compute_dtype`` (see the module docstring)."""

    module: nn.Module
    compute_dtype: str

    @property
    def taps(self) -> tuple[str, ...]:
        """The wrapped module's taps (:class:`kdjax.models.heads.StudentWithHead`)."""
        return getattr(self.module, "taps", ())

    def init(self, *args, **kwargs):
        return self.module.init(*args, **kwargs)

    def apply(self, variables, images, *args, **kwargs):
        dtype = jnp.dtype(self.compute_dtype)
        variables = dict(variables, params=_cast_floats(variables["params"], dtype))
        result = self.module.apply(variables, images.astype(dtype), *args, **kwargs)
        if kwargs.get("mutable"):
            outputs, state = result
            return _cast_floats(outputs, jnp.float32), _cast_floats(state, jnp.float32)
        return _cast_floats(result, jnp.float32)


def with_compute_dtype(model: nn.Module, compute_dtype: str = "float32"):
    """``model`` itself for float32, else a :class:`MixedPrecisionModel`."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
    return model if compute_dtype == "float32" else MixedPrecisionModel(model, compute_dtype)

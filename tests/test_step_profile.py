"""The CPU benchmarks compare like with like: each PyTorch twin has its kdjax network's
parameters, and the step profile assigns XLA's operations to the layers that made them."""

import jax
import numpy as np
import pytest

from benchmarks.networks import IMAGE_SHAPES, STUDENTS, torch_model
from kdjax.models import count_params, get_model


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_each_torch_twin_has_the_kdjax_networks_parameter_count(name):
    pytest.importorskip("torch")
    model_name, settings, _, _ = STUDENTS[name]
    shape = IMAGE_SHAPES.get(name, (28, 28, 1))
    model = get_model(model_name, **settings)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, *shape)))["params"]
    twin = torch_model(name)
    assert count_params(params) == sum(p.numel() for p in twin.parameters())


def test_the_step_profile_names_layers_and_passes():
    from benchmarks import profiling

    compiled, _ = profiling.jax_program("mlp_200", steps=2)
    origins = set(profiling.origins_of(compiled.as_text()).values())
    assert {"hidden0 forward", "hidden0 backward", "head backward"} <= origins
    assert "optimizer" in origins


def test_the_population_profile_names_layers_and_passes_under_vmap():
    from benchmarks import profiling

    compiled, _ = profiling.jax_program("mlp_200", steps=2, members=2, strategy="vmap")
    origins = set(profiling.origins_of(compiled.as_text()).values())
    assert {"hidden0 forward", "hidden0 backward", "head backward", "optimizer"} <= origins

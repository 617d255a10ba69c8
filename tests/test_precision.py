"""Mixed precision: bfloat16 arithmetic, float32 parameters, optimizer state and losses."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import Dataset, Split, normalize
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import SmallConvNet
from kdjax.runs import train_run
from kdjax.runs.spec import RunSpec
from kdjax.training import create_state, make_optimizer, make_train_step, with_compute_dtype
from kdjax.training.recipe import check_settings

UNIT = partial(normalize, mean=0.0, std=1.0)


def _split(count, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 16, 16, 1)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, label + 3, 2:14, 0] = 255
    return Split(images, labels, np.arange(count, dtype=np.int64))


def test_the_bfloat16_step_multiplies_in_bfloat16_and_keeps_float32_state():
    model = with_compute_dtype(SmallConvNet(), "bfloat16")
    optimizer = make_optimizer("adam")
    split = _split(8)
    state = create_state(model, optimizer, UNIT(split.images[:1]), seed=0)
    step = make_train_step(model, OBJECTIVES["ce"], optimizer, UNIT)
    batch = {"images": split.images, "labels": split.labels, "ids": split.ids}
    hyper = make_hyperparams(learning_rate=1e-3)
    program = str(jax.make_jaxpr(step)(state, batch, hyper, {}))
    assert "bf16" in program and "dot_general" in program
    new_state, metrics = jax.jit(step)(state, batch, hyper, {})
    for leaf in jax.tree.leaves((new_state.params, new_state.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    assert metrics["loss"].dtype == jnp.float32
    # The same step in float32 gives a nearby loss (bfloat16 keeps ~3 significant digits).
    reference = make_train_step(SmallConvNet(), OBJECTIVES["ce"], optimizer, UNIT)
    _, float_metrics = jax.jit(reference)(state, batch, hyper, {})
    np.testing.assert_allclose(metrics["loss"], float_metrics["loss"], rtol=2e-2)


def test_a_bfloat16_run_learns_and_names_its_dtype(tmp_path):
    dataset = Dataset("stripes", "test", "memory", _split(256), _split(64, seed=1), 10)
    common = dict(role="s", model="small_conv_net", epochs=2, batch_size=32)
    low = train_run(RunSpec(compute_dtype="bfloat16", **common), dataset, tmp_path,
                    log=lambda m: None)  # fmt: skip
    full = train_run(RunSpec(**common), dataset, tmp_path, log=lambda m: None)
    assert low.run_dir != full.run_dir
    assert low.test_accuracy[0] > 0.5 and abs(low.test_accuracy[0] - full.test_accuracy[0]) < 0.1
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        check_settings(RunSpec(compute_dtype="float16", **common))

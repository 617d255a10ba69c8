"""kdjax compiles its own programs without YNNPACK on the CPU (docs/performance.md,
"XLA's CPU options"), unless ``XLA_FLAGS`` chooses otherwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.training import compiler


def _conv_relu(images, kernel):
    out = jax.lax.conv_general_dilated(
        images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(out).sum()


@pytest.fixture
def fresh_options():
    compiler.compiler_options.cache_clear()
    yield
    compiler.compiler_options.cache_clear()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an option of XLA's CPU backend")
def test_kdjax_compiles_without_ynnpack_on_the_cpu(monkeypatch, fresh_options):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    rng = np.random.default_rng(0)
    args = (rng.normal(size=(2, 16, 16, 8)), rng.normal(size=(3, 3, 8, 16)))
    args = tuple(jnp.asarray(a, jnp.float32) for a in args)
    default = jax.jit(_conv_relu).lower(*args).compile().as_text()
    if "ynn_fusion" not in default:
        pytest.skip("this XLA sends no operation to YNNPACK")
    assert compiler.compiler_options() == {compiler.YNN_OPTION: ""}
    assert "ynn_fusion" not in compiler.jit(_conv_relu).lower(*args).compile().as_text()
    np.testing.assert_allclose(
        compiler.jit(_conv_relu)(*args), jax.jit(_conv_relu)(*args), rtol=1e-5
    )


@pytest.mark.parametrize(
    "variable, value", [("XLA_FLAGS", f"--{compiler.YNN_OPTION}=dot"), ("KDJAX_XLA_DEFAULTS", "1")]
)
def test_the_user_can_keep_xlas_defaults(monkeypatch, fresh_options, variable, value):
    monkeypatch.setenv(variable, value)
    assert compiler.compiler_options() is None
    assert compiler.jit(lambda x: x * 2)(jnp.float32(3)) == 6


@pytest.mark.parametrize("feed", ["host", "device"])
def test_both_feeds_compile_their_step_on_a_mesh(feed):
    """A step placed on a device mesh is compiled once, at the top level, where the
    options may be given (a nested jit with options is an error)."""
    from kdjax.training import DeviceFeed, HostFeed, parallel

    def step(state, batch, hyperparams, context):
        state = state + jnp.sum(batch["x"]) * hyperparams["scale"]
        return state, {"loss": state}

    arrays = {"x": np.arange(8, dtype=np.float32)}
    mesh = parallel.data_mesh(jax.devices()[:1])
    chosen = (HostFeed if feed == "host" else DeviceFeed)(step, arrays, batch_size=4, mesh=mesh)
    records = []
    state = chosen.run_epoch(
        chosen.place(jnp.float32(0)),
        np.arange(8),
        chosen.place({"scale": jnp.float32(1)}),
        chosen.place({}),
        lambda done, metrics: records.append(metrics),
    )
    assert float(state) == 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7  # both batches added

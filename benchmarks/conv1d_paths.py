"""The 1-D convolution and pooling paths of the signal models, timed against each other
on the BioVid pipeline network's layer sizes (forward + both gradients, one process, the
paths alternated in rounds so that load on the machine hits them alike).

    python -m benchmarks.conv1d_paths                 # batch 1,024, 3 rounds
    python -m benchmarks.conv1d_paths --batch=256 --rounds=2

Convolutions: ``as_2d`` (a ``(k, 1)`` :func:`kdjax.models.layers.conv2d` over a
``[B, L, 1, C]`` view at stride 1, every ``s``-th output kept: the signal models'
alternative to conv1d), ``xla`` (XLA's own 1-D convolution, JAX's
gradients) and ``kdjax`` (:func:`kdjax.models.layers.conv1d`), each alone and inside a
``lax.map`` over 2 students (how fold populations train on the CPU; ``xla`` is
skipped there with ``--skip_slow``, its default, since its kernel gradient takes
minutes in the loop). Pooling: a reshape and a max against
:func:`kdjax.models.signal_models.max_pool_1d` (the maximum of interleaved slices), after a
ReLU, on the first convolution's output. Prints milliseconds per call.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from kdjax.models.layers import conv1d, conv2d, xla_conv1d
from kdjax.models.signal_models import max_pool_1d

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 1024, "Windows per batch (BioVid pipeline: 1,024).")
flags.DEFINE_integer("rounds", 3, "Rounds of the alternated measurements; the best is kept.")
flags.DEFINE_bool("skip_slow", True, "Skip XLA's own gradient inside lax.map.")

# The BioVid pipeline network's layers: (input length, in channels, out channels, taps, stride).
LAYERS = {"conv1 1→32 k5 s2": (2816, 1, 32, 5, 2), "conv2 32→64 k5": (703, 32, 64, 5, 1)}


def as_2d(signals, kernel, stride):
    return conv2d(signals[:, :, None, :], kernel[:, None], ((0, 0), (0, 0)))[:, ::stride, 0]


PATHS = {
    "as_2d": as_2d,
    "xla": lambda x, k, stride: xla_conv1d(x, k, stride),
    "kdjax": lambda x, k, stride: conv1d(x, k, (0, 0), stride),
}


def reshape_max_pool(signals, window=2):
    batch, length, channels = signals.shape
    length = length // window * window
    return signals[:, :length].reshape(batch, length // window, window, channels).max(axis=2)


def _seconds(function, *args) -> float:
    jax.block_until_ready(function(*args))
    started = time.perf_counter()
    jax.block_until_ready(function(*args))
    return time.perf_counter() - started


def _cases() -> dict:
    rng = np.random.default_rng(0)
    cases = {}
    for layer, (length, cin, cout, taps, stride) in LAYERS.items():
        signals = jnp.asarray(rng.random((FLAGS.batch, length, cin), np.float32))
        kernel = jnp.asarray(rng.random((taps, cin, cout), np.float32) - 0.5)
        pairs = (jnp.stack([kernel] * 2), signals.reshape(2, -1, length, cin))
        for name, path in PATHS.items():

            def loss(k, x, path=path, stride=stride):
                return jnp.sum(jnp.sin(path(x, k, stride)))

            grad = jax.grad(loss, argnums=(0, 1))
            cases[f"{layer}, {name}, alone"] = (jax.jit(grad), (kernel, signals))
            if name == "xla" and FLAGS.skip_slow:
                continue
            mapped = jax.jit(lambda ks, xs, grad=grad: lax.map(lambda p: grad(*p), (ks, xs)))
            cases[f"{layer}, {name}, lax.map of 2 (half batch each)"] = (mapped, pairs)
    activations = jnp.asarray(rng.normal(size=(FLAGS.batch, 1406, 32)).astype(np.float32))
    for name, pool in (("reshape + max", reshape_max_pool), ("max_pool_1d", max_pool_1d)):
        grad = jax.grad(lambda h, pool=pool: jnp.sum(jnp.sin(pool(jax.nn.relu(h)))))
        cases[f"ReLU + pool 2 of [B, 1406, 32], {name}"] = (jax.jit(grad), (activations,))
    return cases


def main(argv: list[str]) -> None:
    del argv
    cases = _cases()
    best = {name: float("inf") for name in cases}
    for _ in range(FLAGS.rounds):
        for name, (function, args) in cases.items():
            best[name] = min(best[name], _seconds(function, *args))
    print(f"batch {FLAGS.batch}, forward + gradients, best of {FLAGS.rounds} rounds (ms):")
    for name, seconds in best.items():
        print(f"  {name:<60} {seconds * 1e3:9.1f}")


if __name__ == "__main__":
    app.run(main)

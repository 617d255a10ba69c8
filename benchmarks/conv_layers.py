"""Where a CPU conv step's time goes: one layer's forward and forward+backward,
XLA's convolution against kdjax's, beside a plain matmul's throughput.

    python -m benchmarks.conv_layers

For each (batch, size, in → out channels) layer with a 3×3 kernel, pad 1, it times
the jitted forward pass and ``grad`` of ``sum(conv(x, k)²)`` with respect to both
inputs, for XLA's ``conv_general_dilated`` and for ``kdjax.models.layers.conv2d`` (whose
CPU kernel gradient is one matmul per kernel offset), and reports GFLOP/s against
the forward FLOP count (×3 for forward + backward).
"""

from __future__ import annotations

import json
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kdjax.models.layers import conv2d, xla_conv

FLAGS = flags.FLAGS
flags.DEFINE_float("seconds", 3.0, "Timing window per measurement.")
flags.DEFINE_string("output", "benchmarks/conv_layers.json", "Where to write the results.")

PAD = ((1, 1), (1, 1))
LAYERS = [  # (batch, spatial size, in channels, out channels)
    (128, 32, 128, 64),  # CIFAR teacher conv2: most of its step
    (128, 32, 3, 128),  # CIFAR teacher conv1
    (128, 16, 64, 32),  # CIFAR teacher conv4
    (128, 32, 3, 16),  # CIFAR student conv1
    (128, 28, 8, 16),  # the R MNIST notebook's StudentNet conv2
]


def loss(conv):
    return lambda images, kernel: jnp.sum(conv(images, kernel) ** 2)


def _seconds(function, *args) -> float:
    function = jax.jit(function)
    jax.block_until_ready(function(*args))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < FLAGS.seconds or count < 2:
        jax.block_until_ready(function(*args))
        count += 1
    return (time.perf_counter() - start) / count


def main(argv):
    del argv
    rows = []
    size = 2048
    a = jnp.ones((size, size), jnp.float32)
    matmul = 2 * size**3 / _seconds(jnp.matmul, a, a) / 1e9
    print(f"float32 matmul {size}³: {matmul:.0f} GFLOP/s")
    for batch, spatial, cin, cout in LAYERS:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(batch, spatial, spatial, cin)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, jnp.float32)
        gflop = 2 * batch * spatial * spatial * cin * cout * 9 / 1e9

        xla = partial(xla_conv, padding=PAD)
        ours = partial(conv2d, padding=PAD)
        times = {
            "forward_xla": _seconds(xla, x, k),
            "forward_backward_xla": _seconds(jax.grad(loss(xla), (0, 1)), x, k),
            "forward_backward_kdjax": _seconds(jax.grad(loss(ours), (0, 1)), x, k),
        }
        row = {
            "layer": f"{batch}x{spatial}x{spatial}, {cin}->{cout}",
            "forward_gflop": round(gflop, 2),
            **{f"{name}_ms": round(1000 * t, 1) for name, t in times.items()},
            "forward_gflops_per_s": round(gflop / times["forward_xla"], 1),
            "kdjax_train_gflops_per_s": round(3 * gflop / times["forward_backward_kdjax"], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(FLAGS.output, "w") as handle:
        json.dump({"matmul_gflops_per_s": round(matmul, 1), "layers": rows}, handle, indent=2)


if __name__ == "__main__":
    app.run(main)

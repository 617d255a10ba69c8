"""Where a CPU conv step's time goes: one layer's forward and forward+backward,
XLA's convolution against kdjax's, beside a plain matmul's throughput.

    python -m benchmarks.conv_layers
    python -m benchmarks.conv_layers --forward_only --dtypes=float32,bfloat16
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python -m benchmarks.conv_layers ...

For each (batch, size, in → out channels) layer with a 3×3 kernel, pad 1, it times
the jitted forward pass and ``grad`` of ``sum(conv(x, k)²)`` with respect to both
inputs, for XLA's ``conv_general_dilated`` and for ``kdjax.models.layers.conv2d`` (whose
CPU kernel gradient is a forward convolution of the transposed operands), and reports
GFLOP/s against the forward FLOP count (×3 for forward + backward). With PyTorch installed it also
times PyTorch's forward convolution and a 2048³ matmul in each ``--dtypes`` type.
Each operation is jitted alone with ``jax.jit``, so under the process's ``XLA_FLAGS``
(XLA's defaults unless set; kdjax's own programs compile with YNNPACK off, see
``kdjax.training.compiler``); inside a training step XLA may run it differently
(``benchmarks.step_profile``).
"""

from __future__ import annotations

import json
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.profiling import matmul_gflops
from kdjax.models.layers import conv2d, xla_conv

FLAGS = flags.FLAGS
flags.DEFINE_float("seconds", 3.0, "Timing window per measurement.")
flags.DEFINE_list("dtypes", ["float32"], "Types to time in: float32, bfloat16.")
flags.DEFINE_bool("forward_only", False, "Time the forward passes only.")
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


def _torch_seconds(function, *args) -> float:
    function(*args)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def _torch_rows(dtype: str, layers) -> dict:
    """PyTorch's 2048³ matmul rate and forward convolution time per layer, or nothing."""
    try:
        import torch
    except ImportError:
        return {}
    kind = getattr(torch, dtype)
    square = torch.ones(2048, 2048, dtype=kind)
    matmul_seconds = _torch_seconds(torch.mm, square, square)
    rows = {"torch_matmul_gflops_per_s": round(2 * 2048**3 / matmul_seconds / 1e9)}
    for batch, spatial, cin, cout in layers:
        x = torch.randn(batch, cin, spatial, spatial).to(kind)
        k = (torch.randn(cout, cin, 3, 3) * 0.05).to(kind)
        seconds = _torch_seconds(lambda x, k: torch.nn.functional.conv2d(x, k, padding=1), x, k)
        rows[f"{batch}x{spatial}x{spatial}, {cin}->{cout}"] = round(1000 * seconds, 1)
    return rows


def main(argv):
    del argv
    report = {}
    for dtype in FLAGS.dtypes:
        kind = jnp.dtype(dtype)
        matmul = matmul_gflops(dtype=kind)
        print(f"{dtype} matmul 2048³: {matmul:.0f} GFLOP/s")
        rows = []
        for batch, spatial, cin, cout in LAYERS:
            rng = np.random.default_rng(0)
            x = jnp.asarray(rng.normal(size=(batch, spatial, spatial, cin)), kind)
            k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, kind)
            gflop = 2 * batch * spatial * spatial * cin * cout * 9 / 1e9
            xla = partial(xla_conv, padding=PAD)
            ours = partial(conv2d, padding=PAD)
            times = {"forward_xla": _seconds(xla, x, k)}
            if not FLAGS.forward_only:
                times["forward_backward_xla"] = _seconds(jax.grad(loss(xla), (0, 1)), x, k)
                times["forward_backward_kdjax"] = _seconds(jax.grad(loss(ours), (0, 1)), x, k)
            row = {
                "layer": f"{batch}x{spatial}x{spatial}, {cin}->{cout}",
                "forward_gflop": round(gflop, 2),
                **{f"{name}_ms": round(1000 * t, 1) for name, t in times.items()},
                "forward_gflops_per_s": round(gflop / times["forward_xla"], 1),
            }
            if not FLAGS.forward_only:
                train_rate = 3 * gflop / times["forward_backward_kdjax"]
                row["kdjax_train_gflops_per_s"] = round(train_rate, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        torch_rows = _torch_rows(dtype, LAYERS)
        if torch_rows:
            print(f"PyTorch ({dtype}): {json.dumps(torch_rows)}")
        report[dtype] = {
            "matmul_gflops_per_s": round(matmul, 1),
            "layers": rows,
            "torch": torch_rows,
        }
    with open(FLAGS.output, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    app.run(main)

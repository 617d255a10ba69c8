"""Every distinct convolution of ResNet50V2 or MobileNetV2 at one input size, timed in
XLA's own form against :func:`kdjax.models.layers.general_conv2d` (the form the backbones
use), forward alone and forward + both gradients, one process, the two alternated in
rounds so that load on the machine hits them alike (the best round is kept).

    python -m benchmarks.backbone_convs                         # ResNet50V2, 32×32
    python -m benchmarks.backbone_convs --model=mobilenetv2 --size=224 --rounds=2

Each row is one layer shape (input, filters, kernel, stride, padding) with the number
of layers of that shape; the totals weigh each row by that count. The depthwise
convolutions of MobileNetV2 are not convolutions of this kind and are left out.
"""

from __future__ import annotations

import collections
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from kdjax.models.backbones import KerasConv, MobileNetV2, ResNet50V2
from kdjax.models.layers import general_conv2d

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "resnet50v2", ["resnet50v2", "mobilenetv2"], "Which backbone.")
flags.DEFINE_integer("size", 32, "Square input size.")
flags.DEFINE_integer("batch", 32, "Batch size (TensorFlow notebook: 32).")
flags.DEFINE_integer("rounds", 3, "Rounds of the alternated measurements; the best is kept.")
flags.DEFINE_string("json_output", None, "Optional JSON file for the rows.")

MODELS = {"resnet50v2": ResNet50V2, "mobilenetv2": MobileNetV2}


def layer_shapes(model: nn.Module, images: jax.Array) -> collections.Counter:
    """(input shape, filters, kernel, stride, explicit padding) → number of layers."""
    shapes: collections.Counter = collections.Counter()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, KerasConv) and context.method_name == "__call__":
            x, size, stride = args[0], module.kernel_size, module.strides
            pads = module.explicit_padding(x.shape[1:3])
            shapes[(tuple(x.shape), module.features, size, stride, pads)] += 1
        return next_fun(*args, **kwargs)

    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: model.apply(v, images), variables)
    return shapes


def _seconds(function, *args) -> float:
    jax.block_until_ready(function(*args))
    started = time.perf_counter()
    jax.block_until_ready(function(*args))
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    del argv
    images = jnp.zeros((FLAGS.batch, FLAGS.size, FLAGS.size, 3), jnp.float32)
    shapes = layer_shapes(MODELS[FLAGS.model](), images)
    rng = np.random.default_rng(0)
    rows = []
    for (shape, filters, size, stride, pads), count in shapes.items():
        x = jnp.asarray(rng.standard_normal(shape, np.float32))
        k = jnp.asarray(rng.standard_normal((size, size, shape[-1], filters), np.float32))

        def xla(x, k, pads=pads, stride=stride):
            return lax.conv_general_dilated(x, k, (stride, stride), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

        def ours(x, k, pads=pads, stride=stride):
            return general_conv2d(x, k, pads, stride)

        functions = {}
        for name, conv in (("xla", xla), ("kdjax", ours)):
            functions[f"{name}_forward"] = jax.jit(conv)
            functions[f"{name}_train"] = jax.jit(
                jax.grad(lambda x, k, conv=conv: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))
            )
        best = dict.fromkeys(functions, float("inf"))
        for _ in range(FLAGS.rounds):
            for name, function in functions.items():
                best[name] = min(best[name], _seconds(function, x, k))
        out = jax.eval_shape(xla, x, k).shape
        flops = 2 * int(np.prod(out)) * size * size * shape[-1]
        timings = {f"{name}_ms": 1e3 * seconds for name, seconds in best.items()}
        rows.append({"input": list(shape), "filters": filters, "kernel": size, "stride": stride,
                     "padding": [list(p) for p in pads], "count": count, "forward_flops": flops,
                     **timings})  # fmt: skip
    header = (f"{'input':>20} {'filters':>7} {'k':>2} {'s':>2} {'n':>3}  fwd XLA ms  fwd kdjax ms"
              "  train XLA ms  train kdjax ms")  # fmt: skip
    print(f"{FLAGS.model} at {FLAGS.size}×{FLAGS.size}, batch {FLAGS.batch}")
    print(header)
    for row in rows:
        print(f"{str(tuple(row['input'])):>20} {row['filters']:>7} {row['kernel']:>2} "
              f"{row['stride']:>2} {row['count']:>3}  {row['xla_forward_ms']:10.2f}  "
              f"{row['kdjax_forward_ms']:12.2f}  {row['xla_train_ms']:12.2f}  "
              f"{row['kdjax_train_ms']:14.2f}")  # fmt: skip
    totals = {name: sum(row[f"{name}_ms"] * row["count"] for row in rows) for name in best}
    print(f"{'all layers (weighted by count)':>36}  {totals['xla_forward']:10.1f}  "
          f"{totals['kdjax_forward']:12.1f}  {totals['xla_train']:12.1f}  "
          f"{totals['kdjax_train']:14.1f}")  # fmt: skip
    if FLAGS.json_output:
        with open(FLAGS.json_output, "w") as handle:
            json.dump({"model": FLAGS.model, "size": FLAGS.size, "batch": FLAGS.batch,
                       "rows": rows, "totals_ms": totals}, handle, indent=2)  # fmt: skip


if __name__ == "__main__":
    app.run(main)

"""Train-step time of models with and without the CPU im2col convolution path.

    python -m benchmarks.conv_paths --models=student_net,light_nn,deep_nn

``kdjax.layers.conv2d`` computes convolutions whose patch (kh·kw·in_channels) has
at most ``IM2COL_MAX_PATCH`` inputs — first layers on 1- or 3-channel images — as
one matmul over image patches, forward and kernel gradient. This times a jitted
CE train step (Adam, batch ``--batch_size``, random data) of each model with that
path on and off, alternating the two in rounds so that both see the same machine
load, and prints the median step times and their ratio.
"""

from __future__ import annotations

import json
import time
from functools import partial

import jax
import numpy as np
from absl import app, flags

from kdjax import layers
from kdjax.data import normalize
from kdjax.models import get_model
from kdjax.train import OBJECTIVES, create_state, make_hyperparams, make_optimizer, make_train_step

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["student_net", "light_nn", "deep_nn"], "Models to time.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds per model.")
flags.DEFINE_float("round_seconds", 2.0, "Seconds of steps per path per round.")
flags.DEFINE_string("output", "benchmarks/conv_paths.json", "Where to write the results.")

SHAPES = {"student_net": (28, 28, 1)}  # the MNIST students; everything else here is CIFAR


def _step_for(model_name: str, patch_limit: int):
    layers.IM2COL_MAX_PATCH = patch_limit  # read at trace time
    model, optimizer = get_model(model_name), make_optimizer("adam")
    shape = SHAPES.get(model_name, (32, 32, 3))
    preprocess = partial(normalize, mean=0.5, std=0.25)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (FLAGS.batch_size, *shape), dtype=np.uint8)
    batch = {
        "images": images,
        "labels": rng.integers(0, 10, FLAGS.batch_size).astype(np.int32),
        "ids": np.arange(FLAGS.batch_size),
    }
    state = create_state(model, optimizer, preprocess(images[:1]), seed=0)
    step = jax.jit(make_train_step(model, OBJECTIVES["ce"], optimizer, preprocess))
    hyperparams = make_hyperparams(learning_rate=1e-3)
    state, metrics = step(state, batch, hyperparams)
    jax.block_until_ready(metrics)  # compile outside the timing
    return step, state, batch, hyperparams


def _time(step, state, batch, hyperparams, seconds: float) -> list[float]:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        state, metrics = step(state, batch, hyperparams)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return times


def main(argv):
    del argv
    default_limit = layers.IM2COL_MAX_PATCH
    rows = []
    for name in FLAGS.models:
        paths = {"im2col": _step_for(name, default_limit), "offset_matmuls": _step_for(name, 0)}
        layers.IM2COL_MAX_PATCH = default_limit
        times = {path: [] for path in paths}
        for _ in range(FLAGS.rounds):
            for path, args in paths.items():
                times[path] += _time(*args, FLAGS.round_seconds)
        medians = {path: float(np.median(values)) for path, values in times.items()}
        row = {
            "model": name,
            "batch_size": FLAGS.batch_size,
            "im2col_ms": round(1000 * medians["im2col"], 1),
            "offset_matmuls_ms": round(1000 * medians["offset_matmuls"], 1),
            "ratio": round(medians["im2col"] / medians["offset_matmuls"], 3),
            "steps_timed": {path: len(values) for path, values in times.items()},
        }
        rows.append(row)
        print(
            f"{name:12s} im2col {row['im2col_ms']:8.1f} ms  per-offset matmuls "
            f"{row['offset_matmuls_ms']:8.1f} ms  ratio {row['ratio']:.3f}",
            flush=True,
        )
    with open(FLAGS.output, "w") as handle:
        json.dump({"rows": rows, "device": str(jax.devices()[0])}, handle, indent=2)


if __name__ == "__main__":
    app.run(main)

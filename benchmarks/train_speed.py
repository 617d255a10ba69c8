"""Epoch time of kdjax against an equivalent PyTorch eager loop, in one process.

    python -m benchmarks.train_speed                       # synthetic MNIST-shaped data
    python -m benchmarks.train_speed --data_dir=/path/to/mnist

    python -m benchmarks.train_speed --feeds=host,device --epochs=2   # on a GPU

For each student it times one full epoch of (a) kdjax's real training loop
(``kdjax.training.fit`` with each ``--feeds`` value: shuffled batches gathered from
host arrays and sent per step, or the training set on the device and the epoch as
one compiled scan; per-epoch evaluation excluded) and (b) a PyTorch eager loop
with the same model, batch size, optimizer (Adam 1e-3), example order and stored
soft targets, on the GPU when there is one (data on the device, TF32 allowed as
JAX does by default). It also times kdjax's plain-CE epoch (the cost of KD with
stored logits) and a population of ``--population`` students trained together
against that many single runs, and reports the KD epoch's TFLOP/s (forward +
backward taken as 3x XLA's count of the forward). Prints a table and writes JSON.

PyTorch is optional (``pip install torch``); without it those rows are skipped.
Timings exclude compilation: with ``--epochs=1`` the compile (first step) is
subtracted, with more epochs the last epoch is reported.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from absl import app, flags

from benchmarks.networks import IMAGE_SHAPES, STUDENTS, torch_model
from kdjax.data import MNIST_MEAN, MNIST_STD, Dataset, Split, load_mnist_idx, normalize
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import get_model
from kdjax.training import (
    FEEDS,
    STRATEGIES,
    Execution,
    Plan,
    Run,
    Training,
    TrainingData,
    fit,
    make_optimizer,
    resolve_feed,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "MNIST IDX files; default: random MNIST-shaped data.")
flags.DEFINE_integer(
    "population", 6, "Students trained together for the population row (0: no such row)."
)
flags.register_validator("population", lambda n: n >= 0, message="--population must be >= 0")
flags.DEFINE_string("output", "benchmarks/train_speed.json", "Where to write the results.")
flags.DEFINE_list(
    "feeds", ["auto"], "kdjax feeds to time: host, device, auto (device; see kdjax.training)."
)
flags.register_validator(
    "feeds", lambda names: set(names) <= set(FEEDS), message="--feeds: unknown feed"
)
flags.DEFINE_integer(
    "epochs", 1, "Epochs per timed run; with 2 or more the last epoch is reported."
)
flags.register_validator("epochs", lambda n: n >= 1, message="--epochs must be >= 1")
flags.DEFINE_integer("max_examples", None, "Cap every student's training examples (smoke runs).")
flags.register_validator(
    "max_examples",
    lambda n: n is None or n >= 256,
    message="--max_examples must be >= 256 (two steps of the largest batch)",
)
flags.DEFINE_enum(
    "population_strategy",
    "auto",
    ["auto", *STRATEGIES],
    "How the population row trains its students together (kdjax.training.over_members).",
)
flags.DEFINE_string("torch_device", "auto", "PyTorch device: auto (cuda if available), cpu, cuda.")

flags.DEFINE_list(
    "students",
    ["small_conv_net", "mlp_200", "two_conv_net", "four_conv_net"],
    "Which networks to time (four_conv_net: the CIFAR teacher).",
)
flags.register_validator(
    "students", lambda names: set(names) <= set(STUDENTS), message="--students: unknown name"
)
POPULATION_KEY = "population{n}_over_{n}_singles"
PREPROCESS = partial(normalize, mean=MNIST_MEAN, std=MNIST_STD)


def synthetic_mnist(count: int, shape: tuple = (28, 28, 1)) -> Split:
    rng = np.random.default_rng(0)
    return Split(
        rng.integers(0, 256, (count, *shape), dtype=np.uint8),
        rng.integers(0, 10, count).astype(np.int32),
        np.arange(count, dtype=np.int64),
    )


def kdjax_epoch_seconds(
    name, split, test, teacher_logits, batch_size, objective, seeds, feed, epochs
):
    """Steady-state seconds of one epoch of ``kdjax.training.fit`` and its compile time."""
    model, settings, _, _ = STUDENTS[name]
    training = Training(
        model=get_model(model, **settings),
        objective=OBJECTIVES[objective],
        optimizer=make_optimizer("adam"),
        preprocess=PREPROCESS,
    )
    with tempfile.TemporaryDirectory() as workdir:
        hyperparams = make_hyperparams(
            learning_rate=1e-3,
            temperature=3.0,
            hard_weight=0.7 if objective == "kd" else 1.0,
            soft_weight=0.3 if objective == "kd" else 0.0,
        )
        result = fit(
            training,
            TrainingData(
                split, test, {"teacher_logits": teacher_logits} if objective == "kd" else {}
            ),
            Plan(epochs=epochs, batch_size=batch_size, seed=seeds, hyperparams=hyperparams),
            Run(f"{name}-{objective}", Path(workdir) / "run", {}),
            Execution(feed=feed, population_strategy=FLAGS.population_strategy),
            log=lambda message: None,
        )
    if epochs > 1:  # the last epoch: compiled, warm, nothing to subtract
        return result.history[-1]["seconds"], result.compile_seconds
    # One epoch: compilation is inside its time. The host feed times its first step
    # (compile + one step): subtract it and add back one ordinary step. The device
    # feed compiles ahead of time: subtract the compile alone.
    steps = len(split) // batch_size
    seconds = result.history[0]["seconds"] - result.compile_seconds
    if feed == "host":
        seconds *= steps / (steps - 1)
    return seconds, result.compile_seconds


def torch_epoch_seconds(model_name, split, teacher_logits, batch_size, device, epochs):
    """Seconds of one steady-state epoch of the notebooks' PyTorch eager loop. On a GPU
    the data sits on the device (the fastest way to run the notebooks' loop there)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch_model(model_name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.from_numpy(split.images.copy()).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(split.labels).long().to(device)
    soft = torch.from_numpy(teacher_logits).to(device)
    temperature, alpha = 3.0, 0.7
    steps = len(split) // batch_size
    model.train()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = None
    for epoch in range(epochs):
        order = torch.from_numpy(np.random.default_rng([0, epoch]).permutation(len(split)))
        order = order.to(device)
        synchronize()
        start = time.perf_counter()
        for step in range(steps):
            if epochs == 1 and step == 1:  # like kdjax's figure: first step excluded
                synchronize()
                start = time.perf_counter()
            index = order[step * batch_size : (step + 1) * batch_size]
            x = (images[index].float() / 255.0 - MNIST_MEAN) / MNIST_STD
            logits = model(x)
            hard = F.cross_entropy(logits, labels[index])
            kl = F.kl_div(
                F.log_softmax(logits / temperature, 1),
                F.softmax(soft[index] / temperature, 1),
                reduction="batchmean",
            )
            loss = alpha * hard + (1 - alpha) * temperature**2 * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        synchronize()
        seconds = time.perf_counter() - start
        if epochs == 1:
            seconds *= steps / (steps - 1)
    return seconds, torch.get_num_threads()


def torch_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        # JAX's default float32 matmul/conv precision on NVIDIA GPUs uses TF32; let
        # PyTorch do the same so both run the same arithmetic.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def main(argv):
    del argv
    import jax

    from kdjax.models.costs import forward_flops

    if FLAGS.data_dir:
        dataset: Dataset = load_mnist_idx(FLAGS.data_dir)
        train_full, test = dataset.train, dataset.test.take(1000)
        source = "mnist idx"
    else:
        train_full, test = synthetic_mnist(60000), synthetic_mnist(1000)
        source = "synthetic"
    feeds = [resolve_feed(feed) for feed in FLAGS.feeds]
    try:
        device = torch_device(FLAGS.torch_device)
    except ImportError:
        device = None
        print("PyTorch not installed: skipping the PyTorch comparison.")
    rows = []
    for name in FLAGS.students:
        model_name, settings, batch_size, count = STUDENTS[name]
        count = min(count, FLAGS.max_examples or count)
        shape = IMAGE_SHAPES.get(name, (28, 28, 1))
        if name in IMAGE_SHAPES:  # not MNIST-shaped: synthetic data of its shape
            split = synthetic_mnist(count, shape)
            test_split = synthetic_mnist(1000, shape)
        else:
            split, test_split = train_full.take(count), test
        teacher_logits = np.random.default_rng(1).normal(size=(count, 10)).astype(np.float32)
        model = get_model(model_name, **settings)
        variables = model.init(jax.random.PRNGKey(0), np.zeros((1, *shape), np.float32))
        # Forward + backward ~ 3x the forward pass (XLA's count of the forward).
        epoch_tflop = 3 * forward_flops(model, variables, shape) * count / 1e12
        torch_seconds = threads = None
        if device is not None:
            print(f"Timing {name} in PyTorch on {device} ...", flush=True)
            torch_seconds, threads = torch_epoch_seconds(
                name, split, teacher_logits, batch_size, device, FLAGS.epochs
            )
        for feed in feeds:
            print(f"Timing {name} (batch {batch_size}, {count} examples, {feed} feed) ...")

            seconds = partial(
                kdjax_epoch_seconds,
                name,
                split,
                test_split,
                teacher_logits,
                batch_size,
                feed=feed,
                epochs=FLAGS.epochs,
            )
            kd, compile_seconds = seconds("kd", 0)
            ce, _ = seconds("ce", 0)
            population = None
            if FLAGS.population:
                population, _ = seconds("kd", list(range(FLAGS.population)))
            row = {
                "student": name,
                "feed": feed,
                "population_strategy": FLAGS.population_strategy,
                "batch_size": batch_size,
                "examples": count,
                "epoch_tflop": round(epoch_tflop, 4),
                "kdjax_kd_epoch_s": round(kd, 3),
                "kdjax_kd_tflops": round(epoch_tflop / kd, 3),
                "kdjax_compile_s": round(compile_seconds, 2),
                "kdjax_ce_epoch_s": round(ce, 3),
                "kd_over_ce": round(kd / ce, 3),
            }
            if population is not None:
                row[f"population{FLAGS.population}_epoch_s"] = round(population, 3)
                row[POPULATION_KEY.format(n=FLAGS.population)] = round(
                    population / (FLAGS.population * kd), 3
                )
            if torch_seconds is not None:
                row.update(
                    torch_device=str(device),
                    torch_kd_epoch_s=round(torch_seconds, 3),
                    torch_threads=threads,
                    kdjax_over_torch=round(kd / torch_seconds, 3),
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax_device": jax.devices()[0].device_kind,
            "jax_version": jax.__version__,
        },
        "data": source,
        "epochs": FLAGS.epochs,
        "rows": rows,
    }
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']['jax_device']} ({jax.default_backend()})")
    print(
        f"{'student':14} {'feed':6} {'kdjax KD s':>10} {'torch KD s':>10} {'kdjax/torch':>11} "
        f"{'TFLOP/s':>8} {'KD/CE':>6} {'pop/singles':>11}"
    )
    for row in rows:
        print(
            f"{row['student']:14} {row['feed']:6} {row['kdjax_kd_epoch_s']:>10} "
            f"{row.get('torch_kd_epoch_s', '-'):>10} {row.get('kdjax_over_torch', '-'):>11} "
            f"{row['kdjax_kd_tflops']:>8} {row['kd_over_ce']:>6} "
            f"{row.get(POPULATION_KEY.format(n=FLAGS.population), '-'):>11}"
        )
    print(f"Written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)

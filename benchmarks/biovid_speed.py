"""Epoch time of the BioVid pipeline's signal network: kdjax against the pipeline's
PyTorch loop, and cross-validation folds trained together against one fold.

    python -m benchmarks.biovid_speed                                   # the pipeline's sizes
    python -m benchmarks.biovid_speed --examples=2000 --parts=kdjax,torch   # smaller

Every measurement runs in its own process, one after the other (``--parts``):

* ``kdjax`` — one epoch of :class:`kdjax.models.signal_models.Conv1DNet` (the
  pipeline's network, no ReLU between the dense layers) through :func:`kdjax.training.fit`:
  SGD lr 1e-4 momentum 0.9, batch 1,024, ``--examples`` windows of ``--length``
  samples, one channel;
* ``torch`` — the pipeline's PyTorch loop on the same layers written in plain
  ``torch.nn`` (``Conv1d(1, 32, 5, stride=2)``, ReLU, ``MaxPool1d(2)``,
  ``Conv1d(32, 64, 5)``, ReLU, ``MaxPool1d(2)``, flatten, ``Linear(·, 512)``,
  ``Linear(512, 5)``), ``CrossEntropyLoss``, ``optim.SGD(lr=1e-4, momentum=0.9)``,
  shuffled batches drawn by indexing one tensor (cheaper than the pipeline's
  ``DataLoader`` over a ``TensorDataset``, which collates example by example);
* ``folds`` and ``one_fold`` — the 5 folds of ``k_fold`` trained together as one
  population (a folds plan) against the first fold alone; ``folds_unroll`` and
  ``folds_vmap`` the folds with the students unrolled in the program or vmapped
  instead of the CPU's default ``lax.map`` (:func:`kdjax.training.population_step`);
* ``steps`` — one compiled train step, outside ``fit``: one student, and the 5
  folds' population (each its own batch) under each population strategy
  (``lax.map``, unrolled in one program, ``vmap``); each with the share of the cores
  the process kept busy (CPU time ÷ wall time ÷ cores), the headroom a population
  could fill that one student leaves idle.

Both libraries drop the last partial batch. Timings exclude compilation and
warm-up: ``--epochs`` epochs run and the last one is reported (with ``--epochs=1``,
kdjax's first step, its compile, is subtracted). The data are random numbers in
[0, 1] (speed only). Each kdjax measurement also reports XLA's FLOP count of one
student's train step and, from it, the TFLOP/s reached as a fraction of a float32
2048³ matmul timed in the same process: how far the step is from what this CPU can
do. Prints a table and writes JSON to ``--output``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("examples", 8700, "Training windows (BioVid part A: 8,700).")
flags.DEFINE_integer("length", 2816, "Samples per window (5.5 s at 512 Hz).")
flags.DEFINE_integer("batch_size", 1024, "Batch size (BioVid pipeline: 1,024).")
flags.DEFINE_integer("epochs", 2, "Epochs per measurement; the last is reported.")
flags.DEFINE_integer("folds", 5, "Folds trained together in the folds measurement.")
flags.DEFINE_list(
    "parts",
    ["kdjax", "torch", "folds", "one_fold", "folds_unroll", "folds_vmap", "steps"],
    "What to measure.",
)
flags.DEFINE_string("output", "benchmarks/biovid_speed.json", "Where to write the results.")
flags.DEFINE_integer(
    "repeats", 3, "Timed calls per variant of the steps part (the fastest counts)."
)
flags.DEFINE_string("worker", None, "Internal: run one part in this process.")

LEARNING_RATE, MOMENTUM, NUM_CLASSES = 1e-4, 0.9, 5
MATMUL_SIZE = 2048
PART_STRATEGIES = {"folds_unroll": "unroll", "folds_vmap": "vmap"}  # the others: "auto"


def _data(examples: int, length: int):
    rng = np.random.default_rng(0)
    signals = rng.random((examples, length, 1), dtype=np.float32)
    return signals, rng.integers(0, NUM_CLASSES, examples).astype(np.int32)


def kdjax_epoch(part: str) -> dict:
    """Seconds of the last epoch of ``fit`` on the pipeline's network (one student, or
    the folds together, or the first fold alone)."""
    from kdjax.data import Split, normalize
    from kdjax.data.folds import k_fold
    from kdjax.distill.objectives import get_objective, make_hyperparams
    from kdjax.models.signal_models import get_signal_model
    from kdjax.training import (
        Execution,
        Folds,
        Plan,
        Run,
        Training,
        TrainingData,
        fit,
        make_optimizer,
    )

    signals, labels = _data(FLAGS.examples, FLAGS.length)
    split = Split(signals, labels, np.arange(len(labels), dtype=np.int64))
    test = split.take(min(len(split), FLAGS.batch_size))
    folds, seeds = None, 0
    if part in ("folds", "one_fold", "folds_unroll", "folds_vmap"):
        fold_list = k_fold(len(split), FLAGS.folds, seed=0)
        if part == "one_fold":
            fold_list = fold_list[:1]
        folds, seeds = Folds.of(fold_list), list(range(len(fold_list)))
        test = split
    training = Training(
        get_signal_model("conv1d_net", NUM_CLASSES),
        get_objective("ce"),
        make_optimizer("sgd", momentum=MOMENTUM),
        partial(normalize, mean=0.0, std=1.0, scale=1.0),
    )
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(
            training, TrainingData(split, test),
            Plan(FLAGS.epochs, FLAGS.batch_size, seeds,
                 make_hyperparams(learning_rate=LEARNING_RATE), folds=folds),
            Run(part, Path(run_dir), {"part": part}),
            Execution(population_strategy=PART_STRATEGIES.get(part, "auto")),
            log=lambda message: None,
        )  # fmt: skip
    seconds = result.history[-1]["seconds"]
    if FLAGS.epochs == 1:
        seconds -= result.compile_seconds
    steps = (min(len(r) for r in folds.train) if folds else len(split)) // FLAGS.batch_size
    return {"seconds": seconds, "steps": steps, "students": len(folds.train) if folds else 1,
            **_arithmetic(training, signals)}  # fmt: skip


def _arithmetic(training, signals: np.ndarray) -> dict:
    """XLA's FLOP count of one student's train step at the benchmark's batch size, and
    a float32 2048³ matmul's rate in this process (the CPU's practical peak)."""
    import jax
    import jax.numpy as jnp

    from kdjax.distill.objectives import make_hyperparams
    from kdjax.training import create_state, make_train_step

    state = create_state(training.model, training.optimizer, signals[:1], seed=0)
    step = make_train_step(training.model, training.objective, training.optimizer,
                           training.preprocess)  # fmt: skip
    batch = {"images": jnp.asarray(signals[: FLAGS.batch_size]),
             "labels": jnp.zeros(FLAGS.batch_size, jnp.int32),
             "ids": jnp.arange(FLAGS.batch_size)}  # fmt: skip
    hyperparams = make_hyperparams(learning_rate=LEARNING_RATE)
    analysis = jax.jit(step).lower(state, batch, hyperparams, {}).compile().cost_analysis()
    flops = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    matrix = jnp.ones((MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(matrix).block_until_ready()
    started = time.perf_counter()
    for _ in range(5):
        matmul(matrix).block_until_ready()
    seconds = (time.perf_counter() - started) / 5
    return {"step_flops": float(flops), "matmul_gflops": 2 * MATMUL_SIZE**3 / seconds / 1e9}


def _timed(function, args, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` calls (after one untimed call that compiles), and
    the share of the cores busy over all of them: process CPU time ÷ wall ÷ cores."""
    import os

    import jax

    jax.block_until_ready(function(*args))
    fastest, wall, cpu = float("inf"), 0.0, time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        elapsed = time.perf_counter() - started
        fastest, wall = min(fastest, elapsed), wall + elapsed
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return fastest, (time.process_time() - cpu) / wall / (cores or 1)


def step_times() -> dict:
    """One student's compiled train step against the folds' population step (each
    student its own batch): ``lax.map``, the students unrolled in one program, and
    ``vmap`` (:func:`kdjax.training.population_step`). Seconds are the fastest call;
    ``busy`` the share of the cores used."""
    import jax
    import jax.numpy as jnp

    from kdjax.data import normalize
    from kdjax.distill.objectives import get_objective, make_hyperparams
    from kdjax.models.signal_models import get_signal_model
    from kdjax.training import create_state, make_optimizer, make_train_step, population_step

    model = get_signal_model("conv1d_net", NUM_CLASSES)
    optimizer = make_optimizer("sgd", momentum=MOMENTUM)
    step = make_train_step(model, get_objective("ce"), optimizer,
                           partial(normalize, mean=0.0, std=1.0, scale=1.0))  # fmt: skip
    signals, labels = _data(FLAGS.folds * FLAGS.batch_size, FLAGS.length)
    shape = (FLAGS.folds, FLAGS.batch_size)
    batches = {"images": jnp.asarray(signals.reshape(*shape, *signals.shape[1:])),
               "labels": jnp.asarray(labels.reshape(shape)),
               "ids": jnp.arange(signals.shape[0]).reshape(shape)}  # fmt: skip
    state = create_state(model, optimizer, signals[:1], seed=0)
    hyperparams = make_hyperparams(learning_rate=LEARNING_RATE)
    stack = partial(jax.tree.map, lambda leaf: jnp.stack([leaf] * FLAGS.folds))
    states, member_hyperparams = stack(state), stack(hyperparams)
    first_batch = jax.tree.map(lambda leaf: leaf[0], batches)
    variants = {"one": (jax.jit(step), (state, first_batch, hyperparams, {}))}
    for strategy in ("map", "unroll", "vmap"):
        variants[strategy] = (jax.jit(population_step(step, strategy, own_batches=True)), None)
    result = {"students": FLAGS.folds}
    for name, (function, args) in variants.items():
        args = args or (states, batches, member_hyperparams, {})
        # vmap is many times slower on the CPU (grouped convolutions): timed once.
        seconds, busy = _timed(function, args, 1 if name == "vmap" else FLAGS.repeats)
        result[name] = {"seconds": seconds, "busy": busy}
        print(f"steps {name}: {seconds:.3f} s, {busy:.0%} of the cores busy", flush=True)
    for name in ("map", "unroll", "vmap"):
        result[f"{name}_over_one"] = result[name]["seconds"] / result["one"]["seconds"]
    return result


def torch_epoch() -> dict:
    """Seconds of the last epoch of the pipeline's PyTorch loop on the same layers."""
    import torch
    from torch import nn

    signals, labels = _data(FLAGS.examples, FLAGS.length)
    inputs = torch.from_numpy(signals.transpose(0, 2, 1).copy())  # [N, 1, L], PyTorch's layout
    targets = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv1d(1, 32, 5, stride=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, 64, 5), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
    )  # fmt: skip
    width = trunk(inputs[:1]).shape[1]
    model = nn.Sequential(trunk, nn.Linear(width, 512), nn.Linear(512, NUM_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    steps = len(labels) // FLAGS.batch_size
    seconds = 0.0
    for _ in range(FLAGS.epochs):
        order = torch.randperm(len(labels))
        start = time.perf_counter()
        for step in range(steps):
            rows = order[step * FLAGS.batch_size : (step + 1) * FLAGS.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[rows]), targets[rows])
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": steps, "students": 1, "threads": torch.get_num_threads()}


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        workers = {"torch": torch_epoch, "steps": step_times}
        result = workers.get(FLAGS.worker, partial(kdjax_epoch, FLAGS.worker))()
        print("RESULT " + json.dumps(result))
        return
    results = {}
    passed = [f"--{name}={FLAGS[name].value}" for name in
              ("examples", "length", "batch_size", "epochs", "folds", "repeats")]  # fmt: skip
    for part in FLAGS.parts:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.biovid_speed", f"--worker={part}", *passed],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
        if completed.returncode or not lines:
            sys.exit(f"error: the {part} measurement failed: {completed.stderr.strip()[-2000:]}")
        results[part] = json.loads(lines[-1].removeprefix("RESULT "))
        print(f"{part}: {results[part]}", flush=True)
    for result in results.values():
        if "step_flops" in result:
            done = result["step_flops"] * result["steps"] * result["students"]
            result["tflops_per_second"] = done / result["seconds"] / 1e12
            result["of_matmul_rate"] = result["tflops_per_second"] * 1e3 / result["matmul_gflops"]
    ratios = {}
    if {"kdjax", "torch"} <= results.keys():
        ratios["kdjax_over_torch"] = results["kdjax"]["seconds"] / results["torch"]["seconds"]
    if {"folds", "one_fold"} <= results.keys():
        ratios["folds_over_one_fold"] = results["folds"]["seconds"] / results["one_fold"]["seconds"]
    if {"folds_unroll", "one_fold"} <= results.keys():
        ratios["folds_unroll_over_one_fold"] = (
            results["folds_unroll"]["seconds"] / results["one_fold"]["seconds"]
        )
    if "steps" in results:
        ratios["folds_step_over_one_step"] = results["steps"]["map_over_one"]
    document = {
        "settings": {name: FLAGS[name].value for name in
                     ("examples", "length", "batch_size", "epochs", "folds", "repeats")},
        "machine": {"processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "results": results,
        "ratios": ratios,
        "targets": {"kdjax_over_torch": 0.5, "folds_over_one_fold": 3.0,
                    "folds_unroll_over_one_fold": 3.0, "folds_step_over_one_step": 3.0},
    }  # fmt: skip
    with open(FLAGS.output, "w") as file:
        json.dump(document, file, indent=2)
    for part, result in results.items():
        if "tflops_per_second" in result:
            rate, share = result["tflops_per_second"], result["of_matmul_rate"]
            print(f"{part}: {rate:.4f} TFLOP/s, {share:.0%} of the float32 matmul rate")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f} (target <= {document['targets'][name]})")
    print(f"Results: {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)

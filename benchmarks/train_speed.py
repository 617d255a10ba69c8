"""Epoch time of kdjax against an equivalent PyTorch eager loop, in one process.

    python -m benchmarks.train_speed                       # synthetic MNIST-shaped data
    python -m benchmarks.train_speed --data_dir=/path/to/mnist

For each student it times one full epoch of (a) kdjax's real training loop
(``kdjax.train.fit``: shuffled batches gathered from host arrays, the jitted
step, per-epoch evaluation excluded) and (b) a PyTorch eager loop with the same
model, batch size, optimizer (Adam 1e-3), example order and stored soft
targets. It also times kdjax's plain-CE epoch (the cost of KD with stored
logits) and a population of ``--population`` students trained together against
that many single runs. Prints a table of ratios and writes JSON.

PyTorch is optional (``pip install torch``); without it those rows are skipped.
Timings exclude compilation (the first epoch step is timed separately).
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

from kdjax.data import MNIST_MEAN, MNIST_STD, Dataset, Split, load_mnist_idx, normalize
from kdjax.models import get_model
from kdjax.train import OBJECTIVES, fit, make_hyperparams, make_optimizer

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "MNIST IDX files; default: random MNIST-shaped data.")
flags.DEFINE_integer("population", 6, "Students trained together for the population row.")
flags.DEFINE_string("output", "benchmarks/train_speed.json", "Where to write the results.")

STUDENTS = {
    # name: (batch size, training examples) as in the seeds: seeds 000, 004 and 001.
    "student_net": (128, 60000),
    "mlp_200": (32, 10000),
    "cifar_student": (128, 50000),
}
IMAGE_SHAPES = {"cifar_student": (32, 32, 3)}  # the others are MNIST-shaped
flags.DEFINE_list(
    "students", ["student_net", "mlp_200", "cifar_student"], "Which students to time."
)
flags.register_validator(
    "students", lambda names: set(names) <= set(STUDENTS), message="--students: unknown name"
)
PREPROCESS = partial(normalize, mean=MNIST_MEAN, std=MNIST_STD)


def synthetic_mnist(count: int, shape: tuple = (28, 28, 1)) -> Split:
    rng = np.random.default_rng(0)
    return Split(
        rng.integers(0, 256, (count, *shape), dtype=np.uint8),
        rng.integers(0, 10, count).astype(np.int32),
        np.arange(count, dtype=np.int64),
    )


def kdjax_epoch_seconds(model_name, split, test, teacher_logits, batch_size, objective, seeds):
    with tempfile.TemporaryDirectory() as workdir:
        result = fit(
            name=f"{model_name}-{objective}",
            run_dir=Path(workdir) / "run",
            run_config={},
            model=get_model(model_name),
            objective=OBJECTIVES[objective],
            optimizer=make_optimizer("adam"),
            hyperparams=make_hyperparams(
                learning_rate=1e-3,
                temperature=3.0,
                hard_weight=0.7 if objective == "kd" else 1.0,
                soft_weight=0.3 if objective == "kd" else 0.0,
            ),
            train_split=split,
            test_split=test,
            preprocess=PREPROCESS,
            epochs=1,
            batch_size=batch_size,
            seed=seeds,
            train_extras={"teacher_logits": teacher_logits} if objective == "kd" else None,
            log=lambda message: None,
        )
    # The first step (compilation) is inside the epoch's time: subtract it, add back
    # one ordinary step so the figure is a steady-state epoch.
    steps = len(split) // batch_size
    seconds = result.history[0]["seconds"]
    steady = (seconds - result.compile_seconds) * steps / (steps - 1)
    return steady, result.compile_seconds


def torch_model(name):
    import torch.nn as nn

    if name == "cifar_student":  # seed 001's student, as the seed writes it
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10),
        )  # fmt: skip
    if name == "student_net":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout2d(0.25), nn.Flatten(),
            nn.Linear(3136, 32), nn.ReLU(), nn.Linear(32, 10),
        )  # fmt: skip
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, 10),
    )  # fmt: skip


def torch_epoch_seconds(model_name, split, teacher_logits, batch_size):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(split.labels).long()
    soft = torch.from_numpy(teacher_logits)
    temperature, alpha = 3.0, 0.7
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(split)))
    steps = len(split) // batch_size
    model.train()
    start = None
    for step in range(steps):
        if step == 1:  # like kdjax's figure: steady state, first step excluded
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
    return (time.perf_counter() - start) * steps / (steps - 1), torch.get_num_threads()


def main(argv):
    del argv
    import jax

    if FLAGS.data_dir:
        dataset: Dataset = load_mnist_idx(FLAGS.data_dir)
        train_full, test = dataset.train, dataset.test.take(1000)
        source = "mnist idx"
    else:
        train_full, test = synthetic_mnist(60000), synthetic_mnist(1000)
        source = "synthetic"
    rows = []
    for name in FLAGS.students:
        batch_size, count = STUDENTS[name]
        if name in IMAGE_SHAPES:  # not MNIST-shaped: synthetic data of its shape
            split = synthetic_mnist(count, IMAGE_SHAPES[name])
            test_split = synthetic_mnist(1000, IMAGE_SHAPES[name])
        else:
            split, test_split = train_full.take(count), test
        teacher_logits = np.random.default_rng(1).normal(size=(count, 10)).astype(np.float32)
        print(f"Timing {name} (batch {batch_size}, {count} examples) ...", flush=True)
        kd, compile_seconds = kdjax_epoch_seconds(
            name, split, test_split, teacher_logits, batch_size, "kd", 0
        )
        ce, _ = kdjax_epoch_seconds(name, split, test_split, teacher_logits, batch_size, "ce", 0)
        population, _ = kdjax_epoch_seconds(
            name,
            split,
            test_split,
            teacher_logits,
            batch_size,
            "kd",
            list(range(FLAGS.population)),
        )
        row = {
            "student": name,
            "batch_size": batch_size,
            "examples": count,
            "kdjax_kd_epoch_s": round(kd, 2),
            "kdjax_compile_s": round(compile_seconds, 2),
            "kdjax_ce_epoch_s": round(ce, 2),
            "kd_over_ce": round(kd / ce, 3),
            f"population{FLAGS.population}_epoch_s": round(population, 2),
            f"population{FLAGS.population}_over_{FLAGS.population}_singles": round(
                population / (FLAGS.population * kd), 3
            ),
        }
        try:
            torch_seconds, threads = torch_epoch_seconds(name, split, teacher_logits, batch_size)
            row.update(
                torch_kd_epoch_s=round(torch_seconds, 2),
                torch_threads=threads,
                kdjax_over_torch=round(kd / torch_seconds, 3),
            )
        except ImportError:
            print("PyTorch not installed: skipping the PyTorch comparison.")
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax_version": jax.__version__,
        },
        "data": source,
        "rows": rows,
    }
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'student':12} {'kdjax KD s':>10} {'torch KD s':>10} {'kdjax/torch':>11} "
        f"{'KD/CE':>6} {'pop/singles':>11}"
    )
    for row in rows:
        print(
            f"{row['student']:12} {row['kdjax_kd_epoch_s']:>10} "
            f"{row.get('torch_kd_epoch_s', '-'):>10} {row.get('kdjax_over_torch', '-'):>11} "
            f"{row['kd_over_ce']:>6} "
            f"{row[f'population{FLAGS.population}_over_{FLAGS.population}_singles']:>11}"
        )
    print(f"Written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)

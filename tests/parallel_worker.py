"""Trains a few data-parallel steps; run by tests/test_parallel.py in a subprocess.

    python tests/parallel_worker.py OUT_DIR MODE [PROCESS_ID NUM_PROCESSES PORT]

MODE ``single``: one process, 8 simulated CPU devices; trains once on one device and
over a mesh of all 8 with each feed, and saves the parameter sets. MODE
``populations``: the same for a population of three students sharing batches and
for two students with their own rows (folds). MODE ``multi``: one of several
processes (2 simulated devices each, gloo collectives) training over the global mesh
(one student with the host feed, and the two-fold population with each feed); saves
its parameters and the training rows it read.
"""

import json
import os
import sys
from pathlib import Path

mode = sys.argv[2]
devices_per_process = 2 if mode == "multi" else 8
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if mode == "multi":
    process_id, num_processes, port = (int(v) for v in sys.argv[3:6])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)

from functools import partial  # noqa: E402

import numpy as np  # noqa: E402

from kdjax.data import Split, normalize  # noqa: E402
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams  # noqa: E402
from kdjax.models import SmallConvNet  # noqa: E402
from kdjax.training import (  # noqa: E402
    Execution,
    Folds,
    Plan,
    Run,
    Training,
    TrainingData,
    fit,
    make_optimizer,
)
from kdjax.training.parallel import data_mesh  # noqa: E402

BATCH = 32
COUNT = 96  # three steps per epoch


class RecordingImages(np.ndarray):
    """Images that remember which rows a training step read."""

    reads: list

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.ndim == 1 and len(index) < COUNT:
            RecordingImages.reads.append(index.tolist())
        return np.asarray(self).__getitem__(index)


def tiny_split(count: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.integers(0, 40, (count, 28, 28, 1)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4, 4:24, 0] = 255
    return Split(images, labels, np.arange(count, dtype=np.int64))


# Two students with their own rows (overlapping folds of 64 rows: two steps per epoch).
FOLD_ROWS = [np.arange(0, 64), np.arange(32, 96)]


def train(run_dir: Path, train_split: Split, mesh, feed="auto", seed=0, **fields) -> dict:
    """Two epochs of KD; ``seed`` a list trains a population (with one temperature per
    student), ``fields`` are further fields of the plan (``folds``)."""
    teacher_logits = np.random.default_rng(7).normal(size=(COUNT, 10)).astype(np.float32)
    temperature = 3.0 if isinstance(seed, int) else np.linspace(2.0, 4.0, len(seed))
    training = Training(
        model=SmallConvNet(),
        objective=OBJECTIVES["kd"],
        optimizer=make_optimizer("adam"),
        preprocess=partial(normalize, mean=0.1307, std=0.3081),
    )
    plan = Plan(
        epochs=2,
        batch_size=BATCH,
        seed=seed,
        hyperparams=make_hyperparams(
            learning_rate=1e-3, temperature=temperature, hard_weight=0.7, soft_weight=0.3
        ),
        **fields,
    )
    result = fit(
        training,
        TrainingData(train_split, tiny_split(32, 1), {"teacher_logits": teacher_logits}),
        plan,
        Run("student", run_dir, {"test": "parallel"}),
        Execution(mesh=mesh, feed=feed),
        log=lambda message: None,
    )
    leaves = jax.tree_util.tree_leaves_with_path(result.params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    split = tiny_split(COUNT, 0)
    if mode == "single":
        assert jax.device_count() == 8, jax.devices()
        np.savez(out / "one_device.npz", **train(out / "run_one", split, None))
        for feed in ("host", "device"):
            params = train(out / f"run_eight_{feed}", split, data_mesh(), feed)
            np.savez(out / f"eight_devices_{feed}.npz", **params)
        return
    folds = {"seed": [0, 1], "folds": Folds(tuple(FOLD_ROWS))}
    if mode == "populations":
        assert jax.device_count() == 8, jax.devices()
        for name, fields in (("population", {"seed": [0, 1, 2]}), ("folds", folds)):
            np.savez(out / f"{name}_one_device.npz", **train(out / name, split, None, **fields))
            for feed in ("host", "device"):
                params = train(out / f"{name}_{feed}", split, data_mesh(), feed, **fields)
                np.savez(out / f"{name}_eight_devices_{feed}.npz", **params)
        return
    assert jax.device_count() == 2 * num_processes and jax.local_device_count() == 2
    RecordingImages.reads = []
    recording = Split(split.images.view(RecordingImages), split.labels, split.ids)
    params = train(out / "run_multi", recording, data_mesh(), "host")
    np.savez(out / f"process{process_id}.npz", **params)
    (out / f"process{process_id}_rows.json").write_text(json.dumps(RecordingImages.reads))
    for feed in ("host", "device"):
        params = train(out / f"folds_multi_{feed}", split, data_mesh(), feed, **folds)
        np.savez(out / f"process{process_id}_folds_{feed}.npz", **params)


if __name__ == "__main__":
    main()

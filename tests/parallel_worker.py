"""Trains a few data-parallel steps; run by tests/test_parallel.py in a subprocess.

    python tests/parallel_worker.py OUT_DIR MODE [PROCESS_ID NUM_PROCESSES PORT]

MODE ``single``: one process, 8 simulated CPU devices; trains once on one device and
once over a mesh of all 8, and saves both parameter sets. MODE ``multi``: one of
several processes (2 simulated devices each, gloo collectives) training over the
global mesh; saves its parameters and the training rows it read.
"""

import json
import os
import sys
from pathlib import Path

mode = sys.argv[2]
devices_per_process = 8 if mode == "single" else 2
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
from kdjax.models import SmallConvNet  # noqa: E402
from kdjax.objectives import OBJECTIVES, make_hyperparams  # noqa: E402
from kdjax.parallel import data_mesh  # noqa: E402
from kdjax.training import Execution, Training, fit, make_optimizer  # noqa: E402

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


def train(run_dir: Path, train_split: Split, mesh) -> dict:
    teacher_logits = np.random.default_rng(7).normal(size=(COUNT, 10)).astype(np.float32)
    training = Training(
        model=SmallConvNet(),
        objective=OBJECTIVES["kd"],
        optimizer=make_optimizer("adam"),
        preprocess=partial(normalize, mean=0.1307, std=0.3081),
    )
    result = fit(
        training,
        name="student",
        run_dir=run_dir,
        run_config={"test": "parallel"},
        hyperparams=make_hyperparams(
            learning_rate=1e-3, temperature=3.0, hard_weight=0.7, soft_weight=0.3
        ),
        train_split=train_split,
        test_split=tiny_split(32, 1),
        epochs=2,
        batch_size=BATCH,
        seed=0,
        train_extras={"teacher_logits": teacher_logits},
        execution=Execution(mesh=mesh),
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
        np.savez(out / "eight_devices.npz", **train(out / "run_eight", split, data_mesh()))
        return
    assert jax.device_count() == 2 * num_processes and jax.local_device_count() == 2
    RecordingImages.reads = []
    recording = Split(split.images.view(RecordingImages), split.labels, split.ids)
    params = train(out / "run_multi", recording, data_mesh())
    np.savez(out / f"process{process_id}.npz", **params)
    (out / f"process{process_id}_rows.json").write_text(json.dumps(RecordingImages.reads))


if __name__ == "__main__":
    main()

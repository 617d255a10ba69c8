"""Seed 000: distil an MNIST CNN teacher into the small StudentNet with stored soft targets.

    python -m experiments.mnist_kd --temperature=3 --alpha=0.7

Trains the teacher (or reuses it from the workdir), stores its logits for every
training and test example, then trains StudentNet with the KD loss
``alpha·CE + (1−alpha)·T²·KL`` and, with the same seed, without a teacher (the
baseline). Prints a comparison table and writes ``results.json`` and
``learning_curves.png`` in the workdir. Re-running resumes any unfinished run.

Without ``--data_dir`` and without a TFDS copy of MNIST it uses the embedded
5,000-image sample, and says so.
"""

from __future__ import annotations

import time

from absl import app, flags

from experiments import common
from kdjax.data import load_mnist
from kdjax.distill import RunSpec, parameter_count, teacher_soft_targets, train_run
from kdjax.train import accuracy

FLAGS = flags.FLAGS
flags.DEFINE_float("temperature", 3.0, "Softmax temperature T applied to teacher and student.")
flags.DEFINE_float("alpha", 0.7, "Weight of the hard-label CE; 1 - alpha weights T²·KL.")
flags.DEFINE_integer("epochs", 3, "Student training epochs (seed 000: 3).")
flags.DEFINE_integer("teacher_epochs", 3, "Teacher training epochs, when it is not in the workdir.")
flags.DEFINE_integer("batch_size", 128, "Training batch size (seed 000: 128).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (seed 000: 1e-3).")
flags.DEFINE_integer("seed", 42, "Seed for initialisation, dropout and shuffling.")
flags.DEFINE_string("workdir", "runs/mnist_kd", "Where checkpoints, soft targets and results go.")
flags.DEFINE_string("data_dir", None, "MNIST IDX files or a prepared TFDS data dir.")
flags.DEFINE_bool("download", True, "Let TFDS download MNIST when no copy is found.")
flags.DEFINE_bool("scratch", True, "Also train the student without a teacher (the baseline).")

common.validate("temperature", lambda t: t > 0, "must be > 0")
common.validate("alpha", lambda a: 0.0 <= a <= 1.0, "must be in [0, 1]")
common.validate("epochs", lambda n: n >= 1, "must be >= 1")
common.validate("teacher_epochs", lambda n: n >= 1, "must be >= 1")
common.validate("batch_size", lambda n: n >= 1, "must be >= 1")
common.validate("learning_rate", lambda lr: lr > 0, "must be > 0")
common.validate_data_dir()

TEACHER_MODEL = "mnist_cnn"
STUDENT_MODEL = "student_net"
# Seed 000 feeds pixels scaled to [0, 1] (torchvision's transform_to_tensor).
PIXELS_IN_UNIT_RANGE = {"input_mean": 0.0, "input_std": 1.0}


@common.exit_on_user_error
def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    dataset = load_mnist(FLAGS.data_dir, download=FLAGS.download, log=common.log)
    common.log(
        f"Data: {dataset.name} from {dataset.source} ({dataset.location}): "
        f"{len(dataset.train)} train / {len(dataset.test)} test examples."
    )
    if dataset.notice:
        common.log("NOTE: " + dataset.notice)

    shared = dict(batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                  seed=FLAGS.seed, **PIXELS_IN_UNIT_RANGE)
    teacher_spec = RunSpec(role="teacher", model=TEACHER_MODEL, epochs=FLAGS.teacher_epochs,
                           **shared)
    teacher = train_run(teacher_spec, dataset, FLAGS.workdir, log=common.log)
    logits, fingerprint = teacher_soft_targets(teacher_spec, teacher, dataset, log=common.log)
    train_agreement = accuracy(logits["train"][:1000], dataset.train.labels[:1000])

    kd_spec = RunSpec(
        role="student_kd",
        model=STUDENT_MODEL,
        objective="kd",
        epochs=FLAGS.epochs,
        temperature=FLAGS.temperature,
        hard_weight=FLAGS.alpha,
        soft_weight=1.0 - FLAGS.alpha,
        **shared,
    )
    student_kd = train_run(kd_spec, dataset, FLAGS.workdir, teacher_logits=logits["train"],
                           teacher_fingerprint=fingerprint, log=common.log)
    runs = {"teacher": (teacher_spec, teacher), "student_kd": (kd_spec, student_kd)}
    if FLAGS.scratch:
        scratch_spec = RunSpec(role="student_scratch", model=STUDENT_MODEL, epochs=FLAGS.epochs,
                               **shared)
        runs["student_scratch"] = (scratch_spec, train_run(scratch_spec, dataset, FLAGS.workdir,
                                                           log=common.log))

    results = {
        name: {**result.summary(), "model": spec.model,
               "parameters": parameter_count(spec.model, dataset)}
        for name, (spec, result) in runs.items()
    }
    results["teacher"]["first_1000_train_label_agreement"] = train_agreement
    results["teacher"]["soft_targets_fingerprint"] = fingerprint
    results["data"] = dataset.summary()
    results["config"] = common.flag_values(
        ["temperature", "alpha", "epochs", "teacher_epochs", "batch_size", "learning_rate",
         "seed", "workdir", "data_dir", "download", "scratch"]
    )
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = common.write_results(FLAGS.workdir, results)
    plot = common.plot_learning_curves(
        f"{FLAGS.workdir}/learning_curves.png",
        {name: results[name]["history"] for name in runs},
        f"MNIST KD (T={FLAGS.temperature:g}, alpha={FLAGS.alpha:g}), {dataset.source}",
    )

    rows = [
        [
            name,
            results[name]["model"],
            f"{results[name]['parameters']:,}",
            f"{100 * results[name]['test_accuracy']:.2f}%",
            str(results[name]["epochs"]),
            f"{results[name]['mean_epoch_seconds']}",
        ]
        for name in runs
    ]
    print()
    print(common.format_table(
        ["run", "model", "params", "test acc", "epochs", "s/epoch"], rows))
    print(f"\nTeacher agrees with {round(train_agreement * 1000)}/1000 first training labels.")
    if dataset.notice:
        print("NOTE: " + dataset.notice)
    print(f"Results: {path}  Plot: {plot}  Wall time: {results['wall_seconds']} s")


if __name__ == "__main__":
    app.run(main)

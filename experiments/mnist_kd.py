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

from experiments import common, mnist_setup
from kdjax.distill import RunSpec, parameter_count, train_run

FLAGS = flags.FLAGS
flags.DEFINE_float("temperature", 3.0, "Softmax temperature T applied to teacher and student.")
flags.DEFINE_float("alpha", 0.7, "Weight of the hard-label CE; 1 - alpha weights T²·KL.")
flags.DEFINE_integer("seed", 42, "Seed of the students' initialisation, dropout and shuffling.")
flags.DEFINE_bool("scratch", True, "Also train the student without a teacher (the baseline).")

common.validate("temperature", lambda t: t > 0, "must be > 0")
common.validate("alpha", lambda a: 0.0 <= a <= 1.0, "must be in [0, 1]")


@common.exit_on_user_error
def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    dataset = mnist_setup.load_data()
    teacher_spec, teacher, logits, fingerprint = mnist_setup.teacher(dataset)
    settings = dict(mnist_setup.student_settings(), seed=FLAGS.seed)
    kd_spec, student_kd = mnist_setup.kd_student(
        "student_kd",
        dataset,
        logits["train"],
        fingerprint,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        **settings,
    )
    runs = {"teacher": (teacher_spec, teacher), "student_kd": (kd_spec, student_kd)}
    if FLAGS.scratch:
        scratch_spec = RunSpec(role="student_scratch", **settings)
        runs["student_scratch"] = (
            scratch_spec,
            train_run(scratch_spec, dataset, FLAGS.workdir, **common.run_options()),
        )
    train_agreement = mnist_setup.train_label_agreement(logits, dataset)

    results = {
        name: {
            **result.summary(),
            "model": spec.model,
            "parameters": parameter_count(spec.model, dataset),
        }
        for name, (spec, result) in runs.items()
    }
    results["teacher"]["first_1000_train_label_agreement"] = train_agreement
    results["teacher"]["soft_targets_fingerprint"] = fingerprint
    results["data"] = dataset.summary()
    results["config"] = common.flag_values(
        [
            "temperature",
            "alpha",
            "epochs",
            "teacher_epochs",
            "batch_size",
            "learning_rate",
            "seed",
            "workdir",
            "data_dir",
            "download",
            "scratch",
        ]
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
    common.print_report(
        ["run", "model", "params", "test acc", "epochs", "s/epoch"],
        rows,
        notes=[
            f"\nTeacher agrees with {round(train_agreement * 1000)}/1000 first training labels.",
            *common.data_notes(dataset),
        ],
        footer=f"Results: {path}  Plot: {plot}  Wall time: {results['wall_seconds']} s",
    )


if __name__ == "__main__":
    app.run(main)

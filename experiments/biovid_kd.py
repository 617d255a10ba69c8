"""The BioVid pain-recognition pipeline: pain levels from physiological signals, with
cross-validation folds trained together and a distillation study.

    python -m experiments.biovid_kd --preset=recipe --cv=subject --study=all

Loads BioVid Heat Pain part A (``--data_dir``, either folder layout; see
:mod:`kdjax.data.signals`) or, without it, writes the seeded synthetic stand-in once
(:mod:`kdjax.data.biovid_synthetic`) under ``--cache_dir`` and says loudly that the
data are synthetic. Studies (``--study``):

* ``cv`` — the preset's model on ``--channels`` under ``--cv`` folds (all folds in
  one compiled program: :func:`kdjax.runs.train_run` with a folds plan,
  :class:`kdjax.training.Folds`), plus an 80/20 holdout (random for ``--cv=random``,
  by subject otherwise);
* ``leakage`` — the same model under random and under subject-grouped folds;
* ``kd`` — a teacher on all five channels and a GSR-only student from scratch and
  distilled from it (student *i* learns from teacher *i*, which never saw fold *i*'s
  test windows: stored logits, or with ``--teacher_mode=online`` each fold's teacher
  in its student's step, on the GSR column of its inputs), and a large → small pair
  on GSR (``--large_teacher_model`` → ``--student_model``);
* ``all`` — the three.

Per fold and as mean ± std over folds: accuracy, macro-F1, MAE and RMSE of the
predicted level, and the confusion matrix summed over folds, in ``results.json`` and
``confusion.png``, ``fold_accuracy.png``, ``signals.png``. From Python::

    from experiments import biovid_kd
    results = biovid_kd.run(biovid_kd.Config(workdir="runs/x", epochs=1))
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path

import numpy as np

from experiments import report
from experiments.biovid_plots import (
    difference,
    fold_scores,
    print_table,
    run_entry,
    write_plots,
)
from experiments.report import log
from kdjax.data import Dataset, Split, normalize
from kdjax.data import folds as folding
from kdjax.data.biovid_synthetic import write_dataset
from kdjax.data.signals import CHANNELS, binary_task, load_biovid
from kdjax.distill.teachers import Teacher
from kdjax.runs import train_run
from kdjax.runs.cli import (
    CommonConfig,
    at_least_one,
    command,
    existing_path,
    finite,
    non_negative,
    option,
    positive,
    temperature_range,
    unit_interval,
)
from kdjax.runs.spec import RunSpec
from kdjax.store.locking import run_lock
from kdjax.training import Folds, predict, with_compute_dtype
from kdjax.training.recipe import model_of

# Signals are min–max normalised to [0, 1] by the loader: the model reads them as they are.
PREPROCESS = partial(normalize, mean=0.0, std=1.0, scale=1.0)
# preset -> (model, optimizer, learning rate, batch size, epochs): the pipeline as written
# (its Conv1DNet, no ReLU between the dense layers; SGD), and the recipe that learns
# (SignalCNN with Adam; docs/biovid.md, "Measured").
PRESETS = {"pipeline": ("conv1d_net", "sgd", 1e-4, 1024, 100),
           "recipe": ("signal_cnn", "adam", 1e-3, 64, 20)}  # fmt: skip
STUDIES = ("cv", "leakage", "kd", "all")
# The kd study's fold-stacked copy of the GSR windows (Study.stack) must fit in memory.
MAX_STACKED_BYTES = 4 * 2**30
SYNTHETIC_NOTICE = ("SYNTHETIC DATA: no --data_dir was given, so these results come from "
                    "kdjax's simulated stand-in for BioVid (kdjax.data.biovid_synthetic), "
                    "not from BioVid.")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/biovid_kd", "Where checkpoints, plots and results go.")
    data_dir: str | None = option(
        None,
        "BioVid part A biosignals (per-subject or per-level folders); none: the synthetic "
        "stand-in.",
        check=(existing_path, "must be an existing folder"),
    )
    cache_dir: str | None = option(
        None, "Where the stand-in and the preprocessed arrays are kept (default <workdir>/cache)."
    )
    synthetic_subjects: int = option(87, "Subjects of the stand-in.", check=at_least_one)
    synthetic_samples_per_class: int = option(
        20, "Windows per subject and class of the stand-in.", check=at_least_one
    )
    channels: tuple[str, ...] = option(
        ("gsr",), f"Signals of the cv and leakage studies, among {', '.join(CHANNELS)}."
    )
    task: str = option(
        "5class", "Classes: the five levels, or a two-class task.",
        choices=("5class", "bl1_vs_pa4", "bl1_vs_rest"),
    )  # fmt: skip
    cv: str = option(
        "subject", "Folds: 'random' (the pipeline's KFold), 'subject' (grouped), 'loso'.",
        choices=("subject", "random", "loso"),
    )  # fmt: skip
    folds: int = option(
        5, "Folds of --cv=random or subject.", check=(lambda v: v >= 2, "must be >= 2")
    )
    holdout: bool = option(True, "The cv study also trains on an 80/20 split (the pipeline's).")
    preset: str = option(
        "recipe",
        "Model and optimiser: 'pipeline' (the BioVid pipeline's) or 'recipe'.",
        choices=tuple(PRESETS),
    )
    epochs: int | None = option(None, "Epochs (default: the preset's).", check=at_least_one)
    batch_size: int | None = option(None, "Batch size (default: the preset's).", check=at_least_one)
    learning_rate: float | None = option(
        None, "Learning rate (default: the preset's).", check=finite(positive)
    )
    study: str = option("cv", "Which study: cv, leakage, kd or all.", choices=STUDIES)
    teacher_model: str = option("signal_cnn", "The kd study's five-channel teacher.")
    student_model: str = option("signal_cnn", "The kd study's GSR student.")
    large_teacher_model: str = option(
        "conv1d_net_relu", "The kd study's large GSR teacher ('' skips the large pair)."
    )
    teacher_mode: str = option(
        "stored",
        "How the kd study's students read their teachers: 'stored' (each fold teacher's "
        "logits computed once) or 'online' (fold i's teacher runs inside student i's step).",
        choices=("stored", "online"),
    )
    temperature: float = option(
        2.0, "Distillation temperature (the pipeline: 2).", check=temperature_range
    )
    alpha: float = option(
        0.75,
        "Weight of CE; 1 - alpha weights T²·KL (the pipeline: 0.75 / 0.25).",
        check=unit_interval,
    )
    seed: int = option(0, "Seed of the folds, initialisation and shuffling.", check=non_negative)
    plots: bool = option(True, "Write the plots.")

    def problems(self) -> list[str]:
        problems = []
        unknown = [channel for channel in self.channels if channel not in CHANNELS]
        if unknown:
            problems.append(f"--channels must be among {', '.join(CHANNELS)}, got {unknown}")
        return problems

    def hyper(self) -> dict:
        """The preset's settings with the flags' overrides."""
        model, optimizer, learning_rate, batch_size, epochs = PRESETS[self.preset]
        return {
            "model": model,
            "optimizer": optimizer,
            "learning_rate": self.learning_rate or learning_rate,
            "batch_size": self.batch_size or batch_size,
            "epochs": self.epochs or epochs,
        }


@dataclasses.dataclass(frozen=True)
class SignalData:
    """The loaded set, where it came from and the notice results carry."""

    signals: object  # kdjax.data.signals.SignalSet
    source: str
    location: str
    notice: str | None

    def summary(self) -> dict:
        return {**self.signals.summary(), "source": self.source, "location": self.location,
                "notice": self.notice}  # fmt: skip


def load_data(config: Config, channels: tuple[str, ...]) -> SignalData:
    """BioVid from ``--data_dir``, or the stand-in written once under the cache dir."""
    cache = Path(config.cache_dir or Path(config.workdir) / "cache")
    data_dir, notice, source = config.data_dir, None, "data_dir"
    if data_dir is None:
        size = f"{config.synthetic_subjects}x{config.synthetic_samples_per_class}"
        full = cache / f"synthetic-biovid-seed0-{size}-all"
        needs_all = set(channels) != {"gsr"}
        data_dir = full if needs_all or (full / "synthetic.json").is_file() else (
            cache / f"synthetic-biovid-seed0-{size}-gsr")  # fmt: skip
        notice, source = SYNTHETIC_NOTICE, "kdjax.data.biovid_synthetic"
        log(
            "NOTE: no --data_dir: training on a SYNTHETIC stand-in for BioVid (see the NOTE "
            "after the results)."
        )
        with run_lock(data_dir, log=log):  # the other processes of a job wait, then reuse it
            write_dataset(
                data_dir,
                num_subjects=config.synthetic_subjects,
                samples_per_class=config.synthetic_samples_per_class,
                channels=tuple(CHANNELS) if needs_all or data_dir == full else ("gsr",),
                log=log,
            )
    signals = load_biovid(data_dir, channels=channels, cache_dir=cache, log=log)
    if config.task != "5class":
        signals = binary_task(signals, config.task)
    return SignalData(signals, source, str(data_dir), notice)


def make_folds(signals, scheme: str, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train rows, test rows)`` per fold of ``scheme``: ``random`` (``k_fold``),
    ``subject`` (``subject_k_fold``), ``loso``, or one 80/20 split, ``holdout_random``
    or ``holdout_subject`` (a fifth of the subjects, rounded, in test)."""
    if scheme == "random":
        return folding.k_fold(len(signals), count, seed=seed)
    if scheme == "subject":
        return folding.subject_k_fold(signals.subjects, count, seed=seed)
    if scheme == "loso":
        return folding.leave_one_subject_out(signals.subjects)
    if scheme == "holdout_random":
        return [folding.holdout_split(len(signals), test_fraction=0.2, seed=seed)]
    # 80/20 by subject: a fifth of the subjects (rounded) hold out all their windows.
    names = np.unique(signals.subjects)
    if names[0] < 0:
        raise ValueError("a holdout by subject needs every file's subject; use --cv=random.")
    _, test_subjects = folding.holdout_split(len(names), test_fraction=0.2, seed=seed)
    test = np.flatnonzero(np.isin(signals.subjects, names[test_subjects]))
    return [(np.setdiff1d(np.arange(len(signals)), test), test)]


def columns(data: SignalData, channels: tuple[str, ...]) -> Split:
    """The samples as a :class:`Split` of the named channels."""
    signals = data.signals
    index = [signals.channels.index(channel) for channel in channels]
    return Split(np.ascontiguousarray(signals.signals[:, :, index]), signals.labels, signals.ids)


class Study:
    """Trains arms (a model on folds, all folds as one population) and scores them."""

    def __init__(self, config: Config, data: SignalData):
        self.config, self.data, self.hyper = config, data, config.hyper()
        # Every arm trains over the same devices (the folds split each batch over them).
        self.execution = report.execution(config, batch_size=self.hyper["batch_size"])
        self.num_classes = data.signals.num_classes
        self.arms: dict[str, dict] = {}  # name -> spec, result, model, split, folds, scores…

    def train(
        self, name, model_name, split, fold_list, *, teacher=None, stacked=None, view=None
    ) -> dict:
        """Trains ``model_name`` on each fold's training rows of ``split`` (one student
        per fold), scores it on the fold's test rows. ``teacher`` (an arm) distils
        through stored logits on a fold-stacked copy of the training rows, or with
        ``--teacher_mode=online`` inside the step: the students then train on the
        teacher's inputs, of which they read the channels at positions ``view``."""
        if name in self.arms:  # an arm two studies share trains once
            return self.arms[name]
        online = teacher is not None and self.config.teacher_mode == "online"
        spec = self.spec(name, model_name, len(fold_list), teacher=teacher is not None,
                         view=view if online else None)  # fmt: skip
        folds = Folds.of(fold_list)
        train_split, test_split, outputs = split, split, None
        if stacked is not None:
            train_split, folds = stacked[0], Folds(tuple(stacked[1]), folds.test)
        if online:
            train_split = test_split = teacher["split"]
        elif teacher is not None:
            outputs = {"logits": self.stored_logits(teacher, fold_list)}
        data = Dataset("biovid", self.data.source, self.data.location, train_split, test_split,
                       self.num_classes)  # fmt: skip
        result = train_run(
            spec, data, self.config.workdir, teacher=teacher["teacher"] if teacher else None,
            teacher_outputs=outputs, folds=folds, execution=self.execution, log=log,
        )  # fmt: skip
        arm = {"spec": spec, "result": result, "split": split, "folds": fold_list,
               "model": with_compute_dtype(model_of(spec), spec.compute_dtype),
               "identity": {**result.config, "channels": int(split.images.shape[-1])},
               "teacher": Teacher(spec, result.variables, result.run_dir)}  # fmt: skip
        arm["scores"] = fold_scores(arm, self.num_classes, PREPROCESS)
        self.arms[name] = arm
        return arm

    def spec(self, name, model_name, folds: int, *, teacher: bool, view=None) -> RunSpec:
        """The run of one arm: the preset's training of ``model_name``, one student per
        fold; distilled (T, alpha) from a teacher, reading the channels at ``view``."""
        config, hyper = self.config, self.hyper
        weights = dict(temperature=config.temperature, hard_weight=config.alpha,
                       soft_weight=1 - config.alpha, teacher_mode=config.teacher_mode)  # fmt: skip
        return RunSpec(
            role=name, model=model_name, model_settings={"num_classes": self.num_classes},
            objective="kd" if teacher else "ce", epochs=hyper["epochs"], input_scale=1.0,
            batch_size=hyper["batch_size"], learning_rate=hyper["learning_rate"],
            optimizer=hyper["optimizer"], seed=tuple(config.seed + i for i in range(folds)),
            input_channels=tuple(view or ()), compute_dtype=config.compute_dtype,
            **(weights if teacher else {}),
        )  # fmt: skip

    def stored_logits(self, teacher: dict, fold_list) -> np.ndarray:
        """Teacher *i*'s logits on fold *i*'s training rows, stacked fold after fold
        (the row order of :meth:`stack`)."""
        parts = [
            predict(teacher["model"], teacher["result"].member_variables(index),
                    teacher["split"].images[train], preprocess=PREPROCESS)["logits"]
            for index, (train, _) in enumerate(fold_list)
        ]  # fmt: skip
        return np.concatenate(parts).astype(np.float32)

    @staticmethod
    def stack(split: Split, fold_list) -> tuple[Split, list[np.ndarray]]:
        """Every fold's training rows copied one fold after another, and each fold's
        rows in the copy (:meth:`kdjax.training.Folds.stack`): each fold's student
        reads its own teacher's logits for a row several folds train on."""
        stacked, folds = Folds.of(fold_list).stack(split)
        return stacked, list(folds.train)


def kd_study(study: Study, signals) -> dict:
    """Five-channel teacher vs GSR student (scratch, distilled), and large → small on GSR."""
    config = study.config
    fold_list = make_folds(signals, config.cv, config.folds, config.seed)
    everything, gsr = columns(study.data, tuple(CHANNELS)), columns(study.data, ("gsr",))
    stacked = None  # online teachers read the folds' rows where they are
    if config.teacher_mode == "stored":
        copied = sum(len(train) for train, _ in fold_list) * gsr.images[0].nbytes
        if copied > MAX_STACKED_BYTES:  # e.g. 87 LOSO folds of BioVid: 8.4 GB
            raise ValueError(
                f"the kd study copies every fold's training windows ({copied / 2**30:.1f} "
                f"GiB for {len(fold_list)} folds); use --cv=subject, fewer --folds or "
                "--teacher_mode=online."
            )
        stacked = Study.stack(gsr, fold_list)
    teacher = study.train("teacher_all", config.teacher_model, everything, fold_list)
    arms = {
        "teacher_all": teacher,
        "student_scratch": study.train("student_scratch", config.student_model, gsr, fold_list,
                                       stacked=stacked),
        "student_kd_all": study.train("student_kd_all", config.student_model, gsr, fold_list,
                                      teacher=teacher, stacked=stacked,
                                      view=[list(CHANNELS).index("gsr")]),
    }  # fmt: skip
    if config.large_teacher_model:
        large = study.train("teacher_large_gsr", config.large_teacher_model, gsr, fold_list)
        arms["teacher_large_gsr"] = large
        arms["student_kd_large"] = study.train(
            "student_kd_large", config.student_model, gsr, fold_list, teacher=large,
            stacked=stacked, view=[0],
        )  # fmt: skip
    table = {name: arm["scores"] for name, arm in arms.items()}
    table["kd_gain_all"] = difference(table["student_kd_all"], table["student_scratch"])
    if config.large_teacher_model:
        table["kd_gain_large"] = difference(table["student_kd_large"], table["student_scratch"])
    return table


def run(config: Config) -> dict:
    started = time.perf_counter()
    wanted = {"cv", "leakage", "kd"} if config.study == "all" else {config.study}
    channels = tuple(CHANNELS) if "kd" in wanted else config.channels
    data = load_data(config, channels)
    signals, hyper = data.signals, config.hyper()
    log(f"Data: {len(signals)} windows, {signals.summary()['subjects']} subjects, classes "
        f"{', '.join(signals.class_names)}; {config.preset}: {hyper}.")  # fmt: skip
    study, tables = Study(config, data), {}
    split = columns(data, config.channels)
    if "cv" in wanted:
        arm = study.train(f"cv_{config.cv}", hyper["model"], split,
                          make_folds(signals, config.cv, config.folds, config.seed))  # fmt: skip
        tables["cv"] = {arm["spec"].role: arm["scores"]}
        if config.holdout:
            scheme = "holdout_random" if config.cv == "random" else "holdout_subject"
            holdout = study.train(
                scheme, hyper["model"], split, make_folds(signals, scheme, 0, config.seed)
            )
            tables["cv"][scheme] = holdout["scores"]
    if "leakage" in wanted:
        schemes = {scheme: study.train(f"cv_{scheme}", hyper["model"], split,
                                       make_folds(signals, scheme, config.folds, config.seed))
                   for scheme in ("random", "subject")}  # fmt: skip
        tables["leakage"] = {name: arm["scores"] for name, arm in schemes.items()}
        tables["leakage"]["random_minus_subject_accuracy"] = (
            tables["leakage"]["random"]["accuracy"]["mean"]
            - tables["leakage"]["subject"]["accuracy"]["mean"]
        )
    if "kd" in wanted:
        tables["kd"] = kd_study(study, signals)
    runs = {name: run_entry(arm) for name, arm in study.arms.items()}
    document = report.results_document("biovid_kd", config, data, runs, tables, started)
    path = report.write_results(config.workdir, document)
    if config.plots and report.is_main_process():
        write_plots(Path(config.workdir), study.arms, data)
    print_table(study.arms, data.notice,
                f"Results: {path}  Wall time: {document['wall_seconds']} s")  # fmt: skip
    return document


if __name__ == "__main__":
    command(Config, run)

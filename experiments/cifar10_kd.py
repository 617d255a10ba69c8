"""Distillation methods compared on CIFAR: the 4-conv teacher and 2-conv student of the
PyTorch KD tutorial and the CIFAR-10 CNN notebook, or RepDistiller's resnet56 →
resnet20, every method over several seeds.

    python -m experiments.cifar10_kd --data_dir=path/to/cifar10 --method=all --seeds=3
    python -m experiments.cifar10_kd --data_dir=path/to/cifar10 --method=compare --seeds=3 \
        --preset=resnet56_resnet20

``--method`` lists the student runs: ``ce`` (labels only), ``kd``, ``cosine``, ``hint``
and the methods of :data:`experiments.cifar_pairs.COMPARED_METHODS`, or any
combination joined with ``+`` (``crd+kd``); ``--method_settings`` overrides their
settings (docs/methods.md). ``all`` is the PyTorch KD tutorial's four, ``compare``
every method that applies to the pair. The teacher is trained once per workdir;
every method trains ``--seeds`` students together in one compiled program.

``--preset`` picks the pair, its protocol and its loss weights
(:mod:`experiments.cifar_pairs`): ``pytorch_tutorial`` (default: the PyTorch KD
tutorial), ``cnn_notebook`` (the CIFAR-10 CNN notebook) or ``resnet56_resnet20``
(RepDistiller's networks and 240-epoch SGD protocol with crop-and-flip augmentation
and the teacher online); ``--protocol=notebook|repdistiller``
trains a pair under the other protocol. ``--epochs``,
``--teacher_epochs``, ``--batch_size`` and ``--learning_rate`` override the
protocol (a shorter run keeps the learning-rate drops at the same fractions of
training), ``--temperature``, ``--hard_weight`` and ``--soft_weight`` the KD
weights, and ``--train_examples=N`` trains on a fixed random subset of N training
images (what a CPU affords; the results record it).

The report gives each method's test accuracy as mean ± std over its seeds, its gain
over KD and whether that exceeds the spread (:data:`kdjax.runs.statistics.SPREAD_RULE`),
its training time and its time per step beside CE's.

Data: ``--dataset=cifar10`` (default) or ``cifar100``; ``--data_dir`` names an
image folder (``train/<class>/*.png``, ``test/<class>/*.png``), a ``.tar`` of one,
or a TFDS data dir; without it, a prepared or downloadable TFDS copy. Decoded images
are cached (``--cache_dir``). Writes ``results.json``, ``comparison.png`` and
``learning_curves.png`` in the workdir; re-running resumes unfinished runs. From
Python::

    from experiments import cifar10_kd
    results = cifar10_kd.run(cifar10_kd.Config(method=("ce", "kd"), seeds=3))
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from experiments import report
from experiments.cifar_pairs import (
    COMPARED_METHODS,
    LABELS,
    METHODS,
    PRESETS,
    PROTOCOLS,
    SHORT_LABELS,
    TUTORIAL_METHODS,
    known_method,
    method_weights,
    parse_settings,
    spec_fields,
    teacher_mode,
    teacher_reads,
)
from kdjax.data import Dataset, Split
from kdjax.data.image_folder import CIFAR_SETS, load_cifar
from kdjax.distill.teachers import Teacher
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
)
from kdjax.runs.spec import RunSpec
from kdjax.training.monitor import NonFiniteLossError
from kdjax.training.recipe import objective_of

__all__ = ["COMPARED_METHODS", "METHODS", "PRESETS", "Config", "run"]
TEACHER_SEED = 42
# The fixed random subset of --train_examples is drawn with this seed.
SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/cifar10_kd", "Checkpoints, teacher outputs and results.")
    method: tuple[str, ...] = option(
        ("all",),
        "Student runs: any of " + ",".join(METHODS) + "; 'all' for the PyTorch KD "
        "tutorial's four (ce,kd,cosine,hint), 'compare' for every method.",
        check=(
            lambda names: bool(names) and all(known_method(name) for name in names),
            f"must list methods among {', '.join(METHODS)}, combinations of them joined "
            "with + (e.g. crd+kd), all or compare",
        ),
    )
    method_settings: tuple[str, ...] = option(
        (),
        "Method settings over the preset's, method.setting=value, comma-separated: e.g. "
        "crd.negatives=4096,dkd.beta=2,at.layer=stage3 (docs/methods.md lists them).",
        check=(lambda items: bool(parse_settings(items)) or not items, "method.setting=value"),
    )
    preset: str = option(
        "pytorch_tutorial",
        "Teacher-student pair, its protocol and loss weights: pytorch_tutorial (the PyTorch "
        "KD tutorial), cnn_notebook (the CIFAR-10 CNN notebook) or resnet56_resnet20 "
        "(RepDistiller's); see experiments.cifar_pairs.",
        choices=tuple(PRESETS),
    )
    protocol: str | None = option(
        None,
        "Training protocol: notebook (Adam 1e-3, batch 128, 10 epochs) or repdistiller (SGD "
        "0.05, batch 64, 240 epochs, crops and flips, teacher online); default: the preset's.",
        choices=tuple(PROTOCOLS),
    )
    dataset: str = option("cifar10", "cifar10 or cifar100.", choices=tuple(CIFAR_SETS))
    temperature: float | None = option(
        None, "KD temperature (default: the preset's, 2, 10 or 4).", check=temperature_range
    )
    hard_weight: float | None = option(
        None, "Weight of the label CE (default: the preset's).", check=finite(non_negative)
    )
    soft_weight: float | None = option(
        None, "Weight of the KD/cosine/hint term (default: preset's).", check=finite(non_negative)
    )
    seeds: int = option(
        1, "Students per method, trained together in one program.", check=at_least_one
    )
    first_seed: int = option(
        42, "Seed of the first student; the rest count up.", check=non_negative
    )
    epochs: int | None = option(
        None, "Student epochs (default: the preset's, 10 or 240).", check=at_least_one
    )
    teacher_epochs: int | None = option(
        None,
        "Teacher epochs, when it is not in the workdir (default: the preset's).",
        check=at_least_one,
    )
    batch_size: int | None = option(
        None, "Training batch size (default: the preset's, 128 or 64).", check=at_least_one
    )
    learning_rate: float | None = option(
        None,
        "Learning rate (default: the preset's, Adam 1e-3 or SGD 0.05).",
        check=finite(positive),
    )
    train_examples: int | None = option(
        None,
        "Train on a fixed random subset of this many training images (default: all).",
        check=at_least_one,
    )
    data_dir: str | None = option(
        None,
        "CIFAR-10/100 image folder, its .tar, or a TFDS data dir.",
        check=(existing_path, "must be an existing folder or archive"),
    )
    download: bool = option(True, "Let TFDS download the data set when no copy is found.")
    cache_dir: str | None = option(None, "Decoded-image cache (default: <workdir>/data_cache).")
    allow_partial: bool = option(
        False,
        "Accept an image folder with missing classes or other counts than 5,000/1,000 "
        "(CIFAR-100: 500/100) per class (the results then say PARTIAL DATA SET).",
    )

    def methods(self) -> list[str]:
        """The selected methods in canonical order, without repeats."""
        names = set(self.method)
        if "all" in names:
            names |= set(TUTORIAL_METHODS)
        if "compare" in names:  # every method that applies to the pair
            names |= set(METHODS) - set(PRESETS[self.preset].get("skip", {}))
        listed = [method for method in METHODS if method in names]
        return listed + [name for name in self.method if name not in {*listed, "all", "compare"}]

    def base_protocol(self):
        """The protocol asked for, or the preset's."""
        if self.protocol is not None:
            return PROTOCOLS[self.protocol]
        return PRESETS[self.preset]["protocol"]

    def training_protocol(self):
        """The protocol with this config's batch size and learning rate (its ``epochs``
        stay the length its learning-rate drops are given for)."""
        protocol = self.base_protocol()
        overrides = {
            name: getattr(self, name)
            for name in ("batch_size", "learning_rate")
            if getattr(self, name) is not None
        }
        return dataclasses.replace(protocol, **overrides)

    def run_epochs(self) -> dict[str, int]:
        """Epochs of the teacher and of the students: the flags', else the protocol's."""
        default = self.base_protocol().epochs
        return {"teacher": self.teacher_epochs or default, "student": self.epochs or default}


def training_subset(dataset: Dataset, count: int | None) -> Dataset:
    """``dataset`` with ``count`` training examples drawn without replacement by a fixed
    seed (kept in their original order; test split unchanged), or as it is."""
    if count is None:
        return dataset
    total = len(dataset.train)
    if count > total:
        raise ValueError(f"--train_examples={count} exceeds the {total} training images.")
    rows = np.sort(np.random.default_rng(SUBSET_SEED).permutation(total)[:count])
    train = dataset.train
    notice = f"TRAINING SUBSET: {count:,} of the {total:,} training images."
    return dataclasses.replace(
        dataset,
        train=Split(train.images[rows], train.labels[rows], train.ids[rows]),
        notice=" ".join(filter(None, (dataset.notice, notice))),
    )


def load_data(config: Config) -> Dataset:
    """The data set (decoded images cached), cut to ``--train_examples``."""
    dataset = load_cifar(
        config.dataset,
        config.data_dir,
        download=config.download,
        allow_partial=config.allow_partial,
        cache_dir=config.cache_dir or f"{config.workdir}/data_cache",
        log=report.log,
    )
    full_size = len(dataset.train)
    dataset = training_subset(dataset, config.train_examples)
    report.log(
        f"Data: {dataset.name} from {dataset.source} ({dataset.location}): "
        f"{len(dataset.train)} train (of {full_size}) / {len(dataset.test)} test examples."
    )
    return dataset


def teacher_spec(config: Config, dataset: Dataset) -> RunSpec:
    """The pair's teacher under the protocol (seed :data:`TEACHER_SEED`)."""
    fields, settings = spec_fields(config, dataset, config.run_epochs()["teacher"])
    model, model_settings = PRESETS[config.preset]["teacher"]
    return RunSpec(
        role="teacher",
        model=model,
        model_settings={**model_settings, **settings},
        seed=TEACHER_SEED,
        **fields,
    )


def student_spec(config: Config, dataset: Dataset, method: str, weights: dict) -> RunSpec:
    """The pair's ``--seeds`` students of one method, trained together."""
    seeds = tuple(range(config.first_seed, config.first_seed + config.seeds))
    fields, settings = spec_fields(config, dataset, config.run_epochs()["student"])
    model, model_settings = PRESETS[config.preset]["student"]
    return RunSpec(
        role=f"student_{method}",
        model=model,
        model_settings={**model_settings, **settings},
        objective=method,
        seed=seeds if len(seeds) > 1 else seeds[0],
        teacher_mode=teacher_mode(config, method, weights),
        **weights,
        **fields,
    )


def run(config: Config) -> dict:
    started = time.perf_counter()
    methods, protocol = config.methods(), config.training_protocol()
    dataset = load_data(config)
    report.log(
        f"Preset {config.preset}; methods: {', '.join(methods)}; "
        f"{report.plural(config.seeds, 'seed')} each; "
        f"epochs {config.run_epochs()}; {protocol}."
    )
    # Built once: a data-parallel mesh is announced once for every run.
    execution = report.execution(config)
    specs = {"teacher": teacher_spec(config, dataset)}
    results = {"teacher": report.train(config, specs["teacher"], dataset, prepared=execution)}
    teacher = Teacher(specs["teacher"], results["teacher"].variables, results["teacher"].run_dir)
    weights = {"teacher": {}, **{m: method_weights(config, m) for m in methods}}
    specs.update({m: student_spec(config, dataset, m, weights[m]) for m in methods})
    # Every stored output the methods read, computed in one pass over the training set.
    needed = tuple(dict.fromkeys(
        name for m in methods if specs[m].teacher_mode == "stored"
        for name in objective_of(specs[m]).teacher_outputs
    ))  # fmt: skip
    if needed:
        teacher.outputs(dataset, needed, splits=("train",), log=report.log)
    diverged = {}
    for method in methods:
        spec = specs.pop(method)
        mentor = teacher if teacher_reads(objective_of(spec)) else None
        report.log(f"Student {method}: {LABELS[method]}, {weights[method] or 'labels only'}.")
        if mentor and spec.teacher_mode != protocol.teacher_mode:
            report.log(f"Student {method}: the teacher runs online (it reads a map per stage).")
        try:
            results[spec.role] = report.train(
                config, spec, dataset, teacher=mentor, prepared=execution
            )
            specs[spec.role] = spec
        except NonFiniteLossError as error:
            # One method that diverges at its weights must not cost the others' runs.
            if len(methods) == 1:
                raise
            diverged[method] = str(error)
            report.log(f"Student {method} DIVERGED, left out of the comparison: {error}")
    runs = report.run_entries(specs, results, dataset.train.images.shape[1:])
    study = comparison(config, dataset, runs, results, weights, diverged)
    document = report.results_document("cifar10_kd", config, dataset, runs, study, started)
    path = report.write_results(config.workdir, document)
    print_comparison(config, dataset, document, path)
    return document


def comparison(config, dataset, runs, results, weights, diverged) -> dict:
    """The study: each method's accuracy over seeds beside the published one, gains
    over CE and KD against the spread, and the cost of a step."""
    preset, protocol = PRESETS[config.preset], config.training_protocol()
    # Published accuracies belong to the pair's own protocol and data set.
    own_protocol = config.base_protocol() == preset["protocol"]
    published = preset["published"].get(config.dataset, {}) if own_protocol else {}
    methods = [name.removeprefix("student_") for name in runs if name != "teacher"]
    rows = [
        {
            "method": method,
            "run": run_name,
            "weights": weights[method],
            "accuracy": report.mean_std(results[run_name].test_accuracy),
            "published": published.get(method),
        }
        for method, run_name in [("teacher", "teacher")] + [(m, f"student_{m}") for m in methods]
    ]
    steps_per_epoch = len(dataset.train) // protocol.batch_size
    names = {"teacher": "teacher", **{method: f"student_{method}" for method in methods}}
    return {
        "preset": config.preset,
        "dataset": config.dataset,
        "train_examples": len(dataset.train),
        "protocol": dataclasses.asdict(protocol),
        "epochs": config.run_epochs(),
        "comparison": rows,
        "spread_rule": report.SPREAD_RULE,
        "gains_over_ce": report.gains_over(rows, "ce"),
        "gains_over_kd": report.gains_over(rows, "kd"),
        "costs": report.step_costs(runs, names, steps_per_epoch),
        "cost_baseline": "ce",
        "published_source": preset["published_source"] if published else None,
        # Methods whose loss became NaN or infinite: method -> the error.
        "diverged": dict(diverged),
    }


def print_comparison(config: Config, dataset: Dataset, document: dict, path) -> None:
    """``comparison.png``, ``learning_curves.png`` and the printed table with its notes."""
    preset, protocol = PRESETS[config.preset], config.training_protocol()
    runs, study = document["runs"], document["study"]
    rows = study["comparison"]
    title = (
        f"{CIFAR_SETS[config.dataset][0]} ({config.preset}, {len(dataset.train):,} train): "
        f"students {report.plural(config.run_epochs()['student'], 'epoch')} × "
        f"{report.plural(config.seeds, 'seed')}"
    )
    plot = report.plot_comparison(f"{config.workdir}/comparison.png", rows, SHORT_LABELS, title,
                                  f"published ({preset['published_source']})")  # fmt: skip
    curves = report.plot_learning_curves(
        f"{config.workdir}/learning_curves.png",
        {LABELS[row["method"]]: report.mean_history(runs[row["run"]]["history"]) for row in rows},
        title + (" (mean ± std over seeds)" if config.seeds > 1 else ""),
    )
    notes = [f"Gain over KD counts as beyond the spread when {report.SPREAD_RULE}."]
    notes += [f"{LABELS[name]}: DIVERGED ({error})" for name, error in study["diverged"].items()]
    notes += [
        f"{LABELS[name]}: {100 * v['gain']:+.2f} points over CE; "
        + ("exceeds" if v["exceeds_spread"] else "within")
        + f" the spread ({100 * v['spread']:.2f})."
        for name, v in study["gains_over_ce"].items()
    ]
    notes.append(
        f"ms/step: one step of the {report.plural(config.seeds, 'student')} of a method "
        "together, batch "
        f"{protocol.batch_size} (* includes compilation); extra vs CE includes the "
        + ("teacher's forward pass (online)." if protocol.teacher_mode == "online" else "method.")
    )
    report.print_report(
        report.COMPARISON_HEADER,
        report.comparison_rows(rows, runs, study["gains_over_kd"], study["costs"], LABELS),
        notes=["", *notes, *report.data_notes(dataset)],
        footer=f"Results: {path}  Plots: {plot}, {curves}  Wall time: {document['wall_seconds']} s",
    )


if __name__ == "__main__":
    command(Config, run)

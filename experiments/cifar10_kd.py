"""Seeds 001 and 002: distil a 4-conv CIFAR-10 teacher into a 2-conv student with
logits (KD), hidden representations (cosine) or feature-map hints (FitNets).

    python -m experiments.cifar10_kd --data_dir=path/to/cifar10 --method=all --seeds=3

``--method`` lists the student runs: ``ce`` (labels only), ``kd`` (CE + T²·KL on
logits), ``cosine`` (CE + cosine loss between the student's 1024 flattened conv
features and the teacher's 2048, average-pooled to 1024) and ``hint`` (CE + MSE
between the student's trainable regressor output and the teacher's 8×8×32 conv
map); ``all`` is the four of them: with the teacher, seed 002's five-run
comparison. The teacher is trained once per workdir; its logits, features and
feature maps are computed once and stored by example id; every method trains
``--seeds`` students together in one compiled program.

``--preset=seed002`` (default) uses the nets with dropout 0.1 (``four_conv_net``
and ``two_conv_net``: the seed's "DeepNN" and "LightNN"), KD at T=2 with weights
0.75 CE / 0.25 soft, and 0.75 / 0.25 for cosine and hint. ``--preset=seed001``
uses the nets without dropout and KD at T=10 with weights 1 / 1.
``--temperature``, ``--hard_weight`` and ``--soft_weight`` override the preset.
Inputs are normalised with ImageNet mean/std, as in both seeds.

Data: ``--data_dir`` names an image folder (``train/<class>/*.jpg``,
``test/<class>/*.jpg``), a ``.tar`` of one, or a TFDS data dir with cifar10;
without it, a prepared or downloadable TFDS ``cifar10``. Decoded images are cached
(``--cache_dir``). Writes ``results.json``, ``comparison.png`` and
``learning_curves.png`` in the workdir; re-running resumes unfinished runs.
From Python::

    from experiments import cifar10_kd
    results = cifar10_kd.run(cifar10_kd.Config(method=("ce", "kd"), seeds=3))
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from experiments import report
from experiments.config import (
    CommonConfig,
    at_least_one,
    command,
    existing_path,
    finite,
    non_negative,
    option,
    positive,
)
from kdjax.data import IMAGENET_MEAN, IMAGENET_STD
from kdjax.image_folder import load_cifar10
from kdjax.objectives import get_objective
from kdjax.runs import train_run
from kdjax.spec import RunSpec
from kdjax.teachers import Teacher

SEED_METHODS = ("ce", "kd", "cosine", "hint")
# The methods researchers compare against (kdjax.objectives), with the loss weights
# RepDistiller uses on CIFAR (CE weight 1, the method's term beta; AT's 1000 is its
# ×1000), DKD's T=4 and DIST's T=4 (their CIFAR settings); KD's T is the preset's.
COMPARED_METHODS = {
    "kd_standardized": {"hard_weight": 1.0, "soft_weight": 1.0},
    "dkd": {"temperature": 4.0, "hard_weight": 1.0, "soft_weight": 1.0},
    "dist": {"temperature": 4.0, "hard_weight": 1.0, "soft_weight": 1.0},
    "at": {"hard_weight": 1.0, "soft_weight": 1000.0},
    "nst": {"hard_weight": 1.0, "soft_weight": 50.0},
    "sp": {"hard_weight": 1.0, "soft_weight": 3000.0},
    "pkt": {"hard_weight": 1.0, "soft_weight": 30000.0},
    "rkd": {"hard_weight": 1.0, "soft_weight": 1.0},
    "cc": {"hard_weight": 1.0, "soft_weight": 0.02},
    "vid": {"hard_weight": 1.0, "soft_weight": 1.0},
    "crd": {"hard_weight": 1.0, "soft_weight": 0.8},
}
METHODS = (*SEED_METHODS, *COMPARED_METHODS)
# Each seed's networks (registry model and settings) and loss weights.
PRESETS = {
    "seed002": {
        "teacher": ("four_conv_net", {"dropout": 0.1}),
        "student": ("two_conv_net", {"dropout": 0.1}),
        "kd": {"temperature": 2.0, "hard_weight": 0.75, "soft_weight": 0.25},
        "cosine": {"hard_weight": 0.75, "soft_weight": 0.25},
        "hint": {"hard_weight": 0.75, "soft_weight": 0.25},
        # The tutorial's one published docs build (percent).
        "published": {
            "teacher": 75.60,
            "ce": 70.41,
            "kd": 70.19,
            "cosine": 70.87,
            "hint": 71.40,
        },
    },
    "seed001": {
        "teacher": ("four_conv_net", {}),
        "student": ("two_conv_net", {}),
        "kd": {"temperature": 10.0, "hard_weight": 1.0, "soft_weight": 1.0},
        # Seed 001 has no cosine or hint run; seed 002's weights are used.
        "cosine": {"hard_weight": 0.75, "soft_weight": 0.25},
        "hint": {"hard_weight": 0.75, "soft_weight": 0.25},
        "published": {"teacher": 74.43, "ce": 69.51, "kd": 71.38},
    },
}
LABELS = {
    "teacher": "teacher",
    "ce": "student CE",
    "kd": "student CE + KD",
    "cosine": "student CE + cosine",
    "hint": "student CE + hint (regressor MSE)",
    **{method: f"student CE + {method}" for method in COMPARED_METHODS},
}
SHORT_LABELS = {
    "teacher": "teacher",
    "ce": "CE",
    "kd": "CE + KD",
    "cosine": "CE + cosine",
    "hint": "CE + hint",
    **{method: f"CE + {method}" for method in COMPARED_METHODS},
}
INPUT_NORMALISATION = {"input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD}
TEACHER_SEED = 42


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/cifar10_kd", "Checkpoints, teacher outputs and results.")
    method: tuple[str, ...] = option(
        ("all",),
        "Student runs: any of " + ",".join(METHODS) + "; 'all' for the seed's four "
        "(ce,kd,cosine,hint), 'compare' for every method.",
        check=(
            lambda names: bool(names) and set(names) <= {*METHODS, "all", "compare"},
            f"must list methods among {', '.join(METHODS)} (or all, compare)",
        ),
    )
    preset: str = option(
        "seed002", "Nets and loss weights of which seed.", choices=tuple(sorted(PRESETS))
    )
    temperature: float | None = option(
        None, "KD temperature (default: the preset's, 2 or 10).", check=finite(positive)
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
    epochs: int = option(10, "Student training epochs (seeds: 10).", check=at_least_one)
    teacher_epochs: int = option(
        10, "Teacher epochs, when it is not in the workdir.", check=at_least_one
    )
    batch_size: int = option(128, "Training batch size (seeds: 128).", check=at_least_one)
    learning_rate: float = option(1e-3, "Adam learning rate (seeds: 1e-3).", check=finite(positive))
    data_dir: str | None = option(
        None,
        "CIFAR-10 image folder, its .tar, or a TFDS data dir.",
        check=(existing_path, "must be an existing folder or archive"),
    )
    download: bool = option(True, "Let TFDS download cifar10 when no copy is found.")
    cache_dir: str | None = option(None, "Decoded-image cache (default: <workdir>/data_cache).")
    allow_partial: bool = option(
        False,
        "Accept an image folder with missing classes or other counts than 5,000/1,000 "
        "per class (the results then say PARTIAL DATA SET).",
    )

    def methods(self) -> list[str]:
        """The selected methods in canonical order, without repeats."""
        names = set(self.method)
        if "all" in names:
            names |= set(SEED_METHODS)
        if "compare" in names:
            names |= set(METHODS)
        return [method for method in METHODS if method in names]


def method_weights(config: Config, method: str) -> dict:
    """The loss weights (and T) of one method: the preset's, overridden by the config."""
    if method == "ce":
        return {}
    preset = PRESETS[config.preset]
    weights = dict(preset.get(method) or COMPARED_METHODS[method])
    if method == "kd_standardized":
        weights["temperature"] = preset["kd"]["temperature"]
    for name in ("temperature", "hard_weight", "soft_weight"):
        value = getattr(config, name)
        if value is not None and (name != "temperature" or method == "kd"):
            weights[name] = value
    return weights


def run(config: Config) -> dict:
    started = time.perf_counter()
    preset, methods = PRESETS[config.preset], config.methods()
    dataset = load_cifar10(
        config.data_dir,
        download=config.download,
        allow_partial=config.allow_partial,
        cache_dir=config.cache_dir or f"{config.workdir}/data_cache",
        log=report.log,
    )
    report.log(
        f"Data: {dataset.name} from {dataset.source} ({dataset.location}): "
        f"{len(dataset.train)} train / {len(dataset.test)} test examples."
    )
    report.log(
        f"Preset {config.preset}; methods: {', '.join(methods)}; {config.seeds} seed(s) each."
    )

    execution = report.execution(config)

    def train(spec, teacher=None):
        return train_run(
            spec,
            dataset,
            config.workdir,
            teacher=teacher,
            execution=execution,
            log=report.log,
        )

    shared = dict(
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        compute_dtype=config.compute_dtype,
        **INPUT_NORMALISATION,
    )
    model, settings = preset["teacher"]
    specs = {
        "teacher": RunSpec(
            role="teacher",
            model=model,
            model_settings=settings,
            epochs=config.teacher_epochs,
            seed=TEACHER_SEED,
            **shared,
        )
    }
    results = {"teacher": train(specs["teacher"])}
    teacher = Teacher(specs["teacher"], results["teacher"].variables, results["teacher"].run_dir)
    # Every output the methods read, computed in one pass over the training set.
    needed = tuple(dict.fromkeys(n for m in methods for n in get_objective(m).teacher_outputs))
    if needed:
        teacher.outputs(dataset, needed, splits=("train",), log=report.log)

    seeds = tuple(range(config.first_seed, config.first_seed + config.seeds))
    weights = {"teacher": {}}
    for method in methods:
        weights[method] = method_weights(config, method)
        model, settings = preset["student"]
        name = f"student_{method}"
        specs[name] = RunSpec(
            role=name,
            model=model,
            model_settings=settings,
            objective=method,
            epochs=config.epochs,
            seed=seeds if len(seeds) > 1 else seeds[0],
            **weights[method],
            **shared,
        )
        report.log(f"Student {method}: {LABELS[method]}, {weights[method] or 'labels only'}.")
        results[name] = train(specs[name], teacher if method != "ce" else None)

    runs = report.run_entries(specs, results, dataset.train.images.shape[1:])
    rows = [
        {
            "method": method,
            "run": run_name,
            "weights": weights[method],
            "accuracy": report.mean_std(results[run_name].test_accuracy),
            "published": preset["published"].get(method),
        }
        for method, run_name in [("teacher", "teacher")] + [(m, f"student_{m}") for m in methods]
    ]
    verdicts = gains_over_ce(rows) if len(seeds) > 1 else {}
    study = {"preset": config.preset, "comparison": rows, "gains_over_ce": verdicts}
    document = report.results_document("cifar10_kd", config, dataset, runs, study, started)
    path = report.write_results(config.workdir, document)
    title = (
        f"CIFAR-10 ({config.preset}): students {config.epochs} epochs × {len(seeds)} seed(s), "
        f"teacher {len(results['teacher'].history)} epochs"
    )
    comparison = plot_comparison(
        f"{config.workdir}/comparison.png", rows, preset["published"], title
    )
    curves = report.plot_learning_curves(
        f"{config.workdir}/learning_curves.png",
        {LABELS[row["method"]]: report.mean_history(runs[row["run"]]["history"]) for row in rows},
        title + " (mean over seeds)",
    )
    table = [
        [
            LABELS[row["method"]],
            runs[row["run"]]["spec"]["model"],
            f"{runs[row['run']]['parameters']:,}",
            report.format_mean_std(row["accuracy"]),
            "—" if row["published"] is None else f"{row['published']:.2f}",
            str(runs[row["run"]]["epochs"]),
            str(runs[row["run"]]["mean_epoch_seconds"]),
        ]
        for row in rows
    ]
    notes = [
        f"{LABELS[name]}: {100 * v['gain_over_ce']:+.2f} points over CE; "
        + ("exceeds" if v["gain_exceeds_spread"] else "within")
        + f" the seed-to-seed spread ({100 * v['largest_seed_std']:.2f})."
        for name, v in verdicts.items()
    ]
    report.print_report(
        ["run", "model", "params", "test acc %", "published %", "epochs", "s/epoch"],
        table,
        notes=["", *notes] if notes else [],
        footer=(
            f"Results: {path}  Plots: {comparison}, {curves}  "
            f"Wall time: {document['wall_seconds']} s"
        ),
    )
    return document


def gains_over_ce(rows: list[dict]) -> dict:
    """Each distillation method's mean gain over the CE students, beside the larger of
    the two seed-to-seed standard deviations."""
    baseline = next((row for row in rows if row["method"] == "ce"), None)
    if baseline is None:
        return {}
    verdicts = {}
    for row in rows:
        if row["method"] in ("teacher", "ce"):
            continue
        gain = row["accuracy"]["mean"] - baseline["accuracy"]["mean"]
        spread = max(row["accuracy"]["std"], baseline["accuracy"]["std"])
        verdicts[row["method"]] = {
            "gain_over_ce": gain,
            "largest_seed_std": spread,
            "gain_exceeds_spread": bool(abs(gain) > spread),
        }
    return verdicts


def plot_comparison(path, rows: list[dict], published: dict, title: str):
    if not report.is_main_process():
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    positions = np.arange(len(rows))
    means = [100 * row["accuracy"]["mean"] for row in rows]
    stds = [100 * row["accuracy"]["std"] for row in rows]
    axes.bar(positions, means, yerr=stds, capsize=5, color="tab:blue", alpha=0.8, label="kdjax")
    for position, row in zip(positions, rows, strict=True):
        for value in row["accuracy"]["each"]:
            axes.plot(position, 100 * value, "k.", markersize=4)
        if row["method"] in published:
            axes.plot(position, published[row["method"]], "r_", markersize=22, markeredgewidth=2)
    axes.plot([], [], "r_", markersize=12, markeredgewidth=2, label="published (one run)")
    axes.set_xticks(positions, [SHORT_LABELS[row["method"]] for row in rows])
    shown = [published[row["method"]] for row in rows if row["method"] in published]
    spread = max(stds + [0])
    low = min(min(means) - spread, *shown) - 3
    high = max(max(means) + spread, *shown) + 2
    axes.set_ylim(max(0, low), min(100, high))
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


if __name__ == "__main__":
    command(Config, run)

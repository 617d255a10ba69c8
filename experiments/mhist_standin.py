"""A measured stand-in for MHIST and ImageNet, built from CIFAR-10, for machines without
either.

    python -m experiments.mhist_standin --cifar10=cifar10-jpeg.tar --out=standin
    python -m experiments.mhist_kd --data_dir=standin --image_size=32 \\
        --teacher_weights=standin/resnet50v2_standin_notop.h5 \\
        --student_weights=standin/mobilenetv2_standin_notop.h5 --study=all

1. "ImageNet": both backbones (ResNet50V2, MobileNetV2) are trained from scratch on
   8 CIFAR-10 classes (all but ``--target_classes``) and exported as Keras-layout
   no-top ``.h5`` files (:func:`kdjax.models.pretrained.save_keras_weights`), their
   BatchNorm statistics recomputed over the pretraining images
   (:func:`kdjax.training.recompute_batch_stats`), so
   ``mhist_kd`` re-imports them through the path the ImageNet files take.
2. "MHIST": the two held-out classes become a binary task written in MHIST's format
   (``annotations.csv`` with MHIST's columns, ``images/*.png``) with MHIST's split
   sizes and imbalance (train 1,545 HP + 630 SSA, test 617 HP + 360 SSA; the first
   target class plays HP, the second SSA), drawn from CIFAR's own train and test
   splits. The vote column is 0 for HP and 7 for SSA (unanimous by construction).
   A ``standin.json`` says what the folder is; ``mhist_kd`` labels every table and
   figure of it "STAND-IN".

Sizes and epochs are flags: a CPU run pretrains on a subset for a few epochs (say
so when reporting), a GPU can afford all 40,000 images.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from experiments import report
from experiments.mhist_training import INPUT_SCALING
from kdjax.data import DataError, Dataset, Split
from kdjax.data.image_folder import CIFAR10_CLASSES, load_cifar10
from kdjax.data.mhist import LABEL_COLUMN, NAME_COLUMN, PARTITION_COLUMN, VOTES_COLUMN
from kdjax.models import get_model
from kdjax.models.pretrained import save_keras_weights
from kdjax.runs.cli import (
    CommonConfig,
    at_least_one,
    command,
    each,
    existing_path,
    finite,
    option,
)
from kdjax.runs.cli import positive as positive_check
from kdjax.runs.spec import RunSpec
from kdjax.training import evaluate, recompute_batch_stats
from kdjax.training.recipe import preprocess_of

# MHIST's own partition sizes per class (HP, SSA): 2,175 train and 977 test images.
MHIST_TRAIN_COUNTS = (1545, 630)
MHIST_TEST_COUNTS = (617, 360)
BACKBONE_NAMES = ("resnet50v2", "mobilenetv2")


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/mhist_standin", "Where the pretraining runs go.")
    cifar10: str | None = option(
        None,
        "CIFAR-10 as an image folder, its .tar, or a TFDS data dir.",
        check=(existing_path, "must be an existing file or folder"),
    )
    out: str = option("mhist_standin", "The MHIST-format folder (and weight files) to write.")
    target_classes: tuple[str, ...] = option(
        ("cat", "dog"), "The two held-out CIFAR-10 classes: the stand-in's HP and SSA."
    )
    train_counts: tuple[int, ...] = option(
        MHIST_TRAIN_COUNTS, "Training images of HP and SSA (MHIST's).", check=each(positive_check)
    )
    test_counts: tuple[int, ...] = option(
        MHIST_TEST_COUNTS, "Test images of HP and SSA (MHIST's).", check=each(positive_check)
    )
    pretrain_per_class: int = option(
        5000, "Training images per pretraining class (CIFAR has 5,000).", check=at_least_one
    )
    pretrain_test_per_class: int = option(
        1000, "Test images per pretraining class (CIFAR has 1,000).", check=at_least_one
    )
    allow_partial: bool = option(
        False, "Accept a CIFAR-10 folder or .tar with fewer images per class (a subset)."
    )
    pretrain_epochs: int = option(10, "Pretraining epochs of each backbone.", check=at_least_one)
    pretrain_batch_size: int = option(128, "Pretraining batch size.", check=at_least_one)
    pretrain_learning_rate: float = option(
        1e-3, "Pretraining Adam rate.", check=finite(positive_check)
    )
    seed: int = option(0, "Seed of the image draws and of the pretraining runs.")
    eval_batch_size: int = option(500, "Batch size of test-set inference.", check=at_least_one)

    def problems(self) -> list[str]:
        problems = []
        if self.cifar10 is None:
            problems.append("--cifar10 must name CIFAR-10 (an image folder or its .tar)")
        unknown = [name for name in self.target_classes if name not in CIFAR10_CLASSES]
        if len(self.target_classes) != 2 or len(set(self.target_classes)) != 2 or unknown:
            problems.append(
                f"--target_classes must name two CIFAR-10 classes among {CIFAR10_CLASSES}"
            )
        if len(self.train_counts) != 2 or len(self.test_counts) != 2:
            problems.append("--train_counts and --test_counts take two numbers (HP, SSA)")
        return problems


def _draw(split: Split, class_id: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` images of one class, drawn without replacement."""
    (rows,) = np.nonzero(split.labels == class_id)
    if count > len(rows):
        raise DataError(f"asked for {count} images of class {class_id}, the split has {len(rows)}.")
    return split.images[np.sort(rng.choice(rows, count, replace=False))]


def pretraining_set(cifar: Dataset, config: Config, rng: np.random.Generator) -> Dataset:
    """The 8 classes outside the target, relabelled 0…7, subsampled per class."""
    kept = [CIFAR10_CLASSES.index(n) for n in CIFAR10_CLASSES if n not in config.target_classes]
    splits = {}
    for name, per_class in (("train", config.pretrain_per_class),
                            ("test", config.pretrain_test_per_class)):  # fmt: skip
        split = getattr(cifar, name)
        images = [_draw(split, c, min(per_class, int(np.sum(split.labels == c))), rng)
                  for c in kept]  # fmt: skip
        labels = np.concatenate([np.full(len(x), i, np.int32) for i, x in enumerate(images)])
        splits[name] = Split(np.concatenate(images), labels, np.arange(len(labels)))
    return Dataset(
        name="cifar10-8-classes",
        source=cifar.source,
        location=cifar.location,
        train=splits["train"],
        test=splits["test"],
        num_classes=len(kept),
    )


def write_target_folder(cifar: Dataset, config: Config, rng: np.random.Generator) -> dict:
    """The binary target set in MHIST's format under ``config.out``; returns its counts."""
    out = Path(config.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, counts = [], {}
    for partition, split, per_label in (("train", cifar.train, config.train_counts),
                                        ("test", cifar.test, config.test_counts)):  # fmt: skip
        for label, (class_name, count) in enumerate(
            zip(config.target_classes, per_label, strict=True)
        ):
            images = _draw(split, CIFAR10_CLASSES.index(class_name), count, rng)
            mhist_label = ("HP", "SSA")[label]
            counts[f"{partition}_{mhist_label}"] = len(images)
            for index, image in enumerate(images):
                name = f"STANDIN_{partition}_{class_name}_{index:04d}.png"
                Image.fromarray(image).save(out / "images" / name)
                rows.append([name, mhist_label, 7 * label, partition])
    with open(out / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([NAME_COLUMN, LABEL_COLUMN, VOTES_COLUMN, PARTITION_COLUMN])
        writer.writerows(rows)
    return counts


def pretrain(config: Config, name: str, pretrain_set: Dataset, out: Path):
    """Trains backbone ``name`` on the pretraining classes and exports it as a Keras
    no-top file in ``out``; returns its spec, result and what ``standin.json`` says of
    it."""
    spec = RunSpec(
        role=f"pretrain_{name}",
        model=name,
        model_settings={"num_classes": pretrain_set.num_classes},
        epochs=config.pretrain_epochs,
        batch_size=config.pretrain_batch_size,
        learning_rate=config.pretrain_learning_rate,
        seed=config.seed,
        **INPUT_SCALING,
    )
    result = report.train(config, spec, pretrain_set)
    # The exported BatchNorm statistics are recomputed over the pretraining images:
    # after a short run the running averages (momentum 0.999 in MobileNetV2) lag
    # the weights, and every frozen layer of the transfer runs reads them.
    model, preprocess = get_model(spec.model, **spec.model_settings), preprocess_of(spec)
    variables = recompute_batch_stats(
        model, result.variables, pretrain_set.train.images, preprocess=preprocess,
        batch_size=config.pretrain_batch_size,
    )  # fmt: skip
    accuracy = evaluate(model, variables, pretrain_set.test, preprocess=preprocess,
                        batch_size=config.eval_batch_size)  # fmt: skip
    path = out / f"{name}_standin_notop.h5"
    save_keras_weights(path, variables, name)
    report.log(
        f"{name}: {accuracy:.2%} on the 8 classes with BatchNorm statistics recomputed "
        f"over the pretraining images ({result.test_accuracy[0]:.2%} with the running "
        f"averages); wrote {path}."
    )
    described = {
        "file": path.name,
        "test_accuracy_8_classes": accuracy,
        "test_accuracy_8_classes_running_averages": result.test_accuracy[0],
    }
    return spec, result, described


def run(config: Config) -> dict:
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    cifar = load_cifar10(
        config.cifar10, download=False, allow_partial=config.allow_partial, log=report.log
    )
    pretrain_set = pretraining_set(cifar, config, rng)
    counts = write_target_folder(cifar, config, rng)
    report.log(f"Wrote the stand-in folder {config.out}: {counts}.")
    out, runs, pretrained = Path(config.out), {}, {}
    for name in BACKBONE_NAMES:
        spec, result, pretrained[name] = pretrain(config, name, pretrain_set, out)
        runs[spec.role] = report.run_entry(spec, result)
    hp, ssa = config.target_classes
    label = (
        f"CIFAR-10 {hp} (as HP) vs {ssa} (as SSA), backbones pretrained on the other 8 "
        f"classes ({config.pretrain_per_class}/class, "
        f"{report.plural(config.pretrain_epochs, 'epoch')})"
    )
    description = {"label": label, "counts": counts, "pretrained": pretrained,
                   "config": dataclasses.asdict(config)}  # fmt: skip
    (out / "standin.json").write_text(json.dumps(description, indent=2) + "\n")
    document = report.results_document(
        "mhist_standin", config, pretrain_set, runs, description, started
    )
    path = report.write_results(config.workdir, document)
    if report.is_main_process():
        print(f"\nStand-in written to {out} ({label}). Results: {path}. Next:")
        size = cifar.train.images.shape[1]
        print(
            f"  python -m experiments.mhist_kd --data_dir={out} --image_size={size}"
            f" --teacher_weights={out / 'resnet50v2_standin_notop.h5'}"
            f" --student_weights={out / 'mobilenetv2_standin_notop.h5'}"
        )
    return document


if __name__ == "__main__":
    command(Config, run)

"""The MHIST command: end to end on a tiny synthetic folder in MHIST's format (real CSV
columns, 32×32 images, one epoch), Keras weight files written and re-imported, and
bad data stopping with one line naming the file."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

from experiments import mhist_kd
from experiments.mhist_training import INPUT_SCALING
from kdjax.data import DataError, normalize
from kdjax.data.image_folder import load_cifar10
from kdjax.data.mhist import VOTES_COLUMN
from kdjax.models.backbones import backbone, keras_preprocess
from kdjax.models.pretrained import WeightFileError, save_keras_weights
from kdjax.runs import load_run
from kdjax.runs.scoring import softmax
from kdjax.training import recompute_batch_stats

HEADER = ["Image Name", "Majority Vote Label", VOTES_COLUMN, "Partition"]
ROOT = Path(__file__).resolve().parent.parent


def write_folder(folder: Path, train: int = 24, test: int = 12, size: int = 32) -> Path:
    """An MHIST-format folder: a third SSA (MHIST's 2:1), images brighter for SSA."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    rows = []
    for index in range(train + test):
        ssa = index % 3 == 0
        votes = int(rng.integers(4, 8)) if ssa else int(rng.integers(0, 4))
        name = f"MHIST_{index:03d}.png"
        rows.append([name, "SSA" if ssa else "HP", votes, "train" if index < train else "test"])
        pixels = rng.integers(0, 160, (size, size, 3)) + (90 if ssa else 0)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "images" / name)
    with open(folder / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return folder


def write_weights(path: Path, name: str, seed: int) -> dict:
    """A Keras-layout no-top file of random weights; returns the variables written."""
    model = backbone(name, num_classes=2)
    variables = jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 32, 32, 3), np.float32))
    save_keras_weights(path, variables, name)
    return jax.tree.map(np.asarray, variables)


def tiny_config(tmp_path, data, **overrides):
    settings = dict(
        workdir=str(tmp_path / "runs"),
        data_dir=str(data),
        image_size=32,
        epochs=1,
        teacher_epochs=1,
        batch_size=8,
        seeds=1,
        eval_batch_size=16,
        costs=False,
    )
    return mhist_kd.Config(**{**settings, **overrides})


def test_keras_scaling_is_the_specs_normalisation():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_allclose(
        normalize(pixels, INPUT_SCALING["input_mean"], INPUT_SCALING["input_std"]),
        keras_preprocess(pixels),
        atol=1e-6,
    )


def test_a_stored_teacher_with_augmentation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--teacher_mode=stored .* --augment=none"):
        tiny_config(tmp_path, tmp_path, teacher_mode="stored", augment="notebook")
    with pytest.raises(ValueError, match="--data_dir must name"):
        mhist_kd.Config()


@pytest.mark.slow
def test_kd_study_imports_the_weights_trains_and_scores_from_probabilities(tmp_path):
    data = write_folder(tmp_path / "MHIST")
    teacher_file, student_file = tmp_path / "resnet.h5", tmp_path / "mobile.h5"
    resnet = write_weights(teacher_file, "resnet50v2", 1)
    mobile = write_weights(student_file, "mobilenetv2", 2)
    config = tiny_config(
        tmp_path,
        data,
        teacher_weights=str(teacher_file),
        student_weights=str(student_file),
        study="kd",
    )
    document = mhist_kd.run(config)
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results["schema"] == "kdjax.results/1" and results["command"] == "mhist_kd"
    assert (
        results["study"]["augment"] == "notebook" and results["study"]["teacher_mode"] == "online"
    )
    expected = {"teacher"} | {
        f"{role}_seed{seed}"
        for role in ("student_scratch", "student_transfer", "student_kd")
        for seed in (0,)
    }
    assert set(results["runs"]) == expected
    assert len(document["study"]["metrics"]["student_kd"]) == 1

    # Frozen layers are the file's weights; trained ones moved; the scratch student is not
    # the file's.
    teacher = load_run(results["runs"]["teacher"]["run_dir"])
    params = teacher.variables["params"]
    np.testing.assert_array_equal(
        params["conv1_conv"]["kernel"], resnet["params"]["conv1_conv"]["kernel"]
    )
    stats = teacher.variables["batch_stats"]
    np.testing.assert_array_equal(stats["conv2_block1_1_bn"]["mean"],
                                  resnet["batch_stats"]["conv2_block1_1_bn"]["mean"])  # fmt: skip
    assert not np.array_equal(
        params["conv5_block3_3_conv"]["kernel"], resnet["params"]["conv5_block3_3_conv"]["kernel"]
    )
    transfer = load_run(results["runs"]["student_transfer_seed0"]["run_dir"])
    np.testing.assert_array_equal(
        transfer.variables["params"]["block_16_project"]["kernel"],
        mobile["params"]["block_16_project"]["kernel"],
    )
    scratch = load_run(results["runs"]["student_scratch_seed0"]["run_dir"])
    assert not np.allclose(
        scratch.variables["params"]["Conv1"]["kernel"], mobile["params"]["Conv1"]["kernel"]
    )

    # The reported AUC is the probability ranking's, recomputed here pair by pair.
    student = load_run(results["runs"]["student_kd_seed0"]["run_dir"])
    test_images = np.stack(
        [np.asarray(Image.open(data / "images" / f"MHIST_{i:03d}.png")) for i in range(24, 36)]
    )
    labels = np.array([1 if i % 3 == 0 else 0 for i in range(24, 36)])
    scores = softmax(student.predict(test_images))[:, 1]
    pairs = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p in scores[labels == 1]
        for n in scores[labels == 0]
    ]
    reported = results["study"]["metrics"]["student_kd"][0]
    assert reported["roc_auc"] == pytest.approx(np.mean(pairs))
    predictions = scores > 0.5
    assert reported["accuracy"] == pytest.approx(np.mean(predictions == labels))
    summary = results["study"]["summary"]["student_kd"]["f1"]
    assert summary["each"] == [r["f1"] for r in results["study"]["metrics"]["student_kd"]]


@pytest.mark.slow
def test_sweeps_and_chain_train_as_populations_with_a_stored_teacher(tmp_path):
    data = write_folder(tmp_path / "MHIST")
    config = tiny_config(
        tmp_path,
        data,
        study="all",
        augment="none",
        teacher_mode="stored",
        temperatures=(1.0, 8.0),
        alphas=(0.2, 0.8),
        costs=True,
    )
    results = mhist_kd.run(config)
    runs = results["runs"]
    assert runs["sweep_temperature_seed0"]["spec"]["temperature"] == [1.0, 8.0]
    assert runs["sweep_alpha_seed0"]["spec"]["hard_weight"] == [0.2, 0.8]
    assert runs["sweep_alpha_seed0"]["spec"]["soft_weight"] == pytest.approx([0.8, 0.2])
    assert runs["student_chain_seed0"]["spec"]["objective"] == "kd"
    summary = results["study"]["summary"]
    assert {"T=1", "T=8", "alpha=0.2", "alpha=0.8", "assistant", "student_chain"} <= set(summary)
    for kind in ("temperature", "alpha"):
        assert (tmp_path / "runs" / f"f1_auc_vs_{kind}.png").stat().st_size > 0
    costs = {c["name"]: c for c in results["study"]["costs"]}
    # Keras' counts (BatchNorm statistics included) plus a 2-class head.
    assert costs["teacher"]["parameters"] == 23_564_800 + 2048 * 2 + 2
    assert costs["student_transfer"]["parameters"] == 2_257_984 + 1280 * 2 + 2
    assert costs["student_transfer"]["trainable_parameters"] == 1280 * 2 + 2
    assert (
        costs["teacher"]["flops_per_example"] > 5 * costs["student_transfer"]["flops_per_example"]
    )


def _bad_csv(folder):
    (folder / "annotations.csv").write_text("Image Name,Partition\nMHIST_000.png,train\n")


def _missing_image(folder):
    (folder / "images" / "MHIST_005.png").unlink()


def _unreadable_image(folder):
    (folder / "images" / "MHIST_005.png").write_bytes(b"not a png")


def _no_csv(folder):
    (folder / "annotations.csv").unlink()


@pytest.mark.parametrize(
    "damage, names",
    [
        (_no_csv, "annotations.csv: missing"),
        (_bad_csv, "annotations.csv: no column 'Majority Vote Label'"),
        (_missing_image, "MHIST_005.png: image listed in annotations.csv is missing"),
        (_unreadable_image, "MHIST_005.png: cannot decode image"),
    ],
)
def test_bad_data_stops_with_one_line_naming_the_file(tmp_path, damage, names, monkeypatch):
    monkeypatch.setenv("KDJAX_CACHE_DIR", str(tmp_path / "cache"))
    data = write_folder(tmp_path / "MHIST", train=6, test=3)
    damage(data)
    with pytest.raises(DataError, match=names) as error:
        mhist_kd.run(tiny_config(tmp_path, data))
    assert "\n" not in str(error.value)


def test_a_weight_file_of_another_architecture_is_named(tmp_path):
    data = write_folder(tmp_path / "MHIST", train=6, test=3)
    wrong = tmp_path / "mobile.h5"
    with h5py.File(wrong, "w") as handle:  # a MobileNetV2 layer, legacy layout
        handle.attrs["layer_names"] = [b"Conv1"]
        group = handle.create_group("Conv1")
        group.attrs["weight_names"] = [b"Conv1/kernel:0"]
        group.create_dataset("Conv1/kernel:0", data=np.zeros((3, 3, 3, 32), np.float32))
    with pytest.raises(WeightFileError, match=r"mobile\.h5: layer 'conv1_conv' of resnet50v2"):
        mhist_kd.run(tiny_config(tmp_path, data, teacher_weights=str(wrong)))


def test_the_command_reports_a_missing_image_in_one_line(tmp_path):
    data = write_folder(tmp_path / "MHIST", train=6, test=3)
    _missing_image(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDJAX_CACHE_DIR": str(tmp_path / "cache")}
    completed = subprocess.run(
        [sys.executable, "-m", "experiments.mhist_kd", f"--data_dir={data}",
         f"--workdir={tmp_path / 'runs'}", "--image_size=32"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "MHIST_005.png" in last and "missing" in last
    assert "Traceback" not in completed.stderr


def write_tiny_cifar(root: Path, per_class: int = 6, test_per_class: int = 3) -> Path:
    """A CIFAR-10-shaped image folder (32×32 PNGs)."""
    from kdjax.data.image_folder import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) + 19 * label
                Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


@pytest.mark.slow
def test_standin_writes_an_mhist_folder_and_keras_files_of_its_pretrained_backbones(
    tmp_path, monkeypatch
):
    from experiments import mhist_standin
    from kdjax.data.mhist import load_mhist
    from kdjax.models.pretrained import load_keras_weights

    monkeypatch.setenv("KDJAX_CACHE_DIR", str(tmp_path / "cache"))
    cifar = write_tiny_cifar(tmp_path / "cifar")
    out = tmp_path / "standin"
    config = mhist_standin.Config(
        workdir=str(tmp_path / "pretrain"),
        cifar10=str(cifar),
        allow_partial=True,  # a tiny CIFAR-shaped folder, not 5,000/1,000 per class
        out=str(out),
        target_classes=("cat", "dog"),
        train_counts=(4, 2),
        test_counts=(2, 1),
        pretrain_per_class=2,
        pretrain_test_per_class=1,
        pretrain_epochs=1,
        pretrain_batch_size=8,
        eval_batch_size=8,
    )
    document = mhist_standin.run(config)
    dataset = load_mhist(out, image_size=32, cache_dir=tmp_path / "cache", log=lambda _: None)
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [4, 2])
    np.testing.assert_array_equal(np.bincount(dataset.test.labels), [2, 1])
    cat = 3 * 19  # the brightness offset of class 3 (cat) plays HP
    assert dataset.train.images[dataset.train.labels == 0].min() >= cat
    assert dataset.train.images[dataset.train.labels == 0].max() < cat + 60
    label = json.loads((out / "standin.json").read_text())["label"]
    assert "cat (as HP) vs dog (as SSA)" in label
    assert mhist_kd.standin_label(str(out)) == label
    assert set(document["runs"]) == {"pretrain_resnet50v2", "pretrain_mobilenetv2"}
    # The pretraining images, drawn as the command draws them.
    pretrain = mhist_standin.pretraining_set(
        load_cifar10(str(cifar), download=False, allow_partial=True, log=lambda _: None),
        config,
        np.random.default_rng(config.seed),
    )
    for name in ("resnet50v2", "mobilenetv2"):
        run = load_run(document["runs"][f"pretrain_{name}"]["run_dir"])
        trained = run.variables
        assert trained["params"]["head"]["kernel"].shape[-1] == 8  # the 8 pretraining classes
        # The files hold the trained weights and BatchNorm statistics recomputed over
        # the pretraining images (not the running averages).
        expected = recompute_batch_stats(
            run.model, trained, pretrain.train.images, preprocess=run.preprocess,
            batch_size=config.pretrain_batch_size,
        )  # fmt: skip
        loaded = load_keras_weights(out / f"{name}_standin_notop.h5", name)
        for collection, layers in loaded.items():
            for layer, weights in layers.items():
                for weight, value in weights.items():
                    np.testing.assert_array_equal(value, expected[collection][layer][weight])
        moved = [
            not np.allclose(stats["var"], trained["batch_stats"][layer]["var"])
            for layer, stats in loaded["batch_stats"].items()
        ]
        assert all(moved)
        assert set(json.loads((out / "standin.json").read_text())["pretrained"][name]) == {
            "file", "test_accuracy_8_classes", "test_accuracy_8_classes_running_averages"
        }  # fmt: skip

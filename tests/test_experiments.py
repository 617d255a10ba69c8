"""The command line: flag errors, and `experiments.mnist_kd` end to end on tiny data."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_mnist(directory: Path, train_count: int = 192, test_count: int = 64) -> Path:
    """Four gzip IDX files of learnable synthetic digits (a stripe whose row is the label)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 * label + 4, 4:24] = 255
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">HBBIII", 0, 8, 3, count, 28, 28) + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">HBBI", 0, 8, 1, count) + labels.tobytes())
    return directory


def run_command(
    *flags: str, timeout: int = 300, module: str = "experiments.mnist_kd"
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--temperature=0", "--temperature must be > 0"),
        ("--temperature=-2", "--temperature must be > 0"),
        ("--alpha=1.5", "--alpha must be in [0, 1]"),
        ("--epochs=0", "--epochs must be >= 1"),
        ("--batch_size=0", "--batch_size must be >= 1"),
        ("--data_dir=/nonexistent/kdjax", "--data_dir must be an existing folder"),
    ],
)
def test_invalid_flags_stop_with_one_line_and_no_traceback(flag, message):
    result = run_command(flag, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_data_dir_without_mnist_is_a_clean_error(tmp_path):
    result = run_command(f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'work'}", timeout=120)
    assert result.returncode == 1
    assert "holds no MNIST" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mnist_kd_end_to_end_then_reuse(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "work"
    flags = (
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=32",
        "--temperature=3",
        "--alpha=0.7",
    )
    first = run_command(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    for run in ("teacher", "student_kd", "student_scratch"):
        assert 0.0 <= results[run]["test_accuracy"] <= 1.0
        assert results[run]["epochs"] == 1
        assert results[run]["history"][0]["examples_per_second"] > 0
    assert results["student_kd"]["parameters"] == 101962
    assert results["data"]["source"] == "idx"
    assert results["data"]["train_examples"] == 192
    assert results["config"]["temperature"] == 3.0
    assert results["config"]["alpha"] == 0.7
    assert (workdir / "learning_curves.png").stat().st_size > 0
    teacher_dir = Path(results["teacher"]["run_dir"])
    assert (teacher_dir / "soft_targets" / "train.npz").is_file()
    assert "epoch 1/1" in first.stdout

    second = run_command(*flags)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("Reusing finished") == 3
    again = json.loads((workdir / "results.json").read_text())
    for run in ("teacher", "student_kd", "student_scratch"):
        assert again[run]["test_accuracy"] == results[run]["test_accuracy"]


@pytest.mark.slow
def test_mnist_sweep_trains_the_grid_together_and_plots(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "work"
    result = run_command(
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--temperatures=1,4",
        "--alphas=0.3,0.9",
        "--seeds=2",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=32",
        module="experiments.mnist_sweep",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "sweep" / "results.json").read_text())
    assert results["students_trained_together"] == 8
    cells = {(cell["temperature"], cell["alpha"]): cell for cell in results["cells"]}
    assert set(cells) == {(1.0, 0.3), (1.0, 0.9), (4.0, 0.3), (4.0, 0.9)}
    for cell in cells.values():
        assert cell["n"] == 2
        assert cell["mean"] == pytest.approx(np.mean(cell["accuracies"]))
    assert results["scratch"]["n"] == 2
    for name in ("accuracy_vs_temperature.png", "accuracy_vs_alpha.png", "results.csv"):
        assert (workdir / "sweep" / name).stat().st_size > 0
    bad = run_command("--temperatures=1,zero", module="experiments.mnist_sweep", timeout=120)
    assert bad.returncode != 0 and "--temperatures must be" in bad.stderr


@pytest.mark.slow
def test_mnist_mlp_kd_reports_correct_counts_per_arm(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "work"
    result = run_command(
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--transfer_size=128",
        "--seeds=2",
        "--epochs=1",
        "--teacher_epochs=1",
        module="experiments.mnist_mlp_kd",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["transfer_examples"] == 128
    assert results["config"]["batch_size"] == 32  # seed 004's default
    for arm in ("student_kd", "student_scratch"):
        counts = results["correct_out_of_test"][arm]["each"]
        assert len(counts) == 2 and all(0 <= c <= 64 for c in counts)
    assert results["student_kd"]["parameters"] == 784 * 200 + 200 + 200 * 200 + 200 + 2010


def test_model_costs_command(tmp_path):
    result = run_command(
        "--models=mlp_200,student_net",
        "--measure_seconds=0.1",
        f"--workdir={tmp_path}",
        module="experiments.model_costs",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    costs = json.loads((tmp_path / "results.json").read_text())["models"]
    assert [c["model"] for c in costs] == ["mlp_200", "student_net"]
    assert costs[1]["flops_per_example"] > costs[0]["flops_per_example"]
    bad = run_command("--models=resnet", module="experiments.model_costs", timeout=120)
    assert bad.returncode != 0 and "--models must name models" in bad.stderr


@pytest.mark.slow
def test_mnist_takd_distils_along_the_chain(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "work"
    result = run_command(
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--chain=mlp_800_dropout,mlp_784,mlp_200",
        "--seeds=2",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=32",
        module="experiments.mnist_takd",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert list(results["chain"]) == ["0:mlp_800_dropout", "1:mlp_784"]
    for arm in ("student_scratch", "student_from_teacher", "student_through_chain"):
        assert len(results[arm]["accuracy"]["each"]) == 2
    # The assistant's logits were stored and used by the chain student.
    assistant_dir = Path(results["chain"]["1:mlp_784"]["run_dir"])
    assert (assistant_dir / "soft_targets" / "train.npz").is_file()
    bad = run_command("--chain=mlp_200", module="experiments.mnist_takd", timeout=120)
    assert bad.returncode != 0 and "--chain must list at least two models" in bad.stderr


def write_tiny_cifar(root: Path, per_class: int = 4, test_per_class: int = 2) -> Path:
    """A CIFAR-10-shaped image folder (32×32 PNGs) whose colour encodes the class."""
    from PIL import Image

    from kdjax.image_folder import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                pixels = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
                pixels[3 * label : 3 * label + 3] = 250
                Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


@pytest.mark.slow
def test_cifar10_kd_runs_every_method_then_resumes(tmp_path):
    pytest.importorskip("PIL")
    data_dir = write_tiny_cifar(tmp_path / "cifar")
    workdir = tmp_path / "work"
    flags = (
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--method=all",
        "--seeds=2",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=20",  # 40 training images: two steps per epoch
    )
    first = run_command(*flags, module="experiments.cifar10_kd")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    runs = results["runs"]
    assert list(runs) == ["teacher", "ce", "kd", "cosine", "hint"]
    assert runs["teacher"]["parameters"] == 1_186_986
    assert runs["ce"]["parameters"] == 267_738
    assert runs["hint"]["model"] == "light_nn_hint"
    assert runs["kd"]["weights"] == {"temperature": 2.0, "hard_weight": 0.75, "soft_weight": 0.25}
    for name in ("ce", "kd", "cosine", "hint"):
        assert len(runs[name]["accuracy"]["each"]) == 2
    assert set(results["gains_over_ce"]) == {"kd", "cosine", "hint"}
    teacher_store = Path(runs["teacher"]["run_dir"]) / "soft_targets"
    for name in ("train.npz", "train-features.npz", "train-feature_map.npz"):
        assert (teacher_store / name).is_file()
    assert (workdir / "comparison.png").stat().st_size > 0
    assert (workdir / "learning_curves.png").stat().st_size > 0
    assert list((workdir / "data_cache").glob("*.npz"))
    assert "student CE + hint" in first.stdout

    # One method alone, the seed-001 preset and a KD weight override: new runs; then a
    # rerun of the first command reuses every finished run and the decoded-image cache.
    second = run_command(*flags, module="experiments.cifar10_kd")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("Reusing finished") == 5
    assert "read from the cache" in second.stdout
    kd_only = run_command(
        *flags[:2],
        "--method=kd",
        "--preset=seed001",
        "--soft_weight=0.5",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=20",
        module="experiments.cifar10_kd",
    )
    assert kd_only.returncode == 0, kd_only.stderr[-3000:]
    kd_results = json.loads((workdir / "results.json").read_text())
    assert list(kd_results["runs"]) == ["teacher", "kd"]
    assert kd_results["runs"]["teacher"]["model"] == "cifar_teacher"
    assert kd_results["runs"]["kd"]["weights"] == {
        "temperature": 10.0,
        "hard_weight": 1.0,
        "soft_weight": 0.5,
    }


def test_cifar10_kd_without_data_says_how_to_provide_it(tmp_path):
    result = run_command(
        f"--data_dir={tmp_path}",
        f"--workdir={tmp_path / 'work'}",
        module="experiments.cifar10_kd",
        timeout=120,
    )
    assert result.returncode == 1
    assert "holds no CIFAR-10" in result.stderr and "--data_dir" in result.stderr
    assert "Traceback" not in result.stderr
    bad = run_command("--method=kd,distill", module="experiments.cifar10_kd", timeout=120)
    assert bad.returncode != 0 and "--method must list methods" in bad.stderr


@pytest.mark.slow
def test_hinton_mnist_reports_errors_beside_the_paper(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    workdir = tmp_path / "work"
    tiny = (
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        "--seeds=2",
        "--epochs=1",
        "--teacher_epochs=1",
        "--batch_size=32",
    )
    result = run_command(*tiny, module="experiments.hinton_mnist")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["paper_errors"] == {"teacher": 67, "student_scratch": 146, "student_kd": 74}
    for arm in ("student_scratch", "student_kd"):
        errors = results["test_errors"][arm]
        assert len(errors["each"]) == 2 and all(0 <= e <= 64 for e in errors["each"])
    assert results["teacher"]["parameters"] == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 12010
    assert results["student_kd"]["parameters"] == 784 * 800 + 800 + 800 * 800 + 800 + 8010
    assert results["config"]["temperature"] == 20.0 and results["config"]["translate_pixels"] == 2
    config = json.loads((Path(results["teacher"]["run_dir"]) / "config.json").read_text())
    assert config["max_norm"] == 3.5 and config["translate_pixels"] == 2
    assert (workdir / "learning_curves.png").stat().st_size > 0

    # The jittered-transfer-set variant reuses the teacher and stores its logits per shift.
    jittered = run_command(*tiny, "--student_translate_pixels=1", module="experiments.hinton_mnist")
    assert jittered.returncode == 0, jittered.stderr[-3000:]
    assert "jittered transfer set ±1" in jittered.stdout
    assert "× 9 shifts" in jittered.stdout + jittered.stderr
    again = json.loads((workdir / "results-jitter1.json").read_text())
    assert json.loads((workdir / "results.json").read_text()) == results  # kept
    assert (workdir / "learning_curves-jitter1.png").stat().st_size > 0
    assert again["teacher"]["run_dir"] == results["teacher"]["run_dir"]
    assert again["config"]["student_translate_pixels"] == 1
    for arm in ("student_scratch", "student_kd"):
        assert again[arm]["run_dir"] != results[arm]["run_dir"]
        config = json.loads((Path(again[arm]["run_dir"]) / "config.json").read_text())
        assert config["translate_pixels"] == 1
        assert config.get("consistent_jitter", False) is (arm == "student_kd")
    assert (Path(results["teacher"]["run_dir"]) / "soft_targets" / "train-shift1.npz").is_file()

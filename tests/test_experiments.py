"""The experiment commands: each ``run(Config(...))`` in-process on shrunk configs and
tiny data written here, their config checks, and the command line itself (flag
errors, refusals before any work, ``experiments.mnist_kd`` end to end)."""

import dataclasses
import gzip
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest

from experiments import (
    cifar10_kd,
    hinton_mnist,
    keras_mnist_kd,
    mnist_kd,
    mnist_mlp_kd,
    mnist_sweep,
    mnist_takd,
    model_costs,
    report,
)
from kdjax.data import DataError
from kdjax.runs import results as results_file
from kdjax.runs import statistics

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (
    cifar10_kd,
    hinton_mnist,
    keras_mnist_kd,
    mnist_kd,
    mnist_mlp_kd,
    mnist_sweep,
    mnist_takd,
    model_costs,
)
TINY = {"epochs": 1, "teacher_epochs": 1, "batch_size": 32}  # 192 examples: 6 steps


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


def write_tiny_cifar(root: Path, per_class: int = 4, test_per_class: int = 2, classes=None) -> Path:
    """A CIFAR-shaped image folder (32×32 PNGs) whose colour encodes the class
    (``classes``: CIFAR-10's by default)."""
    from PIL import Image

    from kdjax.data.image_folder import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for label, name in enumerate(classes or CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                pixels = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
                pixels[3 * label : 3 * label + 3] = 250
                Image.fromarray(pixels).save(folder / f"{number:04d}.png")
    return root


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


def run_command(
    *flags: str, timeout: int = 300, module: str = "experiments.mnist_kd", devices: int = 0
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if devices:  # simulated CPU devices
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def as_json(value):
    """``value`` as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(value))


def check_schema(results: dict, command: str, runs: list[str]) -> None:
    """The common results layout, each run's accuracies one per student in [0, 1]."""
    assert results["schema"] == "kdjax.results/1" and results["command"] == command
    assert results["environment"]["device_count"] >= 1
    assert list(results["runs"]) == runs
    for entry in results["runs"].values():
        assert len(entry["test_accuracy"]) == len(entry["seeds"])
        assert all(0.0 <= accuracy <= 1.0 for accuracy in entry["test_accuracy"])
        assert entry["parameters"] > 0 and entry["spec"]["role"] in runs


# --- Configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "fields", "message"),
    [
        (mnist_kd, {"temperature": math.inf}, "--temperature must be > 0 and finite, got inf"),
        (mnist_kd, {"temperature": 0.0}, "--temperature must be > 0"),
        (mnist_kd, {"temperature": 2e6}, "--temperature must be <= 1e+06 (kdjax.losses.MAX_TEMP"),
        (mnist_kd, {"seed": -5}, "--seed must be >= 0, got -5"),
        (mnist_kd, {"workdir": " "}, "--workdir must name a folder"),
        (mnist_kd, {"alpha": 1.5}, "--alpha must be in [0, 1]"),
        (mnist_kd, {"epochs": 0, "batch_size": 0}, "--epochs must be >= 1, got 0; --batch_size"),
        (mnist_kd, {"feed": "disk"}, "--feed must be one of auto, host, device"),
        (mnist_sweep, {"population_strategy": "pmap"}, "--population_strategy must be one of"),
        (mnist_sweep, {"temperatures": (1.0, math.inf)}, "--temperatures must list values"),
        (mnist_sweep, {"alphas": ()}, "--alphas must list values that each are in [0, 1]"),
        (mnist_mlp_kd, {"transfer_size": 0}, "--transfer_size must be >= 1"),
        (mnist_takd, {"chain": ("mlp_200",)}, "--chain must list at least two models among"),
        (mnist_takd, {"chain": ("mlp_200", "resnet")}, "--chain must list at least two models"),
        (hinton_mnist, {"student_translate_pixels": 5}, "--student_translate_pixels must be in"),
        (hinton_mnist, {"lr_schedule": "step"}, "--lr_schedule must be one of cosine, constant"),
        (cifar10_kd, {"method": ("kd", "distill")}, "--method must list methods among"),
        (cifar10_kd, {"temperature": math.nan}, "--temperature must be > 0 and finite"),
        (cifar10_kd, {"soft_weight": -1.0}, "--soft_weight must be >= 0"),
        (model_costs, {"models": ("resnet",)}, "--models must name models among"),
    ],
)
def test_configs_refuse_bad_values_naming_the_flag(command, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        command.Config(**fields)


def test_every_default_config_is_valid_and_importing_defines_no_flags():
    from absl import flags

    for command in COMMANDS:
        config = command.Config()
        assert callable(command.run) and config.workdir.startswith("runs/")
    assert "temperature" not in flags.FLAGS and "workdir" not in flags.FLAGS
    # Each seed's protocol stays the default.
    assert mnist_mlp_kd.Config().batch_size == 32 and mnist_mlp_kd.Config().epochs == 50
    assert mnist_takd.Config().chain == ("tf_notebook_teacher", "tf_notebook_assistant", "mlp_784")
    assert hinton_mnist.Config().teacher_epochs == 300 and hinton_mnist.Config().temperature == 20
    assert mnist_sweep.Config().workdir == mnist_kd.Config().workdir  # they share a teacher
    keras = keras_mnist_kd.Config()  # the Keras example's settings
    assert (keras.teacher_epochs, keras.epochs, keras.batch_size) == (5, 3, 32)
    assert (keras.alpha, keras.temperature, keras.seeds) == (0.1, 10.0, 3)


def test_every_temperature_flag_refuses_what_the_losses_do_not_support():
    from experiments import biovid_kd, mhist_kd
    from kdjax.losses import MAX_TEMPERATURE
    from kdjax.runs.cli import failed_check

    checked = set()
    for command in (*COMMANDS, biovid_kd, mhist_kd):
        hints = typing.get_type_hints(command.Config)
        for field in dataclasses.fields(command.Config):
            if "temperature" not in field.name:
                continue
            many = typing.get_origin(hints[field.name]) is tuple
            at_bound, above = ((1.0, T) if many else T for T in (MAX_TEMPERATURE, 2e6))
            assert failed_check(field.metadata["check"], at_bound) is None
            refusal = f"--{field.name} must (be|list values that each are) <= 1e\\+06"
            with pytest.raises(ValueError, match=refusal):
                command.Config(**{field.name: above})
            checked.add(f"{command.__name__.rpartition('.')[2]}.{field.name}")
    assert {"mnist_kd.temperature", "mnist_sweep.temperatures", "cifar10_kd.temperature",
            "mhist_kd.temperatures", "mhist_kd.alpha_sweep_temperature"} <= checked  # fmt: skip


def test_the_population_strategy_flag_reaches_the_training_core():
    from kdjax.runs.cli import POPULATION_STRATEGIES
    from kdjax.runs.execution import execution
    from kdjax.training import STRATEGIES

    assert POPULATION_STRATEGIES == ("auto", *STRATEGIES)  # the flag's choices

    assert execution(mnist_sweep.Config()).population_strategy == "auto"
    chosen = execution(mnist_sweep.Config(population_strategy="unroll"))
    assert chosen.population_strategy == "unroll"


def test_a_data_dir_without_the_data_set_is_a_clean_error(tmp_path):
    with pytest.raises(DataError, match="holds no MNIST"):
        mnist_kd.run(mnist_kd.Config(data_dir=str(tmp_path), workdir=str(tmp_path / "w")))
    with pytest.raises(DataError, match="holds no CIFAR-10.*--data_dir"):
        cifar10_kd.run(cifar10_kd.Config(data_dir=str(tmp_path), workdir=str(tmp_path / "w")))


# --- The command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "flag", "message"),
    [
        ("experiments.mnist_kd", "--temperature=inf", "--temperature must be > 0 and finite"),
        ("experiments.mnist_kd", "--temperature=1e30", "--temperature must be <= 1e+06"),
        ("experiments.mnist_kd", "--workdir=", "--workdir must name a folder"),
        ("experiments.mnist_kd", "--workdir=README.md", "--workdir must name a folder, but"),
        (
            "experiments.mnist_kd",
            "--workdir=README.md/run",
            "--workdir must name a folder, but README.md is",
        ),
        ("experiments.mnist_kd", "--seed=-5", "--seed must be >= 0"),
        ("experiments.mnist_kd", "--data_dir=/nonexistent/kdjax", "--data_dir must be an exist"),
        ("experiments.mnist_sweep", "--temperatures=1,zero", "--temperatures must be a comma-"),
    ],
)
def test_bad_flags_stop_before_any_work_with_one_line(tmp_path, module, flag, message):
    workdir = tmp_path / "never"
    result = run_command(f"--workdir={workdir}", flag, module=module, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr
    assert "Data:" not in result.stdout and not workdir.exists()


@pytest.mark.slow
def test_mnist_kd_end_to_end_then_reuse_in_process(tmp_path, mnist_dir, capsys):
    workdir = tmp_path / "work"
    flags = {"data_dir": str(mnist_dir), "workdir": str(workdir), "temperature": 3.0, **TINY}
    first = run_command(*(f"--{name}={value}" for name, value in flags.items()))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "epoch 1/1" in first.stdout
    results = read_json(workdir / "results.json")
    check_schema(results, "mnist_kd", ["teacher", "student_kd", "student_scratch"])
    for entry in results["runs"].values():
        assert entry["epochs"] == 1 and entry["history"][0]["examples_per_second"] > 0
    assert results["runs"]["student_kd"]["parameters"] == 101962
    assert results["runs"]["student_kd"]["spec"]["model"] == "small_conv_net"
    assert results["data"]["source"] == "idx" and results["data"]["train_examples"] == 192
    assert results["config"]["temperature"] == 3.0 and results["config"]["alpha"] == 0.7
    # Each arm: three students (one population), reported seed by seed.
    assert results["study"]["student_seeds"] == [42, 43, 44]
    assert len(results["runs"]["student_kd"]["test_accuracy"]) == 3
    assert results["study"]["kd_minus_scratch"]["seeds"] == 3
    assert "KD minus scratch, seed by seed" in first.stdout
    assert (workdir / "learning_curves.png").stat().st_size > 0
    assert (Path(results["runs"]["teacher"]["run_dir"]) / "soft_targets/train.npz").is_file()

    # The same config from Python reuses every finished run.
    capsys.readouterr()
    again = mnist_kd.run(mnist_kd.Config(**flags))
    assert capsys.readouterr().out.count("Reusing finished") == 3
    written = read_json(workdir / "results.json")
    assert written.pop("peak_resident_memory_mib") > 0
    assert written == as_json(again)
    for name, entry in results["runs"].items():
        assert again["runs"][name]["test_accuracy"] == entry["test_accuracy"]


@pytest.mark.slow
def test_a_reused_run_reports_its_accuracy_on_the_test_files_it_is_given(tmp_path, mnist_dir):
    """Same training files, other test files (the same images, other labels): the
    finished runs are reused, and what they report is scored on the new test files, as
    a fresh run on those files reports it."""
    relabelled = tmp_path / "relabelled"
    shutil.copytree(mnist_dir, relabelled)
    labels_file = relabelled / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        header, labels = (lambda raw: (raw[:8], np.frombuffer(raw[8:], np.uint8)))(handle.read())
    with gzip.open(labels_file, "wb") as handle:
        handle.write(header + ((labels + 3) % 10).astype(np.uint8).tobytes())
    flags = {"workdir": str(tmp_path / "work"), "seeds": 2, **TINY}
    first = mnist_kd.run(mnist_kd.Config(data_dir=str(mnist_dir), **flags))
    reused = mnist_kd.run(mnist_kd.Config(data_dir=str(relabelled), **flags))
    fresh = mnist_kd.run(
        mnist_kd.Config(data_dir=str(relabelled), **{**flags, "workdir": str(tmp_path / "new")})
    )
    for name, entry in reused["runs"].items():
        assert entry["run_dir"] == first["runs"][name]["run_dir"]  # reused, not retrained
        assert entry["test_accuracy"] == fresh["runs"][name]["test_accuracy"], name
        assert entry["test_accuracy"] != first["runs"][name]["test_accuracy"], name


# --- Every other command, in-process ------------------------------------------------------


@pytest.mark.slow
def test_mnist_sweep_trains_the_grid_together_and_plots(tmp_path, mnist_dir):
    config = mnist_sweep.Config(
        data_dir=str(mnist_dir),
        workdir=str(tmp_path),
        temperatures=(1.0, 4.0),
        alphas=(0.3, 0.9),
        seeds=2,
        **TINY,
    )
    results = mnist_sweep.run(config)
    assert read_json(tmp_path / "sweep" / "results.json")["study"] == as_json(results["study"])
    check_schema(results, "mnist_sweep", ["teacher", "student_sweep", "student_scratch_seeds"])
    study = results["study"]
    assert study["students_trained_together"] == 8
    assert len(results["runs"]["student_sweep"]["test_accuracy"]) == 8  # one run, 8 students
    cells = {(cell["temperature"], cell["alpha"]): cell for cell in study["cells"]}
    assert set(cells) == {(1.0, 0.3), (1.0, 0.9), (4.0, 0.3), (4.0, 0.9)}
    for cell in cells.values():
        assert cell["n"] == 2
        assert cell["mean"] == pytest.approx(np.mean(cell["accuracies"]))
    assert study["scratch"]["n"] == 2
    assert (
        study["scratch"]["accuracies"] == results["runs"]["student_scratch_seeds"]["test_accuracy"]
    )
    for name in ("accuracy_vs_temperature.png", "accuracy_vs_alpha.png", "results.csv"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0


@pytest.mark.slow
def test_mnist_mlp_kd_reports_correct_counts_per_arm(tmp_path, mnist_dir):
    config = mnist_mlp_kd.Config(
        data_dir=str(mnist_dir), workdir=str(tmp_path), transfer_size=128, seeds=2, epochs=1,
        teacher_epochs=1,
    )  # fmt: skip
    results = mnist_mlp_kd.run(config)
    check_schema(results, "mnist_mlp_kd", ["teacher", "student_scratch", "student_kd"])
    assert results["config"]["batch_size"] == 32  # the MLP notebook's default
    assert results["study"]["transfer_examples"] == 128
    for arm in ("student_kd", "student_scratch"):
        counts = results["study"]["correct_out_of_test"][arm]["each"]
        assert len(counts) == 2 and all(0 <= c <= 64 for c in counts)
        accuracies = results["runs"][arm]["test_accuracy"]
        assert counts == [round(64 * accuracy) for accuracy in accuracies]
    assert results["runs"]["student_kd"]["parameters"] == 784 * 200 + 200 + 200 * 200 + 200 + 2010
    teacher = results["runs"]["teacher"]["spec"]
    assert teacher["model_settings"] == {"hidden_sizes": [800, 800], "dropout": 0.5}
    # The teacher's logits were stored for the transfer set the students saw.
    with np.load(Path(results["runs"]["teacher"]["run_dir"]) / "soft_targets/train.npz") as store:
        assert len(store["ids"]) == 128
    with pytest.raises(ValueError, match="--transfer_size 500 exceeds the 192"):
        mnist_mlp_kd.run(mnist_mlp_kd.Config(data_dir=str(mnist_dir), transfer_size=500))


def _teacher_fingerprint(run_dir: str) -> str:
    with np.load(Path(run_dir) / "soft_targets" / "train.npz") as store:
        return str(store["teacher_fingerprint"])


@pytest.mark.slow
def test_mnist_takd_distils_along_the_chain(tmp_path, mnist_dir):
    chain = ("mlp_800_dropout", "mlp_784", "mlp_200")
    config = mnist_takd.Config(
        data_dir=str(mnist_dir), workdir=str(tmp_path), chain=chain, seeds=2, **TINY
    )
    results = mnist_takd.run(config)
    arms = ["student_scratch", "student_from_teacher", "student_through_chain"]
    check_schema(results, "mnist_takd", ["teacher", "assistant1", *arms])
    assert [link["network"] for link in results["study"]["chain"]] == list(chain[:2])
    assert results["runs"]["assistant1"]["spec"]["model_settings"] == {"hidden_sizes": [784, 784]}
    for arm in arms:
        assert len(results["runs"][arm]["test_accuracy"]) == 2
        assert results["study"]["accuracy"][arm]["each"] == results["runs"][arm]["test_accuracy"]
    # Each distilled arm learnt from its own mentor's stored logits.
    runs = results["runs"]
    mentors = {"student_from_teacher": "teacher", "student_through_chain": "assistant1"}
    for arm, mentor in mentors.items():
        identity = read_json(Path(runs[arm]["run_dir"]) / "config.json")
        assert identity["teacher"] == _teacher_fingerprint(runs[mentor]["run_dir"])
    assert _teacher_fingerprint(runs["teacher"]["run_dir"]) != _teacher_fingerprint(
        runs["assistant1"]["run_dir"]
    )


@pytest.mark.slow
def test_hinton_mnist_reports_errors_beside_the_paper(tmp_path, mnist_dir, capsys):
    tiny = {"data_dir": str(mnist_dir), "workdir": str(tmp_path), "seeds": 2, **TINY}
    results = hinton_mnist.run(hinton_mnist.Config(**tiny))
    check_schema(results, "hinton_mnist", ["teacher", "student_scratch", "student_kd"])
    study = results["study"]
    assert study["paper_errors"] == {"teacher": 67, "student_scratch": 146, "student_kd": 74}
    for arm in ("student_scratch", "student_kd"):
        errors = study["test_errors"][arm]["each"]
        assert len(errors) == 2 and all(0 <= e <= 64 for e in errors)
        assert errors == [round(64 * (1 - a)) for a in results["runs"][arm]["test_accuracy"]]
    runs = results["runs"]
    assert runs["teacher"]["parameters"] == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 12010
    assert runs["student_kd"]["parameters"] == 784 * 800 + 800 + 800 * 800 + 800 + 8010
    assert results["config"]["temperature"] == 20.0 and results["config"]["translate_pixels"] == 2
    identity = read_json(Path(runs["teacher"]["run_dir"]) / "config.json")
    assert identity["max_norm"] == 3.5 and identity["translate_pixels"] == 2
    assert (tmp_path / "learning_curves.png").stat().st_size > 0

    # The jittered-transfer-set variant reuses the teacher and stores its logits per shift.
    capsys.readouterr()
    again = hinton_mnist.run(hinton_mnist.Config(**tiny, student_translate_pixels=1))
    output = capsys.readouterr().out
    assert "jittered transfer set ±1" in output and "× 9 shifts" in output
    assert read_json(tmp_path / "results.json")["runs"] == results["runs"]  # kept
    assert read_json(tmp_path / "results-jitter1.json")["config"]["student_translate_pixels"] == 1
    assert (tmp_path / "learning_curves-jitter1.png").stat().st_size > 0
    assert again["runs"]["teacher"]["run_dir"] == runs["teacher"]["run_dir"]
    for arm in ("student_scratch", "student_kd"):
        assert again["runs"][arm]["run_dir"] != runs[arm]["run_dir"]
        identity = read_json(Path(again["runs"][arm]["run_dir"]) / "config.json")
        assert identity["translate_pixels"] == 1
        assert identity.get("consistent_jitter", False) is (arm == "student_kd")
    assert (Path(runs["teacher"]["run_dir"]) / "soft_targets" / "train-shift1.npz").is_file()


@pytest.mark.slow
def test_cifar10_kd_runs_every_method_then_resumes(tmp_path, capsys):
    pytest.importorskip("PIL")
    data_dir = write_tiny_cifar(tmp_path / "cifar")
    tiny = {"data_dir": str(data_dir), "workdir": str(tmp_path / "work"), **TINY}
    tiny["batch_size"] = 20  # 40 training images: two steps per epoch
    tiny["allow_partial"] = True  # 4 + 2 images per class, not CIFAR-10's 5,000 + 1,000
    results = cifar10_kd.run(cifar10_kd.Config(**tiny, seeds=2))
    methods = ["ce", "kd", "cosine", "hint"]
    check_schema(results, "cifar10_kd", ["teacher", *(f"student_{m}" for m in methods)])
    runs, study = results["runs"], results["study"]
    assert runs["teacher"]["parameters"] == 1_186_986
    assert runs["teacher"]["spec"]["model_settings"] == {"dropout": 0.1}  # the tutorial's nets
    assert runs["student_ce"]["parameters"] == 267_738
    assert runs["student_hint"]["spec"]["objective"] == "hint"  # its regressor is a head
    assert results["data"]["notice"].startswith("PARTIAL DATA SET")
    comparison = {row["method"]: row for row in study["comparison"]}
    assert list(comparison) == ["teacher", *methods]
    assert comparison["kd"]["weights"] == {
        "temperature": 2.0,
        "hard_weight": 0.75,
        "soft_weight": 0.25,
    }
    for method in methods:
        assert len(comparison[method]["accuracy"]["each"]) == 2
    assert set(study["gains_over_ce"]) == {"kd", "cosine", "hint"}
    teacher_store = Path(runs["teacher"]["run_dir"]) / "soft_targets"
    for name in ("train.npz", "train-features.npz", "train-feature_map.npz"):
        assert (teacher_store / name).is_file()
    for name in ("comparison.png", "learning_curves.png"):
        assert (tmp_path / "work" / name).stat().st_size > 0
    assert list((tmp_path / "work" / "data_cache").glob("*.npz"))
    assert "student CE + hint" in capsys.readouterr().out

    # A rerun reuses every finished run and the decoded-image cache; one method with the
    # cnn_notebook preset and a weight override trains new runs.
    cifar10_kd.run(cifar10_kd.Config(**tiny, seeds=2))
    output = capsys.readouterr().out
    assert output.count("Reusing finished") == 5 and "read from the cache" in output
    kd_only = cifar10_kd.run(
        cifar10_kd.Config(**tiny, method=("kd",), preset="cnn_notebook", soft_weight=0.5)
    )
    assert list(kd_only["runs"]) == ["teacher", "student_kd"]
    assert "model_settings" not in kd_only["runs"]["teacher"]["spec"]  # no dropout
    assert kd_only["study"]["comparison"][1]["weights"] == {
        "temperature": 10.0,
        "hard_weight": 1.0,
        "soft_weight": 0.5,
    }
    assert kd_only["runs"]["teacher"]["run_dir"] != runs["teacher"]["run_dir"]


@pytest.mark.slow
def test_cifar10_kd_compares_methods_with_heads_and_deploys_the_student_alone(tmp_path):
    from kdjax.runs import load_run

    pytest.importorskip("PIL")
    data_dir = write_tiny_cifar(tmp_path / "cifar")
    config = cifar10_kd.Config(data_dir=str(data_dir), workdir=str(tmp_path / "work"),
                               allow_partial=True, method=("dkd", "sp", "vid", "crd"),
                               **{**TINY, "batch_size": 20})  # fmt: skip
    results = cifar10_kd.run(config)
    for method in ("dkd", "sp", "vid", "crd"):
        run = results["runs"][f"student_{method}"]
        assert np.isfinite(run["history"][-1]["train_loss"]).all()
        assert run["spec"]["soft_weight"] == cifar10_kd.COMPARED_METHODS[method]["soft_weight"]
    deployed = load_run(results["runs"]["student_crd"]["run_dir"], log=lambda m: None)
    assert set(deployed.variables["params"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert deployed.accuracy(
        cifar10_kd.load_cifar("cifar10", str(data_dir), allow_partial=True, log=lambda m: None).test
    ) == pytest.approx(results["runs"]["student_crd"]["test_accuracy"][0], abs=1e-9)
    # Every method but FSP, which cannot pair the notebooks' nets (16 against 64 channels).
    compared = set(cifar10_kd.Config(method=("compare",)).methods())
    assert compared == set(cifar10_kd.METHODS) - {"fsp"}


@pytest.mark.slow
def test_model_costs_measures_named_presets(tmp_path):
    config = model_costs.Config(
        models=("mlp_200", "small_conv_net"), measure_seconds=0.1, workdir=str(tmp_path)
    )
    results = model_costs.run(config)
    assert read_json(tmp_path / "results.json")["study"] == as_json(results["study"])
    assert results["schema"] == "kdjax.results/1" and results["runs"] == {}
    costs = results["study"]["models"]
    assert [cost["preset"] for cost in costs] == ["mlp_200", "small_conv_net"]
    assert costs[0]["model"] == "mlp" and costs[0]["settings"] == {"hidden_sizes": (200, 200)}
    assert costs[0]["parameters"] == 784 * 200 + 200 + 200 * 200 + 200 + 2010
    assert costs[1]["flops_per_example"] > costs[0]["flops_per_example"]
    assert model_costs.PRESETS["two_conv_net"][2] == (32, 32, 3)


@pytest.mark.slow
def test_the_main_command_trains_over_every_device_like_on_one(tmp_path):
    """With 8 (simulated) devices the command trains data-parallel by default, says so,
    records 8 devices, and ends where the one-device run ends: the same batches, the
    batch mean split over devices (float32 reassociation only)."""
    data_dir = write_tiny_mnist(tmp_path / "mnist")
    tiny = ("--epochs=1", "--teacher_epochs=1", "--batch_size=32", f"--data_dir={data_dir}")
    one = run_command(*tiny, f"--workdir={tmp_path / 'one'}", "--devices=1", devices=8)
    eight = run_command(*tiny, f"--workdir={tmp_path / 'eight'}", devices=8)
    assert one.returncode == 0 and eight.returncode == 0, eight.stderr[-2000:]
    assert "data-parallel over 8 cpu devices" in eight.stdout
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    meshed = json.loads((tmp_path / "eight" / "results.json").read_text())
    assert meshed["environment"]["device_count"] == 8 and meshed["config"]["devices"] == 0
    for name in ("teacher", "student_kd", "student_scratch"):
        np.testing.assert_allclose(
            meshed["runs"][name]["history"][-1]["train_loss"],
            single["runs"][name]["history"][-1]["train_loss"],
            rtol=1e-4,
        )
        # 64 test images: a parameter wobble of 1e-6 may at most flip one answer.
        assert (
            abs(meshed["runs"][name]["test_accuracy"][0] - single["runs"][name]["test_accuracy"][0])
            <= 1 / 64 + 1e-9
        )
    bad = run_command(*tiny, f"--workdir={tmp_path / 'bad'}", "--batch_size=30", devices=8)
    assert bad.returncode == 1 and "does not divide over 8 devices" in bad.stderr


def test_mnist_kd_student_epochs_default_by_data_and_flag_wins():
    sample, full = (types.SimpleNamespace(source=s) for s in ("embedded-sample", "idx"))
    assert mnist_kd.student_epochs(mnist_kd.Config(), sample) == mnist_kd.SAMPLE_EPOCHS == 15
    assert mnist_kd.student_epochs(mnist_kd.Config(), full) == mnist_kd.FULL_DATA_EPOCHS == 3
    for data in (sample, full):  # a given --epochs means what it says
        assert mnist_kd.student_epochs(mnist_kd.Config(epochs=3), data) == 3


def test_mnist_kd_gain_is_paired_by_seed():
    kd = statistics.mean_std([0.95, 0.96, 0.94])
    scratch = statistics.mean_std([0.94, 0.955, 0.945])
    gain = mnist_kd.kd_gain(kd, scratch)
    assert gain["points_per_seed"] == pytest.approx([1.0, 0.5, -0.5])
    assert gain["kd_ahead"] == 2 and gain["seeds"] == 3
    assert gain["mean_points"] == pytest.approx(1 / 3, abs=1e-4)
    assert "2 of 3 seeds" in mnist_kd.describe_gain(gain)


def test_a_data_notice_is_printed_once_after_the_results(tmp_path, mnist_dir, monkeypatch, capsys):
    notice = "Using the EMBEDDED sample, not full MNIST."
    loaded = mnist_kd.mnist_setup.load_mnist(str(mnist_dir))
    monkeypatch.setattr(
        mnist_kd.mnist_setup,
        "load_mnist",
        lambda *args, **kwargs: dataclasses.replace(loaded, notice=notice),
    )
    dataset = mnist_kd.mnist_setup.load_data(mnist_kd.Config(workdir=str(tmp_path)))
    start = capsys.readouterr().out
    assert notice not in start and "see the NOTE after the results" in start
    report.print_report(["run"], [["x"]], notes=report.data_notes(dataset), footer="")
    assert capsys.readouterr().out.count(notice) == 1


def test_counts_agree_with_their_nouns():
    assert report.plural(1, "epoch") == "1 epoch" and report.plural(3, "epoch") == "3 epochs"
    assert report.plural(0, "seed") == "0 seeds" and report.plural(2, "x", "xs!") == "2 xs!"


def test_learning_curves_carry_the_spread_over_seeds_and_a_title_that_fits(tmp_path, monkeypatch):
    population = [
        {"epoch": 1, "test_accuracy": [0.5, 0.7]},
        {"epoch": 2, "test_accuracy": [0.8, 0.8]},
    ]
    curve = report.mean_history(population)
    assert [point["test_accuracy"] for point in curve] == pytest.approx([0.6, 0.8])
    assert [point["test_accuracy_std"] for point in curve] == pytest.approx([2**-0.5 / 5, 0.0])
    single = report.mean_history([{"epoch": 1, "test_accuracy": 0.9}])
    assert single == [{"epoch": 1, "test_accuracy": 0.9}]

    drawn = {}

    def keep(drawing, path):  # the figure as it would be saved
        drawn["figure"] = drawing
        return Path(path)

    monkeypatch.setattr(report, "save_figure", keep)
    title = "MNIST KD (T=3, alpha=0.7), embedded-sample, mean ± std of 3 students " * 2
    report.plot_learning_curves(tmp_path / "c.png", {"kd": curve, "teacher": single}, title)
    (axes,) = drawn["figure"].axes
    assert len(axes.collections) == 1  # one band: the population's, not the single run's
    lines = axes.get_title().splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= 6 * report.TITLE_CHARACTERS_PER_INCH
    assert " ".join(lines) == title.strip()
    import matplotlib.pyplot as plt

    plt.close(drawn["figure"])


def test_results_record_installed_versions_and_lock_differences():
    environment = results_file.environment()
    assert environment["installed"]["jax"] == environment["packages"]["jax"]
    lock = results_file.lock_file()
    assert lock == ROOT / "requirements.lock"
    pinned = dict(line.split("==", 1) for line in lock.read_text().splitlines() if "==" in line)
    assert {"jax", "jaxlib", "flax", "optax", "numpy"} <= set(pinned)
    installed = {name.lower(): version for name, version in pinned.items()}
    assert results_file.lock_differences(installed) == {}
    installed["jax"] = "0.0.1"
    del installed["numpy"]
    assert results_file.lock_differences(installed) == {
        "jax": [pinned["jax"], "0.0.1"],
        "numpy": [pinned["numpy"], None],
    }

"""The CIFAR method comparison: the spread rule, the cost per step, the pairs' protocols,
the training subset, and ``cifar10_kd`` on both pairs end to end on tiny image folders."""

from pathlib import Path

import numpy as np
import pytest
from test_experiments import write_tiny_cifar

from experiments import cifar10_kd, cifar_pairs
from kdjax.data import Dataset, Split
from kdjax.runs import execution, statistics


def _row(method, accuracies):
    return {"method": method, "accuracy": statistics.mean_std(accuracies)}


def test_a_gain_exceeds_the_spread_only_beyond_both_standard_deviations():
    rows = [
        _row("teacher", [0.9]),
        _row("kd", [0.70, 0.72, 0.74]),  # mean 0.72, std 0.02
        _row("at", [0.75, 0.76, 0.77]),  # +0.04 > 0.02 + 0.01
        _row("sp", [0.70, 0.73, 0.76]),  # +0.01 < 0.02 + 0.03
    ]
    verdicts = statistics.gains_over(rows, "kd")
    assert set(verdicts) == {"at", "sp"}
    assert verdicts["at"]["gain"] == pytest.approx(0.04)
    assert verdicts["at"]["spread"] == pytest.approx(0.03)
    assert verdicts["at"]["exceeds_spread"] and not verdicts["sp"]["exceeds_spread"]
    one_seed = [_row("kd", [0.7]), _row("at", [0.8])]
    assert statistics.gains_over(one_seed, "kd") == {}  # no spread, no verdict
    assert statistics.gains_over(rows, "ce") == {}  # no baseline


def test_the_cost_per_step_leaves_out_the_compiling_epoch_and_compares_with_ce():
    def entry(*seconds, compile_seconds=None, resumed=0):
        history = [{"seconds": value} for value in seconds]
        return {"history": history, "compile_seconds": compile_seconds,
                "resumed_from_epoch": resumed}  # fmt: skip

    runs = {
        "teacher": entry(9.0),
        "student_ce": entry(30.0, 10.0, 12.0, 10.0),  # median after the first: 10
        "student_kd": entry(32.0, compile_seconds=17.0),  # one epoch: 15 without compiling
        "student_at": entry(40.0, compile_seconds=5.0, resumed=1),  # reused: with compile
    }
    names = {"teacher": "teacher", "ce": "student_ce", "kd": "student_kd", "at": "student_at"}
    costs = statistics.step_costs(runs, names, steps_per_epoch=10)
    assert costs["ce"]["seconds_per_step"] == pytest.approx(1.0)
    assert costs["ce"]["train_seconds"] == 62.0
    assert costs["kd"]["seconds_per_step"] == pytest.approx(1.5)
    assert costs["kd"]["extra_over_baseline"] == pytest.approx(0.5)
    assert costs["at"]["with_compile"] and costs["at"]["seconds_per_step"] == pytest.approx(4.0)
    assert costs["ce"]["extra_over_baseline"] == 0.0
    assert costs["teacher"]["extra_over_baseline"] is None
    assert statistics.step_costs(runs, names, 10, baseline="kd")["ce"][
        "extra_over_baseline"
    ] == pytest.approx(1 / 1.5 - 1)


def test_a_shorter_run_keeps_the_learning_rate_drops_at_the_same_fractions():
    protocol = cifar_pairs.REPDISTILLER_PROTOCOL
    assert protocol.decay_epochs(240) == (150, 180, 210)
    assert protocol.decay_epochs(24) == (15, 18, 21)
    assert protocol.decay_epochs(2) == (1, 2)  # rounded, never before the first epoch
    assert cifar_pairs.NOTEBOOK_PROTOCOL.decay_epochs(10) == ()


def test_the_resnet_pair_uses_repdistillers_protocol_and_weights():
    config = cifar10_kd.Config(preset="resnet56_resnet20", epochs=3)
    assert config.run_epochs() == {"teacher": 240, "student": 3}
    protocol = config.training_protocol()
    assert (protocol.optimizer, protocol.learning_rate, protocol.batch_size) == ("sgd", 0.05, 64)
    assert (protocol.weight_decay, protocol.image_augment) == (5e-4, "crop_flip")
    assert cifar10_kd.method_weights(config, "kd") == {
        "temperature": 4.0, "hard_weight": 0.1, "soft_weight": 0.9,
    }  # fmt: skip
    assert cifar10_kd.method_weights(config, "hint")["soft_weight"] == 100.0
    notebook = cifar10_kd.Config(learning_rate=5e-4).training_protocol()
    assert (notebook.optimizer, notebook.learning_rate, notebook.epochs) == ("adam", 5e-4, 10)
    # The tutorial's nets under RepDistiller's protocol keep their own loss weights.
    long_tutorial = cifar10_kd.Config(preset="pytorch_tutorial", protocol="repdistiller")
    assert long_tutorial.training_protocol() == cifar_pairs.REPDISTILLER_PROTOCOL
    assert long_tutorial.run_epochs() == {"teacher": 240, "student": 240}
    assert cifar10_kd.method_weights(long_tutorial, "kd")["temperature"] == 2.0
    with pytest.raises(ValueError, match="--protocol must be one of"):
        cifar10_kd.Config(protocol="adamw")


def test_the_training_subset_is_a_fixed_random_draw_and_says_so():
    count = 50
    labels = np.repeat(np.arange(10, dtype=np.int32), count // 10)  # sorted by class
    images = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1).repeat(4, 1)
    split = Split(images.reshape(count, 2, 2, 1), labels, np.arange(count, dtype=np.int64) + 100)
    dataset = Dataset("toy", "test", "memory", split, split, 10)
    subset = cifar10_kd.training_subset(dataset, 20)
    again = cifar10_kd.training_subset(dataset, 20)
    np.testing.assert_array_equal(subset.train.ids, again.train.ids)
    assert len(subset.train) == 20 and len(set(subset.train.ids.tolist())) == 20
    assert np.all(np.diff(subset.train.ids) > 0)  # original order kept
    assert len(set(subset.train.labels.tolist())) > 5  # not the first classes only
    rows = subset.train.ids - 100
    np.testing.assert_array_equal(subset.train.labels, labels[rows])
    assert subset.test is dataset.test and "TRAINING SUBSET: 20 of the 50" in subset.notice
    assert cifar10_kd.training_subset(dataset, None) is dataset
    with pytest.raises(ValueError, match="exceeds the 50 training images"):
        cifar10_kd.training_subset(dataset, 51)


@pytest.mark.slow
def test_cifar10_kd_compares_methods_over_seeds_on_a_training_subset(tmp_path):
    pytest.importorskip("PIL")
    from kdjax.data.image_folder import CIFAR10_CLASSES

    data_dir = write_tiny_cifar(tmp_path / "cifar", classes=CIFAR10_CLASSES)
    config = cifar10_kd.Config(
        data_dir=str(data_dir), workdir=str(tmp_path / "work"), allow_partial=True,
        method=("ce", "kd"), seeds=2, epochs=1, teacher_epochs=1, batch_size=10,
        train_examples=30, tensorboard=False,
    )  # fmt: skip
    results = cifar10_kd.run(config)
    study = results["study"]
    assert results["config"]["train_examples"] == 30 and study["train_examples"] == 30
    assert results["data"]["train_examples"] == 30
    assert "TRAINING SUBSET: 30 of the 40" in results["data"]["notice"]
    assert study["gains_over_kd"].keys() == {"ce"} and study["gains_over_ce"].keys() == {"kd"}
    assert study["spread_rule"] == statistics.SPREAD_RULE
    assert set(study["costs"]) == {"teacher", "ce", "kd"}
    assert study["costs"]["kd"]["seconds_per_step"] > 0
    assert study["costs"]["kd"]["extra_over_baseline"] is not None
    assert [row["published"] for row in study["comparison"]] == [75.60, 70.41, 70.19]
    assert results["runs"]["student_kd"]["spec"]["temperature"] == 2.0  # the tutorial's KD


@pytest.mark.slow
def test_a_method_that_diverges_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from kdjax.data.image_folder import CIFAR10_CLASSES
    from kdjax.training.monitor import NonFiniteLossError

    trained = execution.train_run

    def hint_diverges(spec, *args, **kwargs):  # as the ResNet pair's hint at weight 100 did
        if spec.objective == "hint":
            raise NonFiniteLossError("student_hint: loss became nan at step 5 (epoch 1)")
        return trained(spec, *args, **kwargs)

    monkeypatch.setattr(execution, "train_run", hint_diverges)
    data_dir = write_tiny_cifar(tmp_path / "cifar", classes=CIFAR10_CLASSES)
    config = cifar10_kd.Config(
        data_dir=str(data_dir), workdir=str(tmp_path / "work"), allow_partial=True,
        method=("ce", "hint", "kd"), seeds=2, epochs=1, teacher_epochs=1, batch_size=10,
        tensorboard=False,
    )  # fmt: skip
    results = cifar10_kd.run(config)
    study = results["study"]
    assert study["diverged"] == {"hint": "student_hint: loss became nan at step 5 (epoch 1)"}
    assert [row["method"] for row in study["comparison"]] == ["teacher", "ce", "kd"]
    assert set(results["runs"]) == {"teacher", "student_ce", "student_kd"}


@pytest.mark.slow
def test_the_resnet_pair_trains_with_sgd_steps_crops_and_an_online_teacher(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from kdjax.data.image_folder import CIFAR100_CLASSES

    # The pair's protocol and methods with resnet8s in place of resnet56 and resnet20.
    pair = {**cifar_pairs.PRESETS["resnet56_resnet20"]}
    pair.update(teacher=("resnet8", {}), student=("resnet8", {}))
    monkeypatch.setitem(cifar10_kd.PRESETS, "resnet56_resnet20", pair)
    data_dir = write_tiny_cifar(tmp_path / "cifar100", per_class=5, classes=CIFAR100_CLASSES[:4])
    config = cifar10_kd.Config(
        data_dir=str(data_dir), workdir=str(tmp_path / "work"), allow_partial=True,
        preset="resnet56_resnet20", dataset="cifar100", method=("ce", "kd", "hint", "crd"),
        seeds=2, epochs=2, teacher_epochs=1, batch_size=10, tensorboard=False,
    )  # fmt: skip
    results = cifar10_kd.run(config)
    runs = results["runs"]
    for name in ("teacher", "student_ce", "student_kd"):
        spec = runs[name]["spec"]
        assert spec["optimizer"] == "sgd" and spec["weight_decay"] == 5e-4
        assert spec["lr_schedule"] == "step" and spec["image_augment"] == "crop_flip"
        assert spec["model_settings"] == {"num_classes": 100}
        assert spec["input_mean"] == list(cifar_pairs.DATASET_NORMALISATION["cifar100"][0])
    assert runs["student_kd"]["spec"]["lr_decay_epochs"] == [1, 2]
    assert runs["student_kd"]["spec"]["teacher_mode"] == "online"
    assert "teacher_mode" not in runs["student_ce"]["spec"]
    assert not (Path(runs["teacher"]["run_dir"]) / "soft_targets").exists()  # nothing stored
    for name in ("student_hint", "student_crd"):
        assert np.isfinite(runs[name]["history"][-1]["train_loss"]).all()
    published = {row["method"]: row["published"] for row in results["study"]["comparison"]}
    assert published == {"teacher": 72.34, "ce": 69.06, "kd": 70.66, "hint": 69.21, "crd": 71.16}


@pytest.mark.slow
def test_every_repdistiller_method_runs_on_the_resnet_pair(tmp_path, monkeypatch):
    """The methods as RepDistiller trains them (every stage, initialisation stages,
    CRD + KD), on resnet8s and a tiny folder: each finishes with a finite loss."""
    pytest.importorskip("PIL")
    from kdjax.data.image_folder import CIFAR10_CLASSES

    pair = {**cifar_pairs.PRESETS["resnet56_resnet20"]}
    pair.update(teacher=("resnet8", {}), student=("resnet8", {}))
    monkeypatch.setitem(cifar10_kd.PRESETS, "resnet56_resnet20", pair)
    data_dir = write_tiny_cifar(tmp_path / "cifar", per_class=2, classes=CIFAR10_CLASSES)
    methods = ("hint", "vid", "ab", "fsp", "ft", "crd+kd")  # AT and DKD: other tests
    config = cifar10_kd.Config(
        data_dir=str(data_dir), workdir=str(tmp_path / "work"), allow_partial=True,
        preset="resnet56_resnet20", method=methods, epochs=1, teacher_epochs=1, batch_size=10,
        tensorboard=False, method_settings=("crd.negatives=8",),
    )  # fmt: skip
    results = cifar10_kd.run(config)
    assert results["study"]["diverged"] == {}
    runs = results["runs"]
    for method in methods:
        assert np.isfinite(runs[f"student_{method}"]["history"][-1]["train_loss"]).all()
    spec = runs["student_hint"]["spec"]
    assert spec["method_settings"] == {"hint": {"layer": "stage2", "regressor": "conv_bn_relu"}}
    assert runs["student_crd+kd"]["spec"]["method_settings"]["kd"] == {
        "weight": 1.0,
        "temperature": 4.0,
    }
    # AB, FSP and FT trained their initialisation stage first, in runs of their own.
    for method in ("ab", "fsp", "ft"):
        assert len(list((tmp_path / "work").glob(f"student_{method}_init-*"))) == 1

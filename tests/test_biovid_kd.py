"""experiments.biovid_kd end to end on tiny hand-written BioVid folders: folds trained
together and scored per fold, the distillation study's fold-by-fold stored logits,
the results file and plots, and a bad file reported as one line by the command."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import biovid_kd
from kdjax.data import Split
from kdjax.data.signals import CHANNELS, level_errors
from kdjax.training import metrics

LENGTH = 256
SUBJECTS = ("071309_w_21", "072414_m_23", "080314_w_25", "081014_w_27")
CLASSES = ("BL1", "PA1", "PA2", "PA3", "PA4")


def _write_set(root: Path, windows_per_class: int = 3) -> Path:
    """Per-subject folders with the database's file names; the GSR (and every other
    channel) carries a response whose height grows with the level."""
    rng = np.random.default_rng(0)
    time = np.arange(LENGTH) / 512
    for subject in SUBJECTS:
        (root / subject).mkdir(parents=True)
        for level, name in enumerate(CLASSES):
            for number in range(windows_per_class):
                response = level * np.exp(-(((time - 0.25) / 0.05) ** 2))
                columns = {"time": time}
                for channel in CHANNELS:
                    columns[channel] = 2 + response + 0.05 * rng.standard_normal(LENGTH)
                lines = ["\t".join(columns)]
                lines += ["\t".join(f"{columns[c][i]:.4f}" for c in columns) for i in range(LENGTH)]
                file = root / subject / f"{subject}-{name}-{level * 10 + number:03d}_bio.csv"
                file.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _write_set(tmp_path_factory.mktemp("biovid"))


def _config(tmp_path, data_dir, **fields):
    defaults = dict(workdir=str(tmp_path / "work"), data_dir=str(data_dir), epochs=1,
                    batch_size=8, folds=2, plots=False)  # fmt: skip
    return biovid_kd.Config(**{**defaults, **fields})


@pytest.mark.slow
def test_folds_train_together_and_are_scored_on_their_own_test_windows(tmp_path, data_dir):
    document = biovid_kd.run(_config(tmp_path, data_dir, cv="subject", plots=True))
    table = document["study"]["cv"]
    folds = table["cv_subject"]["per_fold"]
    assert [fold["test_examples"] for fold in folds] == [30, 30]  # 2 subjects × 15 windows
    assert np.sum(table["cv_subject"]["confusion_matrix"]) == 60
    assert sum(np.sum(table["holdout_subject"]["confusion_matrix"], 1)) == 15  # 1 of 4 subjects
    assert table["cv_subject"]["accuracy"]["each"] == [fold["accuracy"] for fold in folds]
    # The loop's own held-out accuracy per student is the accuracy scored here.
    run = document["runs"]["cv_subject"]
    assert run["test_accuracy"] == pytest.approx([fold["accuracy"] for fold in folds], abs=1e-6)
    assert run["parameters"] == 47_301  # SignalCNN, one channel, five classes
    assert document["data"]["notice"] is None and document["data"]["samples"] == 60
    for plot in ("confusion.png", "fold_accuracy.png", "signals.png"):
        assert (tmp_path / "work" / plot).stat().st_size > 1000
    saved = json.loads((tmp_path / "work" / "results.json").read_text())
    assert saved["study"]["cv"]["cv_subject"]["per_fold"] == folds


@pytest.fixture(scope="module")
def random_folds_arm(tmp_path_factory, data_dir):
    """``(data, fold_list, arm)``: SignalCNN on the GSR, two random folds trained together."""
    config = _config(tmp_path_factory.mktemp("arm"), data_dir, cv="random", holdout=False)
    data = biovid_kd.load_data(config, ("gsr",))
    fold_list = biovid_kd.make_folds(data.signals, "random", 2, 0)
    arm = biovid_kd.Study(config, data).train(
        "cv_random", "signal_cnn", biovid_kd.columns(data, ("gsr",)), fold_list
    )
    return data, fold_list, arm


def test_scores_equal_the_metrics_of_each_fold_predicted_alone(random_folds_arm):
    data, fold_list, arm = random_folds_arm
    for index, (_, test) in enumerate(fold_list):
        outputs = arm["model"].apply(
            arm["result"].member_variables(index), data.signals.signals[test]
        )
        predicted = np.argmax(np.asarray(outputs["logits"]), -1)
        labels = data.signals.labels[test]
        fold = arm["scores"]["per_fold"][index]
        assert fold["accuracy"] == pytest.approx(np.mean(predicted == labels))
        assert fold["mae"] == pytest.approx(np.mean(np.abs(predicted - labels)))
        assert fold["macro_f1"] == pytest.approx(
            metrics.f1_score(labels, predicted, average="macro")
        )
        assert fold["rmse"] == pytest.approx(level_errors(labels, predicted)["rmse"])


def test_stacked_folds_give_each_student_its_own_copy_of_its_rows():
    images = np.arange(10, dtype=np.float32).reshape(10, 1, 1)
    split = Split(images, np.arange(10, dtype=np.int32) % 2, np.arange(10, dtype=np.int64) + 3)
    fold_list = [(np.array([0, 1, 2]), np.array([3])), (np.array([1, 5]), np.array([0]))]
    stacked, rows = biovid_kd.Study.stack(split, fold_list)
    assert [r.tolist() for r in rows] == [[0, 1, 2], [3, 4]]
    assert stacked.images[:, 0, 0].tolist() == [0, 1, 2, 1, 5]
    assert len(set(stacked.ids.tolist())) == 5  # row 1 appears twice under two ids


@pytest.mark.slow
def test_distillation_study_on_a_two_class_task(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, study="kd", task="bl1_vs_pa4", cv="random",
                     large_teacher_model="signal_cnn")  # fmt: skip
    document = biovid_kd.run(config)
    table = document["study"]["kd"]
    assert set(document["runs"]) == {
        "teacher_all", "teacher_large_gsr", "student_scratch", "student_kd_all",
        "student_kd_large",
    }  # fmt: skip
    assert document["runs"]["teacher_all"]["spec"]["channels"] == 5
    assert document["runs"]["student_kd_all"]["spec"]["channels"] == 1
    assert np.shape(table["teacher_all"]["confusion_matrix"]) == (2, 2)
    pairs = zip(
        table["student_kd_all"]["per_fold"], table["student_scratch"]["per_fold"], strict=True
    )
    gains = [kd["accuracy"] - scratch["accuracy"] for kd, scratch in pairs]
    assert table["kd_gain_all"]["accuracy"]["each"] == pytest.approx(gains)
    # The distilled student read a different teacher than the large pair's.
    assert (
        document["runs"]["student_kd_all"]["spec"]["teacher"]
        != document["runs"]["student_kd_large"]["spec"]["teacher"]
    )


@pytest.mark.slow
def test_online_fold_teachers_train_the_students_the_stored_logits_train(tmp_path, data_dir):
    """--teacher_mode=online: fold i's teacher runs in student i's step (the student
    reading the GSR column of the five channels), and the students equal those of
    the stored mode (same batches; teacher logits computed in or out of the step)."""
    arms = {}
    for mode in ("stored", "online"):
        config = _config(tmp_path / mode, data_dir, study="kd", task="bl1_vs_pa4",
                         cv="random", epochs=2, large_teacher_model="signal_cnn",
                         teacher_mode=mode)  # fmt: skip
        data = biovid_kd.load_data(config, tuple(CHANNELS))
        study = biovid_kd.Study(config, data)
        biovid_kd.kd_study(study, data.signals)
        arms[mode] = study.arms
    assert arms["online"]["student_kd_all"]["identity"]["teacher_mode"] == "online"
    assert "teacher_mode" not in arms["stored"]["student_kd_all"]["identity"]
    for name in ("student_kd_all", "student_kd_large"):
        stored, online = arms["stored"][name], arms["online"][name]
        for index in range(2):
            a, b = (arm["result"].member_variables(index) for arm in (stored, online))
            for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_allclose(leaf_a, leaf_b, rtol=1e-4, atol=1e-5)
        assert online["scores"]["per_fold"] == stored["scores"]["per_fold"]


def test_stored_logits_come_from_the_teacher_of_the_same_fold(tmp_path, data_dir):
    config = _config(tmp_path, data_dir, cv="random")
    data = biovid_kd.load_data(config, tuple(CHANNELS))
    study = biovid_kd.Study(config, data)
    fold_list = biovid_kd.make_folds(data.signals, "random", 2, 0)
    teacher = study.train("teacher", "signal_cnn", biovid_kd.columns(data, CHANNELS), fold_list)
    logits = study.stored_logits(teacher, fold_list)
    first = len(fold_list[0][0])
    for index, part in enumerate((logits[:first], logits[first:])):
        variables = teacher["result"].member_variables(index)
        expected = teacher["model"].apply(variables, data.signals.signals[fold_list[index][0]])
        np.testing.assert_allclose(part, np.asarray(expected["logits"]), rtol=1e-4, atol=1e-5)


def test_a_bad_file_is_one_error_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad" / "071309_w_21"
    bad.mkdir(parents=True)
    (bad / "071309_w_21-BL1-001_bio.csv").write_text("time\tgsr\n0.0\tnot-a-number\n")
    completed = subprocess.run(
        [sys.executable, "-m", "experiments.biovid_kd", f"--data_dir={bad.parent}",
         f"--workdir={tmp_path / 'work'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "071309_w_21-BL1-001_bio.csv" in last
    assert "Traceback" not in completed.stderr


def test_bad_flags_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--channels must be among"):
        biovid_kd.Config(workdir=str(tmp_path), channels=("pulse",))
    with pytest.raises(ValueError, match="--folds must be >= 2"):
        biovid_kd.Config(workdir=str(tmp_path), folds=1)


@pytest.mark.slow
def test_without_data_dir_the_synthetic_stand_in_is_written_once_and_announced(tmp_path, capsys):
    config = biovid_kd.Config(workdir=str(tmp_path / "work"), synthetic_subjects=2,
                              synthetic_samples_per_class=1, cv="random", folds=2, epochs=1,
                              batch_size=2, holdout=False, plots=False)  # fmt: skip
    document = biovid_kd.run(config)
    assert document["data"]["notice"] == biovid_kd.SYNTHETIC_NOTICE
    assert document["data"]["source"] == "kdjax.data.biovid_synthetic"
    assert "SYNTHETIC DATA" in capsys.readouterr().out
    written = sorted((tmp_path / "work" / "cache").glob("synthetic-biovid-*/*/*.csv.gz"))
    assert len(written) == 10 and document["data"]["channels"] == ["gsr"]
    before = [path.stat().st_mtime_ns for path in written]
    biovid_kd.run(config)  # reuses the files and the finished run
    assert [path.stat().st_mtime_ns for path in written] == before


def test_load_run_restores_a_biovid_arm(random_folds_arm):
    """A BioVid arm is a train_run run like any other: load_run reads it back, one
    student per fold, and each predicts what the arm scored."""
    from kdjax.runs import load_run

    data, fold_list, arm = random_folds_arm
    run = load_run(arm["result"].run_dir, member=1)
    test = fold_list[1][1]
    predicted = np.argmax(run.predict(data.signals.signals[test]), -1)
    assert np.mean(predicted == data.signals.labels[test]) == pytest.approx(
        arm["scores"]["per_fold"][1]["accuracy"]
    )

"""Run specs and run directories: identities, teachers (stored and online) and
restoring a finished run with its preprocessing."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import Dataset, Split
from kdjax.distill.teachers import Teacher
from kdjax.runs import load_run, run_directory, run_identity, train_run
from kdjax.runs.spec import RunSpec
from kdjax.store.run_config import write_config
from kdjax.training.recipe import check_settings, preprocess_of, schedule_of

QUIET = {"log": lambda message: None}
MLP_SMALL = {"model": "mlp", "model_settings": {"hidden_sizes": (32,)}}


def _dataset(train=128, test=64) -> Dataset:
    def split(count, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, count).astype(np.int32)
        images = rng.integers(0, 40, (count, 12, 12, 1)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, label + 1, 2:10, 0] = 255
        return Split(images, labels, np.arange(count, dtype=np.int64))

    return Dataset("stripes", "test", "memory", split(train, 0), split(test, 1), 10)


def test_run_names_do_not_change_for_runs_without_the_new_regularisers():
    plain = RunSpec(role="teacher", model="conv_net")
    assert "translate_pixels" not in plain.identity() and "max_norm" not in plain.identity()
    jittered = RunSpec(role="teacher", model="conv_net", translate_pixels=2, max_norm=3.0)
    assert jittered.identity()["translate_pixels"] == 2
    assert jittered.identity()["max_norm"] == 3.0
    with pytest.raises(ValueError, match="max_norm"):
        RunSpec(role="teacher", model="conv_net", max_norm=0.0)


def test_a_decaying_schedule_puts_the_epoch_count_in_the_run_name():
    constant = RunSpec(role="s", model="mlp", epochs=3)
    assert "epochs" not in constant.identity() and "lr_schedule" not in constant.identity()
    assert schedule_of(constant, 1000) is None
    cosine = RunSpec(role="s", model="mlp", epochs=3, lr_schedule="cosine")
    assert cosine.identity()["epochs"] == 3
    longer = RunSpec(role="s", model="mlp", epochs=4, lr_schedule="cosine")
    assert longer.identity() != cosine.identity()
    factor = schedule_of(cosine, 1280)  # 3 epochs × 10 steps of 128
    assert float(factor(jnp.asarray(30))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        RunSpec(role="s", model="mlp", lr_schedule="linear")


def test_a_run_directory_accepts_its_own_settings_with_tuples(tmp_path):
    config = {"input_mean": (0.485, 0.456, 0.406), "seed": (1, 2), "name": "x"}
    write_config(tmp_path, config)
    write_config(tmp_path, dict(config))  # tuples are stored as JSON lists: still the same
    with pytest.raises(ValueError, match=r"different settings \(seed\)"):
        write_config(tmp_path, {**config, "seed": (1, 3)})


def test_identity_is_role_model_and_every_field_off_its_default():
    spec = RunSpec(role="student", model="mlp", temperature=4.0, hard_weight=0.5)
    assert spec.identity() == {
        "role": "student",
        "model": "mlp",
        "temperature": 4.0,
        "hard_weight": 0.5,
    }
    assert RunSpec.from_identity({**spec.identity(), "data": "abc"}) == spec
    population = RunSpec(role="s", model="mlp", seed=(1, 2), temperature=(1.0, 2.0))
    assert RunSpec.from_identity(population.identity()) == population


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": float("inf")}, "temperature must be finite"),
        ({"temperature": (1.0, float("inf"))}, "temperature must be finite"),
        ({"temperature": (1.0, 2e6)}, r"temperature must be <= 1e\+06 \(kdjax.losses.MAX_TEMP"),
        ({"soft_weight": -1.0}, "soft_weight must be finite and >= 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"seed": -5}, "seeds must be >= 0"),
        ({"teacher_mode": "cached"}, "teacher_mode must be one of"),
        ({"objective": "kld"}, "unknown objective"),
        ({"image_augment": "jitter"}, "image_augment must be one of"),
        ({"image_augment": "symmetries", "objective": "kd"}, "needs teacher_mode='online'"),
    ],
)
def test_bad_settings_are_refused_before_any_work(settings, message):
    """Values are checked when the spec is made, names against their registries by
    check_settings (which train_run calls first)."""
    with pytest.raises(ValueError, match=message):
        check_settings(RunSpec(role="s", model="mlp", **settings))


def test_a_finished_run_restores_with_its_preprocessing_from_a_relative_path(tmp_path, monkeypatch):
    dataset = _dataset()
    spec = RunSpec(role="s", epochs=2, batch_size=32, input_mean=30.0, input_std=60.0,
                   **MLP_SMALL)  # fmt: skip
    result = train_run(spec, dataset, tmp_path, **QUIET)
    monkeypatch.chdir(tmp_path)
    run = load_run(result.run_dir.name)  # relative to the current directory
    assert run.spec == spec and run.epoch == 2
    chex.assert_trees_all_close(run.variables, jax.device_get(result.variables))
    # Raw uint8 pixels in, the run's own normalisation applied: the run's accuracy.
    logits = run.predict(dataset.test.images)
    accuracy = float(np.mean(np.argmax(logits, -1) == dataset.test.labels))
    assert accuracy == pytest.approx(result.test_accuracy[0], abs=1e-9)
    assert run.accuracy(dataset.test) == pytest.approx(result.test_accuracy[0], abs=1e-9)
    with pytest.raises(FileNotFoundError, match="not a kdjax run directory"):
        load_run(tmp_path / "nowhere")


def test_one_student_of_a_population_restores_alone(tmp_path):
    dataset = _dataset()
    spec = RunSpec(role="pop", epochs=1, batch_size=32, seed=(3, 4), **MLP_SMALL)
    result = train_run(spec, dataset, tmp_path, **QUIET)
    second = load_run(result.run_dir, member=1)
    assert second.accuracy(dataset.test) == pytest.approx(result.test_accuracy[1], abs=1e-9)


def test_online_and_stored_teachers_train_the_same_student_without_augmentation(tmp_path):
    """The online teacher runs in the step on the batch the student sees; without
    augmentation that batch's stored rows are the same outputs, so the two students
    end alike (to float32 noise: the teacher's forward pass is fused differently)."""
    dataset = _dataset()
    teacher_spec = RunSpec(role="teacher", epochs=2, batch_size=32,
                           model="mlp", model_settings={"hidden_sizes": (64,)})  # fmt: skip
    teacher_result = train_run(teacher_spec, dataset, tmp_path, **QUIET)
    teacher = Teacher(teacher_spec, teacher_result.variables, teacher_result.run_dir)
    student = dict(objective="kd", temperature=3.0, hard_weight=0.5, soft_weight=0.5,
                   epochs=2, batch_size=32, **MLP_SMALL)  # fmt: skip
    stored = train_run(RunSpec(role="stored", **student), dataset, tmp_path, teacher=teacher,
                       **QUIET)  # fmt: skip
    online_spec = RunSpec(role="online", teacher_mode="online", **student)
    online = train_run(online_spec, dataset, tmp_path, teacher=teacher, **QUIET)
    assert online_spec.identity()["teacher_mode"] == "online"
    chex.assert_trees_all_close(online.params, stored.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [e["train_loss"] for e in online.history],
        [e["train_loss"] for e in stored.history],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="needs a teacher"):
        train_run(RunSpec(role="orphan", **student), dataset, tmp_path, **QUIET)


def test_the_teacher_fingerprint_and_data_name_the_student_run(tmp_path):
    dataset = _dataset()
    spec = RunSpec(role="s", **MLP_SMALL)
    first = Teacher(spec, {"params": {"w": np.zeros(3)}}, tmp_path)
    second = Teacher(spec, {"params": {"w": np.ones(3)}}, tmp_path)
    assert run_directory(tmp_path, spec, run_identity(spec, dataset, first)) != run_directory(
        tmp_path, spec, run_identity(spec, dataset, second)
    )
    other_data = _dataset(train=96)
    assert run_identity(spec, dataset, None) != run_identity(spec, other_data, None)


def test_a_second_process_on_the_same_run_waits_for_the_first(tmp_path):
    """train_run holds the run directory's lock: while another process holds it, a
    second one says whom it waits for, then goes on (here: trains the run)."""
    import subprocess
    import sys
    import textwrap

    dataset = _dataset()
    spec = RunSpec(role="locked", epochs=1, batch_size=32, **MLP_SMALL)
    run_dir = run_directory(tmp_path, spec, run_identity(spec, dataset, None))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from kdjax.store.locking import run_lock
            with run_lock({str(run_dir)!r}):
                print("held", flush=True)
                time.sleep(3)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        messages = []
        result = train_run(spec, dataset, tmp_path, log=messages.append)
        assert result.run_dir == run_dir and len(result.history) == 1
        assert any(str(holder.pid) in message for message in messages), messages
    finally:
        holder.wait(timeout=30)


def test_a_spec_reads_its_input_channels_and_a_population_teacher_teaches_one_per_student():
    spec = RunSpec(role="s", model="signal_cnn", model_settings={"num_classes": 5},
                   input_channels=(2,), input_scale=1.0, seed=(0, 1))  # fmt: skip
    inputs = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(preprocess_of(spec)(inputs), inputs[..., [2]])
    assert "input_channels" not in RunSpec(role="s", model="mlp").identity()
    teachers = Teacher(spec, {"params": {"w": np.zeros((2, 3))}}, Path("unused"))
    assert teachers.online().per_member and teachers.model.num_classes == 5
    with pytest.raises(ValueError, match="one teacher per student"):
        teachers.outputs(_dataset())

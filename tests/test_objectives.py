"""Objectives that combine methods, each with its settings and warm-up, reading any
layer of any Flax model (kdjax.distill.objectives, kdjax.distill.methods,
kdjax.models.taps), and the README's any-layer example, executed."""

import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax.data import Dataset, Split
from kdjax.distill.methods import get_method
from kdjax.distill.objectives import get_objective, make_hyperparams
from kdjax.distill.teachers import Teacher
from kdjax.models import get_model, taps
from kdjax.models.heads import FTHead, HintHead, StudentWithHead
from kdjax.runs import RunSpec, train_run
from kdjax.store.checkpoints import load_state
from kdjax.training import OnlineTeacher, create_state, make_optimizer
from kdjax.training.recipe import check_settings, hyperparams_of, training_of
from kdjax.training.step import make_train_step

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_any_layer_blocks() -> tuple[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    example = [i for i, block in enumerate(blocks) if 'get_objective("at+kd"' in block]
    assert len(example) == 1, "the README shows one any-layer example"
    return blocks[example[0] - 1], blocks[example[0]]


def test_the_readme_any_layer_example_runs_in_at_most_15_lines():
    models, example = _readme_any_layer_blocks()
    assert len([line for line in example.splitlines() if line.strip()]) <= 15
    namespace: dict = {"__name__": "readme"}
    exec(compile(models + example, "README any-layer example", "exec"), namespace)
    grads = namespace["grads"]
    # Attention transfer reaches the student's Conv_0 through the loss.
    assert float(jnp.abs(grads["Conv_0"]["kernel"]).sum()) > 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))
    student = taps.apply(namespace["Student"](), namespace["student_vars"],
                         namespace["images"], taps=("Conv_0",))  # fmt: skip
    assert student["Conv_0"].shape == (16, 32, 32, 8) and student["logits"].shape == (16, 10)


def _outputs(seed, batch=8, classes=10):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "logits": jax.random.normal(keys[0], (batch, classes)),
        "features": jax.random.normal(keys[1], (batch, 24)),
        "stage?": (jax.random.normal(keys[2], (batch, 8, 8, 4)),) * 2,
    }


def test_a_combined_objective_is_ce_plus_the_weighted_sum_of_its_parts():
    student, teacher = _outputs(0), _outputs(1)
    labels = jnp.arange(8) % 10
    objective = get_objective("kd+dist+at+pkt", {"kd": {"temperature": 3.0, "weight": 0.7}})
    batch = {"labels": labels, **objective.teacher_batch(teacher)}
    total, parts = objective(student, batch, {"hard_weight": 0.25})
    expected = 0.25 * losses.cross_entropy(student["logits"], labels)
    expected += 0.7 * losses.distillation_kl(student["logits"], teacher["logits"], temperature=3.0)
    expected += 1.0 * losses.dist_loss(student["logits"], teacher["logits"], temperature=4.0)
    expected += 1000.0 * losses.attention_transfer_loss(student["stage?"], teacher["stage?"])
    expected += 30000.0 * losses.pkt_loss(student["features"], teacher["features"])
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert set(parts) == {"hard_loss", "kd_loss", "dist_loss", "at_loss", "pkt_loss"}
    # Each part is its method's own objective's soft term.
    for method in ("kd", "dist", "pkt"):
        single = get_objective(method, {"kd": {"temperature": 3.0}} if method == "kd" else None)
        _, own = single(student, {"labels": labels, **single.teacher_batch(teacher)}, {})
        np.testing.assert_allclose(parts[f"{method}_loss"], own["soft_loss"], rtol=1e-6)


def test_a_warm_up_starts_at_zero_and_reaches_the_full_weight():
    student, teacher = _outputs(0), _outputs(1)
    labels = jnp.arange(8) % 10
    objective = get_objective("dkd", {"dkd": {"warmup_epochs": 2.0, "beta": 2.0}})
    objective = objective.with_steps_per_epoch(10)
    batch = {"labels": labels, **objective.teacher_batch(teacher)}
    hyper = make_hyperparams(learning_rate=0.1, temperature=4.0, hard_weight=1.0, soft_weight=1.0)
    hard = losses.cross_entropy(student["logits"], labels)
    term = losses.dkd_loss(student["logits"], teacher["logits"], labels, beta=2.0)
    for step, factor in ((0, 0.0), (10, 0.5), (20, 1.0), (500, 1.0)):
        total, _ = objective(student, batch, hyper, step=jnp.asarray(step))
        np.testing.assert_allclose(total, hard + factor * term, rtol=1e-5, atol=1e-6)


def test_traced_settings_come_from_the_hyperparameters():
    student, teacher = _outputs(0), _outputs(1)
    batch = {"labels": jnp.arange(8) % 10, **get_objective("kd+dkd").teacher_batch(teacher)}
    objective = get_objective("kd+dkd", {"dkd": {"warmup_epochs": 0.0}})
    base, _ = objective(student, batch, {})
    swept = jax.jit(lambda beta: objective(student, batch, {"dkd.beta": beta})[0])
    assert not np.allclose(swept(jnp.float32(2.0)), base)
    np.testing.assert_allclose(swept(jnp.float32(8.0)), base, rtol=1e-6)
    # One method alone reads the step's soft_weight and temperature.
    kd = get_objective("kd")
    one, _ = kd(student, batch, {"soft_weight": 0.5, "temperature": 2.0, "hard_weight": 0.0})
    direct = losses.distillation_kl(student["logits"], teacher["logits"], temperature=2.0)
    np.testing.assert_allclose(one, 0.5 * direct, rtol=1e-6)


def test_bad_objectives_and_settings_are_refused_with_what_is_known():
    with pytest.raises(ValueError, match="unknown objective 'kd\\+nope'.*unknown method 'nope'"):
        get_objective("kd+nope")
    with pytest.raises(ValueError, match="each once"):
        get_objective("kd+kd")
    with pytest.raises(ValueError, match="no setting 'negative'.*negatives"):
        get_objective("crd", {"crd": {"negative": 3}})
    with pytest.raises(ValueError, match="settings for 'at'"):
        get_objective("kd", {"at": {"weight": 1.0}})


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv_a")(x))
        self.sow("intermediates", "stage1", x)
        x = nn.Conv(4, (3, 3), name="conv_b")(x)
        self.sow("intermediates", "stage2", x)
        return {"logits": nn.Dense(3)(x.mean((1, 2)))}


def test_taps_read_outputs_sown_values_and_any_submodule():
    model, x = _Tiny(), jnp.ones((2, 6, 6, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    out = taps.apply(model, variables, x, taps=("stage?", "conv_b", "stage2", "logits"))
    assert len(out["stage?"]) == 2 and out["stage?"][1] is out["stage2"]
    np.testing.assert_allclose(out["conv_b"], out["stage2"])  # captured == sown
    with pytest.raises(ValueError, match="no output or intermediate named 'conv_c'.*stage1"):
        taps.apply(model, variables, x, taps=("conv_c",))
    with pytest.raises(ValueError, match="several"):
        taps.select({}, {"a": {"x": (1,)}, "b": {"x": (2,)}}, ("x",))
    natural = taps.select({}, {f"s{i}": (i,) for i in (10, 2, 1)}, ("s*",))["s*"]
    assert [int(v) for v in natural] == [1, 2, 10]


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("resnet8", {"stem": 16, "stage1": 16, "stage2": 32, "stage3": 64, "stage3_preact": 64}),
        ("four_conv_net", {"stage1": 64, "stage2": 32}),
        ("two_conv_net", {"stage1": 16, "stage2": 16}),
        ("resnet50v2", {"stage1": 256, "stage2": 512, "stage3": 1024, "stage4": 2048}),
        ("mobilenetv2", {"stage1": 16, "stage2": 24, "stage3": 32, "stage4": 96, "stage5": 320}),
    ],
)
def test_the_built_in_networks_sow_their_stages(name, shapes):
    model, x = get_model(name), jnp.ones((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    out = jax.eval_shape(lambda v: taps.apply(model, v, x, taps=tuple(shapes)), variables)
    assert {tap: out[tap].shape[-1] for tap in shapes} == shapes
    if name.endswith("conv_net"):
        assert out["stage2"].shape == out["feature_map"].shape


def _images(count=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (count, 32, 32, 3)).astype(np.uint8), np.arange(count) % 4


@pytest.mark.parametrize(
    ("objective", "settings"),
    [
        ("hint", {"hint": {"layer": "stage2", "regressor": "conv_bn_relu"}}),
        ("vid", {}),
        ("crd+kd", {"crd": {"negatives": 3}}),
        ("cc+at", {}),
        ("ab+ft", {}),  # their initialisation stage (see the spec's phase below)
    ],
)
def test_methods_with_heads_train_a_step_from_an_online_teacher(objective, settings):
    """The student's stages, its heads and the teacher's stages meet in one step."""
    images, labels = _images()
    teacher_model = get_model("four_conv_net")
    teacher_vars = teacher_model.init(jax.random.PRNGKey(1), images[:1] / np.float32(255))
    phase = "init" if objective == "ab+ft" else "main"
    spec = RunSpec("student", "two_conv_net", objective=objective, method_settings=settings,
                   phase=phase, teacher_mode="online", batch_size=8)  # fmt: skip
    check_settings(spec)
    teacher = OnlineTeacher(teacher_model, teacher_vars, lambda x: x / np.float32(255))
    training = training_of(spec, len(images), teacher=teacher, train_labels=labels)
    batch = {"images": images, "labels": labels, "rows": np.arange(8), "ids": np.arange(8)}
    sample = {"teacher": {k[8:]: v for k, v in teacher.outputs(teacher_vars, images[:1],
              training.objective.teacher_outputs).items()}, "rows": np.arange(1)}  # fmt: skip
    state = create_state(training.model, training.optimizer,
                         training.preprocess(images[:1]), 0, init_inputs=sample)  # fmt: skip
    step = jax.jit(make_train_step(training.model, training.objective, training.optimizer,
                                   training.preprocess, teacher=teacher))  # fmt: skip
    new_state, metrics = step(state, batch, hyperparams_of(spec), teacher.context())
    assert np.isfinite(float(metrics["loss"]))
    assert "head" in new_state.params and "intermediates" not in new_state.model_state
    if objective == "ab+ft":  # several methods' heads, each under its method's name
        assert set(new_state.params["head"]) == {"ab", "ft"}


def test_specs_refuse_what_their_objective_cannot_do():
    with pytest.raises(ValueError, match="read online"):
        check_settings(RunSpec("s", "two_conv_net", objective="at"))
    with pytest.raises(ValueError, match="combines methods"):
        check_settings(RunSpec("s", "mlp", objective="kd+dist", soft_weight=0.5))
    spec = RunSpec("s", "mlp", objective="kd+dist", seed=(0, 1),
                   method_settings={"kd": {"weight": (0.5, 0.9)}})  # fmt: skip
    np.testing.assert_allclose(hyperparams_of(spec)["kd.weight"], [0.5, 0.9])
    assert spec.identity()["method_settings"] == {"kd": {"weight": [0.5, 0.9]}}
    with pytest.raises(ValueError, match="kd.weight has 3 values for 2"):
        RunSpec(
            "s", "mlp", objective="kd", seed=(0, 1), method_settings={"kd": {"weight": (1, 2, 3)}}
        )


def test_the_initialisation_terms_are_the_papers_losses_without_the_labels():
    rng = np.random.default_rng(0)
    maps = [jnp.asarray(rng.normal(size=(4, 8, 8, c)), jnp.float32) for c in (4, 4, 8)]
    teacher = [m * 1.5 + 0.1 for m in maps]
    fsp = get_objective("fsp", phase="init")
    assert fsp.teacher_outputs == ("stem|stage?",)
    total, parts = fsp(
        {"stem|stage?": tuple(maps)}, fsp.teacher_batch({"stem|stage?": teacher}), {}
    )
    np.testing.assert_allclose(total, losses.fsp_loss(maps, teacher), rtol=1e-6)
    ab = get_objective("ab", {"ab": {"margin": 0.5}}, phase="init")
    outputs = {"ab_connected": tuple(maps), "stage*_preact": tuple(maps)}
    total, _ = ab(outputs, ab.teacher_batch({"stage*_preact": teacher}), {})
    expected = losses.activation_boundary_loss(maps, teacher, margin=0.5)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    # In the main phase AB and FSP add nothing: the student trains on the labels.
    logits = jnp.asarray(rng.normal(size=(4, 10)), jnp.float32)
    labels = jnp.arange(4)
    main, parts = get_objective("ab+fsp")({"logits": logits}, {"labels": labels}, {})
    np.testing.assert_allclose(main, losses.cross_entropy(logits, labels), rtol=1e-6)
    assert get_objective("ab+fsp").teacher_outputs == () and get_objective("hint").init_epochs == 0
    # FitNets' two-stage option: the hint alone first, then CE + hint.
    fitnets = get_objective("hint", {"hint": {"init_epochs": 2}}, phase="init")
    assert fitnets.init_epochs == 2 and fitnets.teacher_outputs == ("feature_map",)
    outputs = {"hint": maps[2], "feature_map": maps[2], "logits": logits}
    batch = {"labels": labels, **fitnets.teacher_batch({"feature_map": teacher[2]})}
    total, _ = fitnets(outputs, batch, {})
    hint = losses.hint_loss(maps[2], teacher[2])
    np.testing.assert_allclose(total, hint, rtol=1e-6)
    main, _ = fitnets.in_phase("main")(outputs, batch, {})
    np.testing.assert_allclose(main, losses.cross_entropy(logits, labels) + total, rtol=1e-6)


def _cifar_like(count=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 4).astype(np.int32)
    images = rng.integers(0, 255, (count, 32, 32, 3)).astype(np.uint8)
    return Split(images, labels, np.arange(count, dtype=np.int64))


def test_factor_transfer_trains_its_paraphraser_first_then_the_student_beside_it(tmp_path):
    """FT: the initialisation run trains the paraphraser alone (the student untouched);
    the main run starts from it, trains the student and keeps the paraphraser."""
    dataset, teacher, teacher_vars, sample = _tiny_pair(tmp_path)
    spec = RunSpec("student", "two_conv_net", model_settings={"num_classes": 4}, objective="ft",
                   soft_weight=200.0, teacher_mode="online", batch_size=8, epochs=1,
                   method_settings={"ft": {"init_epochs": 1}})  # fmt: skip
    result = train_run(spec, dataset, tmp_path / "runs", teacher=teacher, log=lambda m: None)
    first = load_run_variables(tmp_path / "runs", "student_init")
    model = StudentWithHead(get_model("two_conv_net", num_classes=4), FTHead())
    fresh = create_state(model, make_optimizer(), sample, 0, init_inputs=_ft_inputs(teacher_vars))
    same = jax.tree.map(np.array_equal, fresh.params["student"], first["student"])
    assert all(jax.tree.leaves(same)), "the initialisation stage left the student as it was"
    moved = jax.tree.map(np.array_equal, fresh.params["head"]["paraphraser"],
                         first["head"]["paraphraser"])  # fmt: skip
    assert not all(jax.tree.leaves(moved)), "the paraphraser trained"
    final = result.variables["params"]
    kept = jax.tree.map(np.array_equal, final["head"]["paraphraser"], first["head"]["paraphraser"])
    assert all(jax.tree.leaves(kept)), "the main run keeps the paraphraser frozen"
    changed = jax.tree.map(np.array_equal, final["student"], first["student"])
    assert not all(jax.tree.leaves(changed)), "the main run trains the student"
    config = (result.run_dir / "config.json").read_text()
    assert "initial_variables" in config and '"method_revisions"' not in config


def _tiny_pair(tmp_path):
    """A 4-class CIFAR-like data set and an untrained online 4-conv teacher."""
    dataset = Dataset("tiny", "test", "memory", _cifar_like(), _cifar_like(8, 1), 4)
    teacher_spec = RunSpec("teacher", "four_conv_net", model_settings={"num_classes": 4})
    sample = np.zeros((1, 32, 32, 3), np.float32)
    teacher_vars = get_model("four_conv_net", num_classes=4).init(jax.random.PRNGKey(3), sample)
    return dataset, Teacher(teacher_spec, teacher_vars, tmp_path / "teacher"), teacher_vars, sample


def _ft_inputs(teacher_vars):
    model = get_model("four_conv_net", num_classes=4)
    outputs = model.apply(teacher_vars, np.zeros((1, 32, 32, 3), np.float32))
    return {"teacher": {"feature_map": outputs["feature_map"]}, "rows": np.arange(1)}


def load_run_variables(workdir, role):
    (run_dir,) = Path(workdir).glob(f"{role}-*")
    return load_state(run_dir, log=lambda m: None)[0]["params"]


def test_a_stored_teacher_serves_any_of_its_layers(tmp_path):
    """A student reads a teacher layer no output names (an MLP's first Dense, captured
    by its path) from the teacher's store."""
    rng = np.random.default_rng(0)
    train = Split(rng.integers(0, 255, (32, 6, 6, 1)).astype(np.uint8),
                  (np.arange(32) % 3).astype(np.int32), np.arange(32))  # fmt: skip
    dataset = Dataset("tiny", "test", "memory", train, train, 3)
    teacher_spec = RunSpec(
        "teacher", "mlp", model_settings={"hidden_sizes": (16,), "num_classes": 3}
    )
    variables = get_model("mlp", hidden_sizes=(16,), num_classes=3).init(
        jax.random.PRNGKey(0), np.zeros((1, 6, 6, 1), np.float32)
    )
    teacher = Teacher(teacher_spec, variables, tmp_path / "teacher")
    spec = RunSpec("student", "mlp", model_settings={"hidden_sizes": (8,), "num_classes": 3},
                   objective="cosine", soft_weight=1.0, epochs=1, batch_size=8,
                   method_settings={"cosine": {"teacher_layer": "hidden0"}})  # fmt: skip
    result = train_run(spec, dataset, tmp_path / "runs", teacher=teacher, log=lambda m: None)
    stored = np.load(tmp_path / "teacher" / "soft_targets" / "train-hidden0.npz")
    assert stored["hidden0"].shape == (32, 16)
    assert np.isfinite(result.history[-1]["train_loss"]).all()


def test_cifar10_kd_reads_method_settings_and_combinations():
    from experiments import cifar10_kd
    from experiments.cifar_pairs import method_weights, parse_settings

    assert parse_settings(["crd.negatives=4096", "at.layer=stage3", "crd.class_aware=false"]) == {
        "crd.negatives": 4096, "at.layer": "stage3", "crd.class_aware": False,
    }  # fmt: skip
    with pytest.raises(ValueError, match="method.setting=value"):
        parse_settings(["negatives=4096"])
    config = cifar10_kd.Config(method=("kd", "at+kd"), method_settings=("kd.weight=0.5",))
    assert config.methods() == ["kd", "at+kd"]
    assert method_weights(config, "kd")["soft_weight"] == 0.5  # one method: its soft_weight
    combined = method_weights(config, "at+kd")["method_settings"]
    assert combined == {"at": {"weight": 1000.0}, "kd": {"weight": 0.5, "temperature": 2.0}}
    with pytest.raises(ValueError, match="combinations of them joined with \\+"):
        cifar10_kd.Config(method=("kd+nope",))
    # FSP cannot pair the notebooks' nets (16 against 64 channels): compare leaves it out.
    assert "fsp" not in cifar10_kd.Config(method=("compare",)).methods()
    assert "fsp" in cifar10_kd.Config(method=("compare",), preset="resnet56_resnet20").methods()


def test_fitnets_first_stage_trains_the_layers_up_to_the_hint_and_its_regressor(tmp_path):
    """FitNets' two-stage option (``hint.init_epochs``): the initialisation run moves
    the convolutions and the regressor, not the classifier past the hinted maps."""
    dataset, teacher, teacher_vars, sample = _tiny_pair(tmp_path)
    spec = RunSpec("student", "two_conv_net", model_settings={"num_classes": 4}, objective="hint",
                   teacher_mode="online", batch_size=8, epochs=1,
                   method_settings={"hint": {"init_epochs": 1}})  # fmt: skip
    train_run(spec, dataset, tmp_path / "runs", teacher=teacher, log=lambda m: None)
    first = load_run_variables(tmp_path / "runs", "student_init")
    hint_settings = get_method("hint").settings()
    model = StudentWithHead(get_model("two_conv_net", num_classes=4), HintHead.of(hint_settings))
    fresh = create_state(model, make_optimizer(), sample, 0, init_inputs=_ft_inputs(teacher_vars))
    same = jax.tree.map(np.array_equal, fresh.params, first)
    assert all(jax.tree.leaves(same["student"]["fc1"])), "the classifier gets no gradient"
    assert all(jax.tree.leaves(same["student"]["fc2"]))
    for part in (same["student"]["conv1"], same["student"]["conv2"], same["head"]):
        assert not any(jax.tree.leaves(part)), "the hinted layers and the regressor train"

"""The CIFAR-10 nets of the CIFAR-10 CNN notebook and the PyTorch KD tutorial, and the
cosine and hint objectives against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import FourConvNet, TwoConvNet, count_params, get_model
from kdjax.models.heads import HintHead, StudentWithHead, deployed_variables

IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)


def _init(model):
    return model.init(jax.random.PRNGKey(0), IMAGES[:1])["params"]


@pytest.mark.parametrize(
    ("name", "settings", "expected"),
    [
        ("four_conv_net", {}, 1_186_986),  # the CIFAR-10 CNN notebook's count
        ("four_conv_net", {"dropout": 0.1}, 1_186_986),  # dropout adds no parameters
        ("two_conv_net", {}, 267_738),  # the CIFAR-10 CNN notebook's count
        ("two_conv_net", {"dropout": 0.1}, 267_738),
    ],
)
def test_cifar_parameter_counts_match_the_seeds(name, settings, expected):
    shapes = jax.eval_shape(lambda: _init(get_model(name, **settings)))  # no values drawn
    assert count_params(shapes) == expected


def _hint_student(teacher_map):
    """The PyTorch KD tutorial's regressor student: the hint method's head beside the student."""
    model = StudentWithHead(TwoConvNet(dropout=0.1), HintHead())
    teacher = {"feature_map": teacher_map}
    variables = model.init(jax.random.PRNGKey(0), IMAGES[:1],
                           teacher={"feature_map": teacher_map[:1]})  # fmt: skip
    return model, variables, teacher


def test_the_hint_student_has_the_tutorials_regressor():
    teacher = FourConvNet()
    t = teacher.apply({"params": _init(teacher)}, IMAGES)
    model, variables, teacher_outputs = _hint_student(t["feature_map"])
    # The student's own 267,738 plus the 16→32 3×3 regressor's 4,640.
    assert count_params(variables["params"]["student"]) == 267_738
    assert count_params(variables["params"]["head"]) == 16 * 32 * 9 + 32
    s = model.apply(variables, IMAGES, teacher=teacher_outputs)
    assert t["logits"].shape == (3, 10) and s["logits"].shape == (3, 10)
    assert t["features"].shape == (3, 2048) and s["features"].shape == (3, 1024)
    assert t["feature_map"].shape == (3, 8, 8, 32)
    assert s["hint"].shape == t["feature_map"].shape
    assert "hint" not in model.apply(variables, IMAGES)  # evaluation: the student alone


def test_features_are_flattened_in_pytorch_channel_first_order():
    teacher = FourConvNet()
    outputs = teacher.apply({"params": _init(teacher)}, IMAGES)
    feature_map = np.asarray(outputs["feature_map"])  # NHWC
    expected = feature_map.transpose(0, 3, 1, 2).reshape(3, -1)  # torch.flatten of NCHW
    np.testing.assert_array_equal(np.asarray(outputs["features"]), expected)


def test_the_regressor_does_not_change_the_classifier():
    teacher_map = np.ones((3, 8, 8, 32), np.float32)
    model, variables, teacher_outputs = _hint_student(teacher_map)
    deployed = deployed_variables(variables)
    np.testing.assert_allclose(
        TwoConvNet(dropout=0.1).apply(deployed, IMAGES)["logits"],
        model.apply(variables, IMAGES, teacher=teacher_outputs)["logits"],
    )


def test_dropout_variants_are_deterministic_at_evaluation_only():
    model = get_model("two_conv_net", dropout=0.1)
    params = _init(model)
    a = model.apply({"params": params}, IMAGES)["logits"]
    b = model.apply({"params": params}, IMAGES)["logits"]
    np.testing.assert_array_equal(a, b)
    rngs = {"dropout": jax.random.PRNGKey(3)}
    trained = model.apply({"params": params}, IMAGES, train=True, rngs=rngs)["logits"]
    assert not np.allclose(trained, a)


# --- Objectives against numpy ------------------------------------------------------------


def _np_cross_entropy(logits, labels):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def _batch_and_outputs(rng, student_dim=8, teacher_dim=16):
    outputs = {
        "logits": rng.normal(size=(4, 10)).astype(np.float32),
        "features": rng.normal(size=(4, student_dim)).astype(np.float32),
        "hint": rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
    }
    batch = {
        "labels": rng.integers(0, 10, 4).astype(np.int32),
        "teacher_features": rng.normal(size=(4, teacher_dim)).astype(np.float32),
        "teacher_feature_map": rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
    }
    return outputs, batch


def test_cosine_objective_matches_numpy():
    rng = np.random.default_rng(1)
    outputs, batch = _batch_and_outputs(rng)
    hyper = make_hyperparams(learning_rate=1e-3, hard_weight=0.75, soft_weight=0.25)
    loss, parts = OBJECTIVES["cosine"](outputs, batch, hyper)
    # avg_pool1d(kernel 2) of the teacher's 16 features: mean of adjacent pairs.
    pooled = batch["teacher_features"].reshape(4, 8, 2).mean(-1)
    s = outputs["features"]
    cosine = (s * pooled).sum(-1) / np.sqrt((s * s).sum(-1) * (pooled * pooled).sum(-1))
    ce = _np_cross_entropy(outputs["logits"], batch["labels"])
    np.testing.assert_allclose(parts["soft_loss"], 1 - cosine, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, 0.75 * ce + 0.25 * (1 - cosine), rtol=1e-5, atol=1e-6)


def test_hint_objective_matches_numpy():
    rng = np.random.default_rng(2)
    outputs, batch = _batch_and_outputs(rng)
    hyper = make_hyperparams(learning_rate=1e-3, hard_weight=0.75, soft_weight=0.25)
    loss, parts = OBJECTIVES["hint"](outputs, batch, hyper)
    mse = ((outputs["hint"] - batch["teacher_feature_map"]) ** 2).reshape(4, -1).mean(-1)
    ce = _np_cross_entropy(outputs["logits"], batch["labels"])
    np.testing.assert_allclose(parts["soft_loss"], mse, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.75 * ce + 0.25 * mse, rtol=1e-5)
    # The batch mean is PyTorch's nn.MSELoss() over the whole batch.
    np.testing.assert_allclose(
        float(jnp.mean(parts["soft_loss"])),
        ((outputs["hint"] - batch["teacher_feature_map"]) ** 2).mean(),
        rtol=1e-5,
    )


def test_the_hint_objective_brings_its_regressor_as_a_head():
    assert OBJECTIVES["hint"].head is not None
    assert isinstance(OBJECTIVES["hint"].head(100), HintHead)


def test_pool_features_matches_avg_pool1d_and_rejects_uneven_sizes():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    np.testing.assert_allclose(losses.pool_features(x, 6), x.reshape(2, 6, 2).mean(-1))
    np.testing.assert_allclose(losses.pool_features(x, 12), x)
    with pytest.raises(ValueError, match="not a multiple"):
        losses.pool_features(x, 5)


def test_pool_features_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).normal(size=(5, 2048)).astype(np.float32)
    want = torch.nn.functional.avg_pool1d(torch.from_numpy(x), 2).numpy()
    np.testing.assert_allclose(losses.pool_features(x, 1024), want, rtol=1e-6, atol=1e-6)

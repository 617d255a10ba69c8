"""SGD with momentum and weight decay under a step schedule — RepDistiller's CIFAR
protocol — against PyTorch's SGD and MultiStepLR, and the RunSpec fields that ask
for it."""

import dataclasses

import jax
import numpy as np
import pytest

from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import MLP
from kdjax.runs.spec import RunSpec
from kdjax.training import create_state, make_optimizer, make_train_step, step_decay
from kdjax.training.recipe import schedule_of


def test_step_decay_counts_the_boundaries_reached():
    factor = step_decay([3, 6], 0.1)
    got = [float(factor(np.int32(step))) for step in range(8)]
    np.testing.assert_allclose(got, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    assert float(step_decay([], 0.1)(np.int32(100))) == 1.0


def test_sgd_with_momentum_weight_decay_and_steps_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 2, 2, 1)).astype(np.uint8)
    labels = rng.integers(0, 3, 8).astype(np.int32)
    model = MLP(hidden_sizes=(), num_classes=3)  # one dense layer
    optimizer = make_optimizer("sgd", momentum=0.9, weight_decay=5e-2)
    state = create_state(model, optimizer, np.float32(images[:1] / 255.0), seed=0)
    step = jax.jit(
        make_train_step(
            model,
            OBJECTIVES["ce"],
            optimizer,
            lambda x: x / 255.0,
            schedule=step_decay([3, 6], 0.1),
        )
    )
    linear = torch.nn.Linear(4, 3)
    linear.weight.data = torch.from_numpy(np.array(state.params["head"]["kernel"]).T.copy())
    linear.bias.data = torch.from_numpy(np.array(state.params["head"]["bias"]))
    reference = torch.optim.SGD(linear.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-2)
    schedule = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[3, 6], gamma=0.1)
    inputs = torch.from_numpy(images.reshape(8, 4) / 255.0).float()
    batch = {"images": images, "labels": labels}
    for _ in range(8):
        state, _ = step(state, batch, make_hyperparams(learning_rate=0.5), {})
        reference.zero_grad()
        torch.nn.functional.cross_entropy(
            linear(inputs), torch.from_numpy(labels).long()
        ).backward()
        reference.step()
        schedule.step()
    np.testing.assert_allclose(
        state.params["head"]["kernel"], linear.weight.detach().numpy().T, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        state.params["head"]["bias"], linear.bias.detach().numpy(), atol=1e-6
    )


def test_a_step_schedule_counts_its_epochs_in_steps_as_repdistiller_does():
    spec = RunSpec(role="s", model="resnet20", optimizer="sgd", batch_size=64,
                   lr_schedule="step", lr_decay_epochs=(2, 3), lr_decay_rate=0.1)  # fmt: skip
    factor = schedule_of(spec, train_examples=640 + 63)  # 10 steps per epoch, the rest dropped
    for epoch in range(5):  # RepDistiller: rate ** sum(epoch (1-based) > decay epochs)
        expected = 0.1 ** np.sum(epoch + 1 > np.asarray([2, 3]))
        for step in (10 * epoch, 10 * epoch + 9):
            assert float(factor(np.int32(step))) == pytest.approx(expected, rel=1e-6)


def test_step_schedule_fields_are_checked_and_name_the_run_without_its_epochs():
    spec = RunSpec(role="s", model="resnet20", epochs=5, optimizer="sgd", weight_decay=5e-4,
                   lr_schedule="step", lr_decay_epochs=(3, 4))  # fmt: skip
    identity = spec.identity()
    assert identity["lr_decay_epochs"] == [3, 4] and identity["weight_decay"] == 5e-4
    assert "epochs" not in identity  # more epochs continue the run
    assert RunSpec.from_identity(identity) == dataclasses.replace(spec, epochs=3)
    for fields, message in [
        ({"lr_decay_epochs": (3,)}, "need lr_schedule='step'"),
        ({"lr_schedule": "step"}, "lr_decay_epochs must be increasing"),
        ({"lr_schedule": "step", "lr_decay_epochs": (4, 3)}, "lr_decay_epochs must be increasing"),
        ({"lr_schedule": "step", "lr_decay_epochs": (3,), "lr_decay_rate": 0.0}, "lr_decay_rate"),
        ({"weight_decay": -1.0}, "weight_decay must be finite and >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            RunSpec(role="s", model="resnet20", **fields)

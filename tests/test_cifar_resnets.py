"""RepDistiller's CIFAR ResNets: parameter counts by hand and against an independent
PyTorch implementation, the same function as PyTorch's with the same weights (in
training and in evaluation), and BatchNorm statistics trained and then used."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.distill.objectives import OBJECTIVES, make_hyperparams
from kdjax.models import count_params, get_model
from kdjax.models.cifar_resnets import CIFAR_RESNET_DEPTHS
from kdjax.training import create_state, make_optimizer, make_train_step

IMAGES = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)


def hand_count(depth: int, num_classes: int) -> int:
    """Parameters of a CIFAR ResNet counted from its description: convolutions without
    bias, two BatchNorm parameters per channel, a 1×1 projection + BN where a stage
    changes width, a dense classifier."""
    blocks = (depth - 2) // 6
    total = 3 * 3 * 3 * 16 + 2 * 16  # stem conv and BN
    channels_in = 16
    for channels in (16, 32, 64):
        for _ in range(blocks):
            total += (
                9 * channels_in * channels + 2 * channels + 9 * channels * channels + 2 * channels
            )
            if channels_in != channels:
                total += channels_in * channels + 2 * channels
            channels_in = channels
    return total + 64 * num_classes + num_classes


def _params(name, num_classes=10):
    model = get_model(name, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), IMAGES[:1]))
    return shapes


@pytest.mark.parametrize("depth", CIFAR_RESNET_DEPTHS)
def test_parameter_counts_match_the_architecture(depth):
    for classes in (10, 100):
        assert count_params(_params(f"resnet{depth}", classes)["params"]) == hand_count(
            depth, classes
        )


def test_the_published_sizes_of_resnet20_and_resnet56():
    # RepDistiller's CIFAR-100 table: resnet20 0.28M, resnet56 0.86M (0.27M / 0.86M
    # with CIFAR-10's ten classes).
    assert count_params(_params("resnet20")["params"]) == 272_474
    assert count_params(_params("resnet56")["params"]) == 855_770
    assert round(count_params(_params("resnet20", 100)["params"]) / 1e6, 2) == 0.28
    assert round(count_params(_params("resnet56", 100)["params"]) / 1e6, 2) == 0.86


def _torch_resnet(torch, depth, num_classes):
    """An independent PyTorch CIFAR ResNet (He et al. 2016 with projection shortcuts)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, channels_in, channels, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = None
            if stride != 1 or channels_in != channels:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                    nn.BatchNorm2d(channels),
                )

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, layers, channels_in = (depth - 2) // 6, [], 16
            for stage, channels in enumerate((16, 32, 64)):
                for index in range(blocks):
                    stride = 2 if stage > 0 and index == 0 else 1
                    layers.append(Block(channels_in, channels, stride))
                    channels_in = channels
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.layers(torch.relu(self.bn(self.conv(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def _load_into_torch(torch, net, variables):
    """Copies Flax variables (HWIO kernels, NHWC) into the PyTorch net (OIHW)."""
    params, stats = variables["params"], variables["batch_stats"]

    def conv(module, kernel):
        module.weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())

    def norm(module, name, scope_params, scope_stats):
        module.weight.data = torch.from_numpy(np.array(scope_params[name]["scale"]))
        module.bias.data = torch.from_numpy(np.array(scope_params[name]["bias"]))
        module.running_mean.data = torch.from_numpy(np.array(scope_stats[name]["mean"]))
        module.running_var.data = torch.from_numpy(np.array(scope_stats[name]["var"]))

    conv(net.conv, params["stem_conv"]["kernel"])
    norm(net.bn, "stem_bn", params, stats)
    names = sorted(
        (k for k in params if k.startswith("stage")), key=lambda k: (k[5], int(k.split("block")[1]))
    )
    for block, name in zip(net.layers, names, strict=True):
        p, s = params[name], stats[name]
        conv(block.conv1, p["conv1"]["kernel"])
        conv(block.conv2, p["conv2"]["kernel"])
        norm(block.bn1, "bn1", p, s)
        norm(block.bn2, "bn2", p, s)
        if block.shortcut is not None:
            conv(block.shortcut[0], p["shortcut_conv"]["kernel"])
            norm(block.shortcut[1], "shortcut_bn", p, s)
    net.fc.weight.data = torch.from_numpy(np.asarray(params["fc"]["kernel"]).T.copy())
    net.fc.bias.data = torch.from_numpy(np.array(params["fc"]["bias"]))


@pytest.mark.parametrize(("depth", "classes"), [(20, 10), (56, 100)])
def test_an_independent_pytorch_implementation_has_as_many_parameters(depth, classes):
    torch = pytest.importorskip("torch")
    net = _torch_resnet(torch, depth, classes)
    torch_count = sum(p.numel() for p in net.parameters())
    assert torch_count == count_params(_params(f"resnet{depth}", classes)["params"])


def test_resnet8_computes_what_pytorch_computes_in_training_and_evaluation():
    torch = pytest.importorskip("torch")
    model = get_model("resnet8")
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), IMAGES[:1])
    # Running statistics away from their initial values, so evaluation has to use them.
    rng = np.random.default_rng(2)
    variables["batch_stats"] = jax.tree.map(
        lambda leaf: jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32),
        variables["batch_stats"],
    )
    net = _torch_resnet(torch, 8, 10)
    _load_into_torch(torch, net, variables)
    images_nchw = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())

    net.eval()
    with torch.no_grad():
        expected = net(images_nchw).numpy()
    evaluate = jax.jit(model.apply)
    np.testing.assert_allclose(evaluate(variables, IMAGES)["logits"], expected, atol=2e-4)

    net.train()  # batch statistics in the forward pass, running averages updated
    with torch.no_grad():
        expected = net(images_nchw).numpy()
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    outputs, updated = train(variables, IMAGES)
    np.testing.assert_allclose(outputs["logits"], expected, atol=2e-4)
    np.testing.assert_allclose(
        updated["batch_stats"]["stem_bn"]["mean"], net.bn.running_mean.numpy(), atol=1e-5
    )


def test_batch_statistics_are_updated_in_training_and_used_in_evaluation():
    model, optimizer = get_model("resnet8"), make_optimizer("sgd")
    state = jax.jit(lambda x: create_state(model, optimizer, x, seed=0))(IMAGES[:1])
    batch = {"images": IMAGES * 40 + 128, "labels": np.arange(4, dtype=np.int32)}
    step = jax.jit(make_train_step(model, OBJECTIVES["ce"], optimizer, lambda x: x / 255.0))
    hyper = make_hyperparams(learning_rate=0.05)
    trained = state
    for _ in range(3):
        trained, _ = step(trained, batch, hyper, {})
    moved = jax.tree.map(
        lambda new, old: not np.allclose(new, old),
        trained.model_state["batch_stats"],
        state.model_state["batch_stats"],
    )
    assert all(jax.tree.leaves(moved))  # every layer's running mean and variance
    variables = {"params": trained.params, **trained.model_state}
    images = batch["images"] / 255.0
    # Evaluation normalises with the running averages: an image's logits do not depend
    # on the batch it comes in; in training they do (the batch's own statistics).
    evaluate = jax.jit(model.apply)
    alone = evaluate(variables, images[:1])["logits"]
    np.testing.assert_allclose(evaluate(variables, images)["logits"][:1], alone, atol=1e-5)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    in_training, _ = train(variables, images)
    assert not np.allclose(in_training["logits"][:1], alone, atol=1e-3)

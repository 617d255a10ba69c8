"""The benchmark's PyTorch backbones are the Flax ones: same parameter counts, and the
same function once the Flax weights are copied over."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.torch_backbones import NETWORKS, keras_parameter_count  # noqa: E402
from kdjax.models.backbones import backbone, keras_preprocess  # noqa: E402

NOTOP = {"resnet50v2": 23_564_800, "mobilenetv2": 2_257_984}
HEAD_INPUTS = {"resnet50v2": 2048, "mobilenetv2": 1280}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_parameter_counts_equal_keras(name):
    model = NETWORKS[name](num_classes=2)
    assert keras_parameter_count(model) == NOTOP[name] + HEAD_INPUTS[name] * 2 + 2


def _copy_flax_weights(torch_model, variables):
    params, stats = variables["params"], variables["batch_stats"]
    with torch.no_grad():
        for layer_name, module in torch_model.layers.items():
            weights = {k: np.array(v) for k, v in params[layer_name].items()}
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.from_numpy(weights["scale"]))
                module.bias.copy_(torch.from_numpy(weights["bias"]))
                module.running_mean.copy_(torch.from_numpy(np.array(stats[layer_name]["mean"])))
                module.running_var.copy_(torch.from_numpy(np.array(stats[layer_name]["var"])))
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.from_numpy(weights["kernel"].T.copy()))
                module.bias.copy_(torch.from_numpy(weights["bias"]))
            else:  # HWIO (depthwise: [h, w, 1, C]) → OIHW
                kernel = weights["kernel"].transpose(3, 2, 0, 1).copy()
                module.weight.copy_(torch.from_numpy(kernel))
                if module.bias is not None:
                    module.bias.copy_(torch.from_numpy(weights["bias"]))


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("mobilenetv2", 33), ("resnet50v2", 32)])
def test_torch_network_computes_the_flax_function(name, size):
    flax_model = backbone(name, num_classes=2)
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.float32)
    inputs = keras_preprocess(images)
    variables = jax.jit(flax_model.init)(jax.random.key(0), inputs)
    # Random BatchNorm statistics, so inference-mode normalisation is exercised.
    rng = np.random.default_rng(1)
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(
            lambda leaf: rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32),
            variables["batch_stats"],
        ),
    }
    expected = np.asarray(flax_model.apply(variables, inputs)["logits"])
    torch_model = NETWORKS[name](num_classes=2).eval()
    _copy_flax_weights(torch_model, variables)
    with torch.no_grad():
        actual = torch_model(torch.from_numpy(np.array(inputs)).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())

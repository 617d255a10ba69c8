"""Model cost report: XLA's FLOP counts against hand counts, and the command."""

import jax
import jax.numpy as jnp

from kdjax.models import MLP, SmallConvNet
from kdjax.models.costs import forward_flops, model_cost


def _variables(model):
    """Zeros of the model's variable shapes: XLA's FLOP count reads shapes, not values."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)


def test_mlp_flops_match_a_hand_count():
    # 2 FLOPs per multiply-add, one add per bias, one max per ReLU.
    macs = 784 * 200 + 200 * 200 + 200 * 10
    elementwise = (200 + 200 + 10) + (200 + 200)
    model = MLP(hidden_sizes=(200, 200))
    assert forward_flops(model, _variables(model), (28, 28, 1)) == 2 * macs + elementwise


def test_small_conv_net_flops_match_a_hand_count():
    # A 3×3 kernel with padding 1 on 28×28 has (3·28 − 2)² = 6,724 in-image taps
    # per channel pair (XLA does not count taps on the zero padding).
    taps = (3 * 28 - 2) ** 2
    macs = taps * 1 * 8 + taps * 8 * 16 + 3136 * 32 + 32 * 10
    elementwise = (
        2 * 28 * 28 * 8  # conv1 bias + ReLU
        + 2 * 28 * 28 * 16  # conv2 bias + ReLU
        + 3 * 14 * 14 * 16  # 2×2 max-pool: 3 comparisons per output
        + 2 * 32  # fc1 bias + ReLU
        + 10  # fc2 bias
    )
    model = SmallConvNet()
    assert forward_flops(model, _variables(model), (28, 28, 1)) == 2 * macs + elementwise


def test_teacher_costs_more_than_student_and_throughput_is_measured():
    teacher, student = (
        model_cost("conv_net", (28, 28, 1), measure_seconds=0.2),
        model_cost("small_conv_net", (28, 28, 1), measure_seconds=0.2),
    )
    assert teacher["flops_per_example"] > 3 * student["flops_per_example"]
    assert teacher["parameters"] == 421_642 and student["parameters"] == 101_962
    assert student["inference_examples_per_second"] > 0

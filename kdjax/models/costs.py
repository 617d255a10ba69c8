"""What a model costs: parameters, FLOPs per example and measured inference speed.

FLOPs come from XLA's cost analysis of the inference forward pass compiled for the
CPU (``jit(...).lower(...).compile().cost_analysis()``), divided by the batch size.
XLA counts a multiply-add as 2 FLOPs, counts only the kernel taps that land on
real (non-padded) pixels, and includes bias adds, ReLUs and pooling comparisons;
``tests/test_costs.py`` checks that against a hand count for StudentNet and an MLP.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from kdjax.models import count_params, get_model


def _forward(model):
    from kdjax.training.compiler import jit  # as kdjax compiles its own programs

    return jit(lambda variables, images: model.apply(variables, images)["logits"])


def forward_flops(model, variables, image_shape: tuple[int, ...], batch_size: int = 128) -> float:
    """FLOPs per example of the inference forward pass, by XLA's cost analysis.

    Always analysed for the CPU: on a GPU, XLA hands convolutions to cuDNN as custom
    calls that its cost analysis does not count (measured: a tenth of StudentNet's
    FLOPs on an H200), so a GPU count would be far too low for convolutional nets.
    """
    cpu = jax.devices("cpu")[0]
    variables = jax.device_put(variables, cpu)
    images = jax.device_put(jnp.zeros((batch_size, *image_shape), jnp.float32), cpu)
    analysis = _forward(model).lower(variables, images).compile().cost_analysis()
    if isinstance(analysis, list):  # older JAX returns one dict per device program
        analysis = analysis[0]
    return float(analysis["flops"]) / batch_size


def inference_throughput(
    model, variables, image_shape: tuple[int, ...], batch_size: int = 1000, seconds: float = 2.0
) -> float:
    """Examples per second of the jitted forward pass (compilation excluded)."""
    forward = _forward(model)
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch_size, *image_shape))
    forward(variables, images).block_until_ready()
    calls, start = 0, time.perf_counter()
    while True:
        forward(variables, images).block_until_ready()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch_size / elapsed


def model_cost(
    name: str,
    image_shape: tuple[int, ...],
    *,
    settings: dict | None = None,
    measure_seconds: float = 2.0,
) -> dict:
    """Parameters, FLOPs per example and inference examples/s of a registry model."""
    model = get_model(name, **(settings or {}))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
    return {
        "model": name,
        "settings": dict(settings or {}),
        "parameters": count_params(variables["params"]),
        "flops_per_example": forward_flops(model, variables, image_shape),
        "inference_examples_per_second": round(
            inference_throughput(model, variables, image_shape, seconds=measure_seconds), 1
        ),
        "backend": jax.default_backend(),
    }

"""Parameters, FLOPs per example and inference throughput of the experiments' networks.

    python -m experiments.model_costs --models=conv_net,small_conv_net,mlp_800_dropout,mlp_200

``--models`` names networks of :data:`PRESETS`: the teachers, assistants and
students of the experiment commands (registry model and settings), each measured on
the images it is trained on (MNIST 28×28×1, CIFAR-10 32×32×3). The TensorFlow
notebook reports identical FLOPs for its teacher and its student; this table counts them from the
compiled forward pass (XLA cost analysis) instead. Writes ``results.json`` in the
workdir (the networks under ``"study": {"models": [...]}``). From Python::

    from experiments import model_costs
    results = model_costs.run(model_costs.Config(models=("mlp_200",), measure_seconds=0.5))
"""

from __future__ import annotations

import dataclasses
import time

from experiments import cifar10_kd, hinton_mnist, mnist_kd, mnist_takd, report
from kdjax.models.costs import model_cost
from kdjax.runs.cli import CommonConfig, command, finite, option, positive

MNIST_IMAGE = (28, 28, 1)
CIFAR_IMAGE = (32, 32, 3)
# name: (registry model, settings, image shape). Dropout changes no cost, so the CIFAR-10
# CNN notebook's nets stand for the PyTorch KD tutorial's too.
PRESETS = {
    mnist_kd.TEACHER_MODEL: (mnist_kd.TEACHER_MODEL, {}, MNIST_IMAGE),
    mnist_kd.STUDENT_MODEL: (mnist_kd.STUDENT_MODEL, {}, MNIST_IMAGE),
    **{
        name: (model, settings, MNIST_IMAGE)
        for name, (model, settings) in {**mnist_takd.PRESETS, **hinton_mnist.PRESETS}.items()
    },
    "four_conv_net": (*cifar10_kd.PRESETS["cnn_notebook"]["teacher"], CIFAR_IMAGE),
    "two_conv_net": (*cifar10_kd.PRESETS["cnn_notebook"]["student"], CIFAR_IMAGE),
    **{
        model: (model, settings, CIFAR_IMAGE)
        for model, settings in (
            cifar10_kd.PRESETS["resnet56_resnet20"]["teacher"],
            cifar10_kd.PRESETS["resnet56_resnet20"]["student"],
        )
    },
}


@dataclasses.dataclass(frozen=True)
class Config(CommonConfig):
    workdir: str = option("runs/model_costs", "Where results.json goes.")
    models: tuple[str, ...] = option(
        tuple(PRESETS),
        f"Networks to measure, any of: {', '.join(PRESETS)}.",
        check=(
            lambda names: bool(names) and set(names) <= set(PRESETS),
            f"must name models among {', '.join(PRESETS)}",
        ),
    )
    measure_seconds: float = option(
        2.0, "How long to time each model's inference.", check=finite(positive)
    )


def run(config: Config) -> dict:
    started = time.perf_counter()
    costs = []
    for name in config.models:
        model, settings, image_shape = PRESETS[name]
        report.log(f"Measuring {name} ...")
        cost = model_cost(
            model, image_shape, settings=settings, measure_seconds=config.measure_seconds
        )
        costs.append({"preset": name, **cost, "image_shape": list(image_shape)})
    study = {"models": costs}
    document = report.results_document("model_costs", config, None, {}, study, started)
    path = report.write_results(config.workdir, document)
    rows = [
        [
            cost["preset"],
            "×".join(str(size) for size in cost["image_shape"]),
            f"{cost['parameters']:,}",
            f"{cost['flops_per_example'] / 1e6:.3f}",
            f"{cost['inference_examples_per_second']:,.0f}",
        ]
        for cost in costs
    ]
    report.print_report(
        ["model", "image", "params", "MFLOPs/example", "inference examples/s"],
        rows,
        notes=[],
        footer=f"Backend: {costs[0]['backend']}. Results: {path}",
    )
    return document


if __name__ == "__main__":
    command(Config, run)

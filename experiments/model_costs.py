"""Parameters, FLOPs per example and inference throughput of kdjax's models.

    python -m experiments.model_costs --models=mnist_cnn,student_net,mlp_800_dropout,mlp_200

Seed 003 reported identical FLOPs for its teacher and its student; this table
counts them from the compiled forward pass (XLA cost analysis) instead. Writes
``results.json`` in the workdir.
"""

from __future__ import annotations

from absl import app, flags

from experiments import common
from kdjax.costs import model_cost
from kdjax.models import MODELS

FLAGS = flags.FLAGS
flags.DEFINE_list("models", sorted(MODELS), "Registry names of the models to measure.")
flags.DEFINE_float("measure_seconds", 2.0, "How long to time each model's inference.")
flags.DEFINE_string("workdir", "runs/model_costs", "Where results.json goes.")

common.validate(
    "models",
    lambda names: bool(names) and set(names) <= set(MODELS),
    f"must name models among {', '.join(sorted(MODELS))}",
)
common.validate("measure_seconds", lambda s: s > 0, "must be > 0")

MNIST_IMAGE = (28, 28, 1)


@common.exit_on_user_error
def main(argv: list[str]) -> None:
    del argv
    costs = []
    for name in FLAGS.models:
        common.log(f"Measuring {name} ...")
        costs.append(model_cost(name, MNIST_IMAGE, measure_seconds=FLAGS.measure_seconds))
    path = common.write_results(FLAGS.workdir, {"image_shape": list(MNIST_IMAGE), "models": costs})
    rows = [
        [
            c["model"],
            f"{c['parameters']:,}",
            f"{c['flops_per_example'] / 1e6:.3f}",
            f"{c['inference_examples_per_second']:,.0f}",
        ]
        for c in costs
    ]
    common.print_report(
        ["model", "params", "MFLOPs/example", "inference examples/s"],
        rows,
        notes=[],
        footer=f"Backend: {costs[0]['backend']}. Results: {path}",
    )


if __name__ == "__main__":
    app.run(main)

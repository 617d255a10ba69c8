"""Finished runs scored after training: every student of a run loaded back from its
checkpoint and scored on the test split from its probabilities, and what the runs'
models cost (parameters, trainable parameters, forward FLOPs).
"""

from __future__ import annotations

import jax
import numpy as np

from kdjax.models import count_params, get_model
from kdjax.models.costs import forward_flops
from kdjax.models.freezing import count_trainable
from kdjax.runs import load_run
from kdjax.training.metrics import classification_report


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of ``logits`` (last axis), in float64."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate_run(run_dir, dataset, batch_size: int = 1000) -> list[dict]:
    """Test-set metrics (:func:`kdjax.training.metrics.classification_report`) of every
    member of the finished run in ``run_dir``, each loaded back from its checkpoint and
    scored from its probabilities, inferring ``batch_size`` images at a time."""
    first = load_run(run_dir)
    count = first.spec.population or 1
    reports = []
    for member in range(count):
        trained = first if member == 0 else load_run(run_dir, member=member)
        logits = trained.predict(dataset.test.images, batch_size=batch_size)
        reports.append(classification_report(dataset.test.labels, softmax(logits)))
    return reports


def model_costs(specs: dict, image_shape, *, flops: bool = True) -> list[dict]:
    """Parameters (Keras' count: params and BatchNorm statistics), trainable parameters
    and forward FLOPs per image of each distinct (model, trainable layers) among the
    runs ``specs`` names (a name's ``_seed<N>`` suffix dropped)."""
    costs, seen = [], set()
    for name, spec in specs.items():
        key = (spec.model, tuple(spec.model_settings.get("trainable", ())))
        if key in seen:
            continue
        seen.add(key)
        model = get_model(spec.model, **spec.model_settings)
        sample = np.zeros((1, *image_shape), np.float32)
        variables = jax.jit(lambda model=model, sample=sample: model.init(
            jax.random.PRNGKey(0), sample))()  # fmt: skip
        costs.append({
            "name": name.rsplit("_seed", 1)[0],
            "model": spec.model,
            "parameters": count_params(variables),
            "trainable_parameters": count_trainable(
                variables["params"], spec.model_settings.get("trainable", ("*",))
            ),
            "flops_per_example": forward_flops(model, variables, image_shape, batch_size=1)
            if flops else None,
        })  # fmt: skip
    return costs
